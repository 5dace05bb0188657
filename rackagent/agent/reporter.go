package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/httpboot"
	"github.com/metalfleet/metalfleet/rackagent/outbox"
)

// groupReporter takes reports from the DHCP and HTTP paths without making
// them wait for a disk write each: reports are gathered for a moment and
// written to the outbox in one transaction (one fsync for many). A crash
// can lose the last moment's observations; leases are the ones that
// matter, and leaseLoop re-reports any the coordinator does not know.
type groupReporter struct {
	out   *outbox.Outbox
	rack  string
	agent string
	log   *slog.Logger
	ch    chan proto.AgentReport
	done  chan struct{}
}

func newGroupReporter(out *outbox.Outbox, rack, agent string, log *slog.Logger) *groupReporter {
	return &groupReporter{out: out, rack: rack, agent: agent, log: log, ch: make(chan proto.AgentReport, 4096), done: make(chan struct{})}
}

// Report queues r, stamped with the rack, agent and time.
func (g *groupReporter) Report(r proto.AgentReport) {
	r.Rack, r.Agent = g.rack, g.agent
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	select {
	case g.ch <- r:
	case <-g.done:
		g.log.Warn("report after shutdown dropped", "kind", r.Kind, "mac", r.MAC)
	}
}

// ReportNow stamps r as Report does and queues it at once, returning when
// it is committed to disk (the outbox stamps its incarnation and sequence
// number as for every report), or the error if it could not be queued.
func (g *groupReporter) ReportNow(r proto.AgentReport) error {
	r.Rack, r.Agent = g.rack, g.agent
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	_, err := g.out.Add(r)
	return err
}

func (g *groupReporter) run(ctx context.Context) error {
	defer close(g.done)
	batch := make([]proto.AgentReport, 0, 256)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := g.out.AddBatch(batch); err != nil {
			// Sightings and boot events never fail a batch (past their
			// budgets they are left out and counted): this is the
			// leases' and callbacks' own budget, or the disk.
			kinds := map[proto.ReportKind]int{}
			for _, r := range batch {
				kinds[r.Kind]++
			}
			g.log.Error("reports not queued", "n", len(batch), "kinds", fmt.Sprint(kinds), "err", err)
		}
		batch = batch[:0]
	}
	for {
		select {
		case r := <-g.ch:
			batch = append(batch, r)
			// Gather what arrives within a few milliseconds.
			timer := time.NewTimer(5 * time.Millisecond)
		gather:
			for len(batch) < cap(batch) {
				select {
				case r := <-g.ch:
					batch = append(batch, r)
				case <-timer.C:
					break gather
				}
			}
			timer.Stop()
			flush()
		case <-ctx.Done():
			for {
				select {
				case r := <-g.ch:
					batch = append(batch, r)
				default:
					flush()
					return nil
				}
			}
		}
	}
}

var _ httpboot.DurableReporter = (*groupReporter)(nil)
