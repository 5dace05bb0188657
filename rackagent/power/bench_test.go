package power

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/proto"
)

// BenchmarkSync1000Fake is one power sync round over 1,000 nodes with the
// in-memory fake driver: the Manager's own cost per poll (locks, the
// concurrency limit, change detection), without any BMC I/O.
func BenchmarkSync1000Fake(b *testing.B) {
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "agent.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	src := newSource()
	var nodes []proto.BootNode
	for i := range 1000 {
		nodes = append(nodes, node(fmt.Sprintf("n%04d", i), proto.DriverFake, fmt.Sprintf("bench/%d", i)))
	}
	src.set(nodes...)
	m, err := New(Config{Agent: "a1", DB: db, Reporter: &fakeReporter{}})
	if err != nil {
		b.Fatal(err)
	}
	// Run's first steps, without its loops.
	m.src = src
	m.mu.Lock()
	m.updateConns(src.View())
	m.mu.Unlock()
	defer m.closeAll()
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		m.Sync(ctx)
	}
	b.ReportMetric(float64(b.N*1000)/time.Since(start).Seconds(), "polls/s")
}
