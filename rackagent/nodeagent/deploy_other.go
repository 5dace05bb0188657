//go:build !linux

package nodeagent

// dropCache is only needed on Linux (the ramdisk).
func dropCache(DiskDevice) {}
