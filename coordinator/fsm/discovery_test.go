package fsm

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

func inventoryReport(t *testing.T, id, mac, sysUUID, serial string, ifMACs ...string) proto.AgentReport {
	t.Helper()
	inv := proto.Inventory{Version: proto.InventoryVersion, System: proto.System{Vendor: "QEMU", Product: "LabVM", Serial: serial, UUID: sysUUID},
		CPUs: proto.CPUs{Count: 2}, Memory: proto.Memory{TotalBytes: 512 << 20}, BMCAddress: "10.9.0.250"}
	for _, m := range append([]string{mac}, ifMACs...) {
		inv.Interfaces = append(inv.Interfaces, proto.Interface{Name: "eth", MAC: m, Carrier: true})
	}
	raw, _ := json.Marshal(inv)
	return proto.AgentReport{ID: id, Kind: proto.ReportCallback, Step: "inventory", Rack: "r1", Agent: "a1", Time: t0.Add(time.Minute), MAC: mac, Data: raw}
}

func TestDiscovery(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	apply := func(r proto.AgentReport) *AgentReportsResult {
		return h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{r}}).(*AgentReportsResult)
	}
	// An unknown machine reports: one discovered node with the MAC it
	// booted from (its other NICs join when seen booting), the BMC
	// address, a reserved address, and its sighting forgotten.
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: "seen", Kind: proto.ReportMACSeen, Rack: "r1", Time: t0, MAC: "52:54:00:12:34:56"}}})
	res := apply(inventoryReport(t, "inv-1", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001", "52:54:00:12:34:57"))
	if len(res.Acked) != 1 {
		t.Fatalf("inventory not applied: %+v", res)
	}
	nodes := h.f.Store().Nodes(nodeFilterDiscovered())
	if len(nodes) != 1 {
		t.Fatalf("discovered nodes = %d, want 1", len(nodes))
	}
	n := nodes[0]
	if n.ProvisionState != proto.StateDiscovered || n.Enrolled || len(n.MACs) != 1 || n.BMC.Address != "10.9.0.250" || n.IP == "" || n.Rack != "r1" {
		t.Fatalf("discovered node = %+v", n)
	}
	if len(h.f.Store().Sightings("")) != 0 {
		t.Fatalf("sighting kept after discovery")
	}
	// The same machine again (another boot, another report id): the same
	// node, updated.
	apply(inventoryReport(t, "inv-2", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001", "52:54:00:12:34:57"))
	// By system uuid, booting from its other NIC (its inventory lists it).
	apply(inventoryReport(t, "inv-3", "52:54:00:12:34:57", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001", "52:54:00:12:34:56"))
	all := h.f.Store().Nodes(nodeFilterDiscovered())
	if len(all) != 1 || len(all[0].MACs) != 2 {
		t.Fatalf("after repeats: %d nodes, macs %v; want one node with 2 MACs", len(all), all[0].MACs)
	}
	// The same uuid from a NIC its inventory never listed: a uuid is no
	// secret (PXE sends it in DHCP), so this is a conflict, not a merge.
	res = apply(inventoryReport(t, "inv-3b", "52:54:00:12:34:58", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001"))
	if !strings.Contains(res.Rejected["inv-3b"], "not among the NICs") {
		t.Fatalf("a borrowed identity took the node: %+v", res)
	}
	if n, _ := h.f.Store().Node(all[0].UUID); len(n.MACs) != 2 {
		t.Fatalf("the node gained %v", n.MACs)
	}

	// Enrolled: a discovery report never changes it; one that claims its
	// MAC with another identity is refused and recorded.
	h.must(NodeSetEnrolled{Ref: n.UUID, Enrolled: true, Now: t0})
	before, _ := h.f.Store().Node(n.UUID)
	res = apply(inventoryReport(t, "inv-4", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-0000000000ff", "EVIL-1"))
	if !strings.Contains(res.Rejected["inv-4"], "belongs to node") {
		t.Fatalf("impostor not refused: %+v", res)
	}
	after, _ := h.f.Store().Node(n.UUID)
	if string(after.Inventory) != string(before.Inventory) || after.ModifyIndex != before.ModifyIndex {
		t.Fatalf("a refused discovery changed the enrolled node")
	}
	if sg, ok := h.f.Store().Sighting("52:54:00:12:34:56"); !ok || !strings.Contains(sg.Conflict, "0000000000ff") {
		t.Fatalf("conflict not recorded: %+v", sg)
	}
	// The real machine again: acked, inventory unchanged.
	res = apply(inventoryReport(t, "inv-5", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001"))
	if len(res.Acked) != 1 {
		t.Fatalf("the enrolled machine's own report refused: %+v", res)
	}
	if a, _ := h.f.Store().Node(n.UUID); string(a.Inventory) != string(before.Inventory) {
		t.Fatalf("discovery changed an enrolled node's inventory")
	}

	// Auto-enroll: a new machine ends enrolled.
	yes := true
	h.must(SettingsUpdate{Patch: proto.SettingsPatch{AutoEnroll: &yes}})
	apply(inventoryReport(t, "inv-6", "52:54:00:aa:00:01", "5b2f0c1e-0000-4000-8000-000000000002", "LAB-0002"))
	m, ok := h.f.Store().Node("52:54:00:aa:00:01")
	if !ok || m.ProvisionState != proto.StateEnrolled || !m.Enrolled {
		t.Fatalf("auto-enrolled node = %+v", m)
	}
	// Bad inventories are refused.
	bad := inventoryReport(t, "inv-7", "52:54:00:aa:00:02", "", "")
	bad.Data = []byte(`{"version": 99}`)
	if res = apply(bad); !strings.Contains(res.Rejected["inv-7"], "version 99") {
		t.Fatalf("bad version: %+v", res)
	}
	bad.ID, bad.Data = "inv-8", []byte(`{"version": 1, "system": "not an object"}`)
	if res = apply(bad); !strings.Contains(res.Rejected["inv-8"], "not valid") {
		t.Fatalf("bad inventory: %+v", res)
	}
}

func nodeFilterDiscovered() state.NodeFilter {
	f := false
	return state.NodeFilter{Enrolled: &f}
}

// TestDiscoveryNeverMerges: firmware placeholders identify nothing, and
// an inventory that lists another node's MACs neither takes them nor
// touches that node; the conflict is recorded.
func TestDiscoveryNeverMerges(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	apply := func(r proto.AgentReport) *AgentReportsResult {
		return h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{r}}).(*AgentReportsResult)
	}
	// Two boards with the same placeholder uuid and serial: two nodes.
	apply(inventoryReport(t, "a", "52:54:00:00:0a:01", "03000200-0400-0500-0006-000700080009", "Default string"))
	apply(inventoryReport(t, "b", "52:54:00:00:0b:01", "03000200-0400-0500-0006-000700080009", "Default string"))
	apply(inventoryReport(t, "c", "52:54:00:00:0c:01", "00000000-0000-0000-0000-000000000000", "To Be Filled By O.E.M."))
	apply(inventoryReport(t, "d", "52:54:00:00:0d:01", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "0123456789"))
	if got := len(h.f.Store().Nodes(state.NodeFilter{})); got != 4 {
		t.Fatalf("%d nodes from 4 machines with placeholder identities, want 4", got)
	}

	// Machine E lists A's MAC among its NICs: E becomes its own node
	// without it, A keeps its MAC and inventory, a conflict is recorded.
	a, _ := h.f.Store().Node("52:54:00:00:0a:01")
	res := apply(inventoryReport(t, "e", "52:54:00:00:0e:01", "5b2f0c1e-0000-4000-8000-00000000000e", "E-1", "52:54:00:00:0a:01", "52:54:00:00:0e:02"))
	if len(res.Acked) != 1 {
		t.Fatalf("E refused: %+v", res)
	}
	e, ok := h.f.Store().Node("52:54:00:00:0e:01")
	if !ok || len(e.MACs) != 1 || e.UUID == a.UUID {
		t.Fatalf("E = %+v, want its own node with its boot MAC", e)
	}
	a2, _ := h.f.Store().Node(a.UUID)
	if a2.ModifyIndex != a.ModifyIndex || string(a2.Inventory) != string(a.Inventory) {
		t.Fatalf("E's report changed A")
	}
	if owner, _ := h.f.Store().Node("52:54:00:00:0a:01"); owner.UUID != a.UUID {
		t.Fatalf("A's MAC moved to %s", owner.UUID)
	}
	if sg := h.f.Store().Sightings(""); len(sg) != 1 || !strings.Contains(sg[0].Conflict, "52:54:00:00:0a:01") {
		t.Fatalf("conflict not recorded: %+v", sg)
	}

	// Machine F boots from B's MAC with a real identity: B (placeholder
	// firmware) and F cannot be told to be one machine: refused.
	res = apply(inventoryReport(t, "f", "52:54:00:00:0b:01", "5b2f0c1e-0000-4000-8000-00000000000f", "F-1"))
	if !strings.Contains(res.Rejected["f"], "belongs to node") {
		t.Fatalf("F took B's node: %+v", res)
	}
}

// TestDiscoveryRackBound: an agent of rack r2 cannot rewrite rack r1's
// discovered nodes, by MAC or by identity.
func TestDiscoveryRackBound(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	h.must(RackPut{Create: true, Rack: proto.Rack{Name: "r2", Subnet: "10.8.0.0/24", PoolStart: "10.8.0.100", PoolEnd: "10.8.0.199"}})
	h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{inventoryReport(t, "a", "52:54:00:00:0a:01", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1", "52:54:00:00:0a:02")}})
	a, _ := h.f.Store().Node("52:54:00:00:0a:01")
	for _, r := range []proto.AgentReport{
		inventoryReport(t, "by-mac", "52:54:00:00:0a:01", "5b2f0c1e-0000-4000-8000-0000000000ff", "X"),
		inventoryReport(t, "by-ident", "52:54:00:00:0a:02", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1"),
	} {
		r.Rack, r.Agent = "r2", "agent-r2"
		res := h.must(AgentReports{Rack: "r2", Reports: []proto.AgentReport{r}}).(*AgentReportsResult)
		if !strings.Contains(res.Rejected[r.ID], "rack") {
			t.Fatalf("%s from rack r2: %+v, want refused", r.ID, res)
		}
	}
	if a2, _ := h.f.Store().Node(a.UUID); a2.ModifyIndex != a.ModifyIndex || a2.Rack != "r1" {
		t.Fatalf("rack r2's reports changed rack r1's node: %+v", a2)
	}
	if len(h.f.Store().Nodes(state.NodeFilter{})) != 1 {
		t.Fatalf("a node was created from a refused report")
	}
}

// TestEnrolledNewNIC: an enrolled machine that boots from a NIC not on
// record gains the MAC (no node holds it); one that another node holds
// stays that node's, and the conflict is recorded.
func TestEnrolledNewNIC(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	apply := func(r proto.AgentReport) *AgentReportsResult {
		return h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{r}}).(*AgentReportsResult)
	}
	apply(inventoryReport(t, "a", "52:54:00:00:0a:01", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1", "52:54:00:00:0a:02"))
	apply(inventoryReport(t, "b", "52:54:00:00:0b:01", "5b2f0c1e-0000-4000-8000-00000000000b", "B-1"))
	a, _ := h.f.Store().Node("52:54:00:00:0a:01")
	h.must(NodeSetEnrolled{Ref: a.UUID, Enrolled: true, Now: t0})
	apply(inventoryReport(t, "a2", "52:54:00:00:0a:02", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1"))
	if n, ok := h.f.Store().Node("52:54:00:00:0a:02"); !ok || n.UUID != a.UUID {
		t.Fatalf("the enrolled machine's new boot NIC was not added to it")
	}
	res0 := apply(inventoryReport(t, "a2b", "52:54:00:00:0a:03", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1"))
	if !strings.Contains(res0.Rejected["a2b"], "not among the NICs") {
		t.Fatalf("a NIC the recorded inventory never listed joined the enrolled node: %+v", res0)
	}
	res := apply(inventoryReport(t, "a3", "52:54:00:00:0b:01", "5b2f0c1e-0000-4000-8000-00000000000a", "A-1"))
	if !strings.Contains(res.Rejected["a3"], "belongs to node") {
		t.Fatalf("a MAC of B moved to A: %+v", res)
	}
	if n, _ := h.f.Store().Node("52:54:00:00:0b:01"); n.UUID == a.UUID {
		t.Fatalf("B's MAC moved to A")
	}
}

// TestDiscoveryOfANodeCreatedAhead: an operator registers a node by MAC
// before the machine first boots; its first inventory fills that node in
// (it has no identity yet to conflict with).
func TestDiscoveryOfANodeCreatedAhead(t *testing.T) {
	h := newHarness(t)
	h.must(rackWithPool())
	c := node(uuid1, "pre", "52:54:00:12:34:56", proto.StateDiscovered)
	c.Node.Rack = "r1"
	h.must(c)
	res := h.must(AgentReports{Rack: "r1", Reports: []proto.AgentReport{
		inventoryReport(t, "inv-1", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001")}}).(*AgentReportsResult)
	if len(res.Acked) != 1 {
		t.Fatalf("the machine of a node created ahead was refused: %+v", res)
	}
	if n, _ := h.f.Store().Node("pre"); n.UUID != uuid1 || len(n.Inventory) == 0 {
		t.Fatalf("node pre = %+v, want its inventory filled in", n)
	}
	if len(h.f.Store().Nodes(state.NodeFilter{})) != 1 {
		t.Fatalf("a second node was made")
	}
}
