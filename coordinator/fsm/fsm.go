// Package fsm is the coordinator's Raft finite-state machine: a table of
// commands, each with one apply function that checks its preconditions
// against the state store and then changes it. Apply is deterministic: it
// reads no clock and draws no random number; everything it needs travels
// in the command.
package fsm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
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

// --- nodes ---

func applyNodeCreate(tx *state.Tx, c *NodeCreate) (any, error) {
	n := c.Node.Clone()
	if !proto.IsUUID(n.UUID) {
		return nil, proto.Errorf(proto.CodeInternal, "node create without a uuid")
	}
	if tx.Node(n.UUID) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "node %s exists", n.UUID)
	}
	if n.ProvisionState != proto.StateDiscovered && n.ProvisionState != proto.StateEnrolled {
		return nil, proto.Errorf(proto.CodeInvalid, "a new node is discovered or enrolled, not %s", n.ProvisionState)
	}
	n.Enrolled = n.ProvisionState != proto.StateDiscovered
	if n.PowerState == "" {
		n.PowerState = proto.PowerUnknown
	}
	if err := checkNodeFields(tx, n, ""); err != nil {
		return nil, err
	}
	for _, m := range n.MACs {
		tx.DeleteSighting(m) // no longer an unknown MAC
	}
	tx.PutNode(n)
	return n.Clone(), nil
}

// checkNodeFields checks a node's name, MACs, rack and BMC against the
// store; self is the node's own uuid when it is being updated.
func checkNodeFields(tx *state.Tx, n *proto.Node, self string) error {
	if n.Name != "" {
		if err := proto.CheckName("name", n.Name); err != nil {
			return err
		}
		if id, ok := tx.NodeByName(n.Name); ok && id != self {
			return proto.Errorf(proto.CodeConflict, "node name %q is taken by node %s", n.Name, id)
		}
	}
	macs, err := proto.NormalizeMACs(n.MACs)
	if err != nil {
		return err
	}
	n.MACs = macs
	for _, m := range macs {
		if id, ok := tx.NodeByMAC(m); ok && id != n.UUID {
			return proto.Errorf(proto.CodeConflict, "MAC %s belongs to node %s", m, id)
		}
	}
	if n.Rack != "" && tx.Rack(n.Rack) == nil {
		return proto.Errorf(proto.CodeInvalid, "rack %q does not exist", n.Rack)
	}
	if err := assignIP(tx, n); err != nil {
		return err
	}
	return n.BMC.Check()
}

// assignIP checks a node's reserved address, or allocates the lowest free
// one in its rack's subnet, outside the dynamic pool and the rack's own
// addresses. Both agents of a rack read the same answer from the state, so
// they never disagree.
func assignIP(tx *state.Tx, n *proto.Node) error {
	if n.Rack == "" {
		if n.IP != "" {
			return proto.Errorf(proto.CodeInvalid, "ip %s: a node needs a rack to have a reserved address", n.IP)
		}
		return nil
	}
	r := tx.Rack(n.Rack)
	if r.Subnet == "" {
		if n.IP != "" {
			return proto.Errorf(proto.CodeInvalid, "ip %s: rack %s has no subnet", n.IP, r.Name)
		}
		return nil
	}
	prefix := netip.MustParsePrefix(r.Subnet)
	if n.IP != "" {
		a, err := netip.ParseAddr(n.IP)
		if err != nil || !a.Is4() {
			return proto.Errorf(proto.CodeInvalid, "ip %q: want an IPv4 address", n.IP)
		}
		if why := reservedUnusable(r, prefix, a); why != "" {
			return proto.Errorf(proto.CodeInvalid, "ip %s: %s", a, why)
		}
		if id, ok := tx.NodeByIP(r.Name, a.String()); ok && id != n.UUID {
			return proto.Errorf(proto.CodeConflict, "ip %s in rack %s belongs to node %s", a, r.Name, id)
		}
		n.IP = a.String()
		return nil
	}
	for a := prefix.Addr().Next(); prefix.Contains(a); a = a.Next() {
		if reservedUnusable(r, prefix, a) != "" {
			continue
		}
		if _, taken := tx.NodeByIP(r.Name, a.String()); !taken {
			n.IP = a.String()
			return nil
		}
	}
	return proto.Errorf(proto.CodeConflict, "rack %s has no free address outside its pool for node %s", r.Name, nodeRef(n))
}

// reservedUnusable says why a cannot be a node's reserved address in r,
// or "" if it can.
func reservedUnusable(r *proto.Rack, prefix netip.Prefix, a netip.Addr) string {
	if !prefix.Contains(a) {
		return "outside subnet " + r.Subnet
	}
	if a == prefix.Addr() {
		return "the subnet's network address"
	}
	if prefix.Bits() < 31 {
		b := prefix.Addr().As4()
		bc := binary.BigEndian.Uint32(b[:]) | (1<<(32-prefix.Bits()) - 1)
		if x := a.As4(); binary.BigEndian.Uint32(x[:]) == bc {
			return "the subnet's broadcast address"
		}
	}
	for _, own := range append([]string{r.Gateway, r.BootServer}, r.DNS...) {
		if own == a.String() {
			return "an address of the rack's own (gateway, boot server or DNS)"
		}
	}
	if r.PoolStart != "" {
		lo, hi := netip.MustParseAddr(r.PoolStart), netip.MustParseAddr(r.PoolEnd)
		if !a.Less(lo) && !hi.Less(a) {
			return "inside the dynamic pool " + r.PoolStart + "-" + r.PoolEnd
		}
	}
	return ""
}

func findNode(tx *state.Tx, ref string) (*proto.Node, error) {
	n := tx.Node(ref)
	if n == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", ref)
	}
	return n.Clone(), nil
}

func applyNodeUpdate(tx *state.Tx, c *NodeUpdate) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	p := c.Patch
	if p.Name != nil {
		n.Name = *p.Name
	}
	if p.MACs != nil || p.Rack != nil {
		if n.ProvisionState.InUse() {
			return nil, proto.Errorf(proto.CodeWrongState, "cannot change the MACs or rack of node %s while it is %s", nodeRef(n), n.ProvisionState)
		}
		if p.MACs != nil {
			n.MACs = *p.MACs
		}
		if p.Rack != nil {
			if *p.Rack != n.Rack && p.IP == nil {
				n.IP = "" // a new rack, a new address
			}
			n.Rack = *p.Rack
		}
	}
	if p.IP != nil {
		if n.ProvisionState.InUse() && *p.IP != n.IP {
			return nil, proto.Errorf(proto.CodeWrongState, "cannot change the address of node %s while it is %s", nodeRef(n), n.ProvisionState)
		}
		n.IP = *p.IP
	}
	if b := p.BMC; b != nil {
		setIf(&n.BMC.Driver, b.Driver)
		setIf(&n.BMC.Address, b.Address)
		setIf(&n.BMC.Port, b.Port)
		setIf(&n.BMC.Username, b.Username)
		setIf(&n.BMC.Password, b.Password)
	}
	if p.Properties != nil {
		n.Properties = *p.Properties
	}
	if err := checkNodeFields(tx, n, n.UUID); err != nil {
		return nil, err
	}
	n.UpdatedAt = c.Now
	tx.PutNode(n)
	return n.Clone(), nil
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func nodeRef(n *proto.Node) string {
	if n.Name != "" {
		return n.Name
	}
	return n.UUID
}

func applyNodeDelete(tx *state.Tx, c *NodeDelete) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	if n.ProvisionState.InUse() || n.InstanceUUID != "" {
		return nil, proto.Errorf(proto.CodeWrongState, "cannot delete node %s: it is %s%s", nodeRef(n), n.ProvisionState,
			ifStr(n.InstanceUUID != "", " and holds instance "+n.InstanceUUID))
	}
	tx.DeleteNode(n.UUID)
	return nil, nil
}

func ifStr(b bool, s string) string {
	if b {
		return s
	}
	return ""
}

func applyNodeSetEnrolled(tx *state.Tx, c *NodeSetEnrolled) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	if n.Enrolled == c.Enrolled {
		return n, nil // already so: a repeat is not an error
	}
	ev := proto.Event("enroll")
	if !c.Enrolled {
		ev = "unenroll"
		if n.InstanceUUID != "" {
			return nil, proto.Errorf(proto.CodeWrongState, "cannot unenroll node %s: it holds instance %s", nodeRef(n), n.InstanceUUID)
		}
	}
	to, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, ev)
	if err != nil {
		return nil, err
	}
	n.ProvisionState, n.Enrolled, n.UpdatedAt = to, c.Enrolled, c.Now
	tx.PutNode(n)
	return n.Clone(), nil
}

func applyNodeSetMaintenance(tx *state.Tx, c *NodeSetMaintenance) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	n.Maintenance = c.Maintenance
	n.MaintenanceReason = ""
	if c.Maintenance {
		n.MaintenanceReason = c.Reason
	}
	n.UpdatedAt = c.Now
	tx.PutNode(n)
	return n.Clone(), nil
}

func applyNodeProvision(tx *state.Tx, c *NodeProvision) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	t, ok := proto.LookupTransition(c.Event)
	if !ok {
		return nil, proto.Errorf(proto.CodeInvalid, "unknown transition %q", c.Event)
	}
	if t.Actor != c.Actor {
		return nil, proto.Errorf(proto.CodeInvalid, "%s is not a transition this caller may ask for", c.Event)
	}
	to, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, c.Event)
	if err != nil {
		return nil, err
	}
	n.ProvisionState, n.UpdatedAt = to, c.Now
	switch {
	case to == proto.StateFailed:
		n.LastError = c.LastError
	case c.Event == "manage" || c.Event == "provide":
		n.LastError = ""
	}
	tx.PutNode(n)
	return n.Clone(), nil
}

// --- racks, flavors, images ---

func applyRackPut(tx *state.Tx, c *RackPut) (any, error) {
	r := c.Rack
	r.DNS = slices.Clone(r.DNS)
	if err := r.Check(); err != nil {
		return nil, err
	}
	if err := checkPut("rack", r.Name, c.Create, tx.Rack(r.Name) != nil); err != nil {
		return nil, err
	}
	// Nodes keep their reserved addresses: a new subnet or pool must
	// still leave every one of them usable.
	var bad []string
	tx.EachNodeInRack(r.Name, func(n *proto.Node) {
		if n.IP == "" {
			return
		}
		if r.Subnet == "" {
			bad = append(bad, nodeRef(n)+" ("+n.IP+": no subnet)")
		} else if why := reservedUnusable(&r, netip.MustParsePrefix(r.Subnet), netip.MustParseAddr(n.IP)); why != "" {
			bad = append(bad, nodeRef(n)+" ("+n.IP+": "+why+")")
		}
	})
	if len(bad) > 0 {
		slices.Sort(bad)
		return nil, proto.Errorf(proto.CodeConflict, "rack %s: the change leaves node addresses unusable: %s", r.Name, strings.Join(bad, ", "))
	}
	tx.PutRack(&r)
	c2 := r
	return &c2, nil
}

// checkPut refuses a create of an existing object and a replace of a
// missing one.
func checkPut(kind, name string, create, exists bool) error {
	if create && exists {
		return proto.Errorf(proto.CodeConflict, "%s %q exists", kind, name)
	}
	if !create && !exists {
		return proto.Errorf(proto.CodeNotFound, "%s %q not found", kind, name)
	}
	return nil
}

func applyRackDelete(tx *state.Tx, c *RackDelete) (any, error) {
	if tx.Rack(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "rack %q not found", c.Name)
	}
	if k := tx.CountNodes(func(n *proto.Node) bool { return n.Rack == c.Name }); k > 0 {
		return nil, proto.Errorf(proto.CodeConflict, "rack %q is in use by %d node(s)", c.Name, k)
	}
	var users []string
	tx.EachFlavor(func(f *proto.Flavor) {
		if f.Rack == c.Name {
			users = append(users, f.Name)
		}
	})
	if len(users) > 0 {
		slices.Sort(users)
		return nil, proto.Errorf(proto.CodeConflict, "rack %q is in use by flavor(s) %v", c.Name, users)
	}
	tx.EachToken(func(t *proto.Token) {
		if t.Rack == c.Name {
			users = append(users, t.ID)
		}
	})
	if len(users) > 0 {
		slices.Sort(users)
		return nil, proto.Errorf(proto.CodeConflict, "rack %q is in use by agent token(s) %v; revoke them first", c.Name, users)
	}
	tx.DeleteRack(c.Name)
	return nil, nil
}

func applyFlavorPut(tx *state.Tx, c *FlavorPut) (any, error) {
	f := c.Flavor
	f.RequiredTraits = slices.Clone(f.RequiredTraits)
	if err := f.Check(); err != nil {
		return nil, err
	}
	if f.Rack != "" && tx.Rack(f.Rack) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", f.Rack)
	}
	if f.RescueImage != "" && tx.Image(f.RescueImage) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rescue_image %q does not exist", f.RescueImage)
	}
	if err := checkPut("flavor", f.Name, c.Create, tx.Flavor(f.Name) != nil); err != nil {
		return nil, err
	}
	tx.PutFlavor(&f)
	c2 := f
	return &c2, nil
}

func applyFlavorDelete(tx *state.Tx, c *FlavorDelete) (any, error) {
	if tx.Flavor(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "flavor %q not found", c.Name)
	}
	var users []string
	tx.EachInstance(func(in *proto.Instance) {
		if in.Flavor == c.Name {
			users = append(users, in.Name)
		}
	})
	if len(users) > 0 {
		slices.Sort(users)
		return nil, proto.Errorf(proto.CodeConflict, "flavor %q is in use by instance(s) %v", c.Name, users)
	}
	tx.DeleteFlavor(c.Name)
	return nil, nil
}

func applyImagePut(tx *state.Tx, c *ImagePut) (any, error) {
	im := c.Image
	if err := im.Check(); err != nil {
		return nil, err
	}
	old := tx.Image(im.Name)
	if err := checkPut("image", im.Name, c.Create, old != nil); err != nil {
		return nil, err
	}
	if old != nil && old.Kind != im.Kind {
		if users := imageUsers(tx, im.Name); len(users) > 0 {
			return nil, proto.Errorf(proto.CodeConflict, "cannot change the kind of image %q: it is used by %v", im.Name, users)
		}
	}
	tx.PutImage(&im)
	c2 := im
	return &c2, nil
}

// imageUsers names everything that refers to the image, sorted.
func imageUsers(tx *state.Tx, name string) []string {
	var users []string
	s := tx.Settings()
	if s.DiscoveryKernel == name {
		users = append(users, "settings.discovery_kernel")
	}
	if s.DiscoveryRamdisk == name {
		users = append(users, "settings.discovery_ramdisk")
	}
	tx.EachFlavor(func(f *proto.Flavor) {
		if f.RescueImage == name {
			users = append(users, "flavor "+f.Name)
		}
	})
	tx.EachInstance(func(in *proto.Instance) {
		if in.Image == name || in.RescueImage == name {
			users = append(users, "instance "+in.Name)
		}
	})
	slices.Sort(users)
	return users
}

func applyImageDelete(tx *state.Tx, c *ImageDelete) (any, error) {
	if tx.Image(c.Name) == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "image %q not found", c.Name)
	}
	if users := imageUsers(tx, c.Name); len(users) > 0 {
		return nil, proto.Errorf(proto.CodeConflict, "image %q is in use by %v", c.Name, users)
	}
	tx.DeleteImage(c.Name)
	return nil, nil
}

// --- instances ---

func applyInstanceCreate(tx *state.Tx, c *InstanceCreate) (any, error) {
	in := c.Instance
	if !proto.IsUUID(in.UUID) {
		return nil, proto.Errorf(proto.CodeInternal, "instance create without a uuid")
	}
	if err := proto.CheckName("name", in.Name); err != nil {
		return nil, err
	}
	if tx.Instance(in.UUID) != nil || tx.Instance(in.Name) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %q exists", in.Name)
	}
	if tx.Flavor(in.Flavor) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "flavor %q does not exist", in.Flavor)
	}
	if tx.Image(in.Image) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "image %q does not exist", in.Image)
	}
	if in.RescueImage != "" && tx.Image(in.RescueImage) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rescue_image %q does not exist", in.RescueImage)
	}
	if in.State == "" {
		in.State = proto.InstanceBuilding
	}
	var node *proto.Node
	if in.Node != "" {
		n, err := findNode(tx, in.Node)
		if err != nil {
			return nil, err
		}
		if n.InstanceUUID != "" {
			return nil, proto.Errorf(proto.CodeConflict, "node %s already holds instance %s", nodeRef(n), n.InstanceUUID)
		}
		in.Node = n.UUID
		n.InstanceUUID = in.UUID
		n.UpdatedAt = in.CreatedAt
		node = n
	}
	if node != nil {
		tx.PutNode(node)
	}
	tx.PutInstance(&in)
	c2 := in
	return &c2, nil
}

func applyInstanceDelete(tx *state.Tx, c *InstanceDelete) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	if in.Node != "" {
		if n := tx.Node(in.Node); n != nil && n.InstanceUUID == in.UUID {
			n = n.Clone()
			n.InstanceUUID = ""
			tx.PutNode(n)
		}
	}
	tx.DeleteInstance(in.UUID)
	return nil, nil
}

// --- settings, tokens, servers ---

func applySettingsUpdate(tx *state.Tx, c *SettingsUpdate) (any, error) {
	s := tx.Settings()
	p := c.Patch
	setIf(&s.AutoEnroll, p.AutoEnroll)
	setIf(&s.DiscoveryEnabled, p.DiscoveryEnabled)
	setIf(&s.DiscoveryKernel, p.DiscoveryKernel)
	setIf(&s.DiscoveryRamdisk, p.DiscoveryRamdisk)
	setIf(&s.DiscoveryCmdline, p.DiscoveryCmdline)
	if strings.ContainsFunc(s.DiscoveryCmdline, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, proto.Errorf(proto.CodeInvalid, "discovery_cmdline: control characters are not allowed")
	}
	if len(s.DiscoveryCmdline) > 1024 {
		return nil, proto.Errorf(proto.CodeInvalid, "discovery_cmdline: at most 1024 bytes")
	}
	for _, ref := range []struct {
		field, name string
		kind        proto.ImageKind
	}{{"discovery_kernel", s.DiscoveryKernel, proto.ImageKernel}, {"discovery_ramdisk", s.DiscoveryRamdisk, proto.ImageRamdisk}} {
		if ref.name == "" {
			continue
		}
		im := tx.Image(ref.name)
		if im == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "%s: image %q does not exist", ref.field, ref.name)
		}
		if im.Kind != ref.kind {
			return nil, proto.Errorf(proto.CodeInvalid, "%s: image %q is a %s, want a %s", ref.field, ref.name, im.Kind, ref.kind)
		}
	}
	tx.PutSettings(s)
	return tx.Settings(), nil
}

func applyTokenCreate(tx *state.Tx, c *TokenCreate) (any, error) {
	t := c.Token
	t.SecretHash = c.SecretHash
	if old := tx.Token(t.ID); old != nil {
		if c.IfAbsent && old.SecretHash == c.SecretHash {
			cp := *old
			return &cp, nil
		}
		return nil, proto.Errorf(proto.CodeConflict, "token %s exists", t.ID)
	}
	if t.ID == "" || len(c.SecretHash) != 64 {
		return nil, proto.Errorf(proto.CodeInternal, "token create without id or secret hash")
	}
	if _, ok := tx.TokenByHash(c.SecretHash); ok {
		return nil, proto.Errorf(proto.CodeConflict, "token secret reused")
	}
	if !t.Role.Valid() {
		return nil, proto.Errorf(proto.CodeInvalid, "role %q: want admin, operator, reader or agent", t.Role)
	}
	if t.Role == proto.RoleAgent {
		if t.Rack == "" {
			return nil, proto.Errorf(proto.CodeInvalid, "rack: an agent token is bound to one rack")
		}
		if tx.Rack(t.Rack) == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", t.Rack)
		}
	} else if t.Rack != "" {
		return nil, proto.Errorf(proto.CodeInvalid, "rack: only agent tokens are bound to a rack")
	}
	tx.PutToken(&t)
	cp := t
	return &cp, nil
}

func applyTokenRevoke(tx *state.Tx, c *TokenRevoke) (any, error) {
	t := tx.Token(c.ID)
	if t == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "token %q not found", c.ID)
	}
	if t.Role == proto.RoleAdmin {
		// Checked here, not in the API, so two admins revoking each other
		// at once cannot both succeed and lock everyone out.
		others := false
		tx.EachToken(func(o *proto.Token) { others = others || o.ID != t.ID && o.Role == proto.RoleAdmin })
		if !others {
			return nil, proto.Errorf(proto.CodeConflict, "token %s is the last admin token; create another admin token first", c.ID)
		}
	}
	tx.DeleteToken(c.ID)
	return nil, nil
}

func applyServerPut(tx *state.Tx, c *ServerPut) (any, error) {
	sv := c.Server
	if sv.ID == "" || sv.RaftAddr == "" {
		return nil, proto.Errorf(proto.CodeInvalid, "a server needs an id and a raft address")
	}
	if old := tx.Server(sv.ID); old != nil && old.RaftAddr == sv.RaftAddr && old.HTTPAddr == sv.HTTPAddr {
		cp := *old
		return &cp, nil // unchanged: no write, no wake-up
	}
	tx.PutServer(&sv)
	cp := sv
	return &cp, nil
}

func applyServerRemove(tx *state.Tx, c *ServerRemove) (any, error) {
	if tx.Server(c.ID) != nil {
		tx.DeleteServer(c.ID)
	}
	return nil, nil
}

// --- reports ---

// --- rack agent reports ---

func applyAgentReports(tx *state.Tx, c *AgentReports) (any, error) {
	if tx.Rack(c.Rack) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", c.Rack)
	}
	res := &AgentReportsResult{Acked: []string{}, Rejected: map[string]string{}}
	for i := range c.Reports {
		r := &c.Reports[i]
		if r.ID == "" {
			continue // the API refuses these before they get here
		}
		if tx.ReportSeen(r.ID) {
			res.Acked = append(res.Acked, r.ID)
			continue
		}
		if err := applyAgentReport(tx, c.Rack, r); err != nil {
			res.Rejected[r.ID] = err.Error()
			continue
		}
		tx.MarkReport(r.ID)
		res.Acked = append(res.Acked, r.ID)
	}
	return res, nil
}

// applyAgentReport checks one report and applies it; on error it has
// changed nothing, but for the conflict record of a refused discovery.
func applyAgentReport(tx *state.Tx, rack string, r *proto.AgentReport) error {
	if r.Rack != rack {
		return proto.Errorf(proto.CodeForbidden, "report for rack %q in a batch for rack %q", r.Rack, rack)
	}
	var mac string
	if r.MAC != "" {
		m, err := proto.NormalizeMAC(r.MAC)
		if err != nil {
			return err
		}
		mac = m
	}
	var node *proto.Node
	switch {
	case r.Node != "":
		node = tx.Node(r.Node)
		if node == nil {
			return proto.Errorf(proto.CodeNotFound, "node %q not found", r.Node)
		}
	case mac != "":
		node = tx.Node(mac)
	}
	if node != nil && node.Rack != rack && !(r.Kind == proto.ReportCallback && r.Step == "inventory") {
		return proto.Errorf(proto.CodeForbidden, "node %s is in rack %q, not %q", nodeRef(node), node.Rack, rack)
	}
	switch r.Kind {
	case proto.ReportMACSeen, proto.ReportBootEvent:
		if node == nil {
			if mac == "" {
				return proto.Errorf(proto.CodeInvalid, "%s report without a node or MAC", r.Kind)
			}
			sightMAC(tx, rack, mac, r)
			return nil
		}
		ev := r.Event
		if r.Kind == proto.ReportMACSeen || ev == "" {
			ev = "dhcp"
		}
		n := node.Clone()
		n.LastBoot = &proto.BootEvent{Event: ev, Agent: r.Agent, Time: r.Time}
		tx.PutNode(n)
		return nil
	case proto.ReportLease:
		return applyLease(tx, rack, mac, r)
	case proto.ReportPower:
		if node == nil {
			return proto.Errorf(proto.CodeInvalid, "power report without a known node")
		}
		if !r.PowerState.Valid() {
			return proto.Errorf(proto.CodeInvalid, "power_state %q: want on, off or unknown", r.PowerState)
		}
		n := node.Clone()
		n.PowerState, n.UpdatedAt = r.PowerState, r.Time
		tx.PutNode(n)
		return nil
	case proto.ReportCallback:
		if r.Step == "inventory" {
			return applyDiscovery(tx, rack, mac, r)
		}
		return proto.Errorf(proto.CodeUnsupported, "ramdisk step %q is not handled by this coordinator yet", r.Step)
	}
	return proto.Errorf(proto.CodeInvalid, "report kind %q is not known", r.Kind)
}

func sightMAC(tx *state.Tx, rack, mac string, r *proto.AgentReport) {
	count := max(r.Count, 1)
	sg := &proto.Sighting{MAC: mac, Rack: rack, FirstSeen: r.Time, LastSeen: r.Time, Count: count}
	if old := tx.Sighting(mac); old != nil {
		cp := *old
		sg = &cp
		sg.Count += count
		if r.Time.After(sg.LastSeen) {
			sg.LastSeen = r.Time
		}
		if r.Time.Before(sg.FirstSeen) {
			sg.FirstSeen = r.Time
		}
		sg.Rack = rack
	}
	sg.Agent = r.Agent
	if r.Arch != "" {
		sg.Arch = r.Arch
	}
	if r.Giaddr != "" {
		sg.Giaddr = r.Giaddr
	}
	if r.Interface != "" {
		sg.Interface = r.Interface
	}
	tx.PutSighting(sg)
}

// LeaseKeep is how long after its expiry the coordinator keeps a lease
// nobody reported the end of (an agent that died with it).
const LeaseKeep = time.Hour

func applyLease(tx *state.Tx, rack, mac string, r *proto.AgentReport) error {
	l := r.Lease
	if l == nil || mac == "" {
		return proto.Errorf(proto.CodeInvalid, "lease report without a lease or MAC")
	}
	ip, err := netip.ParseAddr(l.IP)
	if err != nil || !ip.Is4() {
		return proto.Errorf(proto.CodeInvalid, "lease ip %q: want an IPv4 address", l.IP)
	}
	rk := tx.Rack(rack)
	if rk.PoolStart == "" || ip.Less(netip.MustParseAddr(rk.PoolStart)) || netip.MustParseAddr(rk.PoolEnd).Less(ip) {
		return proto.Errorf(proto.CodeInvalid, "lease ip %s is outside rack %s's pool", ip, rack)
	}
	old := tx.Lease(rack, ip.String())
	switch r.LeaseEvent {
	case "bound":
		if old != nil && old.MAC != mac && old.Expires.After(r.Time) {
			return proto.Errorf(proto.CodeConflict, "lease %s for %s: the address is leased to %s until %s",
				ip, mac, old.MAC, old.Expires.Format(time.RFC3339))
		}
		if old != nil && old.MAC == mac && old.Agent != r.Agent && !l.Expires.After(old.Expires) {
			// Another agent renewed this lease since: an older report (a
			// restarted agent catching up) must not shorten it.
			return nil
		}
		tx.PutLease(rack, &proto.Lease{MAC: mac, IP: ip.String(), Expires: l.Expires, Agent: r.Agent})
	case "released", "declined", "expired":
		// Only the agent holding the recorded lease ends it: a peer that
		// took over and renewed it keeps it.
		if old != nil && old.MAC == mac && old.Agent == r.Agent {
			tx.DeleteLease(rack, ip.String())
		}
	default:
		return proto.Errorf(proto.CodeInvalid, "lease_event %q: want bound, released, declined or expired", r.LeaseEvent)
	}
	// Forget this agent's leases long expired by its own clock, whose end
	// it never reported. (Only its own: a clock ahead must not wipe a
	// peer's records.)
	for _, stale := range tx.LeasesExpiredBefore(rack, r.Agent, r.Time.Add(-LeaseKeep)) {
		tx.DeleteLease(rack, stale)
	}
	return nil
}

func applyLeasesExpire(tx *state.Tx, c *LeasesExpire) (any, error) {
	n := 0
	for _, rack := range tx.RacksWithLeases() {
		for _, ip := range tx.LeasesExpiredBefore(rack, "", c.Before) {
			tx.DeleteLease(rack, ip)
			n++
		}
	}
	return &LeasesExpireResult{Expired: n}, nil
}

// discoveryNamespace makes the uuid of a discovered node from the id of
// the report that discovered it: deterministic, as Apply must be.
var discoveryNamespace = uuid.MustParse("6f1c7a52-3b0e-4c55-9d3e-6d2d0b8f4a10")

// applyDiscovery takes a discovery ramdisk's inventory: it creates a
// discovered node, or updates the discovered node the machine already is
// (same system uuid or serial, or any MAC). It never changes an enrolled
// node: an inventory that claims an enrolled node's MAC with another
// system identity is refused and recorded as a conflict.
func applyDiscovery(tx *state.Tx, rack, mac string, r *proto.AgentReport) error {
	if mac == "" {
		return proto.Errorf(proto.CodeInvalid, "inventory without the MAC it came from")
	}
	var inv proto.Inventory
	if err := json.Unmarshal(r.Data, &inv); err != nil {
		return proto.Errorf(proto.CodeInvalid, "inventory is not valid JSON: %v", err)
	}
	if inv.Version != proto.InventoryVersion {
		return proto.Errorf(proto.CodeInvalid, "inventory version %d, this coordinator reads %d", inv.Version, proto.InventoryVersion)
	}
	macs := []string{mac}
	for _, ifc := range inv.Interfaces {
		if m, err := proto.NormalizeMAC(ifc.MAC); err == nil && !slices.Contains(macs, m) {
			macs = append(macs, m)
		}
	}
	sameSystem := func(n *proto.Node) bool {
		var have proto.Inventory
		if len(n.Inventory) == 0 || json.Unmarshal(n.Inventory, &have) != nil {
			return false
		}
		return identity(have.System) != "" && identity(have.System) == identity(inv.System)
	}
	// The node this machine already is: one holding any of its MACs...
	var found *proto.Node
	for _, m := range macs {
		if n := tx.Node(m); n != nil {
			if n.Enrolled && !sameSystem(n) {
				recordConflict(tx, rack, mac, r, fmt.Sprintf("MAC %s belongs to enrolled node %s, but the inventory is of system %q", m, nodeRef(n), identity(inv.System)))
				return proto.Errorf(proto.CodeConflict, "MAC %s belongs to enrolled node %s of another system; recorded as a conflict", m, nodeRef(n))
			}
			if found == nil {
				found = n
			}
		}
	}
	// ...or one with the same system identity.
	if found == nil && identity(inv.System) != "" {
		tx.EachNode(func(n *proto.Node) {
			// The lowest uuid of several: Apply must not depend on map order.
			if sameSystem(n) && (found == nil || n.UUID < found.UUID) {
				found = n
			}
		})
	}
	raw, _ := json.Marshal(inv)
	if found != nil {
		n := found.Clone()
		n.LastBoot = &proto.BootEvent{Event: "inventory", Agent: r.Agent, Time: r.Time}
		if n.Enrolled {
			tx.PutNode(n) // same machine, enrolled: only the boot event
			return nil
		}
		for _, m := range macs {
			if id, ok := tx.NodeByMAC(m); (!ok || id == n.UUID) && !slices.Contains(n.MACs, m) {
				n.MACs = append(n.MACs, m)
			}
		}
		n.Inventory, n.UpdatedAt = raw, r.Time
		if n.Rack != rack {
			n.Rack, n.IP = rack, ""
		}
		if inv.BMCAddress != "" && n.BMC.Address == "" {
			n.BMC.Address = inv.BMCAddress
		}
		if err := checkNodeFields(tx, n, n.UUID); err != nil {
			return err
		}
		tx.PutNode(n)
		forgetSightings(tx, n.MACs)
		return nil
	}
	n := &proto.Node{
		UUID: uuid.NewSHA1(discoveryNamespace, []byte(r.ID)).String(), Rack: rack,
		ProvisionState: proto.StateDiscovered, PowerState: proto.PowerUnknown,
		Inventory: raw, CreatedAt: r.Time, UpdatedAt: r.Time,
		LastBoot: &proto.BootEvent{Event: "inventory", Agent: r.Agent, Time: r.Time},
	}
	for _, m := range macs {
		if _, taken := tx.NodeByMAC(m); !taken {
			n.MACs = append(n.MACs, m)
		}
	}
	if inv.BMCAddress != "" {
		n.BMC = proto.BMC{Driver: "ipmi", Address: inv.BMCAddress}
	}
	if tx.Settings().AutoEnroll {
		n.ProvisionState, n.Enrolled = proto.StateEnrolled, true
	}
	if err := checkNodeFields(tx, n, ""); err != nil {
		return err
	}
	tx.PutNode(n)
	forgetSightings(tx, n.MACs)
	return nil
}

// identity is a machine's system identity: its SMBIOS uuid, else its
// serial, else "".
func identity(s proto.System) string {
	switch {
	case s.UUID != "" && s.UUID != "00000000-0000-0000-0000-000000000000":
		return "uuid:" + strings.ToLower(s.UUID)
	case s.Serial != "" && !strings.EqualFold(s.Serial, "not specified") && !strings.EqualFold(s.Serial, "to be filled by o.e.m."):
		return "serial:" + s.Serial
	}
	return ""
}

func forgetSightings(tx *state.Tx, macs []string) {
	for _, m := range macs {
		tx.DeleteSighting(m)
	}
}

// recordConflict notes a refused discovery on the MAC's sighting, where
// GET /v1/sightings shows it. It is written even though the report is
// refused: the refusal is what is recorded.
func recordConflict(tx *state.Tx, rack, mac string, r *proto.AgentReport, why string) {
	sg := &proto.Sighting{MAC: mac, Rack: rack, FirstSeen: r.Time, LastSeen: r.Time, Count: 1}
	if old := tx.Sighting(mac); old != nil {
		cp := *old
		sg = &cp
		sg.Count++
		sg.LastSeen = r.Time
	}
	sg.Agent, sg.Conflict = r.Agent, why
	tx.PutSighting(sg)
}
