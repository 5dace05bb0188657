// Package fsm is the coordinator's Raft finite-state machine: a table of
// commands, each with one apply function that checks its preconditions
// against the state store and then changes it. Apply is deterministic: it
// reads no clock and draws no random number; everything it needs travels
// in the command.
package fsm

import (
	"encoding/json"
	"io"
	"log/slog"

	"github.com/hashicorp/raft"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Result is what Apply returns for every entry: the Raft index, the
// command's value (the object it wrote, for example) or its error.
type Result struct {
	Index uint64
	Value any
	Err   error
}

// FSM implements raft.FSM over a state.Store.
type FSM struct {
	store *state.Store
	log   *slog.Logger
}

// New returns an FSM that applies to store.
func New(store *state.Store, log *slog.Logger) *FSM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FSM{store: store, log: log}
}

// Store is the store the FSM writes.
func (f *FSM) Store() *state.Store { return f.store }

type applyFunc func(tx *state.Tx, body []byte) (any, error)

// handlers is the command table: one apply function per type.
var handlers = map[Type]applyFunc{
	TypeNodeCreate:         decode(applyNodeCreate),
	TypeNodeUpdate:         decode(applyNodeUpdate),
	TypeNodeDelete:         decode(applyNodeDelete),
	TypeNodeSetEnrolled:    decode(applyNodeSetEnrolled),
	TypeNodeSetMaintenance: decode(applyNodeSetMaintenance),
	TypeNodeProvision:      decode(applyNodeProvision),
	TypeRackPut:            decode(applyRackPut),
	TypeRackDelete:         decode(applyRackDelete),
	TypeFlavorPut:          decode(applyFlavorPut),
	TypeFlavorDelete:       decode(applyFlavorDelete),
	TypeImagePut:           decode(applyImagePut),
	TypeImageDelete:        decode(applyImageDelete),
	TypeInstanceCreate:     decode(applyInstanceCreate),
	TypeInstanceDelete:     decode(applyInstanceDelete),
	TypeSettingsUpdate:     decode(applySettingsUpdate),
	TypeTokenCreate:        decode(applyTokenCreate),
	TypeTokenRevoke:        decode(applyTokenRevoke),
	TypeServerPut:          decode(applyServerPut),
	TypeServerRemove:       decode(applyServerRemove),
	TypeNoop:               decode(func(*state.Tx, *Noop) (any, error) { return nil, nil }),
	TypeAgentReports:       decode(applyAgentReports),
	TypeLeasesExpire:       decode(applyLeasesExpire),
}

func decode[C any](fn func(tx *state.Tx, c *C) (any, error)) applyFunc {
	return func(tx *state.Tx, body []byte) (any, error) {
		c := new(C)
		if err := json.Unmarshal(body, c); err != nil {
			return nil, proto.Errorf(proto.CodeInternal, "decode %T: %v", c, err)
		}
		return fn(tx, c)
	}
}

// Apply applies one committed log entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return &Result{Index: l.Index}
	}
	return f.ApplyBytes(l.Index, l.Data)
}

// ApplyBytes applies an encoded command at index. It is Apply without
// Raft, for tests and tools.
func (f *FSM) ApplyBytes(index uint64, data []byte) *Result {
	res := &Result{Index: index}
	if len(data) == 0 {
		res.Err = proto.Errorf(proto.CodeInternal, "empty log entry at index %d", index)
		return res
	}
	h, ok := handlers[Type(data[0])]
	if !ok {
		// A newer server wrote a command this build does not know. Refuse
		// it visibly rather than guess.
		f.log.Error("unknown command type in log", "type", data[0], "index", index)
		res.Err = proto.Errorf(proto.CodeInternal, "unknown command type %d", data[0])
		return res
	}
	res.Err = f.store.Write(index, func(tx *state.Tx) error {
		v, err := h(tx, data[1:])
		res.Value = v
		return err
	})
	if res.Err != nil {
		res.Value = nil
	}
	return res
}

// Snapshot returns a point-in-time view; Persist writes it while Apply
// goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{sn: f.store.Snapshot()}, nil
}

// Restore replaces the whole state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return f.store.Restore(rc)
}

type snapshot struct{ sn *state.Snapshot }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.sn.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
