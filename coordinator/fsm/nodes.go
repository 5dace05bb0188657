package fsm

import (
	"encoding/binary"
	"net/netip"
	"regexp"
	"slices"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Nodes: create, update, delete, enrollment, maintenance, provision transitions, reserved addresses.

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
	if err := n.BMC.Check(); err != nil {
		return err
	}
	return assignIP(tx, n)
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
	ra := r.Addrs()
	prefix := ra.Subnet
	if n.IP != "" {
		a, err := netip.ParseAddr(n.IP)
		if err != nil || !a.Is4() {
			return proto.Errorf(proto.CodeInvalid, "ip %q: want an IPv4 address", n.IP)
		}
		if why := reservedUnusable(ra, a); why != "" {
			return proto.Errorf(proto.CodeInvalid, "ip %s: %s", a, why)
		}
		if id, ok := tx.NodeByIP(r.Name, a.String()); ok && id != n.UUID {
			return proto.Errorf(proto.CodeConflict, "ip %s in rack %s belongs to node %s", a, r.Name, id)
		}
		if id, _ := tx.NodeByIP(r.Name, a.String()); id != n.UUID && tx.Lease(r.Name, a.String()) != nil {
			l := tx.Lease(r.Name, a.String())
			return proto.Errorf(proto.CodeConflict, "ip %s in rack %s is leased to %s (until %s)", a, r.Name, l.MAC, l.Expires.Format(time.RFC3339))
		}
		n.IP = a.String()
		return nil
	}
	// The lowest free address, searched from the rack's hint (every
	// address below it is taken): the same answer as a scan from the
	// subnet's start, without one per new node. An address with a
	// recorded lease (left from a pool that has since moved) is taken.
	start := prefix.Addr().Next()
	if h := tx.IPHint(r.Name); h.IsValid() && prefix.Contains(h) && start.Less(h) {
		start = h
	}
	for a := start; prefix.Contains(a); a = a.Next() {
		if reservedUnusable(ra, a) != "" {
			continue
		}
		_, taken := tx.NodeByIP(r.Name, a.String())
		if !taken && tx.Lease(r.Name, a.String()) == nil {
			n.IP = a.String()
			// The hint moves only if this node is stored with the
			// address: a command that fails after this point must leave
			// no trace, or replicas that restored from a snapshot would
			// allocate differently.
			tx.ProposeIPHint(r.Name, a, a.Next())
			return nil
		}
	}
	return proto.Errorf(proto.CodeConflict, "rack %s has no free address outside its pool for node %s", r.Name, nodeRef(n))
}

// reservedUnusable says why a cannot be a node's reserved address in a
// rack with addresses ra, or "" if it can.
func reservedUnusable(ra proto.RackAddrs, a netip.Addr) string {
	prefix := ra.Subnet
	if !prefix.Contains(a) {
		return "outside subnet " + prefix.String()
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
	if ra.Own(a) {
		return "an address of the rack's own (gateway, boot server or DNS)"
	}
	if ra.InPool(a) {
		return "inside the dynamic pool " + ra.PoolStart.String() + "-" + ra.PoolEnd.String()
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
	oldRack := n.Rack
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
	oldBMC := n.BMC
	if b := p.BMC; b != nil {
		setIf(&n.BMC.Driver, b.Driver)
		setIf(&n.BMC.Address, b.Address)
		setIf(&n.BMC.Port, b.Port)
		setIf(&n.BMC.Username, b.Username)
		setIf(&n.BMC.Password, b.Password)
		setIf(&n.BMC.Interface, b.Interface)
		setIf(&n.BMC.CACert, b.CACert)
		setIf(&n.BMC.Insecure, b.Insecure)
	}
	if p.Properties != nil {
		n.Properties = *p.Properties
	}
	if p.Traits != nil {
		traits := slices.Clone(*p.Traits)
		if len(traits) > 64 {
			return nil, proto.Errorf(proto.CodeInvalid, "traits: %d given; at most 64", len(traits))
		}
		for _, t := range traits {
			if !traitRE.MatchString(t) {
				return nil, proto.Errorf(proto.CodeInvalid, "trait %q: want upper-case letters, digits and _ (1-128), such as CUSTOM_GPU", t)
			}
		}
		slices.Sort(traits)
		n.Traits = slices.Compact(traits)
		if len(n.Traits) == 0 {
			n.Traits = nil
		}
	}
	if h := p.RootDevice; h != nil {
		if *h == (proto.RootDeviceHint{}) {
			n.RootDevice = nil
		} else {
			c := *h
			n.RootDevice = &c
		}
	}
	if err := checkNodeFields(tx, n, n.UUID); err != nil {
		return nil, err
	}
	n.UpdatedAt = c.Now
	if n.Rack != oldRack {
		endIntents(tx, n, "the node moved from rack "+oldRack+" to rack "+n.Rack, c.Now)
	}
	if n.BMC != oldBMC || n.Rack != oldRack {
		// New fields (or another rack's agents): what was verified no
		// longer holds; verify again when an agent can.
		n.BMCStatus = &proto.BMCStatus{State: proto.BMCUnverified}
		if c.Agent != "" && CanDriveBMC(n) == nil {
			addIntent(tx, n, proto.Intent{Action: proto.ActionVerify, Agent: c.Agent, By: c.By, At: c.Now})
		}
	}
	tx.PutNode(n)
	return n.Clone(), nil
}

var traitRE = regexp.MustCompile(`^[A-Z0-9_]{1,128}$`)

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
	if c.Actor == proto.ActorOperator && n.InstanceUUID != "" {
		// Moved by hand (a failed node managed, then provided), it would
		// hold an instance that no delete can clean.
		held := n.InstanceUUID
		if in := tx.Instance(held); in != nil {
			held = in.Name + " (" + in.UUID + ")"
		}
		return nil, proto.Errorf(proto.CodeWrongState, "node %s holds instance %s: delete the instance (its clean frees the node)", nodeRef(n), held)
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
