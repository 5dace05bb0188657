package httpapi

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// TestContactsKeyedByRack: an agent of one rack cannot overwrite another
// rack's agent of the same name (its management address above all).
func TestContactsKeyedByRack(t *testing.T) {
	var k contacts
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	k.touch("agent-a", "r1", "10.0.1.2:7492", now)
	k.touch("agent-a", "r2", "10.6.6.6:7492", now.Add(time.Second)) // another rack's token, same name
	var r1 *contact
	for _, ct := range k.all() {
		if ct.rack == "r1" {
			ct := ct
			r1 = &ct
		}
	}
	if k.len() != 2 || r1 == nil || r1.mgmt != "10.0.1.2:7492" {
		t.Fatalf("contacts %+v: rack r1's agent was overwritten", k.all())
	}
}

// TestContactsPerRackBound: one rack's token naming many agents pushes
// out only that rack's oldest, never another rack's agents.
func TestContactsPerRackBound(t *testing.T) {
	var k contacts
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	k.touch("agent-a", "r1", "10.0.1.2:7492", now)
	for i := 0; i < 10*MaxContactsPerRack; i++ {
		k.touch(fmt.Sprintf("made-up-%d", i), "r2", "", now.Add(time.Duration(i+1)*time.Millisecond))
	}
	inR2, r1 := 0, false
	for _, ct := range k.all() {
		switch ct.rack {
		case "r2":
			inR2++
		case "r1":
			r1 = ct.name == "agent-a" && ct.mgmt == "10.0.1.2:7492"
		}
	}
	if inR2 != MaxContactsPerRack || !r1 {
		t.Fatalf("rack r2 holds %d contacts (want %d), rack r1's agent kept: %v", inR2, MaxContactsPerRack, r1)
	}
}

// TestReachableMgmt: a loopback management address is kept only from an
// agent calling over loopback; from another host it names this server's
// own loopback, so it is dropped (the console then says no agent has a
// reachable management address instead of dialling the wrong listener).
func TestReachableMgmt(t *testing.T) {
	for _, c := range []struct {
		mgmt, from, want string
	}{
		{"127.0.0.1:7492", "127.0.0.1:40000", "127.0.0.1:7492"},
		{"127.0.0.1:7492", "[::1]:40000", "127.0.0.1:7492"},
		{"127.0.0.1:7492", "10.0.0.2:40000", ""},
		{"localhost:7492", "10.0.0.2:40000", ""},
		{"[::1]:7492", "10.0.0.2:40000", ""},
		{"10.0.0.2:7492", "10.0.0.2:40000", "10.0.0.2:7492"},
		{"rack1-agent.example:7492", "10.0.0.2:40000", "rack1-agent.example:7492"},
		{"", "10.0.0.2:40000", ""},
	} {
		r := httptest.NewRequest("GET", "/v1/agent/bootstate", nil)
		r.RemoteAddr = c.from
		if c.mgmt != "" {
			r.Header.Set(proto.AgentMgmtHeader, c.mgmt)
		}
		if got := reachableMgmt(r); got != c.want {
			t.Errorf("mgmt %q from %s: got %q, want %q", c.mgmt, c.from, got, c.want)
		}
	}
}
