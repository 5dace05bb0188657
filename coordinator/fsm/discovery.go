package fsm

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Discovery: a ramdisk inventory creates or updates a discovered node.

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
