package ipmisim

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/bougou/go-ipmi/pkg/hal"
)

// consoleBuf bounds the machine output held for an SOL session that has
// not fetched it yet; older bytes are dropped beyond it (the machine never
// waits for the BMC).
const consoleBuf = 64 << 10

// console is the machine's serial port behind SOL. A reader goroutine
// drains the port for as long as the BMC runs; an active SOL session (at
// most one: go-ipmi's BMC has one instance) gets the output, otherwise it
// is dropped. Keystrokes go to a writer goroutine so a port that does not
// read never blocks the BMC.
type console struct {
	rw io.ReadWriter

	startOnce sync.Once
	mu        sync.Mutex
	active    *consoleConn
	dead      error
	closed    bool
	writes    chan []byte
	quit      chan struct{}
}

func newConsole(rw io.ReadWriter) *console {
	return &console{rw: rw, writes: make(chan []byte, 64), quit: make(chan struct{})}
}

func (c *console) start() {
	c.startOnce.Do(func() {
		go c.readLoop()
		go c.writeLoop()
	})
}

func (c *console) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.quit)
	}
}

func (c *console) readLoop() {
	buf := make([]byte, 4096)
	for {
		n, err := c.rw.Read(buf)
		if n > 0 {
			c.mu.Lock()
			if a := c.active; a != nil {
				a.out = append(a.out, buf[:n]...)
				if over := len(a.out) - consoleBuf; over > 0 {
					a.out = append(a.out[:0], a.out[over:]...)
				}
			}
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.dead = err
			c.mu.Unlock()
			return
		}
		select {
		case <-c.quit:
			return
		default:
		}
	}
}

func (c *console) writeLoop() {
	for {
		select {
		case <-c.quit:
			return
		case p := <-c.writes:
			if _, err := c.rw.Write(p); err != nil {
				c.mu.Lock()
				c.dead = err
				c.mu.Unlock()
			}
		}
	}
}

// Open is SOL activation (hal.ConsoleHAL).
func (c *console) Open(context.Context) (hal.ConsoleConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active != nil {
		return nil, errors.New("console already attached")
	}
	if c.dead != nil {
		return nil, c.dead
	}
	a := &consoleConn{c: c}
	c.active = a
	return a, nil
}

// consoleConn is one SOL activation's view of the console.
type consoleConn struct {
	c   *console
	out []byte // guarded by c.mu
}

func (a *consoleConn) ReadAvailable(p []byte) (int, error) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	if len(a.out) == 0 {
		if a.c.dead != nil && a.c.active == a {
			return 0, a.c.dead
		}
		return 0, nil
	}
	n := copy(p, a.out)
	a.out = a.out[n:]
	return n, nil
}

func (a *consoleConn) Write(p []byte) (int, error) {
	cp := append([]byte(nil), p...)
	select {
	case a.c.writes <- cp:
		return len(p), nil
	default:
		return 0, nil // full: SOL reports fewer characters accepted and the client resends
	}
}

func (a *consoleConn) Close() error {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	if a.c.active == a {
		a.c.active = nil
	}
	return nil
}

func (a *consoleConn) SendBreak(context.Context) error { return hal.ErrNotSupported }
