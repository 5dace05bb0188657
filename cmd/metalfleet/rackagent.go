package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/rackagent/agent"
)

func newRackAgentCmd(g *globals) *cobra.Command {
	var (
		cfg                         agent.Config
		coordinators, tokenFile     string
		advertise, poolShare, level string
		tftpRoots                   []string
		configFile                  string
		gossipJoin, gossipKeyFile   string
	)
	cmd := &cobra.Command{
		Use:   "rackagent",
		Short: "Run a rack agent: DHCP, TFTP and HTTP boot for one rack, reporting to the coordinators",
		Long: `Run a rack agent for one rack. It keeps a copy of the rack's boot state
from the coordinators (and serves from it while they are away), answers
DHCP (broadcast on --interface, or relayed on --dhcp-addr), serves iPXE
over TFTP and scripts, kernels and ramdisks over HTTP, and sends what it
sees to the coordinators through a durable outbox.

Create its token with: metalfleet token create --role agent --rack RACK`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd.Flags(), configFile); err != nil {
				return err
			}
			lv, err := parseLevel(level)
			if err != nil {
				return err
			}
			cfg.Logger = newLogger(os.Stderr, lv)
			cfg.Coordinators = splitList(coordinators)
			if tokenFile == "" {
				return fmt.Errorf("--token-file is required (an agent token for rack %s)", cfg.Rack)
			}
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return fmt.Errorf("--token-file: %w", err)
			}
			cfg.Token = strings.TrimSpace(string(b))
			if cfg.AdvertiseIP, err = netip.ParseAddr(advertise); err != nil {
				return fmt.Errorf("--advertise-ip %q: want the IP nodes reach this agent at", advertise)
			}
			if _, err := fmt.Sscanf(poolShare, "%d/%d", &cfg.PoolShare[0], &cfg.PoolShare[1]); err != nil ||
				cfg.PoolShare[1] < 1 || cfg.PoolShare[0] < 0 || cfg.PoolShare[0] >= cfg.PoolShare[1] {
				return fmt.Errorf("--pool-share %q: want K/N with 0 <= K < N, e.g. 0/2 and 1/2 for a rack's two agents", poolShare)
			}
			cfg.TFTPRoots = tftpRoots
			if cfg.PowerSyncInterval < 0 || cfg.PowerSyncInterval > 0 && cfg.PowerSyncInterval < time.Second {
				return fmt.Errorf("--power-sync-interval %s: want 0 (power sync off) or at least 1s", cfg.PowerSyncInterval)
			}
			if cfg.PowerSyncInterval == 0 {
				cfg.PowerSyncInterval = -1 // off (the agent's zero is its default)
			}
			if cfg.BMCConcurrency < 1 {
				return fmt.Errorf("--bmc-concurrency %d: want at least 1", cfg.BMCConcurrency)
			}
			// The default address gives way to a free loopback port when
			// taken (two agents on one host); one asked for does not.
			cfg.MgmtAddrSoft = !cmd.Flags().Changed("mgmt-addr")
			cfg.GossipJoin = splitList(gossipJoin)
			if cfg.GossipKey, err = readGossipKey(gossipKeyFile); err != nil {
				return err
			}
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
			err = a.Run(cmd.Context())
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON file of flag values (flags on the command line win)")
	f.StringVar(&cfg.Name, "name", "", "this agent's unique name (default: HOSTNAME-RACK)")
	f.StringVar(&cfg.Rack, "rack", "", "the rack this agent serves (required)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for agent.db and the artifact cache (required)")
	f.StringVar(&coordinators, "coordinator", "", "coordinator API address(es), comma-separated (required)")
	f.StringVar(&tokenFile, "token-file", "", "file holding this rack's agent token (required)")
	f.StringVar(&cfg.Interface, "interface", "", "serve broadcast DHCP on this NIC (needs root)")
	f.StringVar(&cfg.DHCPAddr, "dhcp-addr", "", "serve relayed DHCP on IP:PORT (with --interface: the port only)")
	f.StringVar(&cfg.TFTPAddr, "tftp-addr", ":69", "TFTP listen address (empty: no TFTP)")
	f.StringSliceVar(&tftpRoots, "tftp-root", nil, "directories of first-stage boot files, searched in order (default DATA_DIR/tftp, /usr/lib/ipxe)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", ":8080", "HTTP boot listen address")
	f.StringVar(&cfg.MgmtAddr, "mgmt-addr", agent.DefaultMgmtAddr, "authenticated management listener HOST:PORT (a bearer token: this rack's agent token or an admin token); if the default is taken, a free loopback port is used")
	f.StringVar(&advertise, "advertise-ip", "", "this agent's IP on the rack network (required)")
	f.StringVar(&poolShare, "pool-share", "0/1", "this agent's share K/N of the rack's dynamic pool")
	f.Int64Var(&cfg.CacheMaxBytes, "cache-max-bytes", 20<<30, "artifact cache size limit")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&cfg.GossipAddr, "gossip-addr", "", "gossip with the rack's other agent and the coordinators on HOST:PORT (empty: no gossip; answer every MAC)")
	f.StringVar(&gossipJoin, "gossip-join", "", "gossip members to join, HOST:PORT,...")
	f.StringVar(&gossipKeyFile, "gossip-key-file", "", "file with the gossip encryption key (base64 of 16, 24 or 32 bytes)")
	f.StringVar(&cfg.GossipProfile, "gossip-profile", "lan", "gossip timings: lan, or local (faster failure detection on one host)")
	f.DurationVar(&cfg.PowerSyncInterval, "power-sync-interval", time.Minute, "how often to read the power state of the rack's nodes from their BMCs, +-10% (0: never); changes are reported")
	f.IntVar(&cfg.BMCConcurrency, "bmc-concurrency", 32, "most BMC calls in flight at once")
	f.BoolVar(&cfg.NoRouterAdverts, "no-router-adverts", false, "with --interface: do not send the IPv6 router advertisements that spare iPXE a 16 s wait")
	return cmd
}
