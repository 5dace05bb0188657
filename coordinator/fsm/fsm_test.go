package fsm

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// harness applies commands at increasing indexes, as Raft would.
type harness struct {
	t     *testing.T
	f     *FSM
	index uint64
	log   [][]byte
	seq   map[string]uint64 // next report seq per agent incarnation
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, f: New(state.New(), nil)}
}

func (h *harness) apply(c Command) *Result {
	h.t.Helper()
	if ar, ok := c.(AgentReports); ok {
		// Number reports as an agent does, unless the test chose.
		if h.seq == nil {
			h.seq = map[string]uint64{}
		}
		ar.Reports = slices.Clone(ar.Reports)
		for i := range ar.Reports {
			r := &ar.Reports[i]
			if r.Agent == "" {
				r.Agent = "a1"
			}
			if r.Incarnation == "" {
				r.Incarnation = "inc-" + r.Agent
			}
			if r.Seq == 0 {
				h.seq[r.Agent+"/"+r.Incarnation]++
				r.Seq = h.seq[r.Agent+"/"+r.Incarnation]
			} else {
				h.seq[r.Agent+"/"+r.Incarnation] = max(h.seq[r.Agent+"/"+r.Incarnation], r.Seq)
			}
		}
		c = ar
	}
	b, err := Encode(c)
	if err != nil {
		h.t.Fatal(err)
	}
	h.index++
	h.log = append(h.log, b)
	return h.f.ApplyBytes(h.index, b)
}

func (h *harness) must(c Command) any {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil {
		h.t.Fatalf("apply %T: %v", c, r.Err)
	}
	return r.Value
}

func (h *harness) fails(c Command, code proto.Code, msg string) {
	h.t.Helper()
	before := h.f.Store().Index()
	beforeState := stateBytes(h.t, h.f.Store())
	r := h.apply(c)
	if r.Err == nil {
		h.t.Fatalf("apply %T: succeeded, want error %s", c, code)
	}
	if got := proto.CodeOf(r.Err); got != code {
		h.t.Fatalf("apply %T: code = %s (%v), want %s", c, got, r.Err, code)
	}
	if !strings.Contains(r.Err.Error(), msg) {
		h.t.Fatalf("apply %T: error %q does not contain %q", c, r.Err, msg)
	}
	if after := h.f.Store().Index(); after != before {
		h.t.Fatalf("a failed %T changed the store index from %d to %d", c, before, after)
	}
	if after := stateBytes(h.t, h.f.Store()); !bytes.Equal(after, beforeState) {
		h.t.Fatalf("a failed %T changed the state:\nbefore %s\nafter  %s", c, beforeState, after)
	}
}

// stateBytes is the whole state as a snapshot writes it.
func stateBytes(t testing.TB, s *state.Store) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const (
	uuid1 = "11111111-1111-4111-8111-111111111111"
	uuid2 = "22222222-2222-4222-8222-222222222222"
	uuid3 = "33333333-3333-4333-8333-333333333333"
	sha   = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

func node(uuid, name, mac string, st proto.ProvisionState) NodeCreate {
	return NodeCreate{Node: proto.Node{UUID: uuid, Name: name, MACs: []string{mac}, ProvisionState: st, CreatedAt: t0, UpdatedAt: t0}}
}

// seedNode puts a node in any state, bypassing the transitions, so every
// state can be a starting point.
func seedNode(t *testing.T, s *state.Store, idx uint64, st proto.ProvisionState) {
	t.Helper()
	err := s.Write(idx, func(tx *state.Tx) error {
		tx.PutNode(&proto.Node{UUID: uuid1, Name: "n1", MACs: []string{"52:54:00:00:00:01"}, ProvisionState: st,
			Enrolled: st != proto.StateDiscovered, PowerState: proto.PowerUnknown})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTransitions tries every event of the state machine from every state:
// it must succeed exactly where the table allows it, land in the table's
// target state, and change nothing where it is refused.
func TestTransitions(t *testing.T) {
	for _, tr := range proto.Transitions {
		for _, from := range proto.AllStates {
			allowed := tr.Allows(from)
			t.Run(fmt.Sprintf("%s/from-%s", tr.Event, from), func(t *testing.T) {
				h := newHarness(t)
				seedNode(t, h.f.Store(), 1, from)
				h.index = 1
				var c Command
				switch tr.Actor {
				case proto.ActorToggle:
					c = NodeSetEnrolled{Ref: "n1", Enrolled: tr.Event == "enroll", Now: t0}
					if (tr.Event == "enroll") == (from != proto.StateDiscovered) {
						// The toggle is already in the asked position: a
						// repeat, which succeeds and changes nothing.
						r := h.apply(c)
						if r.Err != nil {
							t.Fatalf("repeat toggle: %v", r.Err)
						}
						n, _ := h.f.Store().Node("n1")
						if n.ProvisionState != from {
							t.Fatalf("repeat toggle moved %s to %s", from, n.ProvisionState)
						}
						return
					}
				default:
					c = NodeProvision{Ref: "n1", Event: tr.Event, Actor: tr.Actor, LastError: "boom", Now: t0}
				}
				r := h.apply(c)
				n, _ := h.f.Store().Node("n1")
				if !allowed {
					if proto.CodeOf(r.Err) != proto.CodeWrongState {
						t.Fatalf("%s from %s: err = %v, want wrong_state", tr.Event, from, r.Err)
					}
					if !strings.Contains(r.Err.Error(), "allowed from") {
						t.Fatalf("error %q does not say where %s is allowed from", r.Err, tr.Event)
					}
					if n.ProvisionState != from {
						t.Fatalf("refused %s moved the node from %s to %s", tr.Event, from, n.ProvisionState)
					}
					return
				}
				if r.Err != nil {
					t.Fatalf("%s from %s: %v", tr.Event, from, r.Err)
				}
				if n.ProvisionState != tr.To {
					t.Fatalf("%s from %s: state = %s, want %s", tr.Event, from, n.ProvisionState, tr.To)
				}
				if n.ModifyIndex != 2 {
					t.Fatalf("modify_index = %d, want 2", n.ModifyIndex)
				}
				if tr.To == proto.StateFailed && n.LastError != "boom" {
					t.Fatalf("last_error = %q, want boom", n.LastError)
				}
			})
		}
	}
}

// TestTransitionActor: a transition is refused to a caller who is not its
// actor (an operator cannot declare a deploy done).
func TestTransitionActor(t *testing.T) {
	h := newHarness(t)
	seedNode(t, h.f.Store(), 1, proto.StateDeploying)
	h.index = 1
	h.fails(NodeProvision{Ref: "n1", Event: "deploy-done", Actor: proto.ActorOperator}, proto.CodeInvalid, "not a transition")
	h.fails(NodeProvision{Ref: "n1", Event: "fly", Actor: proto.ActorOperator}, proto.CodeInvalid, "unknown transition")
	h.fails(NodeProvision{Ref: "nosuch", Event: "manage", Actor: proto.ActorOperator}, proto.CodeNotFound, "not found")
}

func TestNodeCommands(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.0.0.0/24"}, Create: true})
	n := h.must(node(uuid1, "n1", "52:54:00:AA:00:01", proto.StateEnrolled)).(*proto.Node)
	if n.MACs[0] != "52:54:00:aa:00:01" || !n.Enrolled || n.PowerState != proto.PowerUnknown || n.CreateIndex != 2 {
		t.Fatalf("created node = %+v", n)
	}
	d := h.must(node(uuid2, "", "52:54:00:00:00:02", proto.StateDiscovered)).(*proto.Node)
	if d.Enrolled {
		t.Fatalf("discovered node is enrolled")
	}
	h.fails(node(uuid3, "n1", "52:54:00:00:00:03", proto.StateEnrolled), proto.CodeConflict, "name \"n1\" is taken")
	h.fails(node(uuid3, "n3", "52:54:00:aa:00:01", proto.StateEnrolled), proto.CodeConflict, "belongs to node")
	h.fails(node(uuid3, "n3", "zz", proto.StateEnrolled), proto.CodeInvalid, "not an Ethernet MAC")
	h.fails(node(uuid3, "n3", "52:54:00:00:00:03", proto.StateActive), proto.CodeInvalid, "discovered or enrolled")
	h.fails(node(uuid1, "n9", "52:54:00:00:00:09", proto.StateEnrolled), proto.CodeConflict, "exists")
	h.fails(node(uuid3, uuid2, "52:54:00:00:00:03", proto.StateEnrolled), proto.CodeInvalid, "form of a UUID")

	// Lookups by uuid, name and MAC (any case).
	for _, ref := range []string{uuid1, "n1", "52:54:00:AA:00:01", "52-54-00-aa-00-01", "5254.00aa.0001"} {
		if got, ok := h.f.Store().Node(ref); !ok || got.UUID != uuid1 {
			t.Fatalf("Node(%q) = %v, %v", ref, got, ok)
		}
	}

	// Update: rename, new MACs (old MAC freed), rack, BMC, properties.
	name, macs, rack, pw := "n1b", []string{"52:54:00:aa:00:11"}, "r1", "s3cret"
	props := map[string]string{"k": "v"}
	u := h.must(NodeUpdate{Ref: "n1", Now: t0.Add(time.Minute), Patch: proto.NodePatch{
		Name: &name, MACs: &macs, Rack: &rack, BMC: &proto.BMCPatch{Password: &pw}, Properties: &props}}).(*proto.Node)
	if u.Name != "n1b" || u.Rack != "r1" || u.BMC.Password != "s3cret" || u.Properties["k"] != "v" || u.CreateIndex != 2 || u.ModifyIndex != h.index {
		t.Fatalf("updated node = %+v", u)
	}
	if _, ok := h.f.Store().Node("n1"); ok {
		t.Fatalf("old name still resolves")
	}
	if _, ok := h.f.Store().Node("52:54:00:aa:00:01"); ok {
		t.Fatalf("old MAC still resolves")
	}
	bad := "nosuch"
	h.fails(NodeUpdate{Ref: "n1b", Patch: proto.NodePatch{Rack: &bad}}, proto.CodeInvalid, "rack \"nosuch\" does not exist")
	h.fails(NodeUpdate{Ref: "nope", Patch: proto.NodePatch{}}, proto.CodeNotFound, "not found")

	// Maintenance.
	m := h.must(NodeSetMaintenance{Ref: "n1b", Maintenance: true, Reason: "fan", Now: t0}).(*proto.Node)
	if !m.Maintenance || m.MaintenanceReason != "fan" {
		t.Fatalf("maintenance = %+v", m)
	}
	m = h.must(NodeSetMaintenance{Ref: "n1b", Maintenance: false, Reason: "ignored", Now: t0}).(*proto.Node)
	if m.Maintenance || m.MaintenanceReason != "" {
		t.Fatalf("maintenance off = %+v", m)
	}

	// Enroll the discovered node; unenroll it again.
	e := h.must(NodeSetEnrolled{Ref: uuid2, Enrolled: true, Now: t0}).(*proto.Node)
	if !e.Enrolled || e.ProvisionState != proto.StateEnrolled {
		t.Fatalf("enrolled = %+v", e)
	}
	e = h.must(NodeSetEnrolled{Ref: uuid2, Enrolled: false, Now: t0}).(*proto.Node)
	if e.Enrolled || e.ProvisionState != proto.StateDiscovered {
		t.Fatalf("unenrolled = %+v", e)
	}

	// Rack in use cannot go; node in use cannot be deleted or re-MACed.
	h.fails(RackDelete{Name: "r1"}, proto.CodeConflict, "in use by 1 node")
	seed := h.f.Store()
	h.index++
	_ = seed.Write(h.index, func(tx *state.Tx) error {
		n := tx.Node(uuid1).Clone()
		n.ProvisionState = proto.StateActive
		tx.PutNode(n)
		return nil
	})
	h.fails(NodeDelete{Ref: "n1b"}, proto.CodeWrongState, "it is active")
	h.fails(NodeUpdate{Ref: "n1b", Patch: proto.NodePatch{MACs: &macs}}, proto.CodeWrongState, "while it is active")
	h.must(NodeDelete{Ref: uuid2})
	if _, ok := h.f.Store().Node("52:54:00:00:00:02"); ok {
		t.Fatalf("deleted node's MAC still resolves")
	}
}

func TestObjectCommands(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.0.0.7/24", Gateway: "10.0.0.1", PoolStart: "10.0.0.100", PoolEnd: "10.0.0.200"}, Create: true})
	if r, _ := h.f.Store().Rack("r1"); r.Subnet != "10.0.0.0/24" {
		t.Fatalf("subnet not masked: %s", r.Subnet)
	}
	h.fails(RackPut{Rack: proto.Rack{Name: "r1"}, Create: true}, proto.CodeConflict, "exists")
	h.fails(RackPut{Rack: proto.Rack{Name: "r2"}, Create: false}, proto.CodeNotFound, "not found")
	h.fails(RackPut{Rack: proto.Rack{Name: "r2", Subnet: "10.0.0.0/24", Gateway: "10.1.0.1"}, Create: true}, proto.CodeInvalid, "outside subnet")
	h.fails(RackPut{Rack: proto.Rack{Name: "r2", Subnet: "10.0.0.0/24", PoolStart: "10.0.0.9", PoolEnd: "10.0.0.1"}, Create: true}, proto.CodeInvalid, "before pool_start")
	h.fails(RackPut{Rack: proto.Rack{Name: "r2", Subnet: "10.0.0.0/24", Gateway: "10.0.0.150", PoolStart: "10.0.0.100", PoolEnd: "10.0.0.200"}, Create: true}, proto.CodeInvalid, "rack's own")
	h.fails(RackPut{Rack: proto.Rack{Name: "r2", Subnet: "10.0.0.0/24", PoolStart: "10.0.0.100", PoolEnd: "10.0.0.255"}, Create: true}, proto.CodeInvalid, "broadcast")
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.0.0.0/24", DNS: []string{"10.0.0.2"}}})

	h.must(ImagePut{Image: proto.Image{Name: "k", Kind: proto.ImageKernel, URL: "http://x/k", SHA256: strings.ToUpper(sha)}, Create: true})
	h.must(ImagePut{Image: proto.Image{Name: "rd", Kind: proto.ImageRamdisk, URL: "file:///srv/rd", SHA256: sha}, Create: true})
	h.must(ImagePut{Image: proto.Image{Name: "disk", Kind: proto.ImageDisk, URL: "https://x/d", SHA256: sha}, Create: true})
	h.fails(ImagePut{Image: proto.Image{Name: "bad", Kind: "iso", URL: "http://x", SHA256: sha}, Create: true}, proto.CodeInvalid, "kind")
	h.fails(ImagePut{Image: proto.Image{Name: "bad", Kind: proto.ImageDisk, URL: "ftp://x/y", SHA256: sha}, Create: true}, proto.CodeInvalid, "url")
	h.fails(ImagePut{Image: proto.Image{Name: "bad", Kind: proto.ImageDisk, URL: "http://x/y", SHA256: "abc"}, Create: true}, proto.CodeInvalid, "64 hex")

	h.must(FlavorPut{Flavor: proto.Flavor{Name: "small", CPUs: 2, MemoryMB: 2048, Rack: "r1", RescueImage: "rd"}, Create: true})
	h.fails(FlavorPut{Flavor: proto.Flavor{Name: "f2", RescueImage: "nosuch"}, Create: true}, proto.CodeInvalid, "rescue_image")
	h.fails(FlavorPut{Flavor: proto.Flavor{Name: "f2", CPUs: -1}, Create: true}, proto.CodeInvalid, "negative")
	h.fails(RackDelete{Name: "r1"}, proto.CodeConflict, "flavor(s) [small]")

	// Settings refer to images by kind.
	yes, k, rd := true, "k", "rd"
	s := h.must(SettingsUpdate{Patch: proto.SettingsPatch{AutoEnroll: &yes, DiscoveryEnabled: &yes, DiscoveryKernel: &k, DiscoveryRamdisk: &rd}}).(proto.Settings)
	if !s.AutoEnroll || !s.DiscoveryEnabled || s.DiscoveryKernel != "k" {
		t.Fatalf("settings = %+v", s)
	}
	h.fails(SettingsUpdate{Patch: proto.SettingsPatch{DiscoveryKernel: &rd}}, proto.CodeInvalid, "is a ramdisk, want a kernel")
	h.fails(ImageDelete{Name: "k"}, proto.CodeConflict, "settings.discovery_kernel")
	h.fails(ImagePut{Image: proto.Image{Name: "k", Kind: proto.ImageDisk, URL: "http://x/k", SHA256: sha}}, proto.CodeConflict, "kind")

	// Instances tie flavors, images and nodes together, on available
	// nodes only (forcing a node skips filters, never state checks).
	n1 := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	n1.Node.Rack = "r1"
	n1.Node.BMC = proto.BMC{Driver: proto.DriverFake, Address: "bmc-n1"}
	n1.Node.Inventory = []byte(`{"cpus":{"count":4},"memory":{"total_bytes":8589934592},"disks":[{"name":"vda","size_bytes":107374182400}]}`)
	h.must(n1)
	h.fails(InstanceCreate{Instance: proto.Instance{UUID: uuid2, Name: "web1", Flavor: "small", Image: "disk", Node: "n1", CreatedAt: t0}, Now: t0},
		proto.CodeWrongState, "is enrolled")
	makeAvailable(h, "n1")
	h.must(NodeSetMaintenance{Ref: "n1", Maintenance: true, Reason: "fan", Now: t0})
	h.fails(InstanceCreate{Instance: proto.Instance{UUID: uuid2, Name: "web1", Flavor: "small", Image: "disk", Node: "n1", CreatedAt: t0}, Now: t0},
		proto.CodeWrongState, "maintenance")
	h.must(NodeSetMaintenance{Ref: "n1", Maintenance: false, Now: t0})
	in := h.must(InstanceCreate{Instance: proto.Instance{UUID: uuid2, Name: "web1", Flavor: "small", Image: "disk", Node: "n1", CreatedAt: t0}, Now: t0}).(*proto.Instance)
	if in.Node != uuid1 || in.State != proto.InstanceQueued {
		t.Fatalf("instance = %+v", in)
	}
	if n, _ := h.f.Store().Node("n1"); n.InstanceUUID != uuid2 {
		t.Fatalf("node does not name its instance: %+v", n)
	}
	h.fails(InstanceCreate{Instance: proto.Instance{UUID: uuid3, Name: "web2", Flavor: "small", Image: "disk", Node: "n1"}, Now: t0}, proto.CodeWrongState, "already holds")
	h.fails(InstanceCreate{Instance: proto.Instance{UUID: uuid3, Name: "web1", Flavor: "small", Image: "disk"}, Now: t0}, proto.CodeConflict, "exists")
	h.fails(FlavorDelete{Name: "small"}, proto.CodeConflict, "instance(s) [web1]")
	h.fails(ImageDelete{Name: "disk"}, proto.CodeConflict, "instance web1")
	h.fails(NodeDelete{Ref: "n1"}, proto.CodeWrongState, "holds instance")
	h.fails(NodeSetEnrolled{Ref: "n1", Enrolled: false}, proto.CodeWrongState, "holds instance")
	for _, ref := range []string{"web1", uuid2} {
		got := h.f.Store().Nodes(state.NodeFilter{Instance: ref})
		if len(got) != 1 || got[0].UUID != uuid1 {
			t.Fatalf("Nodes(instance=%s) = %v", ref, got)
		}
	}
	if got := h.f.Store().Instances("n1"); len(got) != 1 || got[0].Name != "web1" {
		t.Fatalf("Instances(n1) = %v", got)
	}
	h.must(InstanceDelete{Ref: "web1"})
	if n, _ := h.f.Store().Node("n1"); n.InstanceUUID != "" {
		t.Fatalf("node still names a deleted instance")
	}
	h.must(FlavorDelete{Name: "small"})
	h.must(ImageDelete{Name: "disk"})
	h.fails(ImageDelete{Name: "disk"}, proto.CodeNotFound, "not found")
}

func TestTokensAndServers(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Rack: proto.Rack{Name: "r1"}, Create: true})
	hash := strings.Repeat("a", 64)
	h.must(TokenCreate{Token: proto.Token{ID: "t1", Role: proto.RoleAdmin}, SecretHash: hash})
	if tok, ok := h.f.Store().TokenByHash(hash); !ok || tok.ID != "t1" {
		t.Fatalf("TokenByHash = %v %v", tok, ok)
	}
	h.fails(TokenCreate{Token: proto.Token{ID: "t1", Role: proto.RoleAdmin}, SecretHash: hash}, proto.CodeConflict, "exists")
	h.must(TokenCreate{Token: proto.Token{ID: "t1", Role: proto.RoleAdmin}, SecretHash: hash, IfAbsent: true})
	h.fails(TokenCreate{Token: proto.Token{ID: "t2", Role: proto.RoleAdmin}, SecretHash: hash}, proto.CodeConflict, "reused")
	h.fails(TokenCreate{Token: proto.Token{ID: "t2", Role: "root"}, SecretHash: strings.Repeat("b", 64)}, proto.CodeInvalid, "role")
	h.fails(TokenCreate{Token: proto.Token{ID: "t2", Role: proto.RoleAgent}, SecretHash: strings.Repeat("b", 64)}, proto.CodeInvalid, "bound to one rack")
	h.fails(TokenCreate{Token: proto.Token{ID: "t2", Role: proto.RoleReader, Rack: "r1"}, SecretHash: strings.Repeat("b", 64)}, proto.CodeInvalid, "only agent")
	h.must(TokenCreate{Token: proto.Token{ID: "t2", Role: proto.RoleAgent, Rack: "r1"}, SecretHash: strings.Repeat("b", 64)})
	// The last admin token cannot go: nobody could manage tokens then.
	h.fails(TokenRevoke{ID: "t1"}, proto.CodeConflict, "last admin token")
	h.must(TokenCreate{Token: proto.Token{ID: "t3", Role: proto.RoleAdmin}, SecretHash: strings.Repeat("d", 64)})
	h.must(TokenRevoke{ID: "t1"})
	h.fails(TokenRevoke{ID: "t3"}, proto.CodeConflict, "last admin token")
	if _, ok := h.f.Store().TokenByHash(hash); ok {
		t.Fatalf("revoked token still authenticates")
	}
	h.fails(TokenRevoke{ID: "t1"}, proto.CodeNotFound, "not found")

	h.must(ServerPut{Server: proto.Server{ID: "s1", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}})
	idx := h.f.Store().Index()
	h.must(ServerPut{Server: proto.Server{ID: "s1", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}})
	if h.f.Store().Index() != idx {
		t.Fatalf("an unchanged ServerPut bumped the index")
	}
	h.fails(ServerPut{Server: proto.Server{ID: "s2"}}, proto.CodeInvalid, "raft address")
	h.must(ServerRemove{ID: "s1"})
	if _, ok := h.f.Store().Server("s1"); ok {
		t.Fatalf("removed server still recorded")
	}
}

func TestBadEntries(t *testing.T) {
	f := New(state.New(), nil)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{200, '{', '}'}},
		{"bad json", []byte{byte(TypeNodeCreate), '{'}},
	} {
		r := f.ApplyBytes(7, tc.data)
		if r.Err == nil {
			t.Errorf("%s: applied, want an error", tc.name)
		}
		if f.Store().Index() != 0 {
			t.Errorf("%s: store index moved to %d", tc.name, f.Store().Index())
		}
	}
}

// TestSnapshotRoundTrip builds a state with every kind of object, writes a
// snapshot, restores it into a fresh FSM and checks everything is there;
// it also checks that applying the same log twice gives byte-identical
// snapshots (Apply is deterministic).
func TestSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.must(RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.0.0.0/24", PoolStart: "10.0.0.100", PoolEnd: "10.0.0.200", LeaseTime: proto.Duration(time.Hour)}, Create: true})
	h.must(ImagePut{Image: proto.Image{Name: "k", Kind: proto.ImageKernel, URL: "http://x/k", SHA256: sha, Size: 5}, Create: true})
	h.must(ImagePut{Image: proto.Image{Name: "d", Kind: proto.ImageDisk, URL: "http://x/d", SHA256: sha}, Create: true})
	h.must(FlavorPut{Flavor: proto.Flavor{Name: "f", CPUs: 4, RequiredTraits: []string{"ssd"}}, Create: true})
	nc := node(uuid1, "n1", "52:54:00:00:00:01", proto.StateEnrolled)
	nc.Node.BMC = proto.BMC{Driver: "ipmi", Address: "10.0.0.5", Password: "pw"}
	nc.Node.Properties = map[string]string{"a": "b"}
	nc.Node.Rack = "r1"
	nc.Node.Traits = []string{"ssd"}
	nc.Node.Inventory = []byte(`{"cpus":{"count":4}}`)
	h.must(nc)
	h.must(node(uuid3, "", "52:54:00:00:00:03", proto.StateDiscovered))
	makeAvailable(h, uuid1)
	h.must(InstanceCreate{Instance: proto.Instance{UUID: uuid2, Name: "i1", Flavor: "f", Image: "d", Node: uuid1, CreatedAt: t0}, Now: t0})
	k := "k"
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{DiscoveryKernel: &k}})
	h.must(TokenCreate{Token: proto.Token{ID: "t1", Role: proto.RoleReader, CreatedAt: t0}, SecretHash: strings.Repeat("c", 64)})
	h.must(ServerPut{Server: proto.Server{ID: "s1", RaftAddr: "a:1", HTTPAddr: "a:2"}})
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		{ID: "seen-1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "a", Incarnation: "i1", Seq: 1, Time: t0, MAC: "52:54:00:77:00:01"},
		{ID: "lease-1", Kind: proto.ReportLease, Rack: "r1", Agent: "a", Incarnation: "i1", Seq: 2, Time: t0, MAC: "52:54:00:77:00:01", LeaseEvent: "bound",
			Lease: &proto.Lease{IP: "10.0.0.100", Expires: t0.Add(time.Hour)}},
	}})

	var buf bytes.Buffer
	if _, err := h.f.Store().Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	snap := buf.Bytes()

	g := New(state.New(), nil)
	if err := g.Store().Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	a, b := h.f.Store(), g.Store()
	if a.Index() != b.Index() {
		t.Fatalf("index %d != %d", a.Index(), b.Index())
	}
	eq := func(what string, x, y any) {
		t.Helper()
		if fmt.Sprintf("%+v", x) != fmt.Sprintf("%+v", y) {
			t.Fatalf("%s differs after restore:\n got %+v\nwant %+v", what, y, x)
		}
	}
	eq("nodes", deref(a.Nodes(state.NodeFilter{})), deref(b.Nodes(state.NodeFilter{})))
	eq("racks", deref(a.Racks()), deref(b.Racks()))
	eq("images", deref(a.Images()), deref(b.Images()))
	eq("flavors", deref(a.Flavors()), deref(b.Flavors()))
	eq("instances", deref(a.Instances("")), deref(b.Instances("")))
	eq("settings", a.Settings(), b.Settings())
	eq("tokens", deref(a.Tokens()), deref(b.Tokens()))
	eq("servers", deref(a.Servers()), deref(b.Servers()))
	eq("sightings", deref(a.Sightings("")), deref(b.Sightings("")))
	eq("leases", deref(a.Leases("r1")), deref(b.Leases("r1")))
	if len(b.Leases("r1")) != 1 || len(b.Sightings("")) != 1 {
		t.Fatalf("restored leases %v, sightings %v", b.Leases("r1"), b.Sightings(""))
	}
	if b.BootIndex("r1") != a.Index() {
		t.Fatalf("restored boot index %d, want the snapshot's index %d", b.BootIndex("r1"), a.Index())
	}
	if n, _ := b.Node("52:54:00:00:00:01"); n.IP == "" {
		t.Fatalf("restored node lost its reserved address")
	}
	if n, _ := b.Node("n1"); n.BMC.Password != "pw" || n.InstanceUUID != uuid2 {
		t.Fatalf("restored node lost its BMC password or instance: %+v", n)
	}
	if _, ok := b.Node("52:54:00:00:00:03"); !ok {
		t.Fatalf("MAC index not rebuilt")
	}
	if got := b.Nodes(state.NodeFilter{Instance: "i1"}); len(got) != 1 {
		t.Fatalf("instance lookup not rebuilt")
	}
	if _, ok := b.TokenByHash(strings.Repeat("c", 64)); !ok {
		t.Fatalf("token hash index not rebuilt")
	}
	if as, ok := b.AgentSeq("r1", "a"); !ok || len(as.Incarnations) != 1 || as.Incarnations[0].Seq != 2 {
		t.Fatalf("report high-water marks not restored (%+v): a replayed report would apply twice", as)
	}

	// Determinism: replaying the log into a fresh FSM gives the same bytes.
	re := New(state.New(), nil)
	for i, e := range h.log {
		re.ApplyBytes(uint64(i+1), e)
	}
	var buf2 bytes.Buffer
	if _, err := re.Store().Snapshot().WriteTo(&buf2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap, buf2.Bytes()) {
		t.Fatalf("replaying the same log gave a different snapshot")
	}

	// A truncated or foreign snapshot is refused and changes nothing.
	for _, bad := range [][]byte{snap[:len(snap)/2], []byte(`{"t":"node","v":{}}` + "\n"), []byte("garbage")} {
		if err := b.Restore(bytes.NewReader(bad)); err == nil {
			t.Fatalf("restore of a bad snapshot succeeded")
		}
	}
	if n, ok := b.Node("n1"); !ok || n.Name != "n1" {
		t.Fatalf("a failed restore damaged the store")
	}
}

func deref[T any](xs []*T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = *x
	}
	return out
}

// TestTableMatchesDesign pins the state machine to DESIGN.md's diagram,
// written out independently of proto.Transitions, so a change to the
// table is a deliberate change to this list too.
func TestTableMatchesDesign(t *testing.T) {
	want := map[string]bool{
		"discovered -enroll-> enrolled": true, "enrolled -unenroll-> discovered": true, "manageable -unenroll-> discovered": true,
		"enrolled -manage-> manageable": true, "available -manage-> manageable": true, "failed -manage-> manageable": true,
		"manageable -provide-> available": true, "manageable -service-> servicing": true, "servicing -service-done-> manageable": true,
		"available -deploy-> deploying": true, "deploying -deploy-done-> active": true,
		"active -undeploy-> cleaning": true, "cleaning -clean-done-> available": true,
		"active -rescue-> rescuing": true, "rescuing -rescue-done-> rescue": true,
		"rescue -unrescue-> unrescuing": true, "unrescuing -unrescue-done-> active": true,
		"servicing -fail-> failed": true, "deploying -fail-> failed": true, "cleaning -fail-> failed": true,
		"rescuing -fail-> failed": true, "unrescuing -fail-> failed": true,
		// Deleting an instance cleans its node from wherever the instance
		// is (DESIGN.md: "delete from any instance state"); unrescue may
		// cancel a rescue that has not reported in yet.
		"deploying -undeploy-> cleaning": true, "rescuing -undeploy-> cleaning": true, "rescue -undeploy-> cleaning": true,
		"unrescuing -undeploy-> cleaning": true, "failed -undeploy-> cleaning": true,
		"rescuing -unrescue-> unrescuing": true,
	}
	got := map[string]bool{}
	for _, tr := range proto.Transitions {
		for _, f := range tr.From {
			got[fmt.Sprintf("%s -%s-> %s", f, tr.Event, tr.To)] = true
		}
	}
	for e := range want {
		if !got[e] {
			t.Errorf("table lacks %s", e)
		}
	}
	for e := range got {
		if !want[e] {
			t.Errorf("table has %s, which DESIGN.md does not", e)
		}
	}
}

func snapshotReader(t testing.TB, s *state.Store) *bytes.Reader {
	t.Helper()
	return bytes.NewReader(stateBytes(t, s))
}

// TestFailedChangeIsSeen: the harness's "a failed command changed
// nothing" check compares the state's bytes, so a change that errors
// after writing (and so does not move the index) is caught.
func TestFailedChangeIsSeen(t *testing.T) {
	s := state.New()
	before := stateBytes(t, s)
	err := s.Write(1, func(tx *state.Tx) error {
		tx.PutRack(&proto.Rack{Name: "half-written"})
		return proto.Errorf(proto.CodeInvalid, "fails after writing")
	})
	if err == nil || s.Index() != 0 {
		t.Fatalf("err %v, index %d", err, s.Index())
	}
	if bytes.Equal(before, stateBytes(t, s)) {
		t.Fatalf("a write that failed after changing the state is invisible to the bytes check")
	}
}

// makeAvailable moves an enrolled node to available the way an operator
// does: manage, then provide.
func makeAvailable(h *harness, ref string) {
	h.t.Helper()
	h.must(NodeProvision{Ref: ref, Event: "manage", Actor: proto.ActorOperator, Now: t0})
	h.must(NodeProvision{Ref: ref, Event: "provide", Actor: proto.ActorOperator, Now: t0})
}

// TestCmdlineOneValidator: the settings take exactly the command lines
// the boot-script renderer renders (proto.CheckCmdline): a C1 control
// character accepted here made every unknown MAC's script a 500.
func TestCmdlineOneValidator(t *testing.T) {
	h := newHarness(t)
	for _, bad := range []string{"console=ttyS0\u0085", "a\tb", "x;reboot", strings.Repeat("a", proto.MaxCmdline+1)} {
		bad := bad
		h.fails(SettingsUpdate{Patch: proto.SettingsPatch{DiscoveryCmdline: &bad}}, proto.CodeInvalid, "discovery_cmdline")
	}
	good := "console=ttyS0,115200n8 metalfleet.poweroff=false"
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{DiscoveryCmdline: &good}})
}
