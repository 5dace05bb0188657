//go:build !linux

package nodeagent

import "errors"

// dropCache is only needed on Linux (the ramdisk).
func dropCache(DiskDevice) {}

// zeroOut is BLKZEROOUT on Linux; elsewhere the caller writes zeros.
func zeroOut(DiskDevice, int64, int64) error { return errors.ErrUnsupported }
