package power

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/proto"
)

// ledgerBucket holds, per node uuid, the highest intent generation this
// agent started and the highest it finished (reported), as JSON.
var ledgerBucket = []byte("bmc-intents")

// record is one node's entry.
type record struct {
	Started uint64          `json:"started"`
	Done    uint64          `json:"done"`
	Action  proto.BMCAction `json:"action,omitempty"` // the started one's
}

// ledger is the durable record of the generations acted on, with a copy
// in memory. Each write is committed (fsync) before it returns.
type ledger struct {
	db *bbolt.DB
	mu sync.Mutex
	m  map[string]record
	// created is when this record began (the agent's data directory was
	// made): an intent made before it may have been acted on by this
	// agent's former self, whose record is gone, so it is not acted on.
	created time.Time
	// failPut, if set (tests only), fails the writes it returns an error for.
	failPut func() error
}

// ledgerMeta holds the record's creation time.
var ledgerMeta = []byte("bmc-intents-meta")

func openLedger(db *bbolt.DB, now time.Time) (*ledger, error) {
	l := &ledger{db: db, m: map[string]record{}}
	err := db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(ledgerMeta)
		if err != nil {
			return err
		}
		if v := meta.Get([]byte("created")); v != nil {
			if err := l.created.UnmarshalText(v); err != nil {
				return fmt.Errorf("created: %w", err)
			}
		} else {
			l.created = now.UTC()
			v, _ := l.created.MarshalText()
			if err := meta.Put([]byte("created"), v); err != nil {
				return err
			}
		}
		b, err := tx.CreateBucketIfNotExists(ledgerBucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("node %s: %w", k, err)
			}
			l.m[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bmc intent record: %w", err)
	}
	return l, nil
}

func (l *ledger) get(uuid string) record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[uuid]
}

// unfinished lists the nodes with a generation started and not done.
func (l *ledger) unfinished() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for uuid, r := range l.m {
		if r.Started > r.Done {
			out = append(out, uuid)
		}
	}
	return out
}

// start records generation g started (before acting on it).
func (l *ledger) start(uuid string, g uint64, a proto.BMCAction) error {
	r := l.get(uuid)
	r.Started, r.Action = max(r.Started, g), a
	return l.put(uuid, r)
}

// done records generation g finished (after its report is queued).
func (l *ledger) done(uuid string, g uint64) error {
	r := l.get(uuid)
	r.Done = max(r.Done, g)
	r.Started = max(r.Started, g)
	return l.put(uuid, r)
}

func (l *ledger) put(uuid string, r record) error {
	if l.failPut != nil {
		if err := l.failPut(); err != nil {
			return fmt.Errorf("bmc intent record: %w", err)
		}
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := l.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(ledgerBucket).Put([]byte(uuid), raw) }); err != nil {
		return fmt.Errorf("bmc intent record: %w", err)
	}
	l.mu.Lock()
	l.m[uuid] = r
	l.mu.Unlock()
	return nil
}
