package power

import (
	"context"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

// firstSync is the most the first power sync round waits after start:
// what the coordinator has may be as old as the agent's downtime.
const firstSync = 10 * time.Second

// syncLoop runs a power sync round every SyncInterval (+-10%), the first
// within firstSync.
func (m *Manager) syncLoop(ctx context.Context) {
	wait := min(m.cfg.SyncInterval, firstSync)
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.clk.After(jitter(wait)):
		}
		m.Sync(ctx)
		wait = m.cfg.SyncInterval
	}
}

// Sync runs one power sync round: it reads the power of every node of
// the boot state with a BMC that this agent polls, at most Concurrency at
// a time, and reports those whose state or error changed. A node whose
// intent is being executed is left out (its result reports the power).
func (m *Manager) Sync(ctx context.Context) {
	if m.src == nil {
		return
	}
	v := m.src.View()
	if v == nil {
		return
	}
	var nodes []string
	for i := range v.State.Nodes {
		n := &v.State.Nodes[i]
		if n.BMC == nil || n.UUID == "" || (m.cfg.Mine != nil && !m.cfg.Mine(n.UUID)) {
			continue
		}
		nodes = append(nodes, n.UUID)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(m.cfg.Concurrency, len(nodes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for uuid := range work {
				m.poll(ctx, uuid)
			}
		}()
	}
	for _, uuid := range nodes {
		select {
		case work <- uuid:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	m.st.rounds.Add(1)
}

// poll reads one node's power and reports it if it changed.
func (m *Manager) poll(ctx context.Context, uuid string) {
	m.mu.Lock()
	c, seq := m.conns[uuid], m.seq[uuid]
	if c == nil || m.busy[uuid] {
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.st.polls.Add(1)
	// One call, no retries: a dead BMC must not hold a concurrency slot
	// for the retries' backoff in every round (the drivers already resend
	// a lost read once), and the next round reads it again anyway.
	ps, err := m.readOnce(ctx, uuid)
	if ctx.Err() != nil {
		return
	}
	obs := observation{state: ps}
	if err != nil {
		m.st.pollErrors.Add(1)
		obs = observation{state: proto.PowerUnknown, err: errText(err), kind: bmc.KindOf(err)}
	}
	m.mu.Lock()
	prev, had := m.last[uuid]
	// An intent that ran meanwhile reported fresher news; fields that
	// changed meanwhile make this read stale.
	if m.conns[uuid] != c || m.busy[uuid] || m.seq[uuid] != seq || (had && prev == obs) {
		m.mu.Unlock()
		return
	}
	m.last[uuid] = obs
	m.mu.Unlock()
	r := proto.AgentReport{Kind: proto.ReportPower, Node: uuid, PowerState: obs.state, Error: obs.err, ErrorKind: obs.kind,
		Time: m.clk.Now().UTC()}
	if err := m.cfg.Reporter.ReportNow(r); err != nil {
		m.log.Error("power report not queued; the next poll reports again", "node", uuid, "err", err)
		m.mu.Lock()
		if m.last[uuid] == obs {
			if had {
				m.last[uuid] = prev
			} else {
				delete(m.last, uuid)
			}
		}
		m.mu.Unlock()
		return
	}
	m.st.powerReports.Add(1)
	if err != nil {
		m.log.Warn("bmc not answering: power unknown", "node", uuid, "kind", obs.kind, "err", obs.err)
	} else {
		m.log.Debug("power changed", "node", uuid, "power_state", ps)
	}
}
