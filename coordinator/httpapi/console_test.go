package httpapi

import (
	"fmt"
	"testing"
	"time"
)

// TestConsoleAgentChoice: every console request for one node goes to the
// same agent of its rack, whichever called last (one agent holds the
// node's SOL session and log); nodes spread over the agents; an agent not
// heard of lately comes after live ones; agents without a management
// address or of other racks are not tried.
func TestConsoleAgentChoice(t *testing.T) {
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	a := &API{cfg: Config{Now: func() time.Time { return now }}}
	a.cfg.fill()
	a.contacts.touch("a1", "r1", "10.0.0.1:7492", now.Add(-time.Second))
	a.contacts.touch("a2", "r1", "10.0.0.2:7492", now.Add(-2*time.Second))
	a.contacts.touch("a3", "r1", "", now)              // no management address
	a.contacts.touch("b1", "r2", "10.0.1.1:7492", now) // another rack
	first := map[string]int{}
	for i := range 64 {
		node := fmt.Sprintf("node-%d", i)
		got := a.mgmtAgents("r1", node)
		if len(got) != 2 {
			t.Fatalf("mgmtAgents(r1, %s) = %d agents, want a1 and a2", node, len(got))
		}
		// The other agent calls now: the choice stays.
		a.contacts.touch(got[1].Name, "r1", got[1].MgmtAddr, now)
		if again := a.mgmtAgents("r1", node); again[0].Name != got[0].Name {
			t.Fatalf("%s: first agent %s, then %s after the other called", node, got[0].Name, again[0].Name)
		}
		first[got[0].Name]++
	}
	if first["a1"] == 0 || first["a2"] == 0 {
		t.Errorf("64 nodes' consoles all go to one agent: %v", first)
	}
	// a1 falls silent: a2 first for every node.
	now = now.Add(a.cfg.AgentAlive + time.Minute)
	a.contacts.touch("a2", "r1", "10.0.0.2:7492", now)
	for i := range 16 {
		if got := a.mgmtAgents("r1", fmt.Sprint("node-", i)); got[0].Name != "a2" || got[1].Name != "a1" {
			t.Fatalf("with a1 silent: %s first, want a2 then a1", got[0].Name)
		}
	}
}
