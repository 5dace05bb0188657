package nodeagent

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache drops the page cache of a disk opened without O_DIRECT, so
// a read-back reads the disk, not the memory the write left behind.
func dropCache(dev DiskDevice) {
	if f, ok := dev.(*os.File); ok {
		_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
}
