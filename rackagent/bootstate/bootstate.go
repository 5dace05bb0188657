// Package bootstate keeps a rack agent's copy of its rack's desired boot
// state: it long-polls the coordinator's blocking API, swaps in each new
// state whole, and keeps the last one in a bolt bucket, so the rack goes
// on booting from it while the coordinator is away, across agent restarts.
package bootstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/metalfleet/metalfleet/proto"
)

// Source is where boot state comes from: the coordinator's API.
type Source interface {
	BootState(ctx context.Context, rack string, index uint64, wait time.Duration) (*proto.RackBootState, error)
}

// View is one immutable boot state with its lookups. Never change it.
// The rack's addresses are parsed once, here, when a state arrives.
type View struct {
	State *proto.RackBootState
	// Prefix is the rack's subnet (invalid if it has none).
	Prefix netip.Prefix
	// PoolStart and PoolEnd bound the rack's dynamic pool (invalid if it
	// has none).
	PoolStart, PoolEnd netip.Addr
	// Gateway and BootServer are the rack's router and TFTP server
	// (invalid if unset).
	Gateway, BootServer netip.Addr
	// DNS are the rack's name servers that parse.
	DNS []netip.Addr

	byMAC      map[string]*proto.BootNode
	byUUID     map[string]*proto.BootNode
	byIP       map[netip.Addr]*proto.BootNode
	nodeIP     map[*proto.BootNode]netip.Addr
	leaseByMAC map[string]proto.Lease
	leaseByIP  map[netip.Addr]proto.Lease
}

// NewView indexes a boot state.
func NewView(st *proto.RackBootState) *View {
	v := &View{State: st, byMAC: map[string]*proto.BootNode{}, byUUID: map[string]*proto.BootNode{}, byIP: map[netip.Addr]*proto.BootNode{}, nodeIP: map[*proto.BootNode]netip.Addr{},
		leaseByMAC: map[string]proto.Lease{}, leaseByIP: map[netip.Addr]proto.Lease{}}
	rk := &st.Rack
	if p, err := netip.ParsePrefix(rk.Subnet); err == nil {
		v.Prefix = p
	}
	s, err1 := netip.ParseAddr(rk.PoolStart)
	e, err2 := netip.ParseAddr(rk.PoolEnd)
	if err1 == nil && err2 == nil && s.Is4() && e.Is4() && !e.Less(s) {
		v.PoolStart, v.PoolEnd = s, e
	}
	if a, err := netip.ParseAddr(rk.Gateway); err == nil {
		v.Gateway = a
	}
	if a, err := netip.ParseAddr(rk.BootServer); err == nil {
		v.BootServer = a
	}
	for _, d := range rk.DNS {
		if a, err := netip.ParseAddr(d); err == nil {
			v.DNS = append(v.DNS, a)
		}
	}
	for i := range st.Nodes {
		n := &st.Nodes[i]
		if n.UUID != "" {
			v.byUUID[n.UUID] = n
		}
		for _, m := range n.MACs {
			if hw, err := net.ParseMAC(m); err == nil {
				v.byMAC[hw.String()] = n
			}
		}
		if a, err := netip.ParseAddr(n.IP); err == nil {
			v.byIP[a] = n
			v.nodeIP[n] = a
		}
	}
	for _, l := range st.Leases {
		if a, err := netip.ParseAddr(l.IP); err == nil {
			v.leaseByIP[a] = l
			v.leaseByMAC[l.MAC] = l
		}
	}
	return v
}

// NodeByUUID finds a node by its uuid.
func (v *View) NodeByUUID(uuid string) (*proto.BootNode, bool) {
	n, ok := v.byUUID[uuid]
	return n, ok
}

// HasPool reports whether the rack has a dynamic pool.
func (v *View) HasPool() bool { return v.PoolStart.IsValid() }

// InPool reports whether ip lies in the rack's dynamic pool.
func (v *View) InPool(ip netip.Addr) bool {
	return v.PoolStart.IsValid() && !ip.Less(v.PoolStart) && !v.PoolEnd.Less(ip)
}

// Node returns the known node with mac.
func (v *View) Node(mac net.HardwareAddr) (*proto.BootNode, bool) {
	n, ok := v.byMAC[mac.String()]
	return n, ok
}

// NodeIP returns n's reserved address, parsed when the view was made.
func (v *View) NodeIP(n *proto.BootNode) (netip.Addr, bool) {
	a, ok := v.nodeIP[n]
	return a, ok
}

// NodeByIP returns the node whose reserved address is ip.
func (v *View) NodeByIP(ip netip.Addr) (*proto.BootNode, bool) {
	n, ok := v.byIP[ip]
	return n, ok
}

// LeaseOfMAC returns the coordinator's record of mac's dynamic lease.
func (v *View) LeaseOfMAC(mac string) (proto.Lease, bool) {
	l, ok := v.leaseByMAC[mac]
	return l, ok
}

// LeaseOfIP returns the coordinator's record of ip's dynamic lease.
func (v *View) LeaseOfIP(ip netip.Addr) (proto.Lease, bool) {
	l, ok := v.leaseByIP[ip]
	return l, ok
}

// Store holds the current View and keeps it fresh.
type Store struct {
	db     *bbolt.DB
	rack   string
	log    *slog.Logger
	view   atomic.Pointer[View]
	mu     sync.Mutex
	notify chan struct{} // closed and replaced on every new view
	// Wait bounds one long poll (default 60 s).
	Wait time.Duration
	// MinInterval spaces long polls (default 250 ms): a rack whose state
	// changes many times a second (a burst of leases) is fetched a few
	// times a second, not once per change.
	MinInterval time.Duration
	// synced is set once a state came from the coordinator in this run.
	synced atomic.Bool
}

var (
	bucket = []byte("bootstate")
	key    = []byte("state")
)

// Open loads the last saved state of rack from db, if any.
func Open(db *bbolt.DB, rack string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{db: db, rack: rack, log: log, notify: make(chan struct{}), Wait: 60 * time.Second, MinInterval: 250 * time.Millisecond}
	err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		raw := b.Get(key)
		if raw == nil {
			return nil
		}
		var st proto.RackBootState
		if err := json.Unmarshal(raw, &st); err != nil {
			log.Warn("saved boot state is unreadable; waiting for the coordinator", "err", err)
			return nil
		}
		if st.Rack.Name != rack {
			log.Warn("saved boot state is for another rack; ignoring it", "saved", st.Rack.Name, "rack", rack)
			return nil
		}
		s.view.Store(NewView(&st))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boot state: %w", err)
	}
	if v := s.view.Load(); v != nil {
		log.Info("boot state loaded from disk", "rack", rack, "index", v.State.Index, "nodes", len(v.State.Nodes))
	}
	return s, nil
}

// View returns the current view, nil before any state is known.
func (s *Store) View() *View { return s.view.Load() }

// Changed returns a channel closed at the next new view.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

// Synced reports whether a state came from the coordinator since start.
func (s *Store) Synced() bool { return s.synced.Load() }

// Set saves st and makes it current.
func (s *Store) Set(st *proto.RackBootState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucket).Put(key, raw) }); err != nil {
		return fmt.Errorf("saving boot state: %w", err)
	}
	s.view.Store(NewView(st))
	s.mu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// Run long-polls src until ctx ends, saving and swapping in every new
// state. Errors are logged and retried with backoff: the agent keeps
// serving the last state it has.
func (s *Store) Run(ctx context.Context, src Source) error {
	backoff := 100 * time.Millisecond
	var last time.Time
	for ctx.Err() == nil {
		if d := s.MinInterval - time.Since(last); d > 0 {
			sleep(ctx, d)
		}
		last = time.Now()
		var idx uint64
		if v := s.View(); v != nil && s.synced.Load() {
			idx = v.State.Index
		}
		st, err := src.BootState(ctx, s.rack, idx, s.Wait)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Warn("boot state fetch failed; serving the last known state", "rack", s.rack, "err", err, "retry_in", backoff)
			sleep(ctx, backoff+time.Duration(rand.Int64N(int64(backoff/2)+1)))
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if v := s.View(); v != nil && s.synced.Load() && st.Index <= v.State.Index {
			continue // the wait ended with nothing new
		}
		if st.Rack.Name != s.rack {
			s.log.Error("coordinator sent boot state of another rack", "got", st.Rack.Name, "want", s.rack)
			sleep(ctx, time.Second)
			continue
		}
		if err := s.Set(st); err != nil {
			s.log.Error("saving boot state", "err", err)
		}
		if !s.synced.Swap(true) {
			s.log.Info("boot state synced", "rack", s.rack, "index", st.Index, "nodes", len(st.Nodes))
		}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
