package fsm

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Discovery: a ramdisk inventory creates or updates a discovered node.

// discoveryNamespace makes the uuid of a discovered node from the id of
// the report that discovered it: deterministic, as Apply must be.
var discoveryNamespace = uuid.MustParse("6f1c7a52-3b0e-4c55-9d3e-6d2d0b8f4a10")

// applyDiscovery takes a discovery ramdisk's inventory, reported by the
// rack agent that served the machine its discovery boot.
//
// The machine is the node that holds the MAC it booted from, else the node
// with its system identity (proto.SystemIdentity: firmware placeholders
// identify nothing); both are found through the store's indexes, in O(1)
// of the fleet's size. Two machines are never merged into one node:
//   - the boot MAC held by a node of another system identity (or the
//     machine's node in another rack) refuses the report and records a
//     conflict;
//   - a MAC of the inventory that another node holds is never attached
//     (the other node keeps it and its inventory) and is recorded as a
//     conflict, while the rest applies.
//
// A discovered node gets the new inventory and the MACs no node holds.
// An enrolled node is not changed, but for the boot event and the boot MAC
// when it booted from a NIC not on record that no node holds. A new
// machine becomes a discovered node (enrolled with auto_enroll).
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
	if err := inv.Validate(); err != nil {
		return err
	}
	ident := proto.SystemIdentity(inv.System)
	conflict := func(why string) error {
		recordConflict(tx, rack, mac, r, why)
		return proto.Errorf(proto.CodeConflict, "%s; recorded as a conflict", why)
	}

	// The node this machine already is.
	var found *proto.Node
	if id, ok := tx.NodeByMAC(mac); ok {
		found = tx.Node(id)
		if have := tx.NodeIdentity(id); have != ident {
			return conflict(fmt.Sprintf("MAC %s belongs to node %s of system %s, but the inventory is of system %s",
				mac, nodeRef(found), identName(have), identName(ident)))
		}
	} else if ids := tx.NodesByIdentity(ident); len(ids) > 0 {
		found = tx.Node(ids[0]) // the lowest uuid of several
	}
	if found != nil && found.Rack != rack {
		return conflict(fmt.Sprintf("system %s is node %s in rack %q, but booted in rack %q", identName(ident), nodeRef(found), found.Rack, rack))
	}

	// The inventory's other MACs: those another node holds are never
	// attached.
	var free, taken []string
	for _, ifc := range inv.Interfaces {
		m, err := proto.NormalizeMAC(ifc.MAC)
		if err != nil || m == mac || slices.Contains(free, m) {
			continue
		}
		if id, ok := tx.NodeByMAC(m); ok {
			if found == nil || id != found.UUID {
				taken = append(taken, fmt.Sprintf("%s (node %s)", m, nodeRef(tx.Node(id))))
			}
			continue
		}
		free = append(free, m)
	}
	if len(taken) > 0 {
		recordConflict(tx, rack, mac, r, fmt.Sprintf("the inventory of system %s lists MACs of other nodes, not attached: %s",
			identName(ident), strings.Join(taken, ", ")))
	}

	event := &proto.BootEvent{Event: "inventory", Agent: r.Agent, Time: r.Time}
	if found != nil && found.Enrolled {
		n := found.Clone()
		if n.LastBoot == nil || !r.Time.Before(n.LastBoot.Time) {
			n.LastBoot = event
		}
		if !slices.Contains(n.MACs, mac) {
			// Booted from a NIC not on record, and no node holds it:
			// it is this machine's (same system identity).
			n.MACs = append(n.MACs, mac)
			n.UpdatedAt = r.Time
			if err := checkNodeFields(tx, n, n.UUID); err != nil {
				return err
			}
		}
		tx.PutNode(n)
		forgetSightings(tx, []string{mac})
		return nil
	}
	raw, _ := json.Marshal(inv)
	if found != nil {
		n := found.Clone()
		if n.LastBoot != nil && r.Time.Before(n.LastBoot.Time) {
			return nil // an older inventory (a backlog) never replaces a newer one
		}
		n.LastBoot = event
		for _, m := range append([]string{mac}, free...) {
			if !slices.Contains(n.MACs, m) {
				n.MACs = append(n.MACs, m)
			}
		}
		n.Inventory, n.UpdatedAt = raw, r.Time
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
		UUID: discoveredUUID(rack, r), Rack: rack, MACs: append([]string{mac}, free...),
		ProvisionState: proto.StateDiscovered, PowerState: proto.PowerUnknown,
		Inventory: raw, CreatedAt: r.Time, UpdatedAt: r.Time, LastBoot: event,
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

// discoveredUUID is the uuid of the node a report discovers: made from
// the report's place in its agent's sequence, so it is deterministic (as
// Apply must be) and never the same for two reports.
func discoveredUUID(rack string, r *proto.AgentReport) string {
	return uuid.NewSHA1(discoveryNamespace, fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d", rack, r.Agent, r.Incarnation, r.Seq)).String()
}

func identName(ident string) string {
	if ident == "" {
		return "(no identity: firmware gave only placeholders)"
	}
	return strconv.Quote(ident)
}

// forgetSightings forgets the sightings of MACs that are now a node's,
// but for those that record a conflict: an operator has to see it.
func forgetSightings(tx *state.Tx, macs []string) {
	for _, m := range macs {
		if sg := tx.Sighting(m); sg != nil && sg.Conflict == "" {
			tx.DeleteSighting(m)
		}
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
