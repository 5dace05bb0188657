package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
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
	racks, machines             int
	spread                      time.Duration
	autoEnroll, nameNodes       bool
	untilDone                   bool
	coordinator                 string
	logLevel                    string
	cpuProfile                  string
	bmcs                        bool
	redfishShare                float64
}

// Dev racks: rack k (0-based) is 127.k.0.0/16, its agent (boot server and
// DHCP relay) on 127.k.0.1, its dynamic pool the upper half, reserved
// addresses (every discovered node gets one) the lower half.
const (
	devMaxRacks    = 200
	devMaxMachines = 30000
	// devMaxBMCs bounds the simulated BMCs (a UDP socket or an HTTP
	// listener each): a storm larger than this runs without them.
	devMaxBMCs = 2000
)

func newDevCmd(g *globals) *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Metalfleet on one machine: a coordinator, rack agents and simulated racks",
		Long: `Run a single-node coordinator, one rack agent per rack (--racks) serving
relayed DHCP, TFTP and HTTP boot on loopback, and simulated machines
(--machines per rack) that are all powered on at once and network-boot
from their rack's agent with the real protocols (DHCP through a relay
address, iPXE's first stage over TFTP, the iPXE script, kernel and initrd
over HTTP, from the address they leased) and report a synthetic inventory
with the nodeagent's own code. They appear as discovered nodes, then
enrolled (with --auto-enroll). A machine retries like firmware: DHCP with
backoff, and the whole boot after a failure.

Rack 1 is "dev" on 127.0.0.0/16 (agent on 127.0.0.1 at the --*-addr
flags), rack K is "dev-K" on 127.(K-1).0.0/16 (agent on 127.(K-1).0.1, same
ports). State lives in --data-dir (./.metalfleet); start again and it is
all still there. With --coordinator, dev uses that coordinator (admin
--token) instead of running its own. With --until-done it prints a
summary (time to the last node enrolled, retries, addresses leased twice,
where the time went) and exits. No root, QEMU or hardware needed. Stop
with Ctrl-C.

Each machine has a BMC on 127.0.0.1 (--bmcs): IPMI RMCP+ over UDP, or
Redfish over HTTP for --redfish-share of them, with the power switch and
the serial console of the machine behind it. Dev gives every machine's
node its BMC's driver, address, port and credentials, so 'node power',
'node console' and 'manage' work: a machine powered off sends nothing, and
one powered on boots again. The BMCs live as long as dev runs (new ports
each run; dev updates the nodes); --until-done runs without them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", ".metalfleet", "state directory")
	fl.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:7480", "coordinator API listen address")
	fl.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7481", "coordinator Raft listen address")
	fl.StringVar(&f.agentHTTP, "agent-http-addr", "127.0.0.1:7490", "rack agent HTTP boot address (rack 1's; rack K's is on 127.(K-1).0.1)")
	fl.StringVar(&f.dhcpAddr, "dhcp-addr", "127.0.0.1:6767", "rack agent relayed-DHCP address (rack 1's)")
	fl.StringVar(&f.tftp, "tftp-addr", "127.0.0.1:6969", "rack agent TFTP address (rack 1's)")
	fl.IntVar(&f.racks, "racks", 1, fmt.Sprintf("simulated racks, each with its own rack agent (at most %d)", devMaxRacks))
	fl.IntVar(&f.machines, "machines", 5, fmt.Sprintf("simulated machines per rack (at most %d)", devMaxMachines))
	fl.DurationVar(&f.spread, "power-on-spread", time.Second, "machines power on at random moments within this time")
	fl.BoolVar(&f.autoEnroll, "auto-enroll", true, "enroll discovered machines at once")
	fl.BoolVar(&f.nameNodes, "name-nodes", true, "name each new node after its machine (sim-N, sim-K-N): one more write per node")
	fl.BoolVar(&f.untilDone, "until-done", false, "exit once every machine is done, after a summary (status 1 if any failed or an address was leased twice)")
	fl.StringVar(&f.coordinator, "coordinator", "", "use this coordinator's API (HOST:PORT, with an admin --token) instead of running one")
	fl.StringVar(&f.logLevel, "log-level", "warn", "debug, info, warn or error")
	fl.StringVar(&f.cpuProfile, "cpu-profile", "", "write a CPU profile of this process (pprof) to this file")
	fl.BoolVar(&f.bmcs, "bmcs", true, fmt.Sprintf("give each simulated machine a BMC (at most %d machines in all; not with --until-done)", devMaxBMCs))
	fl.Float64Var(&f.redfishShare, "redfish-share", 0.2, "share of the machines whose BMC speaks Redfish (the others IPMI), 0 to 1")
	return cmd
}

// devRack is rack k's definition.
func devRack(k int) proto.Rack {
	name := "dev"
	if k > 0 {
		name = fmt.Sprintf("dev-%d", k+1)
	}
	p := fmt.Sprintf("127.%d.", k)
	return proto.Rack{Name: name, Subnet: p + "0.0/16", BootServer: p + "0.1", PoolStart: p + "128.0", PoolEnd: p + "255.254",
		LeaseTime: proto.Duration(time.Hour)}
}

// devAddr is rack k's address for a flag's: the flag's own for rack 0,
// else the same port on the rack's agent address.
func devAddr(flag string, k int) (string, error) {
	if k == 0 {
		return flag, nil
	}
	_, port, err := net.SplitHostPort(flag)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(fmt.Sprintf("127.%d.0.1", k), port), nil
}

// checkAddrs checks every address flag once, before anything starts, so
// a bad one is named by its flag rather than by the rack or part that
// failed to use it.
func (f devFlags) checkAddrs() error {
	flags := []struct{ name, v string }{
		{"agent-http-addr", f.agentHTTP}, {"dhcp-addr", f.dhcpAddr}, {"tftp-addr", f.tftp},
	}
	if f.coordinator == "" {
		flags = append(flags, struct{ name, v string }{"http-addr", f.httpAddr}, struct{ name, v string }{"raft-addr", f.raftAddr})
	} else {
		flags = append(flags, struct{ name, v string }{"coordinator", f.coordinator})
	}
	for _, fl := range flags {
		host, port, err := net.SplitHostPort(fl.v)
		if err != nil {
			return fmt.Errorf("--%s %q: want HOST:PORT: %v", fl.name, fl.v, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && fl.name == "coordinator") {
			return fmt.Errorf("--%s %q: port %q: want a number from 0 to 65535", fl.name, fl.v, port)
		}
		if fl.name == "coordinator" && host == "" {
			return fmt.Errorf("--%s %q: want HOST:PORT with a host", fl.name, fl.v)
		}
	}
	return nil
}

// devMAC is the boot MAC of machine i (1-based) of rack k: 52:54:00:de:00:0i
// for the first machines of rack 1, as dev mode always had.
func devMAC(k, i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, byte(0xde + k), byte(i >> 8), byte(i)}
}

func devMachineName(k, i int) string {
	if k == 0 {
		return fmt.Sprintf("sim-%d", i)
	}
	return fmt.Sprintf("sim-%d-%d", k+1, i)
}

func runDev(ctx context.Context, g *globals, f devFlags) error {
	if f.racks < 1 || f.racks > devMaxRacks {
		return fmt.Errorf("--racks %d: want 1 to %d", f.racks, devMaxRacks)
	}
	if f.machines < 0 || f.machines > devMaxMachines {
		return fmt.Errorf("--machines %d: want 0 to %d per rack", f.machines, devMaxMachines)
	}
	if err := f.checkAddrs(); err != nil {
		return err
	}
	if f.redfishShare < 0 || f.redfishShare > 1 || math.IsNaN(f.redfishShare) {
		return fmt.Errorf("--redfish-share %v: want 0 to 1", f.redfishShare)
	}
	level, err := parseLevel(f.logLevel)
	if err != nil {
		return err
	}
	log := newLogger(os.Stderr, level)
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	dir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		admin      *apiclient.Client
		apiAddr    string
		adminToken string
		coordDone  = make(chan error, 1)
	)
	if f.coordinator == "" {
		srv, err := server.New(server.Config{
			NodeID: "dev", DataDir: filepath.Join(dir, "coordinator"), HTTPAddr: f.httpAddr, RaftAddr: f.raftAddr,
			Bootstrap: true, Logger: log.With("process", "coordinator"), Out: os.Stdout,
		})
		if err != nil {
			return err
		}
		go func() { coordDone <- srv.Run(ctx) }()
		tokBytes, err := os.ReadFile(filepath.Join(dir, "coordinator", server.AdminTokenFile))
		if err != nil {
			cancel()
			<-coordDone
			return err
		}
		apiAddr, adminToken = srv.HTTPAddr(), strings.TrimSpace(string(tokBytes))
	} else {
		if g.token == "" {
			return errors.New("--coordinator needs an admin --token (or METALFLEET_TOKEN)")
		}
		apiAddr, adminToken = f.coordinator, g.token
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	stopAll := func(err error) error {
		cancel()
		if f.coordinator == "" {
			<-coordDone
		}
		return err
	}
	admin = apiclient.New(apiAddr, adminToken)
	racks := make([]proto.Rack, f.racks)
	for k := range racks {
		racks[k] = devRack(k)
	}
	agentTokens, err := devSetup(ctx, g.stderr, admin, dir, f.autoEnroll, racks)
	if err != nil {
		return stopAll(fmt.Errorf("dev setup: %w", err))
	}
	agents := make([]*agent.Agent, len(racks))
	agentDone := make(chan error, len(racks))
	for k, r := range racks {
		var addrs [3]string
		for j, fl := range []string{f.dhcpAddr, f.tftp, f.agentHTTP} {
			if addrs[j], err = devAddr(fl, k); err != nil {
				return stopAll(fmt.Errorf("rack %s: %w", r.Name, err))
			}
		}
		name, ddir := "dev-agent", filepath.Join(dir, "agent")
		if k > 0 {
			name, ddir = fmt.Sprintf("dev-agent-%d", k+1), filepath.Join(dir, fmt.Sprintf("agent-%d", k+1))
		}
		ag, err := agent.New(agent.Config{
			Name: name, Rack: r.Name, DataDir: ddir, Coordinators: []string{apiAddr}, Token: agentTokens[k],
			DHCPAddr: addrs[0], TFTPAddr: addrs[1], TFTPRoots: []string{filepath.Join(dir, "tftp"), agent.IPXEDir},
			HTTPAddr: addrs[2], AdvertiseIP: netip.MustParseAddr(r.BootServer), Logger: log.With("process", "rackagent", "rack", r.Name),
		})
		if err != nil {
			return stopAll(fmt.Errorf("rack %s: %w", r.Name, err))
		}
		agents[k] = ag
		go func() { agentDone <- ag.Run(ctx) }()
	}

	hosts, err := devHosts(agents, racks, f)
	defer closeHosts(hosts)
	if err != nil {
		return stopAll(err)
	}

	ag := agents[0]
	what := fmt.Sprintf("a rack agent and %d simulated machines", f.machines)
	if f.racks > 1 {
		what = fmt.Sprintf("%d racks (an agent each) of %d simulated machines", f.racks, f.machines)
	}
	coordLine := fmt.Sprintf("http://%s/v1/  (OpenAPI: /v1/openapi.json, metrics: /metrics)", apiAddr)
	fmt.Fprintf(g.stdout, `
Metalfleet dev: a coordinator, %s
  API:         %s
  rack agent:  DHCP %s (relayed), TFTP %s, HTTP http://%s/
  state:       %s

Try, in another shell:
  export METALFLEET_ADDR=%s METALFLEET_TOKEN=%s
  bin/metalfleet node list
  bin/metalfleet node list --discovered
  bin/metalfleet node show sim-1
  bin/metalfleet agents; bin/metalfleet sightings
%s
`, what, coordLine, ag.DHCPAddr(), ag.TFTPAddr(), ag.HTTPAddr(), dir, apiAddr, adminToken, devBMCHelp(hosts, f))
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)

	stormDone := make(chan error, 1)
	go func() { stormDone <- devStorm(ctx, g.stdout, admin, agents, racks, hosts, f) }()
	agentsLeft, coordLeft := len(agents), 0
	if f.coordinator == "" {
		coordLeft = 1
	}
	// wait takes one server's end (or the storm's, or ctx's).
	wait := func(storm <-chan error) (error, bool) {
		select {
		case <-ctx.Done():
			return nil, false
		case e := <-storm:
			return e, true
		case e := <-agentDone:
			agentsLeft--
			return e, false
		case e := <-coordDone:
			coordLeft--
			return e, false
		}
	}
	err, stormEnded := wait(stormDone)
	if stormEnded && !f.untilDone && err == nil {
		err, _ = wait(nil) // the machines are done; keep serving
	}
	cancel()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for agentsLeft+coordLeft > 0 {
		select {
		case e := <-agentDone:
			agentsLeft--
			err = errors.Join(err, e)
		case e := <-coordDone:
			coordLeft--
			err = errors.Join(err, e)
		case <-timeout.C:
			return errors.Join(err, fmt.Errorf("dev: %d rack agents and %d coordinators did not stop within 10s", agentsLeft, coordLeft))
		}
	}
	return err
}

// waitLeader waits until the coordinator answers as leader.
func waitLeader(ctx context.Context, c *apiclient.Client, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := c.Status(ctx)
		if err == nil && st.RaftState == "leader" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("coordinator did not become leader within %s: %v", limit, err)
		case <-tick.C:
		}
	}
}

// devSetup creates, once, what dev mode needs in the coordinator: the
// racks, discovery (and task) images, the settings, and an agent token per rack
// (kept in DIR/agent.token, DIR/agent-K.token). A rack defined otherwise
// by an earlier version is redefined if the coordinator allows. It
// returns the agent tokens.
func devSetup(ctx context.Context, warn io.Writer, c *apiclient.Client, dir string, autoEnroll bool, racks []proto.Rack) ([]string, error) {
	if err := waitLeader(ctx, c, 20*time.Second); err != nil {
		return nil, err
	}
	for _, r := range racks {
		_, err := c.Do(ctx, "POST", "/v1/racks", r, nil)
		var ae *apiclient.Error
		if errors.As(err, &ae) && ae.Code == proto.CodeConflict {
			var have proto.Rack
			if _, err := c.Do(ctx, "GET", "/v1/racks/"+r.Name, nil, &have); err != nil {
				return nil, err
			}
			if have.Subnet != r.Subnet || have.PoolStart != r.PoolStart || have.PoolEnd != r.PoolEnd || have.BootServer != r.BootServer {
				if _, err := c.Do(ctx, "PUT", "/v1/racks/"+r.Name, r, nil); err != nil {
					fmt.Fprintf(warn, "warning: rack %s keeps its earlier definition (subnet %s, pool %s-%s): %v\n",
						r.Name, have.Subnet, have.PoolStart, have.PoolEnd, errorLine(err))
				}
			}
			err = nil
		}
		if err != nil {
			return nil, fmt.Errorf("rack %s: %w", r.Name, err)
		}
	}
	kernel, initrd, err := devImages(dir)
	if err != nil {
		return nil, err
	}
	for _, im := range []proto.Image{kernel, initrd} {
		if _, err := c.Do(ctx, "PUT", "/v1/images/"+im.Name, im, nil); err != nil {
			var ae *apiclient.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
				return nil, err
			}
			if _, err := c.Do(ctx, "POST", "/v1/images", im, nil); err != nil {
				return nil, err
			}
		}
	}
	yes := true
	if _, err := c.Do(ctx, "PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &yes, AutoEnroll: &autoEnroll,
		DiscoveryKernel: &kernel.Name, DiscoveryRamdisk: &initrd.Name,
		// One ramdisk (nodeagent) does discovery and tasks.
		TasksKernel: &kernel.Name, TasksRamdisk: &initrd.Name}, nil); err != nil {
		return nil, err
	}
	tokens := make([]string, len(racks))
	for k, r := range racks {
		tokPath := filepath.Join(dir, "agent.token")
		if k > 0 {
			tokPath = filepath.Join(dir, fmt.Sprintf("agent-%d.token", k+1))
		}
		if b, err := os.ReadFile(tokPath); err == nil {
			tokens[k] = strings.TrimSpace(string(b))
			continue
		}
		var tok proto.TokenCreated
		if _, err := c.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: r.Name, Description: "dev rack agent"}, &tok); err != nil {
			return nil, err
		}
		if err := os.WriteFile(tokPath, []byte(tok.Secret+"\n"), 0o600); err != nil {
			return nil, err
		}
		tokens[k] = tok.Secret
	}
	return tokens, nil
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

// devStorm powers on every rack's machines at once and says what became
// of each: a line per machine for a few, progress lines for many, and
// with --until-done a summary of the whole storm.
func devStorm(ctx context.Context, out io.Writer, admin *apiclient.Client, agents []*agent.Agent, racks []proto.Rack, hosts [][]*sim.Host, f devFlags) error {
	total := f.racks * f.machines
	if total == 0 {
		return nil
	}
	// Every agent needs its rack's boot state before it answers.
	for _, ag := range agents {
		for {
			changed := ag.Boot().Changed()
			if ag.Boot().View() != nil {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
			}
		}
	}
	st := &sim.Storm{Spread: f.spread, BindLease: true, Report: devReport}
	for k, ag := range agents {
		boot := ag.Boot()
		r := sim.StormRack{Name: racks[k].Name, DHCP: ag.DHCPAddr().(*net.UDPAddr), RelayIP: net.ParseIP(racks[k].BootServer),
			TFTPPort: udpPort(ag.TFTPAddr()), Changed: boot.Changed,
			Known: func(mac net.HardwareAddr) (string, string, bool) {
				if v := boot.View(); v != nil {
					if n, ok := v.Node(mac); ok {
						return n.UUID, n.Name, true
					}
				}
				return "", "", false
			}}
		for i := 1; i <= f.machines; i++ {
			r.MACs = append(r.MACs, devMAC(k, i))
			r.Names = append(r.Names, devMachineName(k, i))
		}
		if hosts != nil {
			r.Hosts = hosts[k]
		}
		st.Racks = append(st.Racks, r)
	}
	verbose := total <= 50
	if !verbose {
		st.Progress = out
	}
	byMAC := map[string]*sim.Host{}
	for _, hs := range hosts {
		for _, h := range hs {
			byMAC[h.M.MAC.String()] = h
		}
	}
	st.OnDone = func(o *sim.Outcome) {
		line := devOutcome(ctx, admin, o, f.nameNodes, byMAC[o.MAC.String()])
		if verbose || o.Err != nil || o.NoNode {
			fmt.Fprintln(out, line)
		}
	}
	before := devFigures(ctx, admin, agents)
	fmt.Fprintf(out, "Powering on %d machines in %d rack(s) (within %s)\n", total, f.racks, f.spread)
	sum := st.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	after := devFigures(ctx, admin, agents)
	fmt.Fprintf(out, "\nStorm summary: %d rack(s) x %d machines\n", f.racks, f.machines)
	sum.Print(out)
	held := heldTwice(agents)
	fmt.Fprintf(out, "addresses held by two MACs in the final boot states (leases and reserved addresses, every rack): %d\n", len(held))
	for i, h := range held {
		if i == 10 {
			break
		}
		fmt.Fprintf(out, "  %s\n", h)
	}
	after.printDelta(out, before, f.coordinator == "")
	if !f.untilDone {
		return nil
	}
	if len(held) > 0 {
		return fmt.Errorf("%d addresses are held by two MACs", len(held))
	}
	if n := sum.Failed + sum.NoNode; n > 0 {
		return fmt.Errorf("%d of %d machines did not end up as nodes", n, total)
	}
	if len(sum.Duplicates) > 0 {
		return fmt.Errorf("%d addresses were ACKed to two MACs at once", len(sum.Duplicates))
	}
	return nil
}

// heldTwice checks the agents' boot states, as the coordinator sent
// them: every lease and every node's reserved address, across racks; an
// address held for two machines is listed.
func heldTwice(agents []*agent.Agent) []string {
	owner := map[string]string{} // ip -> node uuid or lease MAC
	var out []string
	claim := func(ip, who string) {
		if ip == "" {
			return
		}
		if o, ok := owner[ip]; ok && o != who {
			out = append(out, fmt.Sprintf("%s: %s and %s", ip, o, who))
			return
		}
		owner[ip] = who
	}
	for _, ag := range agents {
		v := ag.Boot().View()
		if v == nil {
			continue
		}
		macNode := map[string]string{}
		for _, n := range v.State.Nodes {
			claim(n.IP, "node "+n.UUID)
			for _, m := range n.MACs {
				macNode[m] = "node " + n.UUID
			}
		}
		for _, l := range v.State.Leases {
			who := "MAC " + l.MAC
			if n, ok := macNode[l.MAC]; ok {
				who = n
			}
			claim(l.IP, who)
		}
	}
	return out
}

// devReport makes one attempt at a ramdisk callback with the nodeagent's
// own code, from the machine's client (the simulator retries).
func devReport(ctx context.Context, client *http.Client, callbackURL, mac, token, step string, body any) error {
	r := nodeagent.Reporter{Client: client, MaxElapsed: time.Nanosecond}
	return r.Report(ctx, callbackURL, mac, token, step, body)
}

// devOutcome names a new node (once it exists, so `node show sim-N`
// works), gives it its machine's BMC, and says what became of a machine.
func devOutcome(ctx context.Context, admin *apiclient.Client, o *sim.Outcome, name bool, h *sim.Host) string {
	switch {
	case o.Err != nil:
		return fmt.Sprintf("%s %s: boot failed: %v", o.Name, o.MAC, o.Err)
	case o.Result != nil && !o.Result.Reported:
		return fmt.Sprintf("%s %s: known node, booted its local disk (%s)%s", o.Name, o.MAC, o.Result.IP, devSetBMC(ctx, admin, o.Node, nil, h))
	case o.NoNode:
		return fmt.Sprintf("%s %s: reported its inventory but no node appeared", o.Name, o.MAC)
	}
	state := "discovered"
	var patch proto.NodePatch
	if name && o.NodeName == "" {
		patch.Name = &o.Name
		if nd, err := admin.UpdateNode(ctx, o.Node, patch); err == nil {
			return fmt.Sprintf("%s %s: PXE-booted in %s, discovered as node %s (%s, %s)%s", o.Name, o.MAC,
				o.Result.Took.Round(time.Millisecond), nd.UUID, nd.ProvisionState, nd.IP, devSetBMC(ctx, admin, o.Node, nd, h))
		}
	}
	return fmt.Sprintf("%s %s: PXE-booted in %s, discovered as node %s (%s)%s", o.Name, o.MAC, o.Result.Took.Round(time.Millisecond),
		o.Node, state, devSetBMC(ctx, admin, o.Node, nil, h))
}

// devSetBMC gives node id (n, if already read) the BMC of its machine's
// host, unless it has it already; it returns what to add to the
// machine's line ("" without a host or node).
func devSetBMC(ctx context.Context, admin *apiclient.Client, id string, n *proto.Node, h *sim.Host) string {
	if h == nil || id == "" {
		return ""
	}
	want := h.Credentials()
	if want.Driver == "" {
		return ""
	}
	if n == nil {
		var err error
		if n, err = admin.Node(ctx, id); err != nil {
			return fmt.Sprintf("; its BMC is not set: %v", errorLine(err))
		}
	}
	where := fmt.Sprintf("%s %s:%d", want.Driver, want.Address, want.Port)
	if want.Driver == proto.DriverRedfish {
		where = fmt.Sprintf("%s %s", want.Driver, want.Address)
	}
	have := n.BMC
	if have.Driver == want.Driver && have.Address == want.Address && have.Port == want.Port && have.Username == want.Username && have.PasswordSet {
		return "; BMC " + where
	}
	if _, err := admin.UpdateNode(ctx, id, proto.NodePatch{BMC: &proto.BMCPatch{Driver: &want.Driver, Address: &want.Address,
		Port: &want.Port, Username: &want.Username, Password: &want.Password}}); err != nil {
		return fmt.Sprintf("; its BMC (%s) is not set: %v", where, errorLine(err))
	}
	return "; BMC " + where
}

// devHosts makes every machine's host with its BMC (nil with --bmcs=false,
// with --until-done, whose storm measures the boot alone and ends before
// anyone could use a BMC, or with more machines than devMaxBMCs): machine
// i of a rack has a Redfish
// BMC when it brings the rack's count of Redfish ones to
// floor(i * --redfish-share), else an IPMI one.
func devHosts(agents []*agent.Agent, racks []proto.Rack, f devFlags) ([][]*sim.Host, error) {
	if !f.bmcs || f.untilDone || f.racks*f.machines == 0 || f.racks*f.machines > devMaxBMCs {
		return nil, nil
	}
	hosts := make([][]*sim.Host, len(racks))
	for k, ag := range agents {
		for i := 1; i <= f.machines; i++ {
			h := sim.NewHost(&sim.Machine{MAC: devMAC(k, i), DHCP: ag.DHCPAddr().(*net.UDPAddr), RelayIP: net.ParseIP(racks[k].BootServer),
				TFTPPort: udpPort(ag.TFTPAddr()), BindLease: true, Report: devReport})
			hosts[k] = append(hosts[k], h)
			driver := proto.DriverIPMI
			if math.Floor(float64(i)*f.redfishShare) > math.Floor(float64(i-1)*f.redfishShare) {
				driver = proto.DriverRedfish
			}
			if err := h.StartBMC(sim.BMCConfig{Driver: driver}); err != nil {
				return hosts, fmt.Errorf("%s: BMC: %w", devMachineName(k, i), err)
			}
		}
	}
	return hosts, nil
}

func closeHosts(hosts [][]*sim.Host) {
	for _, hs := range hosts {
		for _, h := range hs {
			h.Close()
		}
	}
}

// devBMCHelp is the startup output's part on power and consoles.
func devBMCHelp(hosts [][]*sim.Host, f devFlags) string {
	switch {
	case f.racks*f.machines == 0 || f.untilDone:
		return ""
	case hosts == nil && f.bmcs:
		return fmt.Sprintf("\nThe machines have no BMCs: more than %d machines (--bmcs).\n", devMaxBMCs)
	case hosts == nil:
		return ""
	}
	first := hosts[0][0]
	c := first.Credentials()
	where := fmt.Sprintf("IPMI (RMCP+) at %s port %d", c.Address, c.Port)
	if c.Driver == proto.DriverRedfish {
		where = "Redfish at " + c.Address
	}
	name := devMachineName(0, 1)
	return fmt.Sprintf(`
Every machine has a BMC (%s's: %s, user %s); its node is given it:
  bin/metalfleet node power %[4]s off --wait     # the machine stops
  bin/metalfleet node power %[4]s on --wait      # it network-boots again
  bin/metalfleet node power %[4]s reboot
  bin/metalfleet node console %[4]s              # its serial console over IPMI SOL (~. leaves)
  bin/metalfleet node provision %[4]s manage --wait 1m   # the rack agent verifies the BMC
`, name, where, c.Username, name)
}

// devFigureSet is what the coordinator's metrics and the agents' DHCP
// counters say at one moment.
type devFigureSet struct {
	metrics map[string]*dto.MetricFamily
	dhcp    struct{ received, answered, dropped, overflow, errors uint64 }
}

func devFigures(ctx context.Context, admin *apiclient.Client, agents []*agent.Agent) devFigureSet {
	var s devFigureSet
	s.metrics, _ = scrapeMetrics(ctx, admin.Addrs()[0]+"/metrics")
	for _, ag := range agents {
		d := ag.DHCPStats()
		s.dhcp.received += d.Received.Load()
		s.dhcp.answered += d.Answered.Load()
		s.dhcp.dropped += d.Dropped.Load()
		s.dhcp.overflow += d.Overflow.Load()
		s.dhcp.errors += d.Errors.Load()
	}
	return s
}

func (s devFigureSet) printDelta(w io.Writer, before devFigureSet, inProcess bool) {
	d := s.dhcp
	b := before.dhcp
	fmt.Fprintf(w, "agents' DHCP: %d packets received, %d answered, %d not answered on purpose, %d shed under load, %d errors\n",
		d.received-b.received, d.answered-b.answered, d.dropped-b.dropped, d.overflow-b.overflow, d.errors-b.errors)
	m, mb := s.metrics, before.metrics
	if m == nil {
		fmt.Fprintln(w, "coordinator metrics: not readable")
		return
	}
	const idx = "metalfleet_raft_applied_index"
	fmt.Fprintf(w, "coordinator: Raft entries applied %.0f (index %.0f to %.0f)\n",
		metricValue(m, idx)-metricValue(mb, idx), metricValue(mb, idx), metricValue(m, idx))
	ha, hb := histogram(m, "metalfleet_raft_apply_duration_seconds"), histogram(mb, "metalfleet_raft_apply_duration_seconds")
	if n := float64(ha.GetSampleCount() - hb.GetSampleCount()); ha != nil && n > 0 {
		fmt.Fprintf(w, "coordinator: %.0f commands proposed; propose to applied (Raft commit on disk and FSM apply) mean %s",
			n, time.Duration((ha.GetSampleSum()-hb.GetSampleSum())/n*float64(time.Second)).Round(10*time.Microsecond))
		for _, q := range []float64{0.5, 0.99} {
			if v, ok := histQuantile(ha, hb, q); ok {
				fmt.Fprintf(w, ", p%.0f <= %s", q*100, time.Duration(v*float64(time.Second)).Round(10*time.Microsecond))
			}
		}
		fmt.Fprintln(w)
	}
	if inProcess {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			fmt.Fprintf(w, "this process (coordinator, agents and simulator together): CPU %s since start, peak RSS %s\n",
				cpu.Round(10*time.Millisecond), vmHWM("/proc/self/status"))
		}
	} else {
		fmt.Fprintf(w, "coordinator process: CPU %.2fs since its start, RSS now %.0f MiB (peak: its /proc/PID/status VmHWM)\n",
			metricValue(m, "process_cpu_seconds_total"), metricValue(m, "process_resident_memory_bytes")/(1<<20))
	}
}

// vmHWM reads a process's peak resident set from its status file.
func vmHWM(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// scrapeMetrics reads a Prometheus text page into its metric families.
func scrapeMetrics(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// metricValue is the value of the unlabelled sample of a counter, gauge
// or untyped family (0 if there is none).
func metricValue(fams map[string]*dto.MetricFamily, name string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != 0 {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	return 0
}

// histogram is the unlabelled histogram of family name (nil if none).
func histogram(fams map[string]*dto.MetricFamily, name string) *dto.Histogram {
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) == 0 && m.Histogram != nil {
			return m.GetHistogram()
		}
	}
	return nil
}

// histQuantile estimates quantile q of a histogram from the change of its
// buckets between two scrapes: the upper bound of the bucket it falls in
// (+Inf when it is past the last finite bucket). before may be nil.
func histQuantile(after, before *dto.Histogram, q float64) (float64, bool) {
	if after == nil {
		return 0, false
	}
	was := map[float64]uint64{}
	for _, b := range before.GetBucket() {
		was[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	total := after.GetSampleCount() - before.GetSampleCount()
	if total == 0 {
		return 0, false
	}
	bs := slices.Clone(after.GetBucket())
	slices.SortFunc(bs, func(a, b *dto.Bucket) int { return cmp.Compare(a.GetUpperBound(), b.GetUpperBound()) })
	want := q * float64(total)
	for _, b := range bs {
		if float64(b.GetCumulativeCount()-was[b.GetUpperBound()]) >= want {
			return b.GetUpperBound(), true
		}
	}
	return math.Inf(1), true
}

func udpPort(a net.Addr) int {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.Port
	}
	return 0
}
