package state

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/btree"
	"github.com/metalfleet/metalfleet/proto"
)

// Tx is the FSM's view of the store during one change. Reads return the
// store's own objects: copy one (Clone) before changing it, then Put the
// copy. Put stamps the object's Meta with the change's index and keeps the
// secondary indexes (names, MACs, token hashes) right.
type Tx struct {
	d       *data
	index   uint64
	changed bool
	// hint is an IP hint proposed by an allocation, taken when a node is
	// stored with the allocated address (see ProposeIPHint).
	hint struct {
		rack     string
		ip, next netip.Addr
	}
}

// Index is the Raft index of this change.
func (tx *Tx) Index() uint64 { return tx.index }

func (tx *Tx) stamp(m *proto.Meta, isNew bool) {
	if isNew {
		m.CreateIndex = tx.index
	}
	m.ModifyIndex = tx.index
	tx.changed = true
}

// Node returns the node with uuid, name or MAC ref, or nil.
func (tx *Tx) Node(ref string) *proto.Node { return tx.d.node(ref) }

// NodeByName returns the uuid of the node named name.
func (tx *Tx) NodeByName(name string) (string, bool) {
	id, ok := tx.d.nodeByName[name]
	return id, ok
}

// NodeByMAC returns the uuid of the node that has mac.
func (tx *Tx) NodeByMAC(mac string) (string, bool) {
	id, ok := tx.d.nodeByMAC[strings.ToLower(mac)]
	return id, ok
}

// NodeByIP returns the uuid of the node reserved ip in rack.
func (tx *Tx) NodeByIP(rack, ip string) (string, bool) {
	id, ok := tx.d.nodeByIP[rack+"/"+ip]
	return id, ok
}

// bumpRack records a change to what rack's agents boot from.
func (tx *Tx) bumpRack(rack string) {
	if rack != "" {
		tx.d.rackIdx[rack] = tx.index
	}
}

// PutNode inserts or replaces n (keyed by uuid).
func (tx *Tx) PutNode(n *proto.Node) {
	old, exists := tx.d.nodes[n.UUID]
	ident := ""
	if exists {
		tx.unindexNode(old)
		n.CreateIndex = old.CreateIndex
		if bytes.Equal(old.Inventory, n.Inventory) {
			ident = tx.d.identOf[n.UUID]
		} else {
			ident = inventoryIdentity(n.Inventory)
		}
		tx.unindexIdentity(n.UUID)
	} else {
		ident = inventoryIdentity(n.Inventory)
	}
	if !exists || bootChanged(old, n) {
		if exists {
			tx.bumpRack(old.Rack)
		}
		tx.bumpRack(n.Rack)
	}
	if n.IP != "" {
		tx.d.nodeByIP[n.Rack+"/"+n.IP] = n.UUID
		if tx.hint.rack == n.Rack && tx.hint.ip.IsValid() && tx.hint.ip.String() == n.IP {
			tx.d.ipHint[n.Rack] = tx.hint.next
			tx.hint.rack, tx.hint.ip = "", netip.Addr{}
		}
	}
	tx.stamp(&n.Meta, !exists)
	tx.d.nodes[n.UUID] = n
	tx.d.nodeOrder.ReplaceOrInsert(nodeKey(n))
	if n.Rack != "" {
		t := tx.d.rackOrder[n.Rack]
		if t == nil {
			t = btree.NewOrderedG[string](16)
			tx.d.rackOrder[n.Rack] = t
		}
		t.ReplaceOrInsert(nodeKey(n))
	}
	if n.Name != "" {
		tx.d.nodeByName[n.Name] = n.UUID
	}
	for _, m := range n.MACs {
		tx.d.nodeByMAC[strings.ToLower(m)] = n.UUID
	}
	if ident != "" {
		tx.d.identOf[n.UUID] = ident
		ids := tx.d.nodeByIdent[ident]
		i, _ := slices.BinarySearch(ids, n.UUID)
		tx.d.nodeByIdent[ident] = slices.Insert(slices.Clip(ids), i, n.UUID)
	}
}

// inventoryIdentity is the system identity of an inventory ("" if it has
// none, or only firmware placeholders).
func inventoryIdentity(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var inv struct {
		System proto.System `json:"system"`
	}
	if json.Unmarshal(raw, &inv) != nil {
		return ""
	}
	return proto.SystemIdentity(inv.System)
}

func (tx *Tx) unindexIdentity(uuid string) {
	ident, ok := tx.d.identOf[uuid]
	if !ok {
		return
	}
	delete(tx.d.identOf, uuid)
	ids := slices.DeleteFunc(slices.Clone(tx.d.nodeByIdent[ident]), func(id string) bool { return id == uuid })
	if len(ids) == 0 {
		delete(tx.d.nodeByIdent, ident)
	} else {
		tx.d.nodeByIdent[ident] = ids
	}
}

// NodesByIdentity returns the uuids of the nodes whose inventory has the
// system identity ident (proto.SystemIdentity), sorted.
func (tx *Tx) NodesByIdentity(ident string) []string {
	if ident == "" {
		return nil
	}
	return tx.d.nodeByIdent[ident]
}

// NodeIdentity is the system identity of node uuid's inventory.
func (tx *Tx) NodeIdentity(uuid string) string { return tx.d.identOf[uuid] }

// bootChanged reports whether a change to a node changes what its rack's
// agents serve it (a power reading or a boot event does not).
func bootChanged(a, b *proto.Node) bool {
	return a.Rack != b.Rack || a.IP != b.IP || a.Name != b.Name || a.Enrolled != b.Enrolled ||
		a.ProvisionState != b.ProvisionState || !slices.Equal(a.MACs, b.MACs) ||
		a.BMC != b.BMC || a.Maintenance != b.Maintenance || !intentsEqual(a.Intents, b.Intents) ||
		a.Task != b.Task || !bootEqual(a.Boot, b.Boot)
}

func bootEqual(a, b *proto.BootConfig) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.Kernel, x.Initrd, y.Kernel, y.Initrd = nil, nil, nil, nil
	return x == y && artifactEqual(a.Kernel, b.Kernel) && artifactEqual(a.Initrd, b.Initrd)
}

func artifactEqual(a, b *proto.Artifact) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func intentsEqual(a, b []proto.Intent) bool {
	return slices.EqualFunc(a, b, func(x, y proto.Intent) bool {
		if (x.Boot == nil) != (y.Boot == nil) || x.Boot != nil && *x.Boot != *y.Boot {
			return false
		}
		x.Boot, y.Boot = nil, nil
		return x == y
	})
}

// DeleteNode removes the node with uuid.
func (tx *Tx) DeleteNode(uuid string) {
	delete(tx.d.history, uuid)
	tx.deleteNodeTasks(uuid)
	if n, ok := tx.d.nodes[uuid]; ok {
		tx.unindexNode(n)
		tx.unindexIdentity(uuid)
		delete(tx.d.nodes, uuid)
		tx.bumpRack(n.Rack)
		tx.changed = true
	}
}

func (tx *Tx) unindexNode(n *proto.Node) {
	tx.d.nodeOrder.Delete(nodeKey(n))
	if t := tx.d.rackOrder[n.Rack]; t != nil {
		t.Delete(nodeKey(n))
		if t.Len() == 0 {
			delete(tx.d.rackOrder, n.Rack)
		}
	}
	if n.IP != "" && tx.d.nodeByIP[n.Rack+"/"+n.IP] == n.UUID {
		delete(tx.d.nodeByIP, n.Rack+"/"+n.IP)
		tx.freedIP(n.Rack, n.IP)
	}
	if n.Name != "" && tx.d.nodeByName[n.Name] == n.UUID {
		delete(tx.d.nodeByName, n.Name)
	}
	for _, m := range n.MACs {
		if tx.d.nodeByMAC[strings.ToLower(m)] == n.UUID {
			delete(tx.d.nodeByMAC, strings.ToLower(m))
		}
	}
}

// IPHint is where the search for a free reserved address in rack may
// start: every address below it is taken or unusable. Invalid means the
// start of the subnet.
func (tx *Tx) IPHint(rack string) netip.Addr { return tx.d.ipHint[rack] }

// ProposeIPHint says that every address of rack below next is taken or
// unusable once a node holds ip. The hint moves to next only when PutNode
// stores a node of rack with ip: a command that allocated but failed
// leaves the hint where it was, so the hint never depends on failed
// commands (which a replica restored from a snapshot never saw).
func (tx *Tx) ProposeIPHint(rack string, ip, next netip.Addr) {
	tx.hint.rack, tx.hint.ip, tx.hint.next = rack, ip, next
}

// freedIP lowers rack's hint to an address that may now be free.
func (tx *Tx) freedIP(rack, ip string) {
	a, err := netip.ParseAddr(ip)
	if h, ok := tx.d.ipHint[rack]; err == nil && ok && a.Less(h) {
		tx.d.ipHint[rack] = a
	}
}

// CountNodes returns how many nodes satisfy pred.
func (tx *Tx) CountNodes(pred func(*proto.Node) bool) int {
	c := 0
	for _, n := range tx.d.nodes {
		if pred(n) {
			c++
		}
	}
	return c
}

// Rack returns the named rack, or nil.
func (tx *Tx) Rack(name string) *proto.Rack { return tx.d.racks[name] }

// PutRack inserts or replaces r.
func (tx *Tx) PutRack(r *proto.Rack) {
	putObj(tx, tx.d.racks, r.Name, r)
	delete(tx.d.ipHint, r.Name) // the subnet or pool may have moved
	tx.bumpRack(r.Name)
}

// DeleteRack removes the named rack and its leases.
func (tx *Tx) DeleteRack(name string) {
	delete(tx.d.racks, name)
	delete(tx.d.leases, name)
	delete(tx.d.ipHint, name)
	tx.forgetRackAgents(name)
	tx.bumpRack(name)
	tx.changed = true
}

// EachNode calls fn for every node.
func (tx *Tx) EachNode(fn func(*proto.Node)) {
	for _, n := range tx.d.nodes {
		fn(n)
	}
}

// EachNodeInRack calls fn for every node in rack, in list order.
func (tx *Tx) EachNodeInRack(rack string, fn func(*proto.Node)) {
	if t := tx.d.rackOrder[rack]; t != nil {
		t.Ascend(func(k string) bool { fn(tx.d.nodes[uuidOfKey(k)]); return true })
	}
}

// CountNodesInRack returns how many nodes are in rack.
func (tx *Tx) CountNodesInRack(rack string) int {
	if t := tx.d.rackOrder[rack]; t != nil {
		return t.Len()
	}
	return 0
}

// Flavor returns the named flavor, or nil.
func (tx *Tx) Flavor(name string) *proto.Flavor { return tx.d.flavors[name] }

// PutFlavor inserts or replaces f.
func (tx *Tx) PutFlavor(f *proto.Flavor) { putObj(tx, tx.d.flavors, f.Name, f) }

// DeleteFlavor removes the named flavor.
func (tx *Tx) DeleteFlavor(name string) { deleteObj(tx, tx.d.flavors, name) }

// EachFlavor calls fn for every flavor.
func (tx *Tx) EachFlavor(fn func(*proto.Flavor)) {
	for _, f := range tx.d.flavors {
		fn(f)
	}
}

// Image returns the named image, or nil.
func (tx *Tx) Image(name string) *proto.Image { return tx.d.images[name] }

// PutImage inserts or replaces im.
func (tx *Tx) PutImage(im *proto.Image) {
	putObj(tx, tx.d.images, im.Name, im)
	tx.d.bootIdx = tx.index
}

// DeleteImage removes the named image.
func (tx *Tx) DeleteImage(name string) {
	deleteObj(tx, tx.d.images, name)
	tx.d.bootIdx = tx.index
}

// Instance returns the instance with uuid or name ref, or nil.
func (tx *Tx) Instance(ref string) *proto.Instance { return tx.d.instance(ref) }

// EachInstance calls fn for every instance.
func (tx *Tx) EachInstance(fn func(*proto.Instance)) {
	for _, in := range tx.d.instances {
		fn(in)
	}
}

// PutInstance inserts or replaces in (keyed by uuid).
func (tx *Tx) PutInstance(in *proto.Instance) {
	old, exists := tx.d.instances[in.UUID]
	if exists {
		in.CreateIndex = old.CreateIndex
		if tx.d.instByNm[old.Name] == old.UUID {
			delete(tx.d.instByNm, old.Name)
		}
	}
	tx.stamp(&in.Meta, !exists)
	tx.d.instances[in.UUID] = in
	tx.d.instByNm[in.Name] = in.UUID
}

// DeleteInstance removes the instance with uuid.
func (tx *Tx) DeleteInstance(uuid string) {
	if in, ok := tx.d.instances[uuid]; ok {
		if tx.d.instByNm[in.Name] == uuid {
			delete(tx.d.instByNm, in.Name)
		}
		delete(tx.d.instances, uuid)
		tx.changed = true
	}
}

// Settings returns the fleet settings.
func (tx *Tx) Settings() proto.Settings { return tx.d.settings }

// PutSettings replaces the fleet settings.
func (tx *Tx) PutSettings(s proto.Settings) {
	tx.stamp(&s.Meta, s.CreateIndex == 0)
	tx.d.settings = s
	tx.d.bootIdx = tx.index
}

// MaxSightings bounds the unknown MACs remembered; past it the one seen
// longest ago is forgotten.
const MaxSightings = 10000

// Sighting returns the sighting of mac, or nil.
func (tx *Tx) Sighting(mac string) *proto.Sighting { return tx.d.sightings[mac] }

// PutSighting inserts or replaces a sighting, forgetting the stalest one
// without a conflict (by last seen, then MAC; conflicts go last) when
// MaxSightings would be passed: O(log n).
func (tx *Tx) PutSighting(sg *proto.Sighting) {
	old, exists := tx.d.sightings[sg.MAC]
	if exists {
		sg.CreateIndex = old.CreateIndex
		tx.d.sightAge.Delete(sightKey{old.Conflict != "", old.LastSeen, old.MAC})
	} else if len(tx.d.sightings) >= MaxSightings {
		if k, ok := tx.d.sightAge.DeleteMin(); ok {
			delete(tx.d.sightings, k.mac)
		}
	}
	tx.stamp(&sg.Meta, !exists)
	tx.d.sightings[sg.MAC] = sg
	tx.d.sightAge.ReplaceOrInsert(sightKey{sg.Conflict != "", sg.LastSeen, sg.MAC})
}

// DeleteSighting forgets mac's sighting.
func (tx *Tx) DeleteSighting(mac string) {
	if old, ok := tx.d.sightings[mac]; ok {
		delete(tx.d.sightings, mac)
		tx.d.sightAge.Delete(sightKey{old.Conflict != "", old.LastSeen, old.MAC})
		tx.changed = true
	}
}

// Lease returns the lease of ip in rack, or nil.
func (tx *Tx) Lease(rack, ip string) *proto.Lease { return tx.d.leases[rack][ip] }

// PutLease records a dynamic lease in rack.
func (tx *Tx) PutLease(rack string, l *proto.Lease) {
	m := tx.d.leases[rack]
	if m == nil {
		m = map[string]*proto.Lease{}
		tx.d.leases[rack] = m
	}
	m[l.IP] = l
	tx.bumpRack(rack)
	tx.changed = true
}

// DeleteLease forgets the lease of ip in rack.
func (tx *Tx) DeleteLease(rack, ip string) {
	if _, ok := tx.d.leases[rack][ip]; ok {
		delete(tx.d.leases[rack], ip)
		tx.freedIP(rack, ip)
		tx.bumpRack(rack)
		tx.changed = true
	}
}

// Token returns the token with id, or nil.
func (tx *Tx) Token(id string) *proto.Token { return tx.d.tokens[id] }

// EachToken calls fn for every token.
func (tx *Tx) EachToken(fn func(*proto.Token)) {
	for _, t := range tx.d.tokens {
		fn(t)
	}
}

// TokenByHash returns the id of the token whose secret hashes to h.
func (tx *Tx) TokenByHash(h string) (string, bool) {
	id, ok := tx.d.tokenByHash[h]
	return id, ok
}

// PutToken inserts or replaces t.
func (tx *Tx) PutToken(t *proto.Token) {
	if old, exists := tx.d.tokens[t.ID]; exists {
		delete(tx.d.tokenByHash, old.SecretHash)
	}
	putObj(tx, tx.d.tokens, t.ID, t)
	tx.d.tokenByHash[t.SecretHash] = t.ID
}

// DeleteToken removes the token with id.
func (tx *Tx) DeleteToken(id string) {
	if t, ok := tx.d.tokens[id]; ok {
		delete(tx.d.tokenByHash, t.SecretHash)
		delete(tx.d.tokens, id)
		tx.changed = true
	}
}

// Server returns the recorded coordinator with id, or nil.
func (tx *Tx) Server(id string) *proto.Server { return tx.d.servers[id] }

// PutServer inserts or replaces sv.
func (tx *Tx) PutServer(sv *proto.Server) { putObj(tx, tx.d.servers, sv.ID, sv) }

// DeleteServer removes the recorded coordinator with id.
func (tx *Tx) DeleteServer(id string) { deleteObj(tx, tx.d.servers, id) }

// RacksWithLeases returns the racks that hold leases, sorted.
func (tx *Tx) RacksWithLeases() []string {
	var out []string
	for r, m := range tx.d.leases {
		if len(m) > 0 {
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out
}

// LeasesExpiredBefore returns the IPs of agent's leases in rack (every
// agent's if agent is "") that expired before t, sorted.
func (tx *Tx) LeasesExpiredBefore(rack, agent string, t time.Time) []string {
	var ips []string
	for ip, l := range tx.d.leases[rack] {
		if (agent == "" || l.Agent == agent) && l.Expires.Before(t) {
			ips = append(ips, ip)
		}
	}
	sort.Strings(ips)
	return ips
}
