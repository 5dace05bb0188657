package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
)

// The serial console: `node console NODE` attaches through the
// coordinator (a WebSocket) to the node's rack agent, which holds the
// BMC's Serial-over-LAN session. With a terminal on stdin it puts it in
// raw mode and "~." at the start of a line leaves (as in ssh; "~~" sends
// one "~"); the terminal is restored however the command ends. Without a
// terminal, stdin is copied to the console and the console to stdout
// until stdin ends (then output still arriving is copied for up to
// consoleLinger) or the session does; a read-only watcher does not read
// stdin and runs until the session ends or it is interrupted. Notices go
// to stderr. A refused attach (the keyboard held, no BMC, no agent) fails
// before anything is copied, whatever stdin holds.

// consoleLinger bounds how long output is still copied after stdin ends:
// until consoleQuiet passes without any, at most consoleLinger.
var (
	consoleQuiet  = time.Second
	consoleLinger = 10 * time.Second
)

func newNodeConsoleCmd(g *globals) *cobra.Command {
	var readOnly, force, log bool
	cmd := &cobra.Command{
		Use:   "console NODE",
		Short: "Attach to a node's serial console (~. at the start of a line leaves)",
		Long: "Attach to a node's serial console through its rack agent (IPMI Serial-over-LAN).\n" +
			"One client holds the keyboard; --read-only watches; --force takes the keyboard from its holder,\n" +
			"who is told. On a terminal, ~. at the start of a line leaves (~~ sends ~). Without a terminal,\n" +
			"stdin is sent to the console and its output written to stdout until stdin ends.\n" +
			"--log writes the console log (the node's last 256 KiB of output) instead.",
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if log {
				if readOnly || force {
					return errors.New("--log reads the console log: it takes neither --read-only nor --force")
				}
				return consoleLog(cmd, g, a[0])
			}
			if readOnly && force {
				return errors.New("--force takes the keyboard over; a --read-only watcher does not need it")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			conn, err := c.Console(cmd.Context(), a[0], apiclient.ConsoleOptions{ReadOnly: readOnly, Force: force})
			if err != nil {
				return err
			}
			return runConsole(cmd.Context(), g, conn, cmd.InOrStdin(), !readOnly)
		},
	}
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "watch without the keyboard")
	cmd.Flags().BoolVar(&force, "force", false, "take the keyboard from whoever holds it (they are told)")
	cmd.Flags().BoolVar(&log, "log", false, "write the console log (last 256 KiB of output) to stdout instead")
	return cmd
}

func newNodeConsoleLogCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "console-log NODE",
		Short: "Write a node's console log (its last 256 KiB of console output, oldest first) to stdout",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return consoleLog(cmd, g, a[0])
		},
	}
}

func consoleLog(cmd *cobra.Command, g *globals, node string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	_, err = c.ConsoleLog(cmd.Context(), node, g.stdout)
	return err
}

// errLeft is the user leaving with ~.
var errLeft = errors.New("left with ~.")

// runConsole copies between the console and stdin/stdout until the
// session ends, the user leaves, or ctx ends.
func runConsole(ctx context.Context, g *globals, conn *websocket.Conn, stdin io.Reader, interactive bool) error {
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f, isFile := stdin.(*os.File)
	terminal := isFile && term.IsTerminal(int(f.Fd()))
	nl := "\n"
	if terminal {
		old, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("putting the terminal in raw mode: %w", err)
		}
		// Restored on every way out: return, error, and the signals
		// main turns into ctx's end (raw mode keeps ^C a keystroke).
		defer term.Restore(int(f.Fd()), old)
		nl = "\r\n"
		fmt.Fprintf(g.stderr, "[connected; ~. at the start of a line leaves]%s", nl)
	}
	var lastOut atomic.Int64
	lastOut.Store(time.Now().UnixNano())
	outDone := make(chan error, 1)
	go func() { outDone <- consoleOut(ctx, conn, g, nl, &lastOut) }()
	inDone := make(chan error, 1)
	if interactive || terminal {
		go func() { inDone <- consoleIn(ctx, conn, stdin, terminal, interactive) }()
	}
	select {
	case err := <-outDone:
		return err
	case err := <-inDone:
		switch {
		case errors.Is(err, errLeft):
			fmt.Fprintf(g.stderr, "[left the console]%s", nl)
			conn.Close(websocket.StatusNormalClosure, "left")
			return nil
		case err != nil:
			return err
		}
		// stdin ended: copy what is still on its way, then leave.
		lastOut.Store(time.Now().UnixNano())
		deadline := time.Now().Add(consoleLinger)
		for time.Now().Before(deadline) && time.Since(time.Unix(0, lastOut.Load())) < consoleQuiet {
			select {
			case err := <-outDone:
				return err
			case <-time.After(consoleQuiet / 10):
			}
		}
		conn.Close(websocket.StatusNormalClosure, "stdin ended")
		return nil
	case <-ctx.Done():
		conn.Close(websocket.StatusGoingAway, "interrupted")
		return nil
	}
}

// consoleOut writes console bytes to stdout and notices to stderr until
// the session ends; a session ended from the other side is an error
// naming why.
func consoleOut(ctx context.Context, conn *websocket.Conn, g *globals, nl string, lastOut *atomic.Int64) error {
	last := ""
	for {
		typ, b, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			why := last
			if why == "" {
				var ce websocket.CloseError
				if errors.As(err, &ce) && ce.Reason != "" {
					why = ce.Reason
				} else {
					why = err.Error()
				}
			}
			return fmt.Errorf("the console session ended: %s", why)
		}
		lastOut.Store(time.Now().UnixNano())
		if typ == websocket.MessageBinary {
			if _, err := g.stdout.Write(b); err != nil {
				return err
			}
			continue
		}
		var n apiclient.ConsoleNotice
		if json.Unmarshal(b, &n) == nil && n.Notice != "" {
			last = n.Notice
			fmt.Fprintf(g.stderr, "[%s]%s", strings.TrimSpace(n.Notice), nl)
		}
	}
}

// consoleIn sends stdin to the console (keystrokes only when interactive)
// until it ends (nil) or, on a terminal, the user types ~. at the start
// of a line (errLeft).
func consoleIn(ctx context.Context, conn *websocket.Conn, stdin io.Reader, terminal, interactive bool) error {
	buf := make([]byte, apiclient.ConsoleChunk)
	atStart, tilde := true, false
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			out := buf[:n]
			left := false
			if terminal {
				out, atStart, tilde, left = escapes(buf[:n], atStart, tilde)
			}
			if interactive && len(out) > 0 {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				werr := conn.Write(wctx, websocket.MessageBinary, out)
				cancel()
				if werr != nil {
					return fmt.Errorf("sending to the console: %w", werr)
				}
			}
			if left {
				return errLeft
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
}

// escapes applies ssh's escapes to typed bytes: "~." at the start of a
// line leaves, "~~" sends "~", "~" and anything else sends both. It
// returns the bytes to send, the new line-start and pending-tilde states,
// and whether the user left.
func escapes(in []byte, atStart, tilde bool) (out []byte, _, _ bool, left bool) {
	out = make([]byte, 0, len(in)+1)
	for _, b := range in {
		if tilde {
			tilde = false
			switch b {
			case '.':
				return out, atStart, false, true
			case '~':
				out = append(out, '~')
				atStart = false
				continue
			default:
				out = append(out, '~')
			}
		} else if atStart && b == '~' {
			tilde = true
			continue
		}
		out = append(out, b)
		atStart = b == '\r' || b == '\n'
	}
	return out, atStart, tilde, false
}
