// Package outbox is the rack agent's durable queue of reports to the
// coordinator.
//
// Add commits a report to a bbolt bucket before it returns, so a report
// the agent has accepted survives a crash or a SIGKILL. Run delivers the
// queue oldest first, in batches, and deletes a report only once the
// coordinator has acknowledged or rejected it. A report whose
// acknowledgement is lost is sent again; the coordinator applies a report
// id once, so resending is safe, and nothing unacknowledged is ever
// dropped.
//
// Keys in the bucket are the bucket's NextSequence as big-endian uint64,
// so key order is insertion order; values are the reports as JSON.
//
// Every report is stamped at Add with the outbox's Incarnation and its
// Seq, which is its key, and both are stored inside the report: (agent,
// incarnation, seq) lets the coordinator apply each report once for any
// backlog. The incarnation is a random id made at every Open (every agent
// start), so a data directory restored from a backup, whose sequence went
// back, still sends reports the coordinator takes as new; reports queued
// before a restart keep the incarnation they were added with. Delivery is
// strictly oldest first, so the coordinator sees one incarnation's reports
// in Seq order and an older incarnation's before a newer one's.
//
// Reports that untrusted traffic on the provisioning network can cause
// have budgets of their own: mac_seen (sightings, MaxSightings) and
// boot_event (MaxBootEvents). Past its budget such a report is refused
// (Add) or left out and counted (AddBatch), and it never takes room from
// leases, callbacks and the agent's other reports, which are refused only
// past the much larger MaxQueued.
package outbox

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/proto"
)

// Errors returned by the outbox.
var (
	// ErrFull: the queue holds MaxQueued reports; the report was not
	// added.
	ErrFull = errors.New("outbox: full")
	// ErrRunning: another Run is delivering from this outbox.
	ErrRunning = errors.New("outbox: already running")
)

// Sender delivers a batch of reports to the coordinator. The answer names
// every report that is applied (Acked) or will never be (Rejected);
// reports in neither stay queued and are sent again. An error means
// nothing is known about the batch: all of it is sent again.
type Sender interface {
	Send(ctx context.Context, reports []proto.AgentReport) (proto.ReportAck, error)
}

// Config configures an Outbox. The zero value is usable.
type Config struct {
	// Bucket is the bbolt bucket holding the queue. Default "outbox".
	Bucket string
	// MaxBatch is the most reports sent in one call. Default 256.
	MaxBatch int
	// MinBackoff and MaxBackoff bound the jittered exponential wait after
	// a failed Send. Defaults 200ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// MaxQueued is the most reports other than sightings and boot events
	// queued (leases, callbacks, power); beyond it Add returns ErrFull.
	// Default 100000.
	MaxQueued int
	// MaxBootEvents is the most boot_event reports queued; beyond it Add
	// returns ErrFull for one and AddBatch leaves them out (counted in
	// Stats.BootEventsDropped). They never count against MaxQueued.
	// Default 10000.
	MaxBootEvents int
	// MaxSightings is the most mac_seen reports queued; beyond it Add
	// returns ErrFull for a sighting and AddBatch leaves sightings out
	// (counted in Stats.SightingsDropped). Sightings never count against
	// MaxQueued. Default 10000.
	MaxSightings int
	// Logger receives warnings (rejected reports, failed sends). Default:
	// discard.
	Logger *slog.Logger
	// Now stamps reports without a time. Default time.Now.
	Now func() time.Time
}

// DefaultConfig returns the defaults that Open fills into a zero Config.
func DefaultConfig() Config {
	return Config{
		Bucket:        "outbox",
		MaxBatch:      256,
		MinBackoff:    200 * time.Millisecond,
		MaxBackoff:    30 * time.Second,
		MaxQueued:     100000,
		MaxSightings:  10000,
		MaxBootEvents: 10000,
		Logger:        slog.New(slog.DiscardHandler),
		Now:           time.Now,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Bucket == "" {
		c.Bucket = d.Bucket
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = d.MaxBatch
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = d.MinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = d.MaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = d.MaxQueued
	}
	if c.MaxSightings <= 0 {
		c.MaxSightings = d.MaxSightings
	}
	if c.MaxBootEvents <= 0 {
		c.MaxBootEvents = d.MaxBootEvents
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	return c
}

// Stats counts what Run has done since Open.
type Stats struct {
	Sent     uint64 // reports acknowledged and deleted
	Rejected uint64 // reports rejected (or unreadable) and deleted
	Retries  uint64 // failed or fruitless sends that were retried
	// SightingsDropped counts mac_seen reports left out because
	// MaxSightings were queued.
	SightingsDropped uint64
	// BootEventsDropped counts boot_event reports left out because
	// MaxBootEvents were queued.
	BootEventsDropped uint64
}

// Outbox is a durable queue of reports. Add and Len are safe for
// concurrent use; one Run delivers at a time.
type Outbox struct {
	db     *bbolt.DB
	bucket []byte
	cfg    Config
	log    *slog.Logger

	// mu serialises our writes so that the queued count checked against
	// MaxQueued is exact; bbolt serialises writers anyway.
	mu        sync.Mutex
	queued    atomic.Int64 // all reports
	sightings atomic.Int64 // mac_seen reports among them
	events    atomic.Int64 // boot_event reports among them
	inc       string       // this Open's incarnation
	legacyInc string       // for reports queued before they carried one

	wake    chan struct{} // a token: something was added
	running atomic.Bool

	sent, rejected, retries, sightingsDropped, eventsDropped atomic.Uint64
}

// metaKey holds, in the bucket named Bucket+".meta", the incarnation given
// to reports queued before reports carried one (the incarnation of every
// report before incarnations were made per Open).
var metaKey = []byte("incarnation")

// budget names the budget a report kind counts against.
type budget int

const (
	budgetQueued    budget = iota // leases, callbacks, power: MaxQueued
	budgetSightings               // mac_seen: MaxSightings
	budgetEvents                  // boot_event: MaxBootEvents
)

func budgetOf(k proto.ReportKind) budget {
	switch k {
	case proto.ReportMACSeen:
		return budgetSightings
	case proto.ReportBootEvent:
		return budgetEvents
	}
	return budgetQueued
}

// Open creates the bucket if needed and counts what is queued in it. The
// db stays the caller's, shared with other buckets; closing it is the
// caller's job, after Run has returned.
func Open(db *bbolt.DB, cfg Config) (*Outbox, error) {
	cfg = cfg.withDefaults()
	o := &Outbox{
		db:     db,
		bucket: []byte(cfg.Bucket),
		cfg:    cfg,
		log:    cfg.Logger.With("component", "outbox"),
		wake:   make(chan struct{}, 1),
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(o.bucket)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists([]byte(cfg.Bucket + ".meta"))
		if err != nil {
			return err
		}
		if v := meta.Get(metaKey); len(v) > 0 {
			o.legacyInc = string(v)
		} else {
			o.legacyInc = uuid.NewString()
			if err := meta.Put(metaKey, []byte(o.legacyInc)); err != nil {
				return err
			}
		}
		o.inc = uuid.NewString()
		var n, sightings, events int64
		err = b.ForEach(func(_, v []byte) error {
			n++
			var r struct {
				Kind proto.ReportKind `json:"kind"`
			}
			if json.Unmarshal(v, &r) == nil {
				switch budgetOf(r.Kind) {
				case budgetSightings:
					sightings++
				case budgetEvents:
					events++
				}
			}
			return nil
		})
		o.queued.Store(n)
		o.sightings.Store(sightings)
		o.events.Store(events)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: open bucket %q: %w", cfg.Bucket, err)
	}
	return o, nil
}

// Len is the number of reports queued.
func (o *Outbox) Len() int { return int(o.queued.Load()) }

// Sightings is the number of mac_seen reports queued.
func (o *Outbox) Sightings() int { return int(o.sightings.Load()) }

// BootEvents is the number of boot_event reports queued.
func (o *Outbox) BootEvents() int { return int(o.events.Load()) }

// Incarnation is the id stamped on every report added since Open: made
// anew at every Open.
func (o *Outbox) Incarnation() string { return o.inc }

// Stats returns the delivery counters.
func (o *Outbox) Stats() Stats {
	return Stats{Sent: o.sent.Load(), Rejected: o.rejected.Load(), Retries: o.retries.Load(),
		SightingsDropped: o.sightingsDropped.Load(), BootEventsDropped: o.eventsDropped.Load()}
}

// Add queues r and returns its id once it is committed to disk. An empty
// ID gets a random uuid and a zero Time gets Now; Incarnation and Seq are
// always set by the outbox. A sighting past MaxSightings, a boot event
// past MaxBootEvents, or any other report past MaxQueued, gets ErrFull.
func (o *Outbox) Add(r proto.AgentReport) (string, error) {
	rs := []proto.AgentReport{r}
	if err := o.add(rs, true); err != nil {
		return "", err
	}
	return rs[0].ID, nil
}

// AddBatch queues rs in one transaction. Leases, callbacks and power
// reports go in all together or, on error (ErrFull past MaxQueued), none
// of rs; sightings past MaxSightings and boot events past MaxBootEvents
// are left out and counted, never an error, so they can never cause the
// others to be refused. IDs, times, the incarnation and sequence numbers
// are filled in as by Add; rs is changed in place, so the caller can read
// them (a report left out keeps Seq 0).
func (o *Outbox) AddBatch(rs []proto.AgentReport) error {
	if len(rs) == 0 {
		return nil
	}
	return o.add(rs, false)
}

func (o *Outbox) add(rs []proto.AgentReport, strict bool) error {
	for i := range rs {
		if rs[i].ID == "" {
			rs[i].ID = uuid.NewString()
		}
		if rs[i].Time.IsZero() {
			rs[i].Time = o.cfg.Now()
		}
		rs[i].Incarnation, rs[i].Seq = o.inc, 0
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	var others, sightings, events int
	for i := range rs {
		switch budgetOf(rs[i].Kind) {
		case budgetSightings:
			sightings++
		case budgetEvents:
			events++
		default:
			others++
		}
	}
	if nq := int(o.queued.Load() - o.sightings.Load() - o.events.Load()); nq+others > o.cfg.MaxQueued {
		return fmt.Errorf("%w: %d queued, max %d", ErrFull, nq, o.cfg.MaxQueued)
	}
	roomS := o.cfg.MaxSightings - int(o.sightings.Load())
	roomE := o.cfg.MaxBootEvents - int(o.events.Load())
	if strict && sightings > roomS {
		o.sightingsDropped.Add(uint64(sightings))
		return fmt.Errorf("%w: %d sightings queued, max %d", ErrFull, o.sightings.Load(), o.cfg.MaxSightings)
	}
	if strict && events > roomE {
		o.eventsDropped.Add(uint64(events))
		return fmt.Errorf("%w: %d boot events queued, max %d", ErrFull, o.events.Load(), o.cfg.MaxBootEvents)
	}
	added, addedS, addedE := 0, 0, 0
	err := o.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(o.bucket)
		added, addedS, addedE = 0, 0, 0
		for i := range rs {
			rs[i].Seq = 0
			switch budgetOf(rs[i].Kind) {
			case budgetSightings:
				if addedS >= roomS {
					continue
				}
				addedS++
			case budgetEvents:
				if addedE >= roomE {
					continue
				}
				addedE++
			}
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			rs[i].Seq = seq
			v, err := json.Marshal(&rs[i])
			if err != nil {
				return fmt.Errorf("encode report %s: %w", rs[i].ID, err)
			}
			if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), v); err != nil {
				return err
			}
			added++
		}
		return nil
	})
	if err != nil {
		for i := range rs {
			rs[i].Seq = 0
		}
		return fmt.Errorf("outbox: add: %w", err)
	}
	o.queued.Add(int64(added))
	o.sightings.Add(int64(addedS))
	o.events.Add(int64(addedE))
	if left := sightings - addedS; left > 0 {
		o.sightingsDropped.Add(uint64(left))
	}
	if left := events - addedE; left > 0 {
		o.eventsDropped.Add(uint64(left))
	}

	select {
	case o.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
	return nil
}

// Run delivers queued reports through s until ctx ends, then returns nil.
// It sleeps while the queue is empty and wakes when a report is added.
// After a failed Send, or one that settled nothing, it waits a jittered,
// growing backoff and sends the same reports again. Only one Run may be
// active; another returns ErrRunning. An error reading or writing the db
// ends Run with that error.
func (o *Outbox) Run(ctx context.Context, s Sender) error {
	if !o.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer o.running.Store(false)

	failures := 0
	for ctx.Err() == nil {
		n, err := o.deliver(ctx, s)
		var fatal *dbError
		switch {
		case errors.As(err, &fatal):
			return err
		case ctx.Err() != nil:
			return nil
		case err != nil || n == 0:
			if err == nil {
				err = errNoProgress
			}
			failures++
			o.retries.Add(1)
			wait := o.backoff(failures)
			o.log.Warn("delivery failed, will retry", "err", err, "queued", o.Len(),
				"attempt", failures, "backoff", wait)
			sleep(ctx, wait)
		case n < 0:
			// Nothing queued: sleep until an Add.
			failures = 0
			select {
			case <-ctx.Done():
			case <-o.wake:
			}
		default:
			failures = 0
		}
	}
	return nil
}

// errNoProgress: a Send answered without settling any report of the batch.
var errNoProgress = errors.New("coordinator settled none of the batch")

// dbError is a failure of the db itself, which Run does not retry.
type dbError struct{ err error }

func (e *dbError) Error() string { return "outbox: " + e.err.Error() }
func (e *dbError) Unwrap() error { return e.err }

// item is one queued report and its key.
type item struct {
	key []byte
	r   proto.AgentReport
}

// deliver sends the oldest batch once and settles the answer. It returns
// -1 if the queue was empty, else the number of reports deleted (acked,
// rejected or unreadable), with the Sender's error if it failed.
func (o *Outbox) deliver(ctx context.Context, s Sender) (int, error) {
	items, bad, err := o.oldest()
	if err != nil {
		return 0, &dbError{err}
	}
	if len(items) == 0 && len(bad) == 0 {
		return -1, nil
	}
	if len(bad) > 0 {
		// A value we cannot decode can never be sent; keeping it would
		// stop the queue for good.
		if err := o.delete(bad); err != nil {
			return 0, &dbError{err}
		}
		o.rejected.Add(uint64(len(bad)))
		return len(bad), nil
	}

	// Send each id once, even if the caller queued it twice.
	reports := make([]proto.AgentReport, 0, len(items))
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if !seen[it.r.ID] {
			seen[it.r.ID] = true
			reports = append(reports, it.r)
		}
	}
	ack, err := s.Send(ctx, reports)
	if err != nil {
		return 0, err
	}

	acked := make(map[string]bool, len(ack.Acked))
	for _, id := range ack.Acked {
		acked[id] = true
	}
	var done []item
	var nacked, nrejected uint64
	for _, it := range items {
		if reason, ok := ack.Rejected[it.r.ID]; ok {
			o.log.Warn("report rejected, dropping it", "id", it.r.ID, "kind", it.r.Kind, "reason", reason)
			done = append(done, it)
			nrejected++
		} else if acked[it.r.ID] {
			done = append(done, it)
			nacked++
		}
	}
	if err := o.delete(done); err != nil {
		return 0, &dbError{err}
	}
	o.sent.Add(nacked)
	o.rejected.Add(nrejected)
	return len(done), nil
}

// oldest reads up to MaxBatch reports in key order. Values that do not
// decode are logged and returned in bad.
func (o *Outbox) oldest() (items []item, bad []item, err error) {
	err = o.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(o.bucket).Cursor()
		for k, v := c.First(); k != nil && len(items)+len(bad) < o.cfg.MaxBatch; k, v = c.Next() {
			key := append([]byte(nil), k...) // k is only valid in the tx
			var r proto.AgentReport
			if err := json.Unmarshal(v, &r); err != nil {
				o.log.Error("unreadable report, dropping it", "key", fmt.Sprintf("%x", key), "err", err)
				bad = append(bad, item{key: key})
				continue
			}
			if r.Seq == 0 && len(key) == 8 {
				// Queued before reports carried their sequence: they
				// share the sequence of the incarnation kept in meta.
				r.Seq, r.Incarnation = binary.BigEndian.Uint64(key), o.legacyInc
			}
			items = append(items, item{key: key, r: r})
		}
		return nil
	})
	return items, bad, err
}

func (o *Outbox) delete(items []item) error {
	if len(items) == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	n, ns, ne := 0, 0, 0
	err := o.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(o.bucket)
		n, ns, ne = 0, 0, 0
		for _, it := range items {
			if b.Get(it.key) == nil {
				continue
			}
			if err := b.Delete(it.key); err != nil {
				return err
			}
			n++
			switch budgetOf(it.r.Kind) {
			case budgetSightings:
				ns++
			case budgetEvents:
				ne++
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.queued.Add(-int64(n))
	o.sightings.Add(-int64(ns))
	o.events.Add(-int64(ne))
	return nil
}

// backoff is the wait before retry number attempt (1, 2, ...): MinBackoff
// doubled each time up to MaxBackoff, then a random point in its upper
// half.
func (o *Outbox) backoff(attempt int) time.Duration {
	d := o.cfg.MinBackoff
	for i := 1; i < attempt && d < o.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, o.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
