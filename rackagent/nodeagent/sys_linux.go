package nodeagent

import "golang.org/x/sys/unix"

// unameMachine returns uname -m ("x86_64"), or "".
func unameMachine() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Machine[:])
}

// unameRelease returns uname -r, the directory under /lib/modules.
func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
