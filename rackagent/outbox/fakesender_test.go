package outbox

import (
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/metalfleet/metalfleet/proto"
)

// fakeSender stands in for the coordinator. It applies reports the way the
// FSM does (an id once; a repeat is acknowledged but changes nothing),
// records everything it is sent, and can be told to misbehave. Set the
// fault fields before Run starts, or through set while it runs.
type fakeSender struct {
	mu sync.Mutex

	// Faults.
	down     bool              // fail every call, applying nothing
	failNext int               // fail this many calls, applying nothing
	dropAcks int               // apply, then fail this many calls: the ack is lost
	ackLimit int               // apply and ack at most this many reports a call; 0: all
	reject   map[string]string // id -> reason: rejected, never applied
	block    bool              // hold each call until its ctx ends

	// Record.
	calls   int
	failed  int            // calls that returned an error
	batches [][]string     // ids of every call, in order
	applied []string       // ids in the order they were first applied
	times   map[string]int // id -> calls that applied it (first + repeats)
	reports map[string]proto.AgentReport
	// high is the highest Seq applied per incarnation, as the coordinator
	// keeps it; late counts new reports at or below it (they would be
	// taken for repeats and never applied).
	high map[string]uint64
	late []string
}

var errDown = errors.New("fake coordinator: unreachable")

func newFakeSender() *fakeSender {
	return &fakeSender{times: map[string]int{}, reports: map[string]proto.AgentReport{}, high: map[string]uint64{}}
}

// set changes the faults under the lock while Run may be calling Send.
func (f *fakeSender) set(fn func(f *fakeSender)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeSender) Send(ctx context.Context, rs []proto.AgentReport) (proto.ReportAck, error) {
	f.mu.Lock()
	block := f.block
	f.mu.Unlock()
	if block {
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		<-ctx.Done()
		return proto.ReportAck{}, ctx.Err()
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	f.batches = append(f.batches, ids)
	if f.down || f.failNext > 0 {
		if f.failNext > 0 {
			f.failNext--
		}
		f.failed++
		return proto.ReportAck{}, errDown
	}

	ack := proto.ReportAck{Rejected: map[string]string{}}
	for _, r := range rs {
		if reason, ok := f.reject[r.ID]; ok {
			ack.Rejected[r.ID] = reason
			continue
		}
		if f.ackLimit > 0 && len(ack.Acked) == f.ackLimit {
			continue
		}
		if f.times[r.ID] == 0 {
			if r.Seq != 0 && r.Seq <= f.high[r.Incarnation] {
				f.late = append(f.late, r.ID)
			}
			f.high[r.Incarnation] = max(f.high[r.Incarnation], r.Seq)
			f.applied = append(f.applied, r.ID)
			f.reports[r.ID] = r
		}
		f.times[r.ID]++
		ack.Acked = append(ack.Acked, r.ID)
	}
	ack.Index = uint64(len(f.applied))
	if f.dropAcks > 0 {
		f.dropAcks--
		f.failed++
		return proto.ReportAck{}, errors.New("fake coordinator: connection reset after apply")
	}
	return ack, nil
}

// lateIDs are reports first applied after a later Seq of their
// incarnation.
func (f *fakeSender) lateIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.late)
}

// appliedIDs are the ids applied, each once, in the order first applied.
func (f *fakeSender) appliedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied)
}

// dupes counts reports applied again after their first time (which the
// real FSM ignores).
func (f *fakeSender) dupes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.times {
		n += c - 1
	}
	return n
}

func (f *fakeSender) counts() (calls, failed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.failed
}

func (f *fakeSender) sentBatches() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}
