package httpboot

import (
	"net/netip"
	"strings"
	"sync"

	"github.com/metalfleet/metalfleet/proto"
)

// fakeBackend is a Backend over maps; set fields before use or under mu.
type fakeBackend struct {
	mu        sync.Mutex
	nodes     map[string]*proto.BootNode // by normalized MAC
	discovery *proto.BootConfig          // nil: discovery off
	artifacts map[string]proto.Artifact  // by sha256
	// addrs are the addresses MACs hold; a MAC not in it holds anyAddr
	// (if valid).
	addrs   map[string]netip.Addr
	anyAddr netip.Addr
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{nodes: map[string]*proto.BootNode{}, artifacts: map[string]proto.Artifact{},
		addrs: map[string]netip.Addr{}, anyAddr: netip.MustParseAddr("127.0.0.1")}
}

func (b *fakeBackend) addNode(n proto.BootNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range n.MACs {
		b.nodes[strings.ToLower(m)] = &n
	}
	for _, a := range []*proto.Artifact{n.Boot.Kernel, n.Boot.Initrd} {
		if a != nil {
			b.artifacts[a.SHA256] = *a
		}
	}
}

func (b *fakeBackend) setDiscovery(c *proto.BootConfig) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.discovery = c
	if c == nil {
		return
	}
	for _, a := range []*proto.Artifact{c.Kernel, c.Initrd} {
		if a != nil {
			b.artifacts[a.SHA256] = *a
		}
	}
}

func (b *fakeBackend) addArtifact(a proto.Artifact) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.artifacts[a.SHA256] = a
}

func (b *fakeBackend) Boot(mac string) (*proto.BootNode, proto.BootConfig, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.nodes[mac]; ok {
		return n, n.Boot, true
	}
	if b.discovery != nil {
		return nil, *b.discovery, true
	}
	return nil, proto.BootConfig{}, false
}

func (b *fakeBackend) Address(mac string) (netip.Addr, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.addrs[mac]; ok {
		return a, a.IsValid()
	}
	return b.anyAddr, b.anyAddr.IsValid()
}

func (b *fakeBackend) setAddr(mac string, a netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addrs[mac] = a
}

func (b *fakeBackend) NodeByUUID(uuid string) (*proto.BootNode, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.nodes {
		if n.UUID == uuid {
			return n, true
		}
	}
	return nil, false
}

func (b *fakeBackend) ArtifactBySHA(sha string) (proto.Artifact, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.artifacts[sha]
	return a, ok
}

// fakeReporter records reports.
type fakeReporter struct {
	mu      sync.Mutex
	reports []proto.AgentReport
}

func (r *fakeReporter) Report(rep proto.AgentReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, rep)
}

// take returns the reports so far and forgets them.
func (r *fakeReporter) take() []proto.AgentReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reports
	r.reports = nil
	return out
}

var (
	_ Backend  = (*fakeBackend)(nil)
	_ Reporter = (*fakeReporter)(nil)
)
