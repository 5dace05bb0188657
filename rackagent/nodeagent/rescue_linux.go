package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// openPTY opens a new pseudo-terminal pair (/dev/ptmx, no cgo) sized
// rows x cols.
func openPTY(rows, cols uint32) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	slave = os.NewFile(uintptr(sfd), name)
	if rows > 0 && cols > 0 {
		_ = unix.IoctlSetWinsize(sfd, unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}
	return master, slave, nil
}

// startInPTY starts cmd on a new pseudo-terminal (its controlling
// terminal, in a new session) and copies between it and the channel.
func startInPTY(cmd *exec.Cmd, ch ssh.Channel, rows, cols uint32) (*ptyPair, error) {
	master, slave, err := openPTY(rows, cols)
	if err != nil {
		return nil, err
	}
	defer slave.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		master.Close()
		return nil, err
	}
	p := &ptyPair{master: master, out: make(chan struct{})}
	go func() {
		defer close(p.out)
		_, _ = copyBuf(ch, master) // ends with EIO when the terminal's last user is gone
	}()
	go func() { _, _ = copyBuf(master, ch) }()
	return p, nil
}

func (p *ptyPair) resize(rows, cols uint32) {
	_ = unix.IoctlSetWinsize(int(p.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
}

// ConsoleShell is the rescue ramdisk's serial console shell.
type ConsoleShell struct {
	// Program is the shell ("": DefaultRescueShell).
	Program string
	// TTY is the terminal to run it on ("": the console's own, from
	// /sys/class/tty/console/active, else /dev/console).
	TTY string
	// Log (nil: discard).
	Log *slog.Logger
	// Respawn is the least time between two starts (0: one second).
	Respawn time.Duration

	done chan struct{}
}

// Done is closed when the shell has stopped for good (its context
// ended), after Start.
func (c *ConsoleShell) Done() <-chan struct{} { return c.done }

// consoleTTY is the terminal device behind /dev/console: the last of
// /sys/class/tty/console/active (as busybox's cttyhack finds it), so the
// shell can have it as its controlling terminal (job control, ^C).
func consoleTTY() string {
	b, err := os.ReadFile("/sys/class/tty/console/active")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		p := "/dev/" + f[len(f)-1]
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/dev/console"
}

// Start runs the shell on the terminal and starts it again each time it
// exits, until ctx ends. It returns once the first shell has started.
// Each start prints a banner line on the terminal first:
//
//	metalfleet rescue: shell on TTY (it starts again when it exits)
//
// and the shell's prompt is RescuePrompt.
func (c *ConsoleShell) Start(ctx context.Context) error {
	if c.Program == "" {
		c.Program = DefaultRescueShell
	}
	if c.TTY == "" {
		c.TTY = consoleTTY()
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Respawn <= 0 {
		c.Respawn = time.Second
	}
	first := make(chan error, 1)
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		for n := 0; ctx.Err() == nil; n++ {
			start := time.Now()
			cmd, tty, err := c.start(ctx)
			if n == 0 {
				first <- err
				if err != nil {
					return // Start fails
				}
			}
			if err != nil {
				c.Log.Error("rescue console shell", "tty", c.TTY, "err", err)
			} else {
				err = cmd.Wait()
				tty.Close()
				if ctx.Err() != nil {
					return
				}
				c.Log.Info("rescue console shell exited; starting another", "tty", c.TTY, "status", waitCode(err))
			}
			if wait := c.Respawn - time.Since(start); wait > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
			}
		}
	}()
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// start opens the terminal, prints the banner and starts one shell.
func (c *ConsoleShell) start(ctx context.Context) (*exec.Cmd, *os.File, error) {
	fd, err := unix.Open(c.TTY, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", c.TTY, err)
	}
	tty := os.NewFile(uintptr(fd), c.TTY)
	fmt.Fprintf(tty, "\r\nmetalfleet rescue: shell on %s (it starts again when it exits)\r\n", c.TTY)
	run := func(ctty bool) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, c.Program)
		cmd.Dir = "/"
		cmd.Env = append(rescueEnv(), "TERM=vt100")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: ctty, Ctty: 0}
		return cmd, cmd.Start()
	}
	cmd, err := run(true)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		// /dev/console itself may not become a controlling terminal.
		c.Log.Warn("rescue console shell: no controlling terminal", "tty", c.TTY, "err", err)
		cmd, err = run(false)
	}
	if err != nil {
		tty.Close()
		return nil, nil, err
	}
	return cmd, tty, nil
}
