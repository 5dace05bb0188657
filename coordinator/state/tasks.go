package state

import (
	"slices"
	"sort"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Servicing tasks: every task by id, and per node the ids of its tasks in
// creation order (its running task and the last proto.MaxTaskHistory
// finished ones). The task key derives task tokens (decide.TaskToken);
// it is written once, by the first task's command, and never shown.

type taskKeyRecord struct {
	Key []byte `json:"key"`
}

// Task returns the task with id, or nil. Callers must not change it.
func (tx *Tx) Task(id string) *proto.Task { return tx.d.tasks[id] }

// PutTask stores t (a new task, or a changed copy), stamps it, keeps the
// node's list bounded and, when its plan changed, wakes the node's rack
// agents.
func (tx *Tx) PutTask(t *proto.Task) {
	old, exists := tx.d.tasks[t.ID]
	tx.stamp(&t.Meta, !exists)
	if exists {
		t.CreateIndex = old.CreateIndex
	}
	tx.d.tasks[t.ID] = t
	if !exists {
		tx.d.nodeTasks[t.Node] = append(tx.d.nodeTasks[t.Node], t.ID)
	}
	if !exists || t.State.Ended() && !old.State.Ended() {
		// A new task, or one that just ended (one more finished).
		tx.trimTasks(t.Node)
	}
	// The rack's agents carry the task's plan (its step states): wake
	// them only when that changed, not for a progress report.
	if n := tx.d.nodes[t.Node]; n != nil && (!exists || planChanged(old, t)) {
		tx.bumpRack(n.Rack)
	}
}

// planChanged reports whether what a rack agent's TaskPlan shows of a
// task differs between a and b.
func planChanged(a, b *proto.Task) bool {
	if a.State != b.State || a.Current != b.Current || len(a.Steps) != len(b.Steps) {
		return true
	}
	for i := range a.Steps {
		if a.Steps[i].State != b.Steps[i].State {
			return true
		}
	}
	return false
}

// trimTasks drops the oldest finished tasks of node beyond MaxTaskHistory.
func (tx *Tx) trimTasks(node string) {
	ids := tx.d.nodeTasks[node]
	finished := 0
	for _, id := range ids {
		if tx.d.tasks[id].State.Ended() {
			finished++
		}
	}
	for i := 0; finished > proto.MaxTaskHistory && i < len(ids); {
		if t := tx.d.tasks[ids[i]]; t.State.Ended() {
			delete(tx.d.tasks, ids[i])
			ids = slices.Delete(ids, i, i+1)
			finished--
			continue
		}
		i++
	}
	tx.d.nodeTasks[node] = ids
}

// deleteNodeTasks drops every task of node.
func (tx *Tx) deleteNodeTasks(node string) {
	for _, id := range tx.d.nodeTasks[node] {
		delete(tx.d.tasks, id)
	}
	delete(tx.d.nodeTasks, node)
}

// NodeTasks returns node uuid's tasks in creation order (the store's:
// not to be changed).
func (tx *Tx) NodeTasks(uuid string) []*proto.Task {
	ids := tx.d.nodeTasks[uuid]
	out := make([]*proto.Task, len(ids))
	for i, id := range ids {
		out[i] = tx.d.tasks[id]
	}
	return out
}

// Images returns the images by name (the store's map: not to be changed).
func (tx *Tx) Images() map[string]*proto.Image { return tx.d.images }

// TaskKey returns the key task tokens are derived with (nil before the
// first task).
func (tx *Tx) TaskKey() []byte { return tx.d.taskKey }

// SetTaskKey sets the task key once; later calls change nothing.
func (tx *Tx) SetTaskKey(k []byte) {
	if len(tx.d.taskKey) == 0 && len(k) > 0 {
		tx.d.taskKey = slices.Clone(k)
		tx.changed = true
	}
}

// Task returns a copy of the task with id.
func (s *Store) Task(id string) (*proto.Task, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.d.tasks[id]
	if !ok {
		return nil, false
	}
	return t.Clone(), true
}

// NodeTasks returns copies of node uuid's tasks, newest first.
func (s *Store) NodeTasks(uuid string) []*proto.Task {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := s.d.nodeTasks[uuid]
	out := make([]*proto.Task, 0, len(ids))
	for i := len(ids) - 1; i >= 0; i-- {
		out = append(out, s.d.tasks[ids[i]].Clone())
	}
	return out
}

// RunningTasks returns copies of every running task, at most max.
func (s *Store) RunningTasks(max int) []*proto.Task {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*proto.Task
	for _, node := range sortedKeys(s.d.nodeTasks) {
		for _, id := range s.d.nodeTasks[node] {
			if t := s.d.tasks[id]; !t.State.Ended() {
				out = append(out, t.Clone())
				if len(out) >= max {
					return out
				}
			}
		}
	}
	return out
}

// restoreTask puts a task read from a snapshot back, with its node index.
func (d *data) restoreTask(t *proto.Task) {
	d.tasks[t.ID] = t
	d.nodeTasks[t.Node] = append(d.nodeTasks[t.Node], t.ID)
}

// sortNodeTasks orders every node's task ids by creation after a restore.
func (d *data) sortNodeTasks() {
	for _, ids := range d.nodeTasks {
		sort.SliceStable(ids, func(i, j int) bool {
			return d.tasks[ids[i]].CreateIndex < d.tasks[ids[j]].CreateIndex
		})
	}
}

// taskRecord carries the token hash that proto.Task keeps out of JSON.
type taskRecord struct {
	proto.Task
	TokenHash string `json:"token_hash"`
}

// HasTaskKey reports whether the cluster's task key is set.
func (s *Store) HasTaskKey() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.d.taskKey) > 0
}

// FailedTasksWithoutLog returns copies of the tasks that failed since
// and have no console log attached, at most max.
func (s *Store) FailedTasksWithoutLog(since time.Time, max int) []*proto.Task {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*proto.Task
	for _, node := range sortedKeys(s.d.nodeTasks) {
		for _, id := range s.d.nodeTasks[node] {
			if t := s.d.tasks[id]; t.State == proto.TaskFailed && t.ConsoleLog == "" && t.EndedAt.After(since) {
				out = append(out, t.Clone())
				if len(out) >= max {
					return out
				}
			}
		}
	}
	return out
}
