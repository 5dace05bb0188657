package drills

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/dhcp/dhcptest"
)

// TestAgentSIGKILLWithQueuedReports is the rack agent's crash drill on
// real processes: with the coordinator down, the agent keeps answering
// DHCP and queues its reports; it is killed with SIGKILL; the coordinator
// and then the agent come back; every queued report arrives, once.
func TestAgentSIGKILLWithQueuedReports(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and agent processes")
	}
	bin := Binary(t)
	ctx := context.Background()
	c, admin, agentToken, _ := coordinatorForRack(t, bin)

	dhcpAddr, httpAddr := freeUDP(t), FreePort(t)
	a := NewAgentProc(t, bin, "a1", "--rack", "r1", "--coordinator", c.HTTPAddr, "--token-file", agentToken,
		"--dhcp-addr", dhcpAddr, "--tftp-addr", "", "--http-addr", httpAddr, "--advertise-ip", "127.0.0.1")
	a.Start(t)
	server, _ := net.ResolveUDPAddr("udp4", dhcpAddr)
	// The agent answers once it has the rack's boot state.
	WaitFor(t, 20*time.Second, "agent answers DHCP", func() bool {
		_, err := dhcptest.DORA(server, net.HardwareAddr{0x52, 0x54, 0, 0, 0x40, 0xff}, 300*time.Millisecond)
		return err == nil
	})

	// Coordinator down; the agent answers and queues.
	c.Kill()
	leases := map[string]string{}
	for i := 0; i < 10; i++ {
		mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0x40, byte(i)}
		leases[mac.String()] = dhcptest.MustDORA(t, server, mac)
	}
	// Every report is in the agent's outbox before the SIGKILL: a lease
	// report and a sighting per MAC, and no sighting still gathered
	// (sightings wait up to dhcp.DefaultSightingInterval to be queued,
	// and a flush that fell between a MAC's DISCOVER and REQUEST holds
	// the REQUEST's back for SeenEvery, 30 s).
	WaitFor(t, 50*time.Second, "a lease report and a sighting per MAC queued, none gathered", func() bool {
		n, ok := Metric(httpAddr, "metalfleet_agent_outbox_reports")
		g, gok := Metric(httpAddr, "metalfleet_dhcp_sightings_gathered")
		return ok && gok && n >= float64(2*len(leases)) && g == 0
	})
	a.Kill() // SIGKILL with reports queued

	c.Start(t)
	a.Start(t)
	WaitFor(t, 30*time.Second, "every queued report delivered", func() bool {
		sg, err := admin.Sightings(Ctx(t, 2*time.Second), "r1")
		if err != nil {
			return false
		}
		seen := 0
		for _, s := range sg {
			if _, ok := leases[s.MAC]; ok {
				seen++
			}
		}
		return seen == len(leases)
	})
	// One DORA is two packets (DISCOVER, REQUEST), sighted twice in all,
	// whether gathered into one report or two: a report applied twice
	// would count more.
	sg, _ := admin.Sightings(ctx, "r1")
	for _, s := range sg {
		if _, ok := leases[s.MAC]; ok && s.Count != 2 {
			t.Errorf("sighting of %s counted %d times, want 2 (DISCOVER and REQUEST, each once)", s.MAC, s.Count)
		}
	}
	var st proto.RackBootState
	WaitFor(t, 10*time.Second, "leases known to the coordinator", func() bool {
		_, err := admin.Do(ctx, "GET", "/v1/agent/bootstate?rack=r1", nil, &st)
		if err != nil {
			return false
		}
		have := map[string]string{}
		for _, l := range st.Leases {
			have[l.MAC] = l.IP
		}
		for mac, ip := range leases {
			if have[mac] != ip {
				return false
			}
		}
		return true
	})
}
