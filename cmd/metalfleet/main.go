// Command metalfleet is Metalfleet's one binary for operators and daemons:
// `metalfleet coordinator` and `metalfleet dev` run servers, every other
// subcommand is the operator CLI over the coordinator's HTTP API.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", errorLine(err))
		os.Exit(1)
	}
}

// errorLine renders an error as one clear line.
func errorLine(err error) string {
	var ae *apiclient.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("%s (HTTP %d %s)", ae.Message, ae.Status, ae.Code)
	}
	return err.Error()
}

// globals are the flags every CLI command shares.
type globals struct {
	addr   string
	token  string
	output string
	stdout io.Writer
	stderr io.Writer
}

func (g *globals) client() (*apiclient.Client, error) {
	if g.addr == "" {
		return nil, errors.New("no coordinator address: set METALFLEET_ADDR or --addr")
	}
	return apiclient.New(g.addr, g.token), nil
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "metalfleet",
		Short:         "Metalfleet: a bare-metal fleet manager",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", envOr("METALFLEET_ADDR", "127.0.0.1:7480"), "coordinator API address (env METALFLEET_ADDR)")
	pf.StringVar(&g.token, "token", os.Getenv("METALFLEET_TOKEN"), "API token (env METALFLEET_TOKEN)")
	// Help must never print the token: name the variable it came from.
	if os.Getenv("METALFLEET_TOKEN") != "" {
		pf.Lookup("token").DefValue = "$METALFLEET_TOKEN"
	}
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")

	root.AddCommand(
		newCoordinatorCmd(g),
		newDevCmd(g),
		newRackAgentCmd(g),
	)
	addCLICommands(root, g)
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// newLogger returns a slog logger: text on a terminal, JSON otherwise
// (under systemd or in a pipe).
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// readGossipKey reads a gossip encryption key: a file holding 16, 24 or 32
// bytes in base64 (make one with: head -c 32 /dev/urandom | base64).
func readGossipKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key-file: %w", err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
		return nil, fmt.Errorf("--gossip-key-file %s: want 16, 24 or 32 bytes in base64", path)
	}
	return k, nil
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
