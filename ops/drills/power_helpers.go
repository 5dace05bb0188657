package drills

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

// RackForCluster creates rack name (127.0.0.0/24, so loopback sockets can
// be its relays) through the admin client c and an agent token for it,
// written to a file whose path it returns.
func RackForCluster(t testing.TB, c *apiclient.Client, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Do(ctx, "POST", "/v1/racks", proto.Rack{Name: name, Subnet: "127.0.0.0/24", BootServer: "127.0.0.1",
		PoolStart: "127.0.0.100", PoolEnd: "127.0.0.199"}, nil); err != nil {
		t.Fatalf("create rack %s: %v", name, err)
	}
	var tok proto.TokenCreated
	if _, err := c.Do(ctx, "POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: name}, &tok); err != nil {
		t.Fatalf("agent token for rack %s: %v", name, err)
	}
	path := filepath.Join(t.TempDir(), "agent.token")
	if err := os.WriteFile(path, []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Addrs lists the HTTP addresses of procs, comma-separated (a rack
// agent's --coordinator).
func Addrs(procs []*Proc) string {
	var a []string
	for _, p := range procs {
		a = append(a, p.HTTPAddr)
	}
	return strings.Join(a, ",")
}

// CountingPower is a simulated machine's power behind an ipmisim BMC
// that tells when an action reaches it: each Power call is sent on
// Acting (if nobody is waiting, it is dropped) before it is performed.
// An action given a delay by SetLate is performed at once but answered
// that much later (on top of the BMC's Slow): a BMC that carries out a
// reset and is slow to say so, while the session setup and the reads
// around it keep their usual pace.
type CountingPower struct {
	*ipmisim.MemPower
	Acting chan ipmisim.Action

	mu    sync.Mutex
	calls []ipmisim.Action
	late  map[ipmisim.Action]time.Duration
}

// NewCountingPower is a machine that is off.
func NewCountingPower() *CountingPower {
	return &CountingPower{MemPower: ipmisim.NewMemPower(false), Acting: make(chan ipmisim.Action, 16),
		late: map[ipmisim.Action]time.Duration{}}
}

// SetLate delays the answer to every later action a by d (0: no delay).
func (p *CountingPower) SetLate(a ipmisim.Action, d time.Duration) {
	p.mu.Lock()
	p.late[a] = d
	p.mu.Unlock()
}

// Power records and performs a, then answers after a's delay (or when
// ctx ends: the BMC stopped).
func (p *CountingPower) Power(ctx context.Context, a ipmisim.Action) error {
	p.mu.Lock()
	p.calls = append(p.calls, a)
	late := p.late[a]
	p.mu.Unlock()
	select {
	case p.Acting <- a:
	default:
	}
	if err := p.MemPower.Power(ctx, a); err != nil {
		return err
	}
	if late > 0 {
		// The simulated BMC's latency, not the test's synchronisation.
		tm := time.NewTimer(late)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-ctx.Done():
		}
	}
	return nil
}

// Calls returns every power action that reached the machine, in order.
func (p *CountingPower) Calls() []ipmisim.Action {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ipmisim.Action(nil), p.calls...)
}

// Intent returns node id's intent of generation gen as a coordinator
// answers it (a consistent read), or an error.
func Intent(ctx context.Context, c *apiclient.Client, id string, gen uint64) (proto.Intent, error) {
	n, err := c.Node(ctx, id)
	if err != nil {
		return proto.Intent{}, err
	}
	for _, in := range n.Intents {
		if in.Generation == gen {
			return in, nil
		}
	}
	return proto.Intent{}, fmt.Errorf("node %s has no intent of generation %d (intents %+v, bmc generation %d)", id, gen, n.Intents, n.BMCGeneration)
}
