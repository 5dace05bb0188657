package server_test

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
)

// The benchmarks here run on three servers in one process, Raft over
// loopback TCP with bolt stores and raftnode.TestConfig timings (for
// both Metalfleet and bare Raft). `make bench`
// runs them; BENCHMARKS.md has the numbers.

const benchNodes = 64

// benchCluster starts three coordinators and creates
// benchNodes nodes.
func benchCluster(b *testing.B) (*coordtest.Cluster, []string) {
	b.Helper()
	c := coordtest.StartCluster(b, 3)
	cl := apiclient.New(c.Servers[c.Leader()].HTTPAddr(), c.Token)
	names := make([]string, benchNodes)
	for i := range names {
		names[i] = fmt.Sprintf("bench-%d", i)
		if _, err := cl.CreateNode(context.Background(), proto.NodeCreate{Name: names[i], MACs: []string{fmt.Sprintf("52:54:00:02:00:%02x", i)}}); err != nil {
			b.Fatal(err)
		}
	}
	return c, names
}

// BenchmarkStateChanges measures committed node state changes (a
// maintenance toggle: HTTP request, auth, Raft commit on a quorum, FSM
// apply, JSON answer) sent to the leader, one at a time and from 64
// concurrent clients.
func BenchmarkStateChanges(b *testing.B) {
	for _, par := range []int{1, 64} {
		b.Run(fmt.Sprintf("metalfleet/clients=%d", par), func(b *testing.B) {
			c, names := benchCluster(b)
			cl := apiclient.New(c.Servers[c.Leader()].HTTPAddr(), c.Token)
			var seq atomic.Int64
			b.ResetTimer()
			runClients(b, par, func() error {
				i := seq.Add(1)
				_, err := cl.SetMaintenance(context.Background(), names[i%benchNodes], i%2 == 0, "bench")
				return err
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
		})
		b.Run(fmt.Sprintf("bare-raft/clients=%d", par), func(b *testing.B) {
			r := bareRaft(b, 3)
			b.ResetTimer()
			runClients(b, par, func() error { return r.Apply(nil, 10*time.Second).Error() })
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
		})
	}
}

// runClients runs b.N calls of op from par goroutines.
func runClients(b *testing.B, par int, op func() error) {
	var left atomic.Int64
	left.Store(int64(b.N))
	errc := make(chan error, par)
	for g := 0; g < par; g++ {
		go func() {
			for left.Add(-1) >= 0 {
				if err := op(); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for g := 0; g < par; g++ {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFollowerWrite measures the latency of a write sent to a
// follower, which forwards it to the leader: p50 and p99.
func BenchmarkFollowerWrite(b *testing.B) {
	c, names := benchCluster(b)
	cl := apiclient.New(c.Servers[c.Follower()].HTTPAddr(), c.Token)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := cl.SetMaintenance(context.Background(), names[i%benchNodes], i%2 == 0, "bench"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
}

// bareRaft starts n hashicorp/raft servers with the same assembly (bolt
// store, TCP transport, timings) and an FSM that does nothing, and
// returns the leader.
func bareRaft(b *testing.B, n int) *raft.Raft {
	b.Helper()
	var nodes []*raftnode.Node
	for i := 0; i < n; i++ {
		cfg := raftnode.TestConfig()
		cfg.ID, cfg.DataDir, cfg.BindAddr, cfg.Bootstrap = fmt.Sprintf("b%d", i), b.TempDir(), "127.0.0.1:0", i == 0
		nd, err := raftnode.New(cfg, nopFSM{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { nd.Shutdown() })
		nodes = append(nodes, nd)
	}
	coordtest.WaitFor(b, 10*time.Second, "bare leader", nodes[0].IsLeader)
	for _, nd := range nodes[1:] {
		if err := nodes[0].Raft.AddVoter(raft.ServerID(nd.ID()), raft.ServerAddress(nd.Addr()), 0, 10*time.Second).Error(); err != nil {
			b.Fatal(err)
		}
	}
	if err := nodes[0].Raft.Barrier(10 * time.Second).Error(); err != nil {
		b.Fatal(err)
	}
	return nodes[0].Raft
}

type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnap{}, nil }
func (nopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnap struct{}

func (nopSnap) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnap) Release()                          {}
