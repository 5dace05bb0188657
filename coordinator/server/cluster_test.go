package server_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
)

// TestClusterFailover runs three coordinators on loopback TCP with bolt
// stores: writes go through a follower, the leader is killed while writes
// go on, a new leader takes over, every acknowledged write is on every
// survivor, and the killed server comes back from its data dir and
// catches up.
func TestClusterFailover(t *testing.T) {
	c := coordtest.StartCluster(t, 3)
	ctx := context.Background()
	client := func(i int) *apiclient.Client { return apiclient.New(c.Servers[i].HTTPAddr(), c.Token) }

	var (
		mu    sync.Mutex
		acked = map[string]string{} // name -> uuid
	)
	create := func(cl *apiclient.Client, name string, mac int) error {
		n, err := cl.CreateNode(ctx, proto.NodeCreate{Name: name, MACs: []string{fmt.Sprintf("52:54:00:00:%02x:%02x", mac/256, mac%256)}})
		if err == nil {
			mu.Lock()
			acked[name] = n.UUID
			mu.Unlock()
		}
		return err
	}

	// Writes through a follower are forwarded to the leader.
	f := c.Follower()
	for i := 0; i < 10; i++ {
		if err := create(client(f), fmt.Sprintf("pre-%d", i), i); err != nil {
			t.Fatalf("write through follower: %v", err)
		}
	}
	// A consistent read through the follower sees its own write at once.
	if _, err := client(f).Node(ctx, "pre-9"); err != nil {
		t.Fatalf("read-your-write through follower: %v", err)
	}

	// Kill the leader while a writer keeps writing through a survivor.
	old := c.Leader()
	oldID := c.Servers[old].Cfg.NodeID
	survivor := (old + 1) % 3
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		failures := 0
		for i := 100; ; i++ {
			select {
			case <-stop:
				done <- failures
				return
			default:
			}
			// A write may fail during the election (503: no leader, or
			// an unknown outcome); only acknowledged ones must survive.
			if err := create(client(survivor), fmt.Sprintf("during-%d", i), 0x8000+i); err != nil {
				var ae *apiclient.Error
				if !errors.As(err, &ae) || ae.Status != 503 && ae.Status != 504 {
					t.Errorf("write during failover: unexpected error %v", err)
				}
				failures++
				select { // pace the retries
				case <-stop:
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
	// The writer is writing when the leader dies.
	coordtest.WaitFor(t, 10*time.Second, "writes acknowledged through the survivor", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 15
	})
	killed := time.Now()
	c.Kill(old)
	nl := c.Leader()
	t.Logf("new leader %s elected %s after killing %s", c.Servers[nl].Cfg.NodeID, time.Since(killed).Round(time.Millisecond), oldID)
	if c.Servers[nl].Cfg.NodeID == oldID {
		t.Fatalf("the killed server is still leader")
	}
	// Keep writing a little on the new leader, then stop.
	coordtest.WaitFor(t, 10*time.Second, "a write on the new leader", func() bool {
		return create(client(nl), "post-failover", 4000) == nil
	})
	close(stop)
	t.Logf("writes refused during failover: %d", <-done)

	mu.Lock()
	want := len(acked)
	mu.Unlock()
	if want < 12 {
		t.Fatalf("only %d writes acknowledged", want)
	}

	// Every acknowledged write is on every survivor.
	checkAll := func(s *coordtest.Server) bool {
		mu.Lock()
		defer mu.Unlock()
		for name, id := range acked {
			n, ok := s.Store().Node(id)
			if !ok || n.Name != name {
				return false
			}
		}
		return true
	}
	for i, s := range c.Servers {
		if s == nil {
			continue
		}
		coordtest.WaitFor(t, 10*time.Second, fmt.Sprintf("all %d acked writes on %s", want, c.Servers[i].Cfg.NodeID), func() bool { return checkAll(s) })
	}

	// The killed server restarts from its data dir and catches up,
	// including writes made while it was down.
	r := c.Restart(old)
	coordtest.WaitFor(t, 20*time.Second, "restarted server catches up", func() bool { return checkAll(r) })
	st := r.Status()
	if st.LeaderID == "" || len(st.Peers) != 3 {
		t.Fatalf("restarted server's status: %+v", st)
	}
	// And it serves the API again: a write through it lands.
	coordtest.WaitFor(t, 10*time.Second, "write through restarted server", func() bool {
		return create(apiclient.New(r.HTTPAddr(), c.Token), "after-restart", 5000) == nil
	})
}

// TestNoLeaderAnswers503: with quorum lost, a write to the survivor
// answers 503 within the forward wait, with a message that says why.
func TestNoLeaderAnswers503(t *testing.T) {
	c := coordtest.StartCluster(t, 3)
	f := c.Follower()
	for i := range c.Servers {
		if i != f {
			c.Kill(i)
		}
	}
	start := time.Now()
	_, err := apiclient.New(c.Servers[f].HTTPAddr(), c.Token).CreateNode(context.Background(),
		proto.NodeCreate{Name: "x", MACs: []string{"52:54:00:00:00:01"}})
	var ae *apiclient.Error
	if !errors.As(err, &ae) || ae.Status != 503 || ae.Code != proto.CodeNoLeader {
		t.Fatalf("write without quorum: err = %v, want 503 no_leader", err)
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("503 took %s; the forward wait is bounded at 5s", el)
	}
	// A stale read is still served from the survivor's copy.
	if _, _, err := apiclient.New(c.Servers[f].HTTPAddr(), c.Token).Nodes(context.Background(), &apiclient.Query{Stale: true}); err != nil {
		t.Fatalf("stale read without quorum: %v", err)
	}
}

// TestAgentMgmtAddrThroughFollower: an agent whose calls reach a follower
// is still listed by the leader with its management address (the
// follower forwards the agent's headers).
func TestAgentMgmtAddrThroughFollower(t *testing.T) {
	c := coordtest.StartCluster(t, 3)
	ctx := context.Background()
	admin := apiclient.New(c.Servers[c.Leader()].HTTPAddr(), c.Token)
	if _, err := admin.CreateRack(ctx, proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateToken(ctx, proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	agent := apiclient.New(c.Servers[c.Follower()].HTTPAddr(), tok.Secret)
	agent.SetHeader("X-Metalfleet-Agent", "agent-r1")
	agent.SetHeader(proto.AgentMgmtHeader, "127.0.0.1:7492")
	if _, err := agent.BootState(ctx, "r1", 0, 0); err != nil {
		t.Fatalf("boot state through a follower: %v", err)
	}
	ags, err := admin.Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ags {
		if a.Name == "agent-r1" && a.MgmtAddr == "127.0.0.1:7492" {
			return
		}
	}
	t.Fatalf("agents = %+v, want agent-r1 with its management address", ags)
}
