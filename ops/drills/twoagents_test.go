package drills

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/dhcp/dhcptest"
)

// coordinatorForRack starts a coordinator process with gossip and sets up
// rack r1 (127.0.0.0/24, so loopback sockets can be its relays) with
// discovery on; it returns the process, the admin client, an agent token
// file and the coordinator's gossip address.
func coordinatorForRack(t *testing.T, bin string) (*Proc, *apiclient.Client, string, string) {
	t.Helper()
	ctx := context.Background()
	gossipAddr := freeGossip(t)
	c := NewProc(t, bin, "c1", "--bootstrap", "--gossip-addr", gossipAddr)
	c.Start(t)
	tokenFile := filepath.Join(c.DataDir, "admin.token")
	WaitFor(t, 20*time.Second, "admin token", func() bool { _, err := os.Stat(tokenFile); return err == nil })
	b, _ := os.ReadFile(tokenFile)
	admin := c.Client(strings.TrimSpace(string(b)))
	WaitFor(t, 20*time.Second, "coordinator leads", func() bool {
		st, err := admin.Status(Ctx(t, 2*time.Second))
		return err == nil && st.RaftState == "leader"
	})
	must := func(_ uint64, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1",
		PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199"}, nil))
	var tok proto.TokenCreated
	must(admin.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"}, &tok))
	agentToken := filepath.Join(t.TempDir(), "agent.token")
	os.WriteFile(agentToken, []byte(tok.Secret+"\n"), 0o600)
	must(admin.Do(ctx, "POST", "/v1/images", proto.Image{Name: "k", Kind: proto.ImageKernel, URL: "file:///nonexistent/k", SHA256: strings.Repeat("a", 64)}, nil))
	must(admin.Do(ctx, "POST", "/v1/images", proto.Image{Name: "r", Kind: proto.ImageRamdisk, URL: "file:///nonexistent/r", SHA256: strings.Repeat("b", 64)}, nil))
	yes, kn, rd := true, "k", "r"
	must(admin.Do(ctx, "PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &yes, DiscoveryKernel: &kn, DiscoveryRamdisk: &rd}, nil))
	return c, admin, agentToken, gossipAddr
}

// offered sends one DISCOVER to server and says whether it answered.
func offered(server net.Addr, mac net.HardwareAddr, wait time.Duration) bool {
	d, _ := dhcpv4.NewDiscovery(mac, dhcptest.PXE...)
	r, err := dhcptest.Exchange(server, d, wait)
	return err == nil && r.MessageType() == dhcpv4.MessageTypeOffer
}

// TestTwoAgentsOneRack: two agents share a rack's unknown MACs and pool;
// when one is killed, the other answers every MAC once gossip declares
// its peer dead, gives each MAC the address it had, and never gives an
// address to two MACs.
func TestTwoAgentsOneRack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	bin := Binary(t)
	c, admin, agentToken, coordGossip := coordinatorForRack(t, bin)
	coordHTTP := c.HTTPAddr
	var servers []net.Addr
	var agents []*Proc
	var httpAddrs []string
	for i, name := range []string{"a1", "a2"} {
		dhcpAddr, httpAddr := freeUDP(t), FreePort(t)
		httpAddrs = append(httpAddrs, httpAddr)
		a := NewAgentProc(t, bin, name, "--rack", "r1", "--coordinator", coordHTTP, "--token-file", agentToken,
			"--dhcp-addr", dhcpAddr, "--tftp-addr", "", "--http-addr", httpAddr, "--advertise-ip", "127.0.0.1",
			"--pool-share", []string{"0/2", "1/2"}[i], "--gossip-addr", freeGossip(t), "--gossip-join", coordGossip, "--gossip-profile", "local")
		a.Start(t)
		agents = append(agents, a)
		s, _ := net.ResolveUDPAddr("udp4", dhcpAddr)
		servers = append(servers, s)
	}
	WaitFor(t, 30*time.Second, "both agents alive in gossip, seen by the coordinator", func() bool {
		as, err := admin.Agents(Ctx(t, 2*time.Second))
		alive := 0
		for _, a := range as {
			if a.Status == "alive" && a.Rack == "r1" {
				alive++
			}
		}
		return err == nil && alive == 2
	})
	// Each agent learns of the other through gossip a moment after the
	// coordinator does: wait until probe MACs are answered by one agent
	// each.
	WaitFor(t, 20*time.Second, "the agents split the MACs", func() bool {
		for i := 0; i < 6; i++ {
			mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x50, byte(0xf0 + i)}
			if offered(servers[0], mac, 150*time.Millisecond) == offered(servers[1], mac, 150*time.Millisecond) {
				return false
			}
		}
		return true
	})

	owner := map[string]string{} // ip -> mac, over both agents
	ipOf := map[string]string{}
	by := map[string]int{}
	bind := func(i int, mac net.HardwareAddr) {
		t.Helper()
		ip := dhcptest.MustDORA(t, servers[i], mac)
		if prev, ok := owner[ip]; ok && prev != mac.String() {
			t.Fatalf("%s handed to %s and %s", ip, prev, mac)
		}
		owner[ip], ipOf[mac.String()] = mac.String(), ip
	}
	var macs []net.HardwareAddr
	for i := 0; i < 16; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x50, byte(i)}
		macs = append(macs, mac)
		a, b := offered(servers[0], mac, 250*time.Millisecond), offered(servers[1], mac, 250*time.Millisecond)
		// Neither: the owner may just be slow (a loaded machine); ask
		// again, waiting longer. Both is a split that failed.
		for wait := time.Second; !a && !b && wait <= 4*time.Second; wait *= 2 {
			a, b = offered(servers[0], mac, wait), offered(servers[1], mac, wait)
		}
		if a == b {
			t.Fatalf("%s answered by a1=%v a2=%v: want exactly one", mac, a, b)
		}
		k := 0
		if b {
			k = 1
		}
		by[mac.String()] = k
		bind(k, mac)
	}
	n2 := 0
	for _, k := range by {
		n2 += k
	}
	if n2 == 0 || n2 == len(macs) {
		t.Fatalf("one agent answered every MAC (%d of %d to a2): no split", n2, len(macs))
	}
	t.Logf("split: a1 answered %d MACs, a2 %d", len(macs)-n2, n2)
	// Every lease reaches the coordinator, and so a1's copy of the state.
	var withLeases uint64
	WaitFor(t, 20*time.Second, "leases at the coordinator", func() bool {
		var st proto.RackBootState
		idx, err := admin.Do(context.Background(), "GET", "/v1/agent/bootstate?rack=r1", nil, &st)
		withLeases = idx
		return err == nil && len(st.Leases) >= len(macs)
	})
	WaitFor(t, 20*time.Second, "a1's long poll picks the last lease up", func() bool {
		n, ok := Metric(httpAddrs[0], "metalfleet_agent_bootstate_index")
		return ok && n >= float64(withLeases)
	})

	var a2MAC net.HardwareAddr
	for _, m := range macs {
		if by[m.String()] == 1 {
			a2MAC = m
		}
	}
	killed := time.Now()
	agents[1].Kill()
	WaitFor(t, 60*time.Second, "a1 answers a2's MACs", func() bool { return offered(servers[0], a2MAC, 200*time.Millisecond) })
	t.Logf("a1 answered a2's MACs %s after a2 was SIGKILLed (gossip profile local)", time.Since(killed).Round(100*time.Millisecond))

	for _, m := range macs {
		ip := dhcptest.MustDORA(t, servers[0], m)
		if ip != ipOf[m.String()] {
			t.Fatalf("after the takeover %s got %s, want its lease %s", m, ip, ipOf[m.String()])
		}
	}
	for i := 16; i < 26; i++ {
		m := net.HardwareAddr{0x52, 0x54, 0, 0, 0x50, byte(i)}
		bind(0, m)
		if a := netip.MustParseAddr(ipOf[m.String()]); !a.Less(netip.MustParseAddr("127.0.0.150")) {
			t.Fatalf("a1 allocated %s, from a2's share of the pool", a)
		}
	}
}
