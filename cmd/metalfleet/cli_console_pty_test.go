//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metalfleet/metalfleet/ops/testkit"
)

// openPTY opens a pseudo-terminal: the master (the "keyboard and screen"
// side the test drives) and the slave (the CLI's stdin).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatalf("open the pts: %v", err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	// Nothing reads the master's output (the terminal's echo) but this.
	go io.Copy(io.Discard, m)
	return m, s
}

func termios(t *testing.T, f *os.File) unix.Termios {
	t.Helper()
	st, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return *st
}

// TestConsoleTerminal: on a terminal the CLI goes raw (keystrokes pass as
// typed), "~." at the start of a line leaves, and the terminal is
// restored both when the user leaves and when the session is ended from
// the other side (a takeover).
func TestConsoleTerminal(t *testing.T) {
	f := newConsoleFleet(t)
	f.startAgent(t)
	master, slave := openPTY(t)
	before := termios(t, slave)
	if before.Lflag&unix.ICANON == 0 {
		t.Fatal("a new pseudo-terminal is not in canonical mode")
	}

	r := startCmd(t, f.addr, f.alice, slave, "node", "console", "n1")
	testkit.Eventually(t, 10*time.Second, "attached on a terminal", func() bool {
		return strings.Contains(r.errb.String(), "[connected; ~. at the start of a line leaves]")
	})
	if st := termios(t, slave); st.Lflag&unix.ICANON != 0 || st.Lflag&unix.ECHO != 0 {
		t.Fatalf("the terminal is not raw while attached: lflag %#x", st.Lflag)
	}
	// Raw: the line goes out as typed, carriage return and all, and a
	// tilde inside a line is sent.
	if _, err := master.Write([]byte("echo a~b\r")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the typed line echoed", func() bool { return strings.Contains(r.out.String(), "echo a~b\r") })
	if _, err := master.Write([]byte("~.")); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("leaving with ~.: %v", errorLine(err))
	}
	if strings.Contains(r.out.String(), "~.") {
		t.Fatalf("~. was sent to the console: %q", r.out.String())
	}
	if after := termios(t, slave); after != before {
		t.Fatalf("the terminal was not restored after ~.:\n got %+v\nwant %+v", after, before)
	}

	// Ended from the other side: restored too, and the reason given.
	r = startCmd(t, f.addr, f.alice, slave, "node", "console", "n1")
	testkit.Eventually(t, 10*time.Second, "attached again", func() bool { return strings.Contains(r.errb.String(), "attached") })
	bob := startCmd(t, f.addr, f.bob, strings.NewReader(""), "node", "console", "n1", "--force")
	if err := bob.wait(t); err != nil {
		t.Fatalf("bob's takeover: %v", errorLine(err))
	}
	err := r.wait(t)
	if err == nil || !strings.Contains(errorLine(err), "took over") {
		t.Fatalf("alice's terminal session after the takeover: %v, want an error saying bob took over", err)
	}
	if after := termios(t, slave); after != before {
		t.Fatalf("the terminal was not restored after the takeover:\n got %+v\nwant %+v", after, before)
	}
}
