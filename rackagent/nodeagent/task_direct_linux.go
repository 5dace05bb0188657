package nodeagent

import "syscall"

// oDirect bypasses the page cache, so a disk burn-in measures the disk.
const oDirect = syscall.O_DIRECT
