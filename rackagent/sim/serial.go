package sim

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// Serial is a simulated machine's serial port. What the machine prints
// (its firmware's boot messages) is read from it by whoever holds the
// other end: the BMC's Serial-over-LAN, which drains it all the time.
// What is typed into it (Write) is echoed back, as a prompt does. Output
// nobody has read piles up to serialUnread bytes, the oldest dropped, so
// a machine never waits for its console; the last serialLog bytes are
// kept for Log whether read or not.
type Serial struct {
	mu     sync.Mutex
	cond   *sync.Cond
	unread []byte
	log    []byte
	closed bool
}

const (
	serialUnread = 64 << 10
	serialLog    = 64 << 10
)

// NewSerial makes a serial port.
func NewSerial() *Serial {
	s := &Serial{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Read is the machine's output: it waits until there is some, or the
// port is closed (io.EOF).
func (s *Serial) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.unread) == 0 && !s.closed {
		s.cond.Wait()
	}
	if len(s.unread) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.unread)
	s.unread = s.unread[n:]
	if len(s.unread) == 0 {
		s.unread = nil
	}
	return n, nil
}

// Write is keystrokes: they are echoed back as output (a carriage return
// as a new line).
func (s *Serial) Write(p []byte) (int, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, io.ErrClosedPipe
	}
	s.output(bytes.ReplaceAll(p, []byte("\r"), []byte("\r\n")))
	return len(p), nil
}

// Printf prints one line of the machine's output.
func (s *Serial) Printf(format string, args ...any) {
	s.output([]byte(fmt.Sprintf(format, args...) + "\r\n"))
}

func (s *Serial) output(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.unread = keepLast(append(s.unread, b...), serialUnread)
	s.log = keepLast(append(s.log, b...), serialLog)
	s.cond.Broadcast()
}

// keepLast trims b to its last n bytes.
func keepLast(b []byte, n int) []byte {
	if over := len(b) - n; over > 0 {
		return append(b[:0], b[over:]...)
	}
	return b
}

// Log returns the last output printed (up to 64 KiB), read or not.
func (s *Serial) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.log)
}

// Close ends the port: reads return io.EOF once the output is read.
func (s *Serial) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cond.Broadcast()
	return nil
}
