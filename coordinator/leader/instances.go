package leader

import (
	"context"
	"crypto/rand"
	"slices"
	"sort"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/proto"
)

// admitLoop starts queued instances' deploys as admission allows
// (decide.Admit over the settings' limits), woken by every change of the
// store and at most every 100 ms; it proposes nothing when nothing can
// start.
func (l *Leader) admitLoop(ctx context.Context) {
	if l.cfg.Tasks == nil {
		// Nothing to start deploys through (admitRound would do nothing);
		// no clock waiter either, which fake-clock tests count.
		return
	}
	st := l.b.Store()
	var idx uint64
	for ctx.Err() == nil {
		l.admitRound(ctx)
		idx = st.Wait(ctx, idx)
		select {
		case <-ctx.Done():
			return
		case <-l.clk.After(100 * time.Millisecond):
		}
	}
}

func (l *Leader) admitRound(ctx context.Context) {
	if l.cfg.Tasks == nil {
		return
	}
	st := l.b.Store()
	all := st.Instances("")
	if !slices.ContainsFunc(all, func(in *proto.Instance) bool { return in.State == proto.InstanceQueued }) {
		return // the common case, without reading a node
	}
	var queued []*proto.Instance
	rackOf := map[string]string{}
	total, perRack := 0, map[string]int{}
	for _, in := range all {
		if in.State != proto.InstanceQueued && in.State != proto.InstanceBuilding {
			continue
		}
		n, ok := st.Node(in.Node)
		if !ok || in.State == proto.InstanceQueued && n.Maintenance {
			continue // in maintenance (operators at work on it): it waits
		}
		rackOf[in.UUID] = n.Rack
		switch in.State {
		case proto.InstanceQueued:
			queued = append(queued, in)
		case proto.InstanceBuilding:
			total++
			perRack[n.Rack]++
		}
	}
	if len(queued) == 0 {
		return
	}
	sort.Slice(queued, func(i, j int) bool { return queued[i].CreateIndex < queued[j].CreateIndex })
	s := st.Settings()
	for _, id := range decide.Admit(queued, rackOf, total, perRack, s.DeployMax, s.DeployMaxPerRack) {
		in, ok := st.Instance(id)
		if !ok {
			continue
		}
		agent := l.cfg.Tasks.PickAgent(rackOf[id], in.Node)
		if agent == "" {
			l.log.Warn("queued instance waits: no rack agent of its rack heard of", "instance", in.Name, "rack", rackOf[id])
			continue
		}
		var key []byte
		if !st.HasTaskKey() {
			key = make([]byte, 32)
			_, _ = rand.Read(key)
		}
		if _, err := l.b.Apply(ctx, fsm.InstanceStart{Ref: id, Agent: agent, Key: key, Now: l.clk.Now().UTC()}); err != nil {
			l.log.Warn("starting a queued instance's deploy failed; trying again", "instance", in.Name, "err", err)
		}
	}
}

// instanceTimeouts moves busy instances past their state's timeout to
// error (fsm.InstanceTimeout).
func (l *Leader) instanceTimeouts(ctx context.Context, now time.Time) {
	st := l.b.Store()
	for _, in := range st.Instances("") {
		if !in.State.Busy() || !decide.InstanceTimedOut(in, now) {
			continue
		}
		if t, ok := st.Task(in.Task); ok && !t.State.Ended() {
			continue // a running task times out by its own progress
		}
		agent := ""
		if n, ok := st.Node(in.Node); ok && l.cfg.Tasks != nil {
			agent = l.cfg.Tasks.PickAgent(n.Rack, n.UUID)
		}
		if _, err := l.b.Apply(ctx, fsm.InstanceTimeout{Ref: in.UUID, State: in.State, Agent: agent, Now: now}); err != nil {
			l.log.Warn("instance timeout failed; trying again next round", "instance", in.Name, "err", err)
			continue
		}
		l.log.Warn("instance timed out", "instance", in.Name, "state", in.State)
	}
}
