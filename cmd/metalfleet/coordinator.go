package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/server"
)

type coordinatorFlags struct {
	nodeID, dataDir          string
	httpAddr, httpAdvertise  string
	raftAddr, raftAdvertise  string
	bootstrap                bool
	join, tokenFile          string
	logLevel                 string
	gossipAddr, gossipJoin   string
	gossipKeyFile            string
	heartbeat, election      time.Duration
	leaderLease, forwardWait time.Duration
}

func (f *coordinatorFlags) register(fs *pflag.FlagSet) {
	d := raftnode.DefaultConfig()
	fs.StringVar(&f.nodeID, "node-id", "", "this server's unique, stable id (required)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the Raft log, snapshots and admin.token (required)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:7480", "API listen address")
	fs.StringVar(&f.httpAdvertise, "http-advertise", "", "API address other servers use (default: the listen address)")
	fs.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7481", "Raft listen address")
	fs.StringVar(&f.raftAdvertise, "raft-advertise", "", "Raft address other servers use (default: the listen address)")
	fs.BoolVar(&f.bootstrap, "bootstrap", false, "make this the first server of a new cluster (harmless on restart)")
	fs.StringVar(&f.join, "join", "", "API URL of any member, to join an existing cluster")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding an admin token, for --join")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.gossipAddr, "gossip-addr", "", "gossip with rack agents and coordinators on HOST:PORT (empty: no gossip)")
	fs.StringVar(&f.gossipJoin, "gossip-join", "", "gossip members to join, HOST:PORT,...")
	fs.StringVar(&f.gossipKeyFile, "gossip-key-file", "", "file with the gossip encryption key (base64 of 16, 24 or 32 bytes)")
	fs.DurationVar(&f.heartbeat, "raft-heartbeat-timeout", d.HeartbeatTimeout, "follower's wait for the leader before an election")
	fs.DurationVar(&f.election, "raft-election-timeout", d.ElectionTimeout, "candidate's wait for votes")
	fs.DurationVar(&f.leaderLease, "raft-leader-lease", d.LeaderLeaseTimeout, "leader's lease without quorum contact")
	fs.DurationVar(&f.forwardWait, "forward-wait", 5*time.Second, "how long a follower waits for a leader before answering 503")
}

func newCoordinatorCmd(g *globals) *cobra.Command {
	var f coordinatorFlags
	var configFile string
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator server (Raft-replicated fleet state and the HTTP API)",
		Long: `Run a coordinator server. Start the first server of a new cluster with
--bootstrap; it writes an admin token to DATA_DIR/admin.token. Start the
others with --join URL --token-file FILE. Restart any server with the same
command it was first started with.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd.Flags(), configFile); err != nil {
				return err
			}
			return runCoordinator(cmd, g, &f)
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "JSON file of flag values (flags on the command line win)")
	f.register(cmd.Flags())
	return cmd
}

// applyConfigFile sets every flag named in a JSON object file that was not
// given on the command line.
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // 1000000 stays 1000000, not 1e+06
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	// Flags given on the command line win; note them before setting any.
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { onCommandLine[f.Name] = true })
	for k, v := range m {
		fl := fs.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config %s: unknown setting %q", path, k)
		}
		if onCommandLine[k] {
			continue
		}
		if err := fs.Set(k, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config %s: %s: %w", path, k, err)
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func runCoordinator(cmd *cobra.Command, g *globals, f *coordinatorFlags) error {
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return err
	}
	cfg := server.Config{
		NodeID: f.nodeID, DataDir: f.dataDir,
		HTTPAddr: f.httpAddr, HTTPAdvertise: f.httpAdvertise,
		RaftAddr: f.raftAddr, RaftAdvertise: f.raftAdvertise,
		Bootstrap: f.bootstrap, JoinURL: f.join,
		Logger: newLogger(os.Stderr, level),
	}
	cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout, cfg.Raft.LeaderLeaseTimeout = f.heartbeat, f.election, f.leaderLease
	cfg.API.ForwardWait = f.forwardWait
	cfg.GossipAddr, cfg.GossipJoin = f.gossipAddr, splitList(f.gossipJoin)
	if cfg.GossipKey, err = readGossipKey(f.gossipKeyFile); err != nil {
		return err
	}
	if f.join != "" {
		if f.tokenFile == "" {
			return fmt.Errorf("--join needs --token-file with an admin token")
		}
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		cfg.JoinToken = strings.TrimSpace(string(b))
	}
	if !f.bootstrap && f.join == "" {
		if _, err := os.Stat(filepath.Join(f.dataDir, "raft.db")); err != nil {
			return fmt.Errorf("%s holds no Raft state: start the first server with --bootstrap, the others with --join", f.dataDir)
		}
	}
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	// Tell systemd we are ready once the listeners are bound; without
	// systemd (NOTIFY_SOCKET unset) this does nothing.
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	err = s.Run(cmd.Context())
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	return err
}
