package power

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bootstate"
)

// conn is one node's BMC: its fields and the driver opened from them.
// mu makes it one operation at a time.
type conn struct {
	cfg proto.BMC

	mu     sync.Mutex
	drv    bmc.Driver // nil until the first call
	closed bool       // the fields changed or the node left
}

// errConnGone: the node's BMC fields changed (or it left) while a call
// waited for its connection.
var errConnGone = errors.New("the node's BMC settings changed")

// updateConns keeps one conn per node of v with a BMC: a node whose
// fields changed gets a new one, and the old one, like those of nodes
// that left, is closed once its call in flight (if any) returns. Under
// m.mu.
func (m *Manager) updateConns(v *bootstate.View) {
	seen := map[string]bool{}
	if v != nil {
		for i := range v.State.Nodes {
			n := &v.State.Nodes[i]
			if n.BMC == nil || n.UUID == "" {
				continue
			}
			seen[n.UUID] = true
			c, ok := m.conns[n.UUID]
			if ok && c.cfg == n.BMC.BMC {
				continue
			}
			if ok {
				m.log.Info("bmc settings changed; reconnecting", "node", n.UUID, "driver", n.BMC.Driver, "address", redact(n.BMC.Address))
				m.retire(c)
				delete(m.last, n.UUID) // power sync reports again
			}
			m.conns[n.UUID] = &conn{cfg: n.BMC.BMC}
		}
	}
	for uuid, c := range m.conns {
		if !seen[uuid] {
			m.retire(c)
			delete(m.conns, uuid)
			delete(m.last, uuid)
			delete(m.seq, uuid)
		}
	}
}

// redact hides a password written into a URL address
// (https://user:password@host/...), for logs.
func redact(addr string) string {
	if u, err := url.Parse(addr); err == nil && u.User != nil {
		return u.Redacted()
	}
	return addr
}

// retire closes c once no call uses it.
func (m *Manager) retire(c *conn) {
	if c.mu.TryLock() {
		c.shut()
		c.mu.Unlock()
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		c.mu.Lock()
		c.shut()
		c.mu.Unlock()
	}()
}

// shut closes the driver; under c.mu.
func (c *conn) shut() {
	c.closed = true
	if c.drv != nil {
		_ = c.drv.Close()
		c.drv = nil
	}
}

// closeAll closes every driver (Run's end, after the workers).
func (m *Manager) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uuid, c := range m.conns {
		c.mu.Lock()
		c.shut()
		c.mu.Unlock()
		delete(m.conns, uuid)
	}
}

// call makes one driver call on uuid's BMC: alone on that BMC, within
// the agent's concurrency limit, with CallTimeout.
func (m *Manager) call(ctx context.Context, uuid string, fn func(context.Context, bmc.Driver) error) error {
	for range 3 {
		m.mu.Lock()
		c := m.conns[uuid]
		m.mu.Unlock()
		if c == nil {
			return bmc.Errorf("connect", proto.BMCErrUnsupported, "the node has no BMC configured")
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			continue
		}
		err := m.callLocked(ctx, c, fn)
		c.mu.Unlock()
		return err
	}
	return bmc.Errorf("connect", proto.BMCErrRefused, "%v", errConnGone)
}

func (m *Manager) callLocked(ctx context.Context, c *conn, fn func(context.Context, bmc.Driver) error) error {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-m.sem }()
	m.st.inflight.Add(1)
	defer m.st.inflight.Add(-1)
	m.st.calls.Add(1)
	if c.drv == nil {
		d, err := bmc.Open(c.cfg)
		if err != nil {
			m.st.callErrors.Add(1)
			var be *bmc.Error
			if !errors.As(err, &be) {
				err = &bmc.Error{Op: "connect", Kind: proto.BMCErrRefused, Err: err}
			}
			return err
		}
		c.drv = d
	}
	limit := m.cfg.CallTimeout
	if d, ok := ctx.Value(callTimeoutKey{}).(time.Duration); ok && d > limit {
		limit = d
	}
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := fn(cctx, c.drv)
	if err != nil {
		m.st.callErrors.Add(1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var be *bmc.Error
		if !errors.As(err, &be) {
			// A driver's error that is not an *bmc.Error: classify it.
			err = &bmc.Error{Op: "call", Kind: bmc.KindOf(err), Err: err}
		}
		if errors.Is(cctx.Err(), context.DeadlineExceeded) && be != nil && be.Kind != proto.BMCErrTimeout {
			err = &bmc.Error{Op: be.Op, Kind: proto.BMCErrTimeout, Err: fmt.Errorf("no answer within %s: %w", limit, err)}
		}
	}
	return err
}

// callTimeoutKey carries a longer bound for one call than CallTimeout.
type callTimeoutKey struct{}

// withCallTimeout lets the calls made with ctx take up to d.
func withCallTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, callTimeoutKey{}, d)
}
