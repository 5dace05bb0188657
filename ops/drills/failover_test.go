package drills

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// cluster3 starts three coordinator processes: s1 bootstraps, s2 and s3
// join through s1 with the admin token s1 wrote. It returns them and the
// token once all three are voters that know each other's API.
func cluster3(t testing.TB, bin string) ([]*Proc, string) {
	t.Helper()
	s1 := NewProc(t, bin, "s1", "--bootstrap")
	s1.Start(t)
	tokenFile := filepath.Join(s1.DataDir, "admin.token")
	WaitFor(t, 20*time.Second, "s1 admin token", func() bool { _, err := os.Stat(tokenFile); return err == nil })
	b, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(b))
	procs := []*Proc{s1}
	for _, id := range []string{"s2", "s3"} {
		p := NewProc(t, bin, id, "--join", "http://"+s1.HTTPAddr, "--token-file", tokenFile)
		p.Start(t)
		procs = append(procs, p)
	}
	WaitFor(t, 30*time.Second, "three voters that know each other", func() bool {
		for _, p := range procs {
			st, err := p.Client(token).Status(Ctx(t, 2*time.Second))
			if err != nil || len(st.Peers) != 3 || st.LeaderID == "" {
				return false
			}
			for _, peer := range st.Peers {
				if peer.HTTPAddr == "" || peer.Suffrage != "voter" {
					return false
				}
			}
		}
		return true
	})
	return procs, token
}

func leaderOf(t testing.TB, procs []*Proc, token string) int {
	t.Helper()
	li := -1
	WaitFor(t, 15*time.Second, "a leader", func() bool {
		for i, p := range procs {
			if st, err := p.Client(token).Status(Ctx(t, 2*time.Second)); err == nil && st.RaftState == "leader" {
				li = i
				return true
			}
		}
		return false
	})
	return li
}

func mac(i int) string { return fmt.Sprintf("52:54:00:01:%02x:%02x", i/256, i%256) }

// killLeaderDrill writes through a follower, SIGKILLs the leader, and
// returns the time from the kill to the first write that succeeds
// through a survivor, with the acknowledged writes.
func killLeaderDrill(t testing.TB, procs []*Proc, token string) (time.Duration, int, map[string]string) {
	t.Helper()
	acked := map[string]string{}
	li := leaderOf(t, procs, token)
	fi := (li + 1) % 3
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("pre-%d", i)
		n, err := procs[fi].Client(token).CreateNode(Ctx(t, 10*time.Second), proto.NodeCreate{Name: name, MACs: []string{mac(i)}})
		if err != nil {
			t.Fatalf("write through follower %s: %v", procs[fi].ID, err)
		}
		acked[name] = n.UUID
	}
	killed := time.Now()
	procs[li].Kill()
	var took time.Duration
	i := 100
	testkit.Until(t, 30*time.Second, "a successful write through a survivor after killing the leader", func() error {
		i++
		name := fmt.Sprintf("post-%d", i)
		n, err := procs[fi].Client(token).CreateNode(Ctx(t, 10*time.Second), proto.NodeCreate{Name: name, MACs: []string{mac(i)}})
		if err == nil {
			took = time.Since(killed)
			acked[name] = n.UUID
			return nil
		}
		var ae *apiclient.Error
		if !errors.As(err, &ae) || (ae.Status != 503 && ae.Status != 504) {
			t.Fatalf("write during failover: %v (want success or 503/504)", err)
		}
		return err
	})
	return took, li, acked
}

// allThere reports whether p's local copy (?stale) holds every acked node.
func allThere(t testing.TB, p *Proc, token string, acked map[string]string) bool {
	nodes, _, err := p.Client(token).Nodes(Ctx(t, 5*time.Second), &apiclient.Query{Stale: true})
	if err != nil {
		return false
	}
	have := map[string]string{}
	for _, n := range nodes {
		have[n.Name] = n.UUID
	}
	for name, id := range acked {
		if have[name] != id {
			return false
		}
	}
	return true
}

// TestProcessFailover is the failover drill on three real processes.
func TestProcessFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three coordinator processes")
	}
	bin := Binary(t)
	procs, token := cluster3(t, bin)

	took, li, acked := killLeaderDrill(t, procs, token)
	t.Logf("leader %s SIGKILLed; first successful write %s later", procs[li].ID, took.Round(time.Millisecond))

	for i, p := range procs {
		if i == li {
			continue
		}
		WaitFor(t, 15*time.Second, fmt.Sprintf("all %d acknowledged writes on %s", len(acked), p.ID), func() bool {
			return allThere(t, p, token, acked)
		})
	}
	nl := leaderOf(t, procs, token)
	if nl == li {
		t.Fatalf("killed server %s still reported as leader", procs[li].ID)
	}

	// The killed server restarts with the same command and catches up.
	procs[li].Start(t)
	WaitFor(t, 30*time.Second, procs[li].ID+" restarted and caught up", func() bool {
		return allThere(t, procs[li], token, acked)
	})
	st, err := procs[li].Client(token).Status(Ctx(t, 5*time.Second))
	if err != nil || len(st.Peers) != 3 || st.LeaderID == "" {
		t.Fatalf("restarted server status = %+v, %v", st, err)
	}
	// A consistent read through the restarted server (forwarded to the
	// leader) sees a write made through another server.
	n, err := procs[nl].Client(token).CreateNode(Ctx(t, 10*time.Second), proto.NodeCreate{Name: "last", MACs: []string{mac(4000)}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := procs[li].Client(token).Node(Ctx(t, 10*time.Second), "last")
	if err != nil || got.UUID != n.UUID {
		t.Fatalf("read through restarted server: %v, %v", got, err)
	}

	// SIGTERM shuts every server down cleanly within a few seconds.
	for _, p := range procs {
		d, err := p.Term(10 * time.Second)
		if err != nil {
			t.Errorf("%s: %v", p.ID, err)
		}
		t.Logf("%s stopped %s after SIGTERM", p.ID, d.Round(time.Millisecond))
	}
}

// BenchmarkFailover measures leader failover on real processes: the time
// from SIGKILL of the leader to the first successful write through a
// survivor. Each iteration builds a fresh three-process cluster; the
// median is reported.
func BenchmarkFailover(b *testing.B) {
	bin := Binary(b)
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		procs, token := cluster3(b, bin)
		took, _, _ := killLeaderDrill(b, procs, token)
		times = append(times, took)
		for _, p := range procs {
			p.Kill()
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "ms-failover-median")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "ms-failover-max")
	b.ReportMetric(0, "ns/op")
}
