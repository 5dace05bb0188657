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
	// An unknown machine reports: one discovered node with every MAC,
	// the BMC address, a reserved address, and its sighting forgotten.
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
	if n.ProvisionState != proto.StateDiscovered || n.Enrolled || len(n.MACs) != 2 || n.BMC.Address != "10.9.0.250" || n.IP == "" || n.Rack != "r1" {
		t.Fatalf("discovered node = %+v", n)
	}
	if len(h.f.Store().Sightings("")) != 0 {
		t.Fatalf("sighting kept after discovery")
	}
	// The same machine again (another boot, another report id): the same
	// node, updated.
	apply(inventoryReport(t, "inv-2", "52:54:00:12:34:56", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001"))
	// By system uuid alone, from a NIC not seen before.
	apply(inventoryReport(t, "inv-3", "52:54:00:12:34:58", "5b2f0c1e-0000-4000-8000-000000000001", "LAB-0001"))
	all := h.f.Store().Nodes(nodeFilterDiscovered())
	if len(all) != 1 || len(all[0].MACs) != 3 {
		t.Fatalf("after repeats: %d nodes, macs %v; want one node with 3 MACs", len(all), all[0].MACs)
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
	if sg := h.f.Store().Sightings(""); len(sg) != 1 || !strings.Contains(sg[0].Conflict, "EVIL-1") && !strings.Contains(sg[0].Conflict, "0000000000ff") {
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
