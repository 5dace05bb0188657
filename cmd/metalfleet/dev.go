package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/server"
)

func newDevCmd(g *globals) *cobra.Command {
	var dataDir, httpAddr, raftAddr, logLevel string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a single-node coordinator on embedded defaults, for trying Metalfleet out",
		Long: `Run a single-node coordinator with embedded defaults: its state lives in
--data-dir (./.metalfleet), its API on --http-addr. It prints the admin
token and a few commands to try. Stop it with Ctrl-C; start it again and
the state is still there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, err := parseLevel(logLevel)
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(dataDir)
			if err != nil {
				return err
			}
			s, err := server.New(server.Config{
				NodeID: "dev", DataDir: abs, HTTPAddr: httpAddr, RaftAddr: raftAddr,
				Bootstrap: true, Logger: newLogger(os.Stderr, level), Out: os.Stdout,
			})
			if err != nil {
				return err
			}
			tok, err := os.ReadFile(filepath.Join(abs, server.AdminTokenFile))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, `
Metalfleet dev coordinator
  API:    http://%s/v1/  (OpenAPI: /v1/openapi.json, metrics: /metrics)
  state:  %s

Try, in another shell:
  export METALFLEET_ADDR=%s METALFLEET_TOKEN=%s
  bin/metalfleet cluster status
  bin/metalfleet node create --name n1 --mac 52:54:00:00:00:01
  bin/metalfleet node list
  bin/metalfleet node provision n1 manage

`, s.HTTPAddr(), abs, s.HTTPAddr(), strings.TrimSpace(string(tok)))
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
			return s.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", ".metalfleet", "state directory")
	cmd.Flags().StringVar(&httpAddr, "http-addr", "127.0.0.1:7480", "API listen address")
	cmd.Flags().StringVar(&raftAddr, "raft-addr", "127.0.0.1:7481", "Raft listen address")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	return cmd
}
