package tftp

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// cleanName turns a requested name into a path relative to a root, or
// says why it is refused. It is strict on purpose: boot ROMs ask for
// plain names like "undionly.kpxe" or "ipxe/snponly.efi", so anything
// unusual is more likely an attack than a client.
//
//   - empty names, NUL bytes, other control characters and backslashes
//     are refused (a backslash is a separator to Windows-minded clients,
//     so "..\\x" would be an escape to them);
//   - leading slashes are dropped: "/etc/passwd" means ROOT/etc/passwd;
//   - any ".." component is refused, even one that would stay inside;
//   - the rest is cleaned ("a//b", "./a") and must name something below
//     the root, not the root itself.
func cleanName(name string) (rel, reason string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.IndexByte(name, 0) >= 0:
		return "", "NUL byte in name"
	case strings.IndexByte(name, '\\') >= 0:
		return "", "backslash in name"
	case strings.IndexFunc(name, isControl) >= 0:
		return "", "control character in name"
	}
	rel = strings.TrimLeft(name, "/")
	for _, elem := range strings.Split(rel, "/") {
		if elem == ".." {
			return "", "'..' in name"
		}
	}
	rel = path.Clean(rel)
	if rel == "." || !fs.ValidPath(rel) {
		return "", "names no file"
	}
	return rel, ""
}

// open finds name in the roots, in order, and opens it. A name that is
// missing from a root (or passes through a non-directory there) is looked
// for in the next one; any other failure (an escape refused by os.Root,
// a permission error, something that is not a regular file) ends the
// search with an access violation. reason says why for the log.
func (s *Server) open(name string) (f *os.File, rel string, size int64, reason string, err error) {
	rel, reason = cleanName(name)
	if reason != "" {
		return nil, "", 0, reason, errAccess
	}
	for _, dir := range s.roots {
		f, size, reason, err = openIn(dir, rel)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			continue
		}
		if err != nil {
			return nil, "", 0, reason, errAccess
		}
		return f, rel, size, "", nil
	}
	return nil, "", 0, "not found in any root", errNotFound
}

// openIn opens rel inside dir through os.Root, so symlinks are followed
// only while they stay inside dir. The root is opened per request: it is
// one system call, and a root created or replaced after start is seen.
func openIn(dir, rel string) (*os.File, int64, string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, 0, "root: " + err.Error(), err
	}
	// Files opened from a root stay open after it is closed.
	defer root.Close()

	// Stat before Open, so a FIFO or device never blocks or is read.
	fi, err := root.Stat(rel)
	if err != nil {
		return nil, 0, err.Error(), err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, "not a regular file: " + fi.Mode().Type().String(), errAccess
	}
	f, err := root.Open(rel)
	if err != nil {
		return nil, 0, err.Error(), err
	}
	// And after, in case the name was swapped in between.
	fi, err = f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errAccess
	}
	if err != nil {
		f.Close()
		return nil, 0, "not a regular file", err
	}
	return f, fi.Size(), "", nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Open finds and opens a file the way a TFTP read would (same roots, same
// refusals), for serving the same first-stage files over HTTP (UEFI HTTP
// boot). The caller closes the file.
func (s *Server) Open(name string) (*os.File, int64, error) {
	f, _, size, reason, err := s.open(name)
	if err != nil {
		if reason != "" {
			return nil, 0, fmt.Errorf("%s: %w", reason, err)
		}
		return nil, 0, err
	}
	return f, size, nil
}
