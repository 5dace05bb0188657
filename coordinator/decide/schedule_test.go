package decide

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// invJSON is an inventory of cpus logical CPUs, memGiB of memory the
// kernel sees, and plain disks of the given sizes in GiB.
func invJSON(arch, boot string, cpus int, memGiB int64, disksGiB ...int64) json.RawMessage {
	inv := proto.Inventory{Version: proto.InventoryVersion, BootMode: boot,
		CPUs: proto.CPUs{Count: cpus, Architecture: arch}, Memory: proto.Memory{TotalBytes: memGiB << 30}}
	for i, d := range disksGiB {
		inv.Disks = append(inv.Disks, proto.Disk{Name: fmt.Sprintf("sd%c", 'a'+i), SizeBytes: d << 30})
	}
	b, err := json.Marshal(inv)
	if err != nil {
		panic(err)
	}
	return b
}

// node is an available, enrolled node with a BMC, 16 CPUs, 64 GiB and a
// 480 GiB disk (x86_64, UEFI), in rack r1; edits change it.
func node(name string, edits ...func(*proto.Node)) *proto.Node {
	n := &proto.Node{UUID: "uuid-" + name, Name: name, Rack: "r1", ProvisionState: proto.StateAvailable, Enrolled: true,
		BMC:       proto.BMC{Driver: proto.DriverIPMI, Address: "10.0.0.1"},
		Inventory: invJSON("x86_64", "uefi", 16, 64, 480)}
	for _, e := range edits {
		e(n)
	}
	return n
}

func withState(s proto.ProvisionState) func(*proto.Node) {
	return func(n *proto.Node) { n.ProvisionState = s }
}
func withRack(r string) func(*proto.Node) { return func(n *proto.Node) { n.Rack = r } }
func withInv(inv json.RawMessage) func(*proto.Node) {
	return func(n *proto.Node) { n.Inventory = inv }
}
func withTraits(t ...string) func(*proto.Node) { return func(n *proto.Node) { n.Traits = t } }
func withBMCState(s proto.BMCState) func(*proto.Node) {
	return func(n *proto.Node) { n.BMCStatus = &proto.BMCStatus{State: s, Error: "dial udp: timeout"} }
}
func notEnrolled(n *proto.Node)   { n.Enrolled = false }
func inMaintenance(n *proto.Node) { n.Maintenance, n.MaintenanceReason = true, "fan swap" }
func bound(n *proto.Node)         { n.InstanceUUID = "inst-1" }
func noBMCDriver(n *proto.Node)   { n.BMC.Driver = "" }
func noBMCAddress(n *proto.Node)  { n.BMC.Address = "" }

// exactly is the flavor the default node fits exactly.
var exactly = &proto.Flavor{Name: "exact", CPUs: 16, MemoryMB: 64 << 10, DiskGB: 480}

func fc(filter string, n int) proto.FilterCount {
	return proto.FilterCount{Filter: filter, Removed: n}
}

func TestScheduleFilters(t *testing.T) {
	type tc struct {
		name   string
		node   *proto.Node
		flavor *proto.Flavor
		filter string // the filter that removes node
	}
	cases := []tc{
		{"not enrolled", node("n", notEnrolled), exactly, FilterEnrolled},
		{"maintenance", node("n", inMaintenance), exactly, FilterMaintenance},
		{"bound", node("n", bound), exactly, FilterBound},
		{"no BMC driver", node("n", noBMCDriver), exactly, FilterBMC},
		{"no BMC address", node("n", noBMCAddress), exactly, FilterBMC},
		{"BMC unreachable", node("n", withBMCState(proto.BMCUnreachable)), exactly, FilterBMC},
		{"BMC auth failed", node("n", withBMCState(proto.BMCAuthFailed)), exactly, FilterBMC},
		{"other rack", node("n", withRack("r2")), &proto.Flavor{Name: "r1 only", Rack: "r1"}, FilterRack},
		{"no rack, flavor wants one", node("n", withRack("")), &proto.Flavor{Name: "r1 only", Rack: "r1"}, FilterRack},
		{"one cpu short", node("n"), &proto.Flavor{Name: "f", CPUs: 17, MemoryMB: 64 << 10, DiskGB: 480}, FilterCPUs},
		{"one MiB short", node("n"), &proto.Flavor{Name: "f", CPUs: 16, MemoryMB: 64<<10 + 1, DiskGB: 480}, FilterMemory},
		{"one GiB short", node("n"), &proto.Flavor{Name: "f", CPUs: 16, MemoryMB: 64 << 10, DiskGB: 481}, FilterDisk},
		{"only the md array is big enough", node("n", withInv(json.RawMessage(
			`{"cpus":{"count":16},"memory":{"total_bytes":68719476736},"disks":[{"name":"sda","size_bytes":515396075520},{"name":"md0","size_bytes":1030792151040,"raid":"raid0","members":["sda","sdb"]}]}`))),
			&proto.Flavor{Name: "f", DiskGB: 600}, FilterDisk},
		{"no inventory, cpus asked", node("n", withInv(nil)), &proto.Flavor{Name: "f", CPUs: 1}, FilterCPUs},
		{"no inventory, memory asked", node("n", withInv(nil)), &proto.Flavor{Name: "f", MemoryMB: 1}, FilterMemory},
		{"no inventory, disk asked", node("n", withInv(nil)), &proto.Flavor{Name: "f", DiskGB: 1}, FilterDisk},
		{"undecodable inventory", node("n", withInv(json.RawMessage(`{"cpus":"many"}`))), &proto.Flavor{Name: "f", CPUs: 1}, FilterCPUs},
		{"operator trait missing", node("n", withTraits("CUSTOM_NVME")), &proto.Flavor{Name: "gpu", RequiredTraits: []string{"CUSTOM_GPU"}}, FilterTraits},
		{"one of two traits missing", node("n", withTraits("CUSTOM_GPU")), &proto.Flavor{Name: "gpu", RequiredTraits: []string{"CUSTOM_GPU", "CUSTOM_IB"}}, FilterTraits},
		{"arch trait wrong", node("n"), &proto.Flavor{Name: "arm", RequiredTraits: []string{proto.TraitAArch64}}, FilterTraits},
		{"boot trait wrong", node("n"), &proto.Flavor{Name: "bios", RequiredTraits: []string{proto.TraitBootBIOS}}, FilterTraits},
		{"no inventory, inventory trait asked", node("n", withInv(nil)), &proto.Flavor{Name: "x86", RequiredTraits: []string{proto.TraitX86_64}}, FilterTraits},
		// The first filter that fails counts, not the later ones.
		{"maintenance and bound", node("n", inMaintenance, bound), exactly, FilterMaintenance},
		{"bound and too small", node("n", bound), &proto.Flavor{Name: "big", CPUs: 64}, FilterBound},
	}
	for _, s := range proto.AllStates {
		if s != proto.StateAvailable {
			cases = append(cases, tc{"state " + string(s), node("n", withState(s)), exactly, FilterState})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, nf := Schedule([]*proto.Node{c.node}, c.flavor, nil)
			if got != nil || nf == nil {
				t.Fatalf("Schedule(one node) = %v, %v, want nil and a NoFit", got, nf)
			}
			if nf.Considered != 1 || len(nf.Removed) != len(Filters) {
				t.Errorf("NoFit = %+v, want 1 considered and %d filters", nf, len(Filters))
			}
			for i, fc := range nf.Removed {
				want := 0
				if fc.Filter == c.filter {
					want = 1
				}
				if fc.Filter != Filters[i] || fc.Removed != want {
					t.Errorf("NoFit.Removed[%d] = %+v, want {%s %d}", i, fc, Filters[i], want)
				}
			}
			// A node that passes every filter is still found beside it.
			good := node("zz-good", withTraits(c.flavor.RequiredTraits...), withRack(c.flavor.Rack), withInv(invJSON("x86_64", "uefi", 64, 512, 2000)))
			if got, nf := Schedule([]*proto.Node{c.node, good}, c.flavor, nil); got != good || nf != nil {
				t.Errorf("Schedule(bad, good) = %v, %+v, want the good node", got, nf)
			}
		})
	}
}

func TestScheduleKeeps(t *testing.T) {
	for _, c := range []struct {
		name   string
		node   *proto.Node
		flavor *proto.Flavor
	}{
		{"exact fit", node("n"), exactly},
		{"empty flavor", node("n"), &proto.Flavor{Name: "any"}},
		{"nil flavor", node("n"), nil},
		{"no inventory, nothing asked", node("n", withInv(nil)), &proto.Flavor{Name: "any"}},
		{"BMC never checked", node("n"), exactly},
		{"BMC unverified", node("n", withBMCState(proto.BMCUnverified)), exactly},
		{"BMC ok", node("n", withBMCState(proto.BMCOK)), exactly},
		{"BMC refused a command", node("n", withBMCState(proto.BMCError)), exactly},
		{"fake BMC", node("n", func(n *proto.Node) { n.BMC.Driver = proto.DriverFake }), exactly},
		{"same rack", node("n"), &proto.Flavor{Name: "r1", Rack: "r1"}},
		{"inventory traits", node("n"), &proto.Flavor{Name: "f", RequiredTraits: []string{proto.TraitX86_64, proto.TraitBootUEFI}}},
		{"arm64 BIOS", node("n", withInv(invJSON("aarch64", "bios", 16, 64, 480))), &proto.Flavor{Name: "f", RequiredTraits: []string{proto.TraitAArch64, proto.TraitBootBIOS}}},
		{"operator and inventory traits", node("n", withTraits("CUSTOM_GPU")), &proto.Flavor{Name: "f", RequiredTraits: []string{"CUSTOM_GPU", proto.TraitX86_64}}},
		{"largest of several disks", node("n", withInv(invJSON("x86_64", "uefi", 16, 64, 120, 3840, 480))), &proto.Flavor{Name: "f", DiskGB: 3840}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, nf := Schedule([]*proto.Node{c.node}, c.flavor, nil); got != c.node || nf != nil {
				t.Errorf("Schedule = %v, %+v, want the node", got, nf)
			}
		})
	}
}

func TestScheduleFunnel(t *testing.T) {
	f := &proto.Flavor{Name: "m1", CPUs: 32, MemoryMB: 128 << 10, DiskGB: 900, Rack: "r1", RequiredTraits: []string{"CUSTOM_GPU"}}
	big := invJSON("x86_64", "uefi", 64, 256, 1920)
	nodes := []*proto.Node{
		node("a", withState(proto.StateActive), bound),
		node("b", withState(proto.StateManageable)),
		node("c", withState(proto.StateDiscovered), notEnrolled),
		node("d", notEnrolled),
		node("e", inMaintenance),
		node("f", inMaintenance),
		node("g", bound),
		node("h", withBMCState(proto.BMCAuthFailed)),
		node("i", withRack("r2"), withInv(big)),
		node("j"), // 16 cpus
		node("k", withInv(invJSON("x86_64", "uefi", 32, 64, 1920))),
		node("l", withInv(invJSON("x86_64", "uefi", 32, 128, 480))),
		node("m", withInv(big)),
		node("n", withInv(big), withTraits("CUSTOM_NVME")),
	}
	got, nf := Schedule(nodes, f, nil)
	if got != nil || nf == nil {
		t.Fatalf("Schedule = %v, %v, want no node", got, nf)
	}
	want := &proto.NoFit{Considered: 14, Removed: []proto.FilterCount{
		fc(FilterState, 3), fc(FilterEnrolled, 1), fc(FilterMaintenance, 2), fc(FilterBound, 1), fc(FilterBMC, 1),
		fc(FilterRack, 1), fc(FilterCPUs, 1), fc(FilterMemory, 1), fc(FilterDisk, 1), fc(FilterTraits, 2),
	}}
	if nf.Considered != want.Considered || !slices.Equal(nf.Removed, want.Removed) {
		t.Errorf("NoFit = %+v, want %+v", nf, want)
	}
	nodes = append(nodes, node("o", withInv(big), withTraits("CUSTOM_GPU")))
	if got, nf := Schedule(nodes, f, nil); got == nil || got.Name != "o" || nf != nil {
		t.Errorf("Schedule with o = %v, %+v, want o", got, nf)
	}
	if got, nf := Schedule(nil, f, nil); got != nil || nf == nil || nf.Considered != 0 || len(nf.Removed) != len(Filters) {
		t.Errorf("Schedule(no nodes) = %v, %+v, want 0 considered, every filter listed", got, nf)
	}
}

func TestScheduleWeights(t *testing.T) {
	f := &proto.Flavor{Name: "m1", CPUs: 16, MemoryMB: 64 << 10, DiskGB: 400}
	for _, c := range []struct {
		name     string
		nodes    []*proto.Node
		rackLoad map[string]int
		flavor   *proto.Flavor
		want     string
	}{
		{"least excess first", []*proto.Node{
			node("a-big", withInv(invJSON("x86_64", "uefi", 64, 256, 1920))),
			node("b-exact", withInv(invJSON("x86_64", "uefi", 16, 64, 400))),
			node("c-mid", withInv(invJSON("x86_64", "uefi", 32, 128, 960))),
		}, nil, f, "b-exact"},
		{"excess is normalized per resource", []*proto.Node{
			// a: +16 cpus is +1.0; b: +32 GiB is +0.5 (more bytes, less excess).
			node("a", withInv(invJSON("x86_64", "uefi", 32, 64, 400))),
			node("b", withInv(invJSON("x86_64", "uefi", 16, 96, 400))),
		}, nil, f, "b"},
		{"excess beats rack load", []*proto.Node{
			node("a", withRack("busy"), withInv(invJSON("x86_64", "uefi", 16, 64, 400))),
			node("b", withRack("idle"), withInv(invJSON("x86_64", "uefi", 16, 64, 480))),
		}, map[string]int{"busy": 40, "idle": 0}, f, "a"},
		{"rack spread breaks a tie", []*proto.Node{
			node("a", withRack("r1")),
			node("b", withRack("r2")),
			node("c", withRack("r3")),
		}, map[string]int{"r1": 5, "r2": 2, "r3": 3}, f, "b"},
		{"a rack missing from the load has none", []*proto.Node{
			node("a", withRack("r1")),
			node("b", withRack("r9")),
		}, map[string]int{"r1": 1}, f, "b"},
		{"name breaks a tie", []*proto.Node{
			node("n3"), node("n1"), node("n2"),
		}, map[string]int{"r1": 1}, f, "n1"},
		{"name breaks a tie of equal racks", []*proto.Node{
			node("n2", withRack("r2")), node("n1", withRack("r1")),
		}, map[string]int{"r1": 1, "r2": 1}, f, "n1"},
		{"uuid breaks a tie of names", []*proto.Node{
			node("x", func(n *proto.Node) { n.UUID = "u2" }),
			node("x", func(n *proto.Node) { n.UUID = "u1"; n.BMC.Address = "10.0.0.9" }),
		}, nil, f, "10.0.0.9"},
		{"unknown capacity comes last", []*proto.Node{
			node("a", withInv(nil)),
			node("b", withInv(invJSON("x86_64", "uefi", 128, 1024, 7680))),
		}, nil, &proto.Flavor{Name: "any"}, "b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Every order of the nodes gives the same answer.
			for _, perm := range permutations(len(c.nodes)) {
				nodes := make([]*proto.Node, len(c.nodes))
				for i, p := range perm {
					nodes[i] = c.nodes[p]
				}
				got, nf := Schedule(nodes, c.flavor, c.rackLoad)
				if got == nil {
					t.Fatalf("Schedule(%v) = nil, %+v, want %s", perm, nf, c.want)
				}
				if got.Name != c.want && got.BMC.Address != c.want {
					t.Errorf("Schedule(order %v) = %s (%s), want %s", perm, got.Name, got.UUID, c.want)
				}
			}
		})
	}
}

func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

func TestNodeTraits(t *testing.T) {
	for _, c := range []struct {
		name string
		node *proto.Node
		want []string
	}{
		{"x86_64 UEFI with operator traits", node("n", withTraits("CUSTOM_GPU", "BOOT_UEFI", "CUSTOM_GPU", "A_FIRST")),
			[]string{"A_FIRST", proto.TraitBootUEFI, proto.TraitX86_64, "CUSTOM_GPU"}},
		{"aarch64 BIOS", node("n", withInv(invJSON("aarch64", "bios", 1, 1, 1))), []string{proto.TraitBootBIOS, proto.TraitAArch64}},
		{"arm64 as Go names it", node("n", withInv(invJSON("arm64", "UEFI", 1, 1, 1))), []string{proto.TraitBootUEFI, proto.TraitAArch64}},
		{"amd64 as Go names it", node("n", withInv(invJSON("amd64", "", 1, 1, 1))), []string{proto.TraitX86_64}},
		{"unknown arch and boot mode", node("n", withInv(invJSON("riscv64", "coreboot", 1, 1, 1))), []string{}},
		{"no inventory", node("n", withInv(nil), withTraits("Z", "Y")), []string{"Y", "Z"}},
		{"undecodable inventory", node("n", withInv(json.RawMessage(`[`)), withTraits("Z")), []string{"Z"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := slices.Clone(c.node.Traits)
			if got := NodeTraits(c.node); !slices.Equal(got, c.want) {
				t.Errorf("NodeTraits = %q, want %q", got, c.want)
			}
			if !slices.Equal(c.node.Traits, before) {
				t.Errorf("NodeTraits changed n.Traits to %q (was %q)", c.node.Traits, before)
			}
		})
	}
}

func TestCapacity(t *testing.T) {
	for _, c := range []struct {
		name   string
		inv    json.RawMessage
		cpus   int
		memMB  int64
		diskGB int64
		ok     bool
	}{
		{"plain", invJSON("x86_64", "uefi", 16, 64, 480), 16, 64 << 10, 480, true},
		{"largest disk", invJSON("x86_64", "uefi", 8, 32, 240, 3840, 960), 8, 32 << 10, 3840, true},
		{"no disk", invJSON("x86_64", "uefi", 8, 32), 8, 32 << 10, 0, true},
		{"md array does not count", json.RawMessage(`{"cpus":{"count":4},"memory":{"total_bytes":1073741824},"disks":[` +
			`{"name":"sda","size_bytes":107374182400},{"name":"md0","size_bytes":214748364800,"raid":"raid0","members":["sda","sdb"]}]}`), 4, 1024, 100, true},
		{"sizes round down", json.RawMessage(`{"cpus":{"count":2},"memory":{"total_bytes":1073741823},"disks":[{"name":"sda","size_bytes":1073741823}]}`), 2, 1023, 0, true},
		{"no inventory", nil, 0, 0, 0, false},
		{"undecodable", json.RawMessage(`{"memory":{"total_bytes":"lots"}}`), 0, 0, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cpus, mem, disk, ok := Capacity(&proto.Node{Inventory: c.inv})
			if cpus != c.cpus || mem != c.memMB || disk != c.diskGB || ok != c.ok {
				t.Errorf("Capacity = %d, %d, %d, %v, want %d, %d, %d, %v", cpus, mem, disk, ok, c.cpus, c.memMB, c.diskGB, c.ok)
			}
		})
	}
}

func TestCheckForce(t *testing.T) {
	type tc struct {
		name string
		node *proto.Node
		want []string // in the message; nil: no error
	}
	cases := []tc{
		{"available", node("n1"), nil},
		{"no inventory, too small for anything: capacity is not checked", node("n1", withInv(nil)), nil},
		{"BMC unverified", node("n1", withBMCState(proto.BMCUnverified)), nil},
		{"BMC refused a command", node("n1", withBMCState(proto.BMCError)), nil},
		{"not enrolled", node("n1", notEnrolled), []string{"n1", "not enrolled"}},
		{"maintenance", node("n1", inMaintenance), []string{"n1", "maintenance", "fan swap"}},
		{"bound", node("n1", bound), []string{"n1", "instance inst-1"}},
		{"no BMC driver", node("n1", noBMCDriver), []string{"n1", "no BMC"}},
		{"no BMC address", node("n1", noBMCAddress), []string{"n1", "no BMC"}},
		{"BMC unreachable", node("n1", withBMCState(proto.BMCUnreachable)), []string{"n1", "BMC is unreachable", "dial udp: timeout"}},
		{"BMC auth failed", node("n1", withBMCState(proto.BMCAuthFailed)), []string{"n1", "BMC is auth-failed"}},
		{"unnamed node", node("", withState(proto.StateActive)), []string{"uuid-", "is active, not available"}},
	}
	for _, s := range proto.AllStates {
		if s != proto.StateAvailable {
			cases = append(cases, tc{"state " + string(s), node("n1", withState(s)), []string{"node n1 is " + string(s) + ", not available"}})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckForce(c.node)
			if c.want == nil {
				if err != nil {
					t.Errorf("CheckForce = %v, want nil", err)
				}
				return
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Code != proto.CodeWrongState {
				t.Fatalf("CheckForce = %#v, want a %s proto error", err, proto.CodeWrongState)
			}
			for _, w := range c.want {
				if !strings.Contains(pe.Message, w) {
					t.Errorf("CheckForce = %q, want it to contain %q", pe.Message, w)
				}
			}
		})
	}
}

func TestNoFitError(t *testing.T) {
	f := &proto.Flavor{Name: "m1.large"}
	for _, c := range []struct {
		name string
		nf   *proto.NoFit
		want string
	}{
		{"counts", &proto.NoFit{Considered: 7, Removed: []proto.FilterCount{
			fc(FilterState, 3), fc(FilterEnrolled, 0), fc(FilterMaintenance, 1), fc(FilterCPUs, 2), fc(FilterTraits, 1),
		}}, "no node fits flavor m1.large: 7 considered; state removed 3, maintenance removed 1, cpus removed 2, traits removed 1"},
		{"no nodes", &proto.NoFit{Removed: []proto.FilterCount{fc(FilterState, 0)}}, "no node fits flavor m1.large: 0 considered"},
		{"nil", nil, "no node fits flavor m1.large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := NoFitError(f, c.nf)
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Code != proto.CodeConflict || pe.Message != c.want {
				t.Errorf("NoFitError = %#v, want %s %q", err, proto.CodeConflict, c.want)
			}
		})
	}
	// From Schedule itself.
	_, nf := Schedule([]*proto.Node{node("a", withState(proto.StateActive)), node("b", inMaintenance), node("c")}, &proto.Flavor{Name: "huge", CPUs: 1000}, nil)
	if got, want := NoFitError(&proto.Flavor{Name: "huge"}, nf).Error(), "no node fits flavor huge: 3 considered; state removed 1, maintenance removed 1, cpus removed 1"; got != want {
		t.Errorf("NoFitError(Schedule) = %q, want %q", got, want)
	}
}

func queue(ids ...string) []*proto.Instance {
	var out []*proto.Instance
	for _, id := range ids {
		out = append(out, &proto.Instance{UUID: id, Name: id, State: proto.InstanceQueued})
	}
	return out
}

// rackByPrefix: instance "a1" is in rack "a".
func rackByPrefix(ids ...string) map[string]string {
	m := map[string]string{}
	for _, id := range ids {
		m[id] = id[:1]
	}
	return m
}

func TestAdmit(t *testing.T) {
	ids := []string{"a1", "b1", "a2", "c1", "a3", "b2", "c2"}
	var many []string
	for i := range 120 {
		many = append(many, fmt.Sprintf("%c%03d", 'a'+i%12, i))
	}
	for _, c := range []struct {
		name           string
		queued         []string
		running        int
		runningPerRack map[string]int
		max, perRack   int
		want           []string
	}{
		{"all fit, in order", ids, 0, nil, 10, 10, ids},
		{"global limit keeps the oldest", ids, 0, nil, 3, 10, []string{"a1", "b1", "a2"}},
		{"global limit counts running deploys", ids, 8, nil, 10, 10, []string{"a1", "b1"}},
		{"global limit reached", ids, 10, nil, 10, 10, nil},
		{"global limit exceeded", ids, 12, nil, 10, 10, nil},
		{"per rack limit", ids, 0, nil, 10, 1, []string{"a1", "b1", "c1"}},
		{"per rack limit counts running deploys", ids, 0, map[string]int{"a": 1, "b": 2}, 10, 2, []string{"a1", "c1", "c2"}},
		{"a full rack does not block others", ids, 0, map[string]int{"a": 5}, 10, 5, []string{"b1", "c1", "b2", "c2"}},
		{"a full rack and the global limit", ids, 0, map[string]int{"a": 2}, 4, 2, []string{"b1", "c1", "b2", "c2"}},
		{"both limits", ids, 7, map[string]int{"a": 1}, 9, 2, []string{"a1", "b1"}},
		{"nothing queued", nil, 0, nil, 10, 10, nil},
		{"defaults", many, 0, nil, 0, 0, nil}, // want computed below
		{"negative limits are defaults", many[:12], 0, nil, -1, -1, many[:12]},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if c.name == "defaults" {
				// 12 racks of 10 queued each: the per rack default (10)
				// admits them all, the global default (50) the first 50.
				want = many[:proto.DefaultDeployMax]
			}
			got := Admit(queue(c.queued...), rackByPrefix(c.queued...), c.running, c.runningPerRack, c.max, c.perRack)
			if !slices.Equal(got, want) {
				t.Errorf("Admit = %q, want %q", got, want)
			}
		})
	}
	// The per rack default: 15 queued in one rack, 10 start.
	one := make([]string, 15)
	for i := range one {
		one[i] = fmt.Sprintf("a%02d", i)
	}
	if got := Admit(queue(one...), rackByPrefix(one...), 0, nil, 0, 0); !slices.Equal(got, one[:proto.DefaultDeployMaxPerRack]) {
		t.Errorf("Admit(15 in one rack, defaults) = %q, want the first %d", got, proto.DefaultDeployMaxPerRack)
	}
	// An instance with no known rack counts in rack "".
	if got := Admit(queue("x", "y", "a1"), map[string]string{"a1": "a"}, 0, map[string]int{"": 1}, 10, 2); !slices.Equal(got, []string{"x", "a1"}) {
		t.Errorf("Admit(no rack) = %q, want [x a1]", got)
	}
}

func TestCapacityCache(t *testing.T) {
	nodes, flavors := simFleet(600, 6)
	var c CapacityCache
	for round := range 2 { // cold, then warm
		for _, f := range flavors {
			want, wantNF := Schedule(nodes, f, nil)
			got, gotNF := c.Schedule(nodes, f, nil)
			if got != want || fmt.Sprint(gotNF) != fmt.Sprint(wantNF) {
				t.Errorf("round %d, flavor %s: cache gives %v, %+v, Schedule %v, %+v", round, f.Name, got, gotNF, want, wantNF)
			}
		}
	}
	if c.Len() == 0 || c.Len() > len(nodes) {
		t.Errorf("cache holds %d nodes, want 1..%d", c.Len(), len(nodes))
	}

	// A node written since is decoded again; one not written is not.
	n := node("n", func(n *proto.Node) { n.ModifyIndex = 7 })
	var c2 CapacityCache
	if cpus, _, _, _ := c2.Capacity(n); cpus != 16 {
		t.Fatalf("Capacity = %d cpus, want 16", cpus)
	}
	n2 := n.Clone()
	n2.Inventory = invJSON("x86_64", "uefi", 32, 64, 480)
	n2.ModifyIndex = 8
	if cpus, _, _, _ := c2.Capacity(n2); cpus != 32 {
		t.Errorf("Capacity after a write = %d cpus, want 32", cpus)
	}
	n3 := n2.Clone()
	n3.Traits = []string{"CUSTOM_X"} // written, but the test keeps its index: the cache trusts it
	n3.Inventory = invJSON("x86_64", "uefi", 64, 64, 480)[:len(n2.Inventory)]
	if cpus, _, _, _ := c2.Capacity(n3); cpus != 32 {
		t.Errorf("Capacity, same index and length = %d cpus, want the cached 32", cpus)
	}

	// Nodes gone are dropped once they outnumber the fleet.
	if _, nf := c.Schedule(nodes[:10], &proto.Flavor{Name: "any"}, nil); c.Len() > 10 {
		t.Errorf("cache holds %d nodes after a decision over 10 (%+v), want <= 10", c.Len(), nf)
	}

	// Safe for concurrent use (run with -race).
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				f := flavors[(g+i)%len(flavors)]
				if got, _ := c.Schedule(nodes, f, nil); got != nil && got.ProvisionState != proto.StateAvailable {
					t.Errorf("concurrent Schedule = %s in state %s", got.Name, got.ProvisionState)
				}
			}
		}()
	}
	wg.Wait()
}

// cpuFlags are a real Xeon's /proc/cpuinfo flags (an inventory carries
// them all).
var cpuFlags = strings.Fields(`fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush
	dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts
	rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3
	sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand
	lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 invpcid_single intel_ppin ssbd mba ibrs ibpb stibp ibrs_enhanced
	tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a avx512f
	avx512dq rdseed adx smap avx512ifma clflushopt clwb intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec`)

// simInventory is a plausible inventory (about 5 KB, like the rack
// agent's simulated machines and real ones: CPU flags, DIMMs, disks,
// NICs with LLDP, PCI functions) of random sizes.
func simInventory(r *rand.Rand, i int) proto.Inventory {
	cpus := []int{8, 16, 32, 48, 64, 96, 128}[r.IntN(7)]
	memGiB := []int64{32, 64, 128, 192, 256, 384, 512, 768}[r.IntN(8)]
	arch, flags := "x86_64", cpuFlags
	if r.IntN(10) == 0 {
		arch, flags = "aarch64", strings.Fields("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs")
	}
	boot := "uefi"
	if r.IntN(4) == 0 {
		boot = "bios"
	}
	inv := proto.Inventory{
		Version:  proto.InventoryVersion,
		System:   proto.System{Vendor: "Sim", Product: "SimServer 2U", Serial: fmt.Sprintf("SIM-%06d", i), UUID: fmt.Sprintf("4c4c4544-%04x-%04x-8000-%012x", i>>16, i&0xffff, i)},
		Firmware: proto.Firmware{Vendor: "SimBIOS", Version: "2.14.1", Date: "06/01/2026"},
		BootMode: boot, PXEMAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff),
		CPUs: proto.CPUs{Count: cpus, Model: "Simulated CPU @ 2.40GHz", Architecture: arch, Sockets: 2, Cores: cpus / 2,
			Threads: cpus, MHz: 2400, Flags: flags},
		Memory:    proto.Memory{TotalBytes: memGiB<<30 - 512<<20, PhysicalBytes: memGiB << 30},
		Collected: proto.CollectedInfo{At: "2026-11-30T09:00:00Z", DurationMS: 2300, Agent: "sim"},
	}
	for d := range 16 {
		inv.Memory.DIMMs = append(inv.Memory.DIMMs, proto.DIMM{Locator: fmt.Sprintf("DIMM_%c%d", 'A'+d/2, d%2+1), SizeBytes: memGiB << 30 / 16, Type: "DDR4", SpeedMTs: 3200})
	}
	for d := range 1 + r.IntN(4) {
		size := []int64{240, 480, 960, 1920, 3840, 7680}[r.IntN(6)] << 30
		inv.Disks = append(inv.Disks, proto.Disk{Name: fmt.Sprintf("sd%c", 'a'+d), SizeBytes: size, Model: "SimSSD",
			Serial: fmt.Sprintf("SSD%06d%d", i, d), WWN: fmt.Sprintf("0x5000c500%08x", i*8+d), ByPath: fmt.Sprintf("pci-0000:00:17.0-ata-%d", d+1)})
	}
	if len(inv.Disks) >= 2 && r.IntN(5) == 0 {
		inv.Disks = append(inv.Disks, proto.Disk{Name: "md0", SizeBytes: inv.Disks[0].SizeBytes * 2, RAID: "raid0", Members: []string{"sda", "sdb"}})
	}
	for k := range 4 {
		inv.Interfaces = append(inv.Interfaces, proto.Interface{Name: fmt.Sprintf("eno%d", k+1), MAC: fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", k, i>>16&0xff, i>>8&0xff, i&0xff),
			Driver: "mlx5_core", SpeedMbps: 25000, Carrier: k < 2, Addresses: []string{fmt.Sprintf("10.%d.%d.%d/24", k, i>>8&0xff, i&0xff)},
			LLDP: &proto.LLDP{ChassisID: "00:1c:73:00:00:01", PortID: fmt.Sprintf("Ethernet%d", i%48+1), SystemName: "tor"}})
	}
	for p := range 24 {
		inv.PCI = append(inv.PCI, proto.PCIDevice{Address: fmt.Sprintf("0000:%02x:00.%d", p/4, p%4), Vendor: "8086", Device: fmt.Sprintf("%04x", 0x2000+p), Class: "060400"})
	}
	return inv
}

// simFleet is n simulated nodes in racks of 100 (60% available, the
// rest active, manageable, in maintenance or with an unreachable BMC),
// varied inventories and traits, and a few flavors that fit some of them.
func simFleet(n, racks int) ([]*proto.Node, []*proto.Flavor) {
	r := rand.New(rand.NewPCG(1, 2))
	nodes := make([]*proto.Node, n)
	for i := range nodes {
		inv, err := json.Marshal(simInventory(r, i))
		if err != nil {
			panic(err)
		}
		nd := &proto.Node{UUID: fmt.Sprintf("%08x-0000-4000-8000-%012x", r.Uint32(), i), Name: fmt.Sprintf("node-%05d", i),
			Rack: fmt.Sprintf("rack-%03d", i%racks), ProvisionState: proto.StateAvailable, Enrolled: true,
			BMC:       proto.BMC{Driver: proto.DriverIPMI, Address: fmt.Sprintf("10.200.%d.%d", i>>8&0xff, i&0xff), Username: "admin"},
			BMCStatus: &proto.BMCStatus{State: proto.BMCOK}, Inventory: inv, Meta: proto.Meta{CreateIndex: uint64(i + 1), ModifyIndex: uint64(i + 1)}}
		switch x := r.IntN(100); {
		case x < 25:
			nd.ProvisionState, nd.InstanceUUID = proto.StateActive, fmt.Sprintf("inst-%d", i)
		case x < 32:
			nd.ProvisionState = proto.StateManageable
		case x < 35:
			nd.Maintenance = true
		case x < 37:
			nd.BMCStatus.State = proto.BMCUnreachable
		}
		if r.IntN(20) == 0 {
			nd.Traits = append(nd.Traits, "CUSTOM_GPU")
		}
		if r.IntN(3) == 0 {
			nd.Traits = append(nd.Traits, "CUSTOM_NVME")
		}
		nodes[i] = nd
	}
	flavors := []*proto.Flavor{
		{Name: "small", CPUs: 8, MemoryMB: 30 << 10, DiskGB: 200},
		{Name: "medium", CPUs: 32, MemoryMB: 120 << 10, DiskGB: 900, RequiredTraits: []string{proto.TraitX86_64}},
		{Name: "large", CPUs: 96, MemoryMB: 500 << 10, DiskGB: 3000},
		{Name: "gpu", CPUs: 32, MemoryMB: 250 << 10, DiskGB: 900, RequiredTraits: []string{"CUSTOM_GPU", proto.TraitBootUEFI}},
		{Name: "arm", CPUs: 16, MemoryMB: 60 << 10, DiskGB: 400, RequiredTraits: []string{proto.TraitAArch64}},
		{Name: "rack-7", CPUs: 16, MemoryMB: 60 << 10, DiskGB: 400, Rack: "rack-007"},
		{Name: "impossible", CPUs: 1024},
	}
	return nodes, flavors
}

// BenchmarkSchedule: scheduling decisions per second over 10,000
// simulated nodes in 100 racks. One op is a round of decisions, one for
// each flavor of simFleet (so every sub-benchmark weighs the same mix);
// decisions/s counts decisions, not rounds.
// decode: Schedule, which decodes the inventory of every node that
// reaches the capacity filters, in every decision; cached: a warm
// CapacityCache (it decodes only nodes written since); decode-only: the
// inventory decodes of the same decisions alone, without scheduling (what
// decode spends on them); full-decode-only: the same decodes into the
// whole proto.Inventory (what a naive Capacity would cost).
func BenchmarkSchedule(b *testing.B) {
	nodes, flavors := simFleet(10000, 100)
	rackLoad := map[string]int{}
	var invBytes int
	for _, n := range nodes {
		invBytes += len(n.Inventory)
		if n.InstanceUUID != "" {
			rackLoad[n.Rack]++
		}
	}
	// The nodes each flavor's decision decodes: those the filters before
	// the capacity ones keep.
	decodes := make([][]*proto.Node, len(flavors))
	var total int
	for i, f := range flavors {
		for _, n := range nodes {
			if n.ProvisionState == proto.StateAvailable && n.Enrolled && !n.Maintenance && n.InstanceUUID == "" &&
				bmcProblem(n) == "" && (f.Rack == "" || f.Rack == n.Rack) {
				decodes[i] = append(decodes[i], n)
			}
		}
		total += len(decodes[i])
	}
	perDecision := float64(total) / float64(len(flavors))
	round := slices.Concat(decodes...)
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N*len(flavors))/b.Elapsed().Seconds(), "decisions/s")
	}
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, f := range flavors {
				Schedule(nodes, f, rackLoad)
			}
		}
		report(b)
		b.ReportMetric(perDecision, "decodes/decision")
		b.ReportMetric(float64(invBytes)/float64(len(nodes)), "inventory-B")
	})
	b.Run("cached", func(b *testing.B) {
		var c CapacityCache
		c.Schedule(nodes, flavors[0], rackLoad) // warm
		b.ReportAllocs()
		for b.Loop() {
			for _, f := range flavors {
				c.Schedule(nodes, f, rackLoad)
			}
		}
		report(b)
	})
	b.Run("decode-only", func(b *testing.B) {
		for b.Loop() {
			for _, n := range round {
				nodeFacts(n)
			}
		}
		report(b)
	})
	b.Run("full-decode-only", func(b *testing.B) {
		for b.Loop() {
			for _, n := range round {
				var inv proto.Inventory
				if err := json.Unmarshal(n.Inventory, &inv); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b)
	})
}
