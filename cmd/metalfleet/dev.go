package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/server"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/agent"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
	"github.com/metalfleet/metalfleet/rackagent/sim"
)

// devFlags are the dev command's settings: every address on loopback, so
// dev mode needs no root.
type devFlags struct {
	dataDir, httpAddr, raftAddr string
	agentHTTP, dhcpAddr, tftp   string
	machines                    int
	autoEnroll                  bool
	logLevel                    string
}

func newDevCmd(g *globals) *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Metalfleet on one machine: a coordinator, a rack agent and a simulated rack",
		Long: `Run a single-node coordinator, a rack agent serving relayed DHCP, TFTP and
HTTP boot on loopback, and a handful of simulated machines that network-boot
from it with the real protocols (DHCP through a relay address, iPXE's first
stage over TFTP, the iPXE script, kernel and initrd over HTTP) and report a
synthetic inventory with the nodeagent's own code. They appear as
discovered nodes, then enrolled (with --auto-enroll). State lives in
--data-dir (./.metalfleet); start again and it is all still there. No root,
QEMU or hardware needed. Stop with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", ".metalfleet", "state directory")
	fl.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:7480", "coordinator API listen address")
	fl.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7481", "coordinator Raft listen address")
	fl.StringVar(&f.agentHTTP, "agent-http-addr", "127.0.0.1:7490", "rack agent HTTP boot address")
	fl.StringVar(&f.dhcpAddr, "dhcp-addr", "127.0.0.1:6767", "rack agent relayed-DHCP address")
	fl.StringVar(&f.tftp, "tftp-addr", "127.0.0.1:6969", "rack agent TFTP address")
	fl.IntVar(&f.machines, "machines", 5, "simulated machines to boot")
	fl.BoolVar(&f.autoEnroll, "auto-enroll", true, "enroll discovered machines at once")
	fl.StringVar(&f.logLevel, "log-level", "warn", "debug, info, warn or error")
	return cmd
}

func runDev(ctx context.Context, g *globals, f devFlags) error {
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return err
	}
	log := newLogger(os.Stderr, level)
	dir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv, err := server.New(server.Config{
		NodeID: "dev", DataDir: filepath.Join(dir, "coordinator"), HTTPAddr: f.httpAddr, RaftAddr: f.raftAddr,
		Bootstrap: true, Logger: log.With("process", "coordinator"), Out: os.Stdout,
	})
	if err != nil {
		return err
	}
	coordDone := make(chan error, 1)
	go func() { coordDone <- srv.Run(ctx) }()
	tokBytes, err := os.ReadFile(filepath.Join(dir, "coordinator", server.AdminTokenFile))
	if err != nil {
		cancel()
		<-coordDone
		return err
	}
	adminToken := strings.TrimSpace(string(tokBytes))
	admin := apiclient.New(srv.HTTPAddr(), adminToken)
	agentToken, err := devSetup(ctx, admin, dir, f.autoEnroll)
	if err != nil {
		cancel()
		<-coordDone
		return fmt.Errorf("dev setup: %w", err)
	}
	ag, err := agent.New(agent.Config{
		Name: "dev-agent", Rack: "dev", DataDir: filepath.Join(dir, "agent"), Coordinators: []string{srv.HTTPAddr()}, Token: agentToken,
		DHCPAddr: f.dhcpAddr, TFTPAddr: f.tftp, TFTPRoots: []string{filepath.Join(dir, "tftp"), "/usr/lib/ipxe"},
		HTTPAddr: f.agentHTTP, AdvertiseIP: netip.MustParseAddr("127.0.0.1"), Logger: log.With("process", "rackagent"),
	})
	if err != nil {
		cancel()
		<-coordDone
		return err
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- ag.Run(ctx) }()

	fmt.Fprintf(g.stdout, `
Metalfleet dev: a coordinator, a rack agent and %d simulated machines
  API:         http://%s/v1/  (OpenAPI: /v1/openapi.json, metrics: /metrics)
  rack agent:  DHCP %s (relayed), TFTP %s, HTTP http://%s/
  state:       %s

Try, in another shell:
  export METALFLEET_ADDR=%s METALFLEET_TOKEN=%s
  bin/metalfleet node list
  bin/metalfleet node list --discovered
  bin/metalfleet node show sim-1
  bin/metalfleet agents; bin/metalfleet sightings

`, f.machines, srv.HTTPAddr(), ag.DHCPAddr(), ag.TFTPAddr(), ag.HTTPAddr(), dir, srv.HTTPAddr(), adminToken)
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)

	go bootMachines(ctx, g.stdout, admin, ag, f.machines)
	select {
	case <-ctx.Done():
	case err = <-agentDone:
	case err = <-coordDone:
	}
	cancel()
	for _, ch := range []chan error{agentDone, coordDone} {
		select {
		case e := <-ch:
			err = errors.Join(err, e)
		case <-time.After(10 * time.Second):
		}
	}
	return err
}

// devSetup creates, once, what dev mode needs in the coordinator: rack
// "dev" on loopback, discovery images, the settings, and an agent token
// (kept in DIR/agent.token). It returns the agent token.
func devSetup(ctx context.Context, c *apiclient.Client, dir string, autoEnroll bool) (string, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.RaftState == "leader" {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("coordinator did not become leader: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ignoreExists := func(err error) error {
		var ae *apiclient.Error
		if errors.As(err, &ae) && ae.Code == proto.CodeConflict {
			return nil
		}
		return err
	}
	if _, err := c.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: "dev", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1",
		PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199", LeaseTime: proto.Duration(time.Hour)}, nil); ignoreExists(err) != nil {
		return "", err
	}
	kernel, initrd, err := devImages(dir)
	if err != nil {
		return "", err
	}
	for _, im := range []proto.Image{kernel, initrd} {
		if _, err := c.Do(ctx, "PUT", "/v1/images/"+im.Name, im, nil); err != nil {
			var ae *apiclient.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
				return "", err
			}
			if _, err := c.Do(ctx, "POST", "/v1/images", im, nil); err != nil {
				return "", err
			}
		}
	}
	yes := true
	if _, err := c.Do(ctx, "PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &yes, AutoEnroll: &autoEnroll,
		DiscoveryKernel: &kernel.Name, DiscoveryRamdisk: &initrd.Name}, nil); err != nil {
		return "", err
	}
	tokPath := filepath.Join(dir, "agent.token")
	if b, err := os.ReadFile(tokPath); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	var tok proto.TokenCreated
	if _, err := c.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "dev", Description: "dev rack agent"}, &tok); err != nil {
		return "", err
	}
	return tok.Secret, os.WriteFile(tokPath, []byte(tok.Secret+"\n"), 0o600)
}

// devImages registers the discovery kernel and ramdisk: the real ones of
// `make ramdisk` if they were built, else small stand-ins (simulated
// machines only fetch them). A first-stage stand-in goes in DIR/tftp for
// machines without Debian's ipxe package.
func devImages(dir string) (kernel, initrd proto.Image, err error) {
	imgDir := filepath.Join(dir, "images")
	if err := os.MkdirAll(filepath.Join(dir, "tftp"), 0o755); err != nil {
		return kernel, initrd, err
	}
	if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err != nil {
		os.WriteFile(filepath.Join(dir, "tftp", "undionly.kpxe"), []byte("simulated iPXE first stage\n"), 0o644)
	}
	kpath, ipath := "build/ramdisk/vmlinuz", "build/ramdisk/metalfleet-ramdisk.cpio.gz"
	if _, err1 := os.Stat(kpath); err1 != nil {
		kpath, ipath = filepath.Join(imgDir, "vmlinuz"), filepath.Join(imgDir, "ramdisk.cpio.gz")
		if err := os.MkdirAll(imgDir, 0o755); err != nil {
			return kernel, initrd, err
		}
		for _, p := range []string{kpath, ipath} {
			if _, err := os.Stat(p); err != nil {
				body := strings.Repeat("simulated "+filepath.Base(p)+" ", 64<<10/16)
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					return kernel, initrd, err
				}
			}
		}
	}
	mk := func(name string, kind proto.ImageKind, p string) (proto.Image, error) {
		abs, _ := filepath.Abs(p)
		fh, err := os.Open(abs)
		if err != nil {
			return proto.Image{}, err
		}
		defer fh.Close()
		h := sha256.New()
		n, err := io.Copy(h, fh)
		if err != nil {
			return proto.Image{}, err
		}
		return proto.Image{Name: name, Kind: kind, URL: "file://" + abs, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
	}
	if kernel, err = mk("discovery-kernel", proto.ImageKernel, kpath); err != nil {
		return kernel, initrd, err
	}
	initrd, err = mk("discovery-ramdisk", proto.ImageRamdisk, ipath)
	return kernel, initrd, err
}

// bootMachines boots the simulated machines one after another and says
// what became of each.
func bootMachines(ctx context.Context, out io.Writer, admin *apiclient.Client, ag *agent.Agent, n int) {
	for i := 1; i <= n && ctx.Err() == nil; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xde, 0x00, byte(i)}
		m := &sim.Machine{MAC: mac, DHCP: ag.DHCPAddr().(*net.UDPAddr), RelayIP: net.IPv4(127, 0, 0, 1),
			TFTPPort: udpPort(ag.TFTPAddr()), Report: nodeagent.Report}
		// Wait until the agent has the rack's boot state.
		for ag.Boot().View() == nil && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		res, err := m.Boot(ctx)
		if err != nil {
			fmt.Fprintf(out, "sim-%d %s: boot failed: %v\n", i, mac, err)
			continue
		}
		if !res.Reported {
			fmt.Fprintf(out, "sim-%d %s: known node, booted its local disk (%s)\n", i, mac, res.IP)
			continue
		}
		// Name it once it exists, so `node show sim-N` works.
		var node *proto.Node
		for try := 0; try < 100 && ctx.Err() == nil; try++ {
			if nd, err := admin.Node(ctx, mac.String()); err == nil {
				node = nd
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if node == nil {
			fmt.Fprintf(out, "sim-%d %s: reported its inventory but no node appeared\n", i, mac)
			continue
		}
		name := fmt.Sprintf("sim-%d", i)
		if node.Name == "" {
			if nd, err := admin.UpdateNode(ctx, node.UUID, proto.NodePatch{Name: &name}); err == nil {
				node = nd
			}
		}
		fmt.Fprintf(out, "%s %s: PXE-booted in %s, discovered as node %s (%s, %s)\n", name, mac,
			res.Took.Round(time.Millisecond), node.UUID, node.ProvisionState, node.IP)
	}
}

func udpPort(a net.Addr) int {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.Port
	}
	return 0
}
