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
// Every report is stamped at Add with the outbox's Incarnation (a random
// id made once, when the bucket is first created, and kept beside it) and
// its Seq, which is its key: (agent, incarnation, seq) lets the
// coordinator apply each report once for any backlog. Delivery is strictly
// oldest first, so the coordinator sees one incarnation's reports in Seq
// order.
//
// mac_seen reports (sightings) have a budget of their own (MaxSightings):
// past it, sightings are refused, and they never take room from leases
// and callbacks, which are refused only past the much larger MaxQueued.
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
	// MaxQueued is the most reports other than sightings queued; beyond
	// it Add returns ErrFull. Default 100000.
	MaxQueued int
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
		Bucket:       "outbox",
		MaxBatch:     256,
		MinBackoff:   200 * time.Millisecond,
		MaxBackoff:   30 * time.Second,
		MaxQueued:    100000,
		MaxSightings: 10000,
		Logger:       slog.New(slog.DiscardHandler),
		Now:          time.Now,
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
	inc       string

	wake    chan struct{} // a token: something was added
	running atomic.Bool

	sent, rejected, retries, sightingsDropped atomic.Uint64
}

// metaKey holds the incarnation in the bucket named Bucket+".meta".
var metaKey = []byte("incarnation")

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
			o.inc = string(v)
		} else {
			o.inc = uuid.NewString()
			if err := meta.Put(metaKey, []byte(o.inc)); err != nil {
				return err
			}
		}
		var n, sightings int64
		err = b.ForEach(func(_, v []byte) error {
			n++
			var r struct {
				Kind proto.ReportKind `json:"kind"`
			}
			if json.Unmarshal(v, &r) == nil && r.Kind == proto.ReportMACSeen {
				sightings++
			}
			return nil
		})
		o.queued.Store(n)
		o.sightings.Store(sightings)
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

// Incarnation is the id stamped on every report of this outbox: made
// when its bucket was first created and kept with it.
func (o *Outbox) Incarnation() string { return o.inc }

// Stats returns the delivery counters.
func (o *Outbox) Stats() Stats {
	return Stats{Sent: o.sent.Load(), Rejected: o.rejected.Load(), Retries: o.retries.Load(),
		SightingsDropped: o.sightingsDropped.Load()}
}

// Add queues r and returns its id once it is committed to disk. An empty
// ID gets a random uuid and a zero Time gets Now; Incarnation and Seq are
// always set by the outbox. A sighting past MaxSightings, or any other
// report past MaxQueued, gets ErrFull.
func (o *Outbox) Add(r proto.AgentReport) (string, error) {
	rs := []proto.AgentReport{r}
	if err := o.add(rs, true); err != nil {
		return "", err
	}
	return rs[0].ID, nil
}

// AddBatch queues rs in one transaction. Reports other than sightings go
// in all together or, on error (ErrFull past MaxQueued), none of them;
// sightings past MaxSightings are left out and counted (never an error).
// IDs, times, the incarnation and sequence numbers are filled in as by
// Add; rs is changed in place, so the caller can read them (a sighting
// left out keeps Seq 0).
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
	var others, sightings int
	for i := range rs {
		if rs[i].Kind == proto.ReportMACSeen {
			sightings++
		} else {
			others++
		}
	}
	if nq := int(o.queued.Load() - o.sightings.Load()); nq+others > o.cfg.MaxQueued {
		return fmt.Errorf("%w: %d queued, max %d", ErrFull, nq, o.cfg.MaxQueued)
	}
	room := o.cfg.MaxSightings - int(o.sightings.Load())
	if strict && sightings > room {
		o.sightingsDropped.Add(uint64(sightings))
		return fmt.Errorf("%w: %d sightings queued, max %d", ErrFull, o.sightings.Load(), o.cfg.MaxSightings)
	}
	added, addedSightings := 0, 0
	err := o.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(o.bucket)
		added, addedSightings = 0, 0
		for i := range rs {
			rs[i].Seq = 0
			if rs[i].Kind == proto.ReportMACSeen {
				if addedSightings >= room {
					continue
				}
				addedSightings++
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
	o.sightings.Add(int64(addedSightings))
	if left := sightings - addedSightings; left > 0 {
		o.sightingsDropped.Add(uint64(left))
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
				// Queued before reports carried their sequence.
				r.Seq, r.Incarnation = binary.BigEndian.Uint64(key), o.inc
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
	n, ns := 0, 0
	err := o.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(o.bucket)
		n, ns = 0, 0
		for _, it := range items {
			if b.Get(it.key) == nil {
				continue
			}
			if err := b.Delete(it.key); err != nil {
				return err
			}
			n++
			if it.r.Kind == proto.ReportMACSeen {
				ns++
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	o.queued.Add(-int64(n))
	o.sightings.Add(-int64(ns))
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
