package nodeagent

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dropCache drops the page cache of a disk opened without O_DIRECT, so
// a read-back reads the disk, not the memory the write left behind.
func dropCache(dev DiskDevice) {
	if f, ok := dev.(*os.File); ok {
		_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127): the kernel zeroes a range of
// a block device (with the device's write-zeroes command where it has
// one).
const blkZeroOut = 0x127f

// zeroOut zeroes [off, off+n) of a block device with BLKZEROOUT; it
// fails (ENOTTY) on anything else, and the caller writes zeros.
func zeroOut(dev DiskDevice, off, n int64) error {
	f, ok := dev.(*os.File)
	if !ok {
		return errors.ErrUnsupported
	}
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&r[0]))); e != 0 {
		return e
	}
	return nil
}
