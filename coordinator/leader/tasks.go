package leader

import (
	"context"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
)

// TaskHelper is what the task loop needs from the API layer.
type TaskHelper interface {
	// PickAgent names the rack agent that executes node's intents now
	// ("" when none is heard of).
	PickAgent(rack, node string) string
	// TaskConsoleLog reads node's console log from its rack agent.
	TaskConsoleLog(ctx context.Context, node string) (string, error)
}

// taskLoop, every TaskEvery: fails the running tasks that went without
// progress for longer than their timeout (fsm.TaskTimeout), and attaches
// the console log to tasks that failed lately. It proposes nothing when
// there is nothing to do.
func (l *Leader) taskLoop(ctx context.Context) {
	tick := l.clk.NewTicker(l.cfg.TaskEvery)
	defer tick.Stop()
	tried := map[string]bool{} // console logs asked for during this leadership
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		l.taskRound(ctx, tried)
	}
}

func (l *Leader) taskRound(ctx context.Context, tried map[string]bool) {
	st := l.b.Store()
	now := l.clk.Now().UTC()
	for _, t := range st.RunningTasks(10000) {
		if !decide.TimedOut(t, now) {
			continue
		}
		agent := ""
		if n, ok := st.Node(t.Node); ok && l.cfg.Tasks != nil {
			agent = l.cfg.Tasks.PickAgent(n.Rack, n.UUID)
		}
		if _, err := l.b.Apply(ctx, fsm.TaskTimeout{Task: t.ID, Agent: agent, Now: now}); err != nil {
			l.log.Warn("task timeout failed; trying again next round", "task", t.ID, "err", err)
			continue
		}
		l.log.Warn("task timed out", "task", t.ID, "node", t.Node, "timeout", time.Duration(t.Timeout))
	}
	l.instanceTimeouts(ctx, now)
	if l.cfg.Tasks == nil {
		return
	}
	for _, t := range st.FailedTasksWithoutLog(now.Add(-time.Hour), 16) {
		if tried[t.ID] {
			continue
		}
		tried[t.ID] = true
		text, err := l.cfg.Tasks.TaskConsoleLog(ctx, t.Node)
		if err != nil {
			text = "(no console log: " + err.Error() + ")"
		}
		if _, err := l.b.Apply(ctx, fsm.TaskConsoleLog{Task: t.ID, Log: text}); err != nil {
			l.log.Warn("attaching a failed task's console log failed", "task", t.ID, "err", err)
		}
	}
}
