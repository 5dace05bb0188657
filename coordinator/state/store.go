// Package state is the coordinator's in-memory, indexed copy of the fleet:
// nodes, racks, flavors, images, instances, settings, tokens, servers and
// the ids of reports already applied. The FSM is its only writer; API
// handlers read copies of its objects and block on its index.
//
// Every change is stamped with the Raft index that made it, and the store's
// index is the index of its last change, which is what blocking queries
// wait on.
package state

import (
	"context"
	"encoding/base64"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/btree"

	"github.com/metalfleet/metalfleet/proto"
)

// Store is safe for concurrent use: one writer (the FSM, through Write) and
// any number of readers.
type Store struct {
	mu    sync.RWMutex
	d     *data
	watch chan struct{} // closed and replaced on every change
}

// data is everything a snapshot holds. It is replaced whole on restore.
type data struct {
	index uint64

	nodes      map[string]*proto.Node // by uuid
	nodeByName map[string]string
	nodeByMAC  map[string]string
	// nodeOrder holds every node's nodeKey, in list order (name, uuid),
	// so a page of a list starts where the last ended without a sort.
	nodeOrder *btree.BTreeG[string]
	// nodeByIdent maps a system identity (proto.SystemIdentity of the
	// node's inventory) to the uuids that have it, sorted; identOf is the
	// reverse. Discovery finds a machine by them in O(1).
	nodeByIdent map[string][]string
	identOf     map[string]string
	// rackOrder holds each rack's nodes' nodeKeys in list order, so a
	// rack's boot state, and a page of one rack's nodes, cost that
	// rack's nodes, not the fleet's.
	rackOrder map[string]*btree.BTreeG[string]

	racks     map[string]*proto.Rack
	flavors   map[string]*proto.Flavor
	images    map[string]*proto.Image
	instances map[string]*proto.Instance // by uuid
	instByNm  map[string]string

	tokens      map[string]*proto.Token // by id
	tokenByHash map[string]string

	servers  map[string]*proto.Server
	settings proto.Settings

	// agentSeqs is, per rack agent (rack + "/" + name), the highest
	// report seq applied of each of its recent incarnations.
	agentSeqs map[string]*AgentSeq

	// tickets are the console tickets outstanding, by secret hash
	// (tickets.go).
	tickets map[string]*ConsoleTicket

	nodeByIP map[string]string // rack+"/"+ip -> node uuid
	// ipHint is, per rack, an address below which every address of the
	// subnet is taken or unusable: the search for a node's reserved
	// address starts there. Derived: not in snapshots.
	ipHint    map[string]netip.Addr
	sightings map[string]*proto.Sighting // by MAC
	// history is each node's recent events (console sessions, intents
	// and their results), oldest first, at most proto.MaxHistory.
	history map[string][]proto.HistoryEvent
	// tasks are the servicing tasks by id, nodeTasks each node's task
	// ids in creation order (tasks.go); taskKey derives task tokens.
	tasks     map[string]*proto.Task
	nodeTasks map[string][]string
	taskKey   []byte
	// sightAge orders sightings for eviction (sightKey): the stalest
	// without a conflict is forgotten first when MaxSightings would be
	// passed.
	sightAge *btree.BTreeG[sightKey]
	leases   map[string]map[string]*proto.Lease // rack -> ip -> lease

	// rackIdx is the index of the last change to what a rack's agents
	// boot from (the rack, its nodes, its leases); bootIdx the same for
	// what every rack shares (settings, images). Not in snapshots: a
	// restore sets them to the snapshot's index.
	rackIdx map[string]uint64
	bootIdx uint64
}

// sightKey orders sightings for eviction: those without a conflict
// first (a flood of unknown MACs never pushes out the conflict records an
// operator has to see), then by last seen, then by MAC.
type sightKey struct {
	conflict bool
	seen     time.Time
	mac      string
}

func sightLess(a, b sightKey) bool {
	if a.conflict != b.conflict {
		return !a.conflict
	}
	if !a.seen.Equal(b.seen) {
		return a.seen.Before(b.seen)
	}
	return a.mac < b.mac
}

func newData() *data {
	return &data{
		nodes: map[string]*proto.Node{}, nodeByName: map[string]string{}, nodeByMAC: map[string]string{},
		nodeOrder: btree.NewOrderedG[string](32), nodeByIdent: map[string][]string{}, identOf: map[string]string{},
		rackOrder: map[string]*btree.BTreeG[string]{},
		racks:     map[string]*proto.Rack{}, flavors: map[string]*proto.Flavor{}, images: map[string]*proto.Image{},
		instances: map[string]*proto.Instance{}, instByNm: map[string]string{},
		tokens: map[string]*proto.Token{}, tokenByHash: map[string]string{},
		servers: map[string]*proto.Server{}, agentSeqs: map[string]*AgentSeq{},
		nodeByIP: map[string]string{}, sightings: map[string]*proto.Sighting{}, history: map[string][]proto.HistoryEvent{},
		tasks: map[string]*proto.Task{}, nodeTasks: map[string][]string{},
		sightAge: btree.NewG[sightKey](32, sightLess), ipHint: map[string]netip.Addr{},
		leases: map[string]map[string]*proto.Lease{}, rackIdx: map[string]uint64{},
	}
}

// nodeKey is a node's place in list order: by name, then uuid (nodes
// without a name first); a page's marker is this key, encoded.
func nodeKey(n *proto.Node) string { return n.Name + "\x00" + n.UUID }

func uuidOfKey(k string) string { return k[strings.LastIndexByte(k, 0)+1:] }

// New returns an empty store.
func New() *Store {
	return &Store{d: newData(), watch: make(chan struct{})}
}

// Index is the Raft index of the last change.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.d.index
}

// Wait blocks until the store's index passes min or ctx ends, and returns
// the index then.
func (s *Store) Wait(ctx context.Context, min uint64) uint64 {
	for {
		s.mu.RLock()
		idx, ch := s.d.index, s.watch
		s.mu.RUnlock()
		if idx > min {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s.Index()
		}
	}
}

// Write runs fn as one change at Raft index idx. fn must check every
// precondition before it changes anything: if it returns an error, it must
// have changed nothing. On success the store's index becomes idx and every
// waiter wakes.
func (s *Store) Write(idx uint64, fn func(tx *Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := &Tx{d: s.d, index: idx}
	if err := fn(tx); err != nil {
		return err
	}
	if !tx.changed {
		return nil
	}
	if idx > s.d.index {
		s.d.index = idx
	}
	close(s.watch)
	s.watch = make(chan struct{})
	return nil
}

// replace swaps in a restored data set and wakes every waiter.
func (s *Store) replace(d *data) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = d
	close(s.watch)
	s.watch = make(chan struct{})
}

// NodeFilter selects nodes in ListNodes. Zero fields match everything.
type NodeFilter struct {
	ProvisionState proto.ProvisionState
	Rack           string
	Enrolled       *bool
	Maintenance    *bool
	// Instance is an instance name or uuid: only the node it is on.
	Instance string
}

// ReadNodes calls fn with every node, by uuid, under the store's read
// lock: fn must not keep or change them (the scheduler reads them so,
// without copying 10,000 inventories per decision).
func (s *Store) ReadNodes(fn func(nodes []*proto.Node)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	nodes := make([]*proto.Node, 0, len(s.d.nodes))
	for _, k := range sortedKeys(s.d.nodes) {
		nodes = append(nodes, s.d.nodes[k])
	}
	fn(nodes)
}

// Node returns a copy of the node with uuid, name or MAC ref.
func (s *Store) Node(ref string) (*proto.Node, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := s.d.node(ref)
	if n == nil {
		return nil, false
	}
	return n.Clone(), true
}

// Nodes returns copies of the nodes f selects, ordered by name then uuid.
func (s *Store) Nodes(f NodeFilter) []*proto.Node {
	out, _ := s.NodesPage(f, "", 0)
	return out
}

// NodesPage returns copies of at most limit nodes that f selects (every
// one if limit <= 0), in the order of Nodes, starting after the marker
// after ("" for the first page); next is the opaque marker of the
// following page, "" after the last. A marker stays valid when its node
// is deleted. The page is read under one lock: it is consistent with
// itself and with Index. It costs O(log n) plus the nodes it steps over
// (with a rack filter, only that rack's nodes are stepped over).
func (s *Store) NodesPage(f NodeFilter, after string, limit int) (nodes []*proto.Node, next string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.d
	out := []*proto.Node{}
	match := func(n *proto.Node) bool {
		return (f.ProvisionState == "" || n.ProvisionState == f.ProvisionState) &&
			(f.Rack == "" || n.Rack == f.Rack) &&
			(f.Enrolled == nil || n.Enrolled == *f.Enrolled) &&
			(f.Maintenance == nil || n.Maintenance == *f.Maintenance)
	}
	if f.Instance != "" {
		inst := d.instance(f.Instance)
		if after != "" || inst == nil || inst.Node == "" {
			return out, ""
		}
		if n := d.nodes[inst.Node]; n != nil && match(n) {
			out = append(out, n.Clone())
		}
		return out, ""
	}
	start := ""
	if after != "" {
		k, err := base64.RawURLEncoding.DecodeString(after)
		if err != nil {
			return out, "" // not a marker we made: nothing follows it
		}
		start = string(k) + "\x00" // just past it
	}
	order := d.nodeOrder
	if f.Rack != "" {
		if order = d.rackOrder[f.Rack]; order == nil {
			return out, ""
		}
	}
	var last string
	order.AscendGreaterOrEqual(start, func(k string) bool {
		n := d.nodes[uuidOfKey(k)]
		if !match(n) {
			return true
		}
		if limit > 0 && len(out) == limit {
			next = base64.RawURLEncoding.EncodeToString([]byte(last))
			return false
		}
		out = append(out, n.Clone())
		last = k
		return true
	})
	return out, next
}

// Rack returns a copy of the named rack.
func (s *Store) Rack(name string) (*proto.Rack, bool) {
	return getCopy(s, (*data).racksF, cloneRack, name)
}

// Racks returns copies of every rack, by name.
func (s *Store) Racks() []*proto.Rack { return listCopies(s, (*data).racksF, cloneRack) }

// Flavor returns a copy of the named flavor.
func (s *Store) Flavor(name string) (*proto.Flavor, bool) {
	return getCopy(s, (*data).flavorsF, cloneFlavor, name)
}

// Flavors returns copies of every flavor, by name.
func (s *Store) Flavors() []*proto.Flavor { return listCopies(s, (*data).flavorsF, cloneFlavor) }

// Image returns a copy of the named image.
func (s *Store) Image(name string) (*proto.Image, bool) {
	return getCopy(s, (*data).imagesF, shallow, name)
}

// Images returns copies of every image, by name.
func (s *Store) Images() []*proto.Image { return listCopies(s, (*data).imagesF, shallow) }

// Instance returns a copy of the instance with uuid or name ref.
func (s *Store) Instance(ref string) (*proto.Instance, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	in := s.d.instance(ref)
	if in == nil {
		return nil, false
	}
	c := *in
	return &c, true
}

// Instances returns copies of the instances on node (uuid, name or MAC;
// every instance if node is empty), by name, then uuid.
func (s *Store) Instances(node string) []*proto.Instance {
	s.mu.RLock()
	defer s.mu.RUnlock()
	want := ""
	if node != "" {
		n := s.d.node(node)
		if n == nil {
			return []*proto.Instance{}
		}
		want = n.UUID
	}
	out := []*proto.Instance{}
	for _, in := range s.d.instances {
		if want != "" && in.Node != want {
			continue
		}
		c := *in
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].UUID < out[j].UUID
	})
	return out
}

// Settings returns the fleet settings.
func (s *Store) Settings() proto.Settings {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.d.settings
}

// TokenByHash returns the token whose secret hashes to h.
func (s *Store) TokenByHash(h string) (*proto.Token, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.d.tokenByHash[h]
	if !ok {
		return nil, false
	}
	c := *s.d.tokens[id]
	return &c, true
}

// Tokens returns every token (without secrets), by id.
func (s *Store) Tokens() []*proto.Token { return listCopies(s, (*data).tokensF, shallow) }

// Server returns the recorded coordinator with id.
func (s *Store) Server(id string) (*proto.Server, bool) {
	return getCopy(s, (*data).serversF, shallow, id)
}

// Servers returns every recorded coordinator, by id.
func (s *Store) Servers() []*proto.Server { return listCopies(s, (*data).serversF, shallow) }

// Sightings returns the unknown MACs seen (in rack, if not empty), by MAC.
func (s *Store) Sightings(rack string) []*proto.Sighting {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []*proto.Sighting{}
	for _, mac := range sortedKeys(s.d.sightings) {
		sg := s.d.sightings[mac]
		if rack != "" && sg.Rack != rack {
			continue
		}
		c := *sg
		out = append(out, &c)
	}
	return out
}

// Leases returns the dynamic leases recorded for rack, by IP.
func (s *Store) Leases(rack string) []*proto.Lease {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := s.d.leases[rack]
	out := make([]*proto.Lease, 0, len(m))
	for _, ip := range sortedKeys(m) {
		c := *m[ip]
		out = append(out, &c)
	}
	return out
}

// BootIndex is the index of the last change to what rack's agents boot
// their nodes from; a rack agent blocks on it.
func (s *Store) BootIndex(rack string) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return max(s.d.rackIdx[rack], s.d.bootIdx)
}

// RackView is what ReadRack shows: read under one lock, not to be kept
// or changed.
type RackView struct {
	Rack     *proto.Rack
	Nodes    []*proto.Node
	Leases   []*proto.Lease
	Settings proto.Settings
	Images   map[string]*proto.Image
	Tasks    map[string]*proto.Task
	TaskKey  []byte
}

// ReadRack calls fn with the rack, its nodes and leases and the settings
// and images, all read under one lock so they are consistent with each
// other and with the returned BootIndex. fn must not keep or change them.
func (s *Store) ReadRack(rack string, fn func(v RackView)) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var nodes []*proto.Node
	if t := s.d.rackOrder[rack]; t != nil {
		nodes = make([]*proto.Node, 0, t.Len())
		t.Ascend(func(k string) bool {
			nodes = append(nodes, s.d.nodes[uuidOfKey(k)])
			return true
		})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].UUID < nodes[j].UUID })
	var leases []*proto.Lease
	for _, ip := range sortedKeys(s.d.leases[rack]) {
		leases = append(leases, s.d.leases[rack][ip])
	}
	fn(RackView{Rack: s.d.racks[rack], Nodes: nodes, Leases: leases, Settings: s.d.settings,
		Images: s.d.images, Tasks: s.d.tasks, TaskKey: s.d.taskKey})
	return max(s.d.rackIdx[rack], s.d.bootIdx)
}

// WaitBoot blocks until rack's boot index passes min or ctx ends, and
// returns it.
func (s *Store) WaitBoot(ctx context.Context, rack string, min uint64) uint64 {
	for {
		s.mu.RLock()
		idx, ch := max(s.d.rackIdx[rack], s.d.bootIdx), s.watch
		s.mu.RUnlock()
		if idx > min {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s.BootIndex(rack)
		}
	}
}

// AgentSeq returns what the store remembers of a rack agent's report
// sequences.
func (s *Store) AgentSeq(rack, agent string) (AgentSeq, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.d.agentSeqs[rack+"/"+agent]
	if !ok {
		return AgentSeq{}, false
	}
	return a.clone(), true
}

func (d *data) node(ref string) *proto.Node {
	if n, ok := d.nodes[ref]; ok {
		return n
	}
	if id, ok := d.nodeByName[ref]; ok {
		return d.nodes[id]
	}
	if hw, err := net.ParseMAC(ref); err == nil {
		if id, ok := d.nodeByMAC[hw.String()]; ok {
			return d.nodes[id]
		}
	}
	return nil
}

func (d *data) instance(ref string) *proto.Instance {
	if in, ok := d.instances[ref]; ok {
		return in
	}
	if id, ok := d.instByNm[ref]; ok {
		return d.instances[id]
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Sighting returns a copy of mac's sighting.
func (s *Store) Sighting(mac string) (*proto.Sighting, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sg, ok := s.d.sightings[mac]
	if !ok {
		return nil, false
	}
	c := *sg
	return &c, true
}
