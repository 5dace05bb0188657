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

	// The node this machine already is: the one holding its boot MAC...
	var found *proto.Node
	if id, ok := tx.NodeByMAC(mac); ok {
		found = tx.Node(id)
		// A node without an inventory (created ahead by an operator)
		// is the machine that boots from its MAC; one whose inventory
		// gave only placeholders cannot be told to be this machine.
		if have := tx.NodeIdentity(id); have != ident && !(have == "" && len(found.Inventory) == 0) {
			return conflict(fmt.Sprintf("MAC %s belongs to node %s of system %s, but the inventory is of system %s",
				mac, nodeRef(found), identName(have), identName(ident)))
		}
	} else if ids := tx.NodesByIdentity(ident); len(ids) > 0 {
		// ...or the one with its identity, booting from a NIC not on
		// record. An identity is no secret (PXE sends the SMBIOS uuid in
		// DHCP option 97), so the NIC must be one that node's own
		// recorded inventory lists; else an operator decides.
		found = tx.Node(ids[0]) // the lowest uuid of several
		if !slices.Contains(inventoryMACs(found), mac) {
			return conflict(fmt.Sprintf("system %s is node %s, but MAC %s is not among the NICs its recorded inventory lists "+
				"(a new NIC: add it with metalfleet node set %s --macs ...)", identName(ident), nodeRef(found), mac, nodeRef(found)))
		}
	}
	if found != nil && found.Rack != rack {
		return conflict(fmt.Sprintf("system %s is node %s in rack %q, but booted in rack %q", identName(ident), nodeRef(found), found.Rack, rack))
	}

	// Only the MAC the machine booted from is attached: the inventory's
	// other NICs join the node when they are seen booting (a ramdisk
	// could list any MAC). One that another node holds is recorded as a
	// conflict: two machines claim one NIC.
	var taken []string
	for _, ifc := range inv.Interfaces {
		m, err := proto.NormalizeMAC(ifc.MAC)
		if err != nil || m == mac {
			continue
		}
		if id, ok := tx.NodeByMAC(m); ok && (found == nil || id != found.UUID) {
			taken = append(taken, fmt.Sprintf("%s (node %s)", m, nodeRef(tx.Node(id))))
		}
	}
	if len(taken) > 0 {
		slices.Sort(taken)
		taken = slices.Compact(taken)
		recordConflict(tx, rack, mac, r, fmt.Sprintf("the inventory of system %s lists MACs of other nodes: %s",
			identName(ident), strings.Join(taken, ", ")))
	}
	bmcAddr := inv.BMCAddress
	if (&proto.BMC{Address: bmcAddr}).Check() != nil {
		bmcAddr = "" // not an address a BMC can have: ignored, not fatal
	}

	event := &proto.BootEvent{Event: "inventory", Agent: r.Agent, Time: r.Time}
	newer := func(n *proto.Node) bool { return n.LastBoot == nil || !r.Time.Before(n.LastBoot.Time) }
	if found != nil && found.Enrolled {
		n := found.Clone()
		if newer(n) {
			n.LastBoot = event
		}
		if !slices.Contains(n.MACs, mac) {
			// A NIC its inventory lists, not on record, no node holds.
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
		// The same machine, still discovered: its inventory is the one
		// it just sent. (Per agent, reports arrive in order; the boot
		// event's time, which both agents' clocks write, does not order
		// inventories.)
		n := found.Clone()
		if newer(n) {
			n.LastBoot = event
		}
		if !slices.Contains(n.MACs, mac) {
			n.MACs = append(n.MACs, mac)
		}
		n.Inventory, n.UpdatedAt = raw, r.Time
		if bmcAddr != "" && n.BMC.Address == "" {
			n.BMC.Address = bmcAddr
		}
		if err := checkNodeFields(tx, n, n.UUID); err != nil {
			return err
		}
		tx.PutNode(n)
		forgetSightings(tx, n.MACs)
		return nil
	}
	n := &proto.Node{
		UUID: discoveredUUID(rack, r), Rack: rack, MACs: []string{mac},
		ProvisionState: proto.StateDiscovered, PowerState: proto.PowerUnknown,
		Inventory: raw, CreatedAt: r.Time, UpdatedAt: r.Time, LastBoot: event,
	}
	if bmcAddr != "" {
		n.BMC = proto.BMC{Driver: "ipmi", Address: bmcAddr}
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

// inventoryMACs lists the MACs of the NICs a node's recorded inventory
// names.
func inventoryMACs(n *proto.Node) []string {
	var inv struct {
		Interfaces []proto.Interface `json:"interfaces"`
	}
	if len(n.Inventory) == 0 || json.Unmarshal(n.Inventory, &inv) != nil {
		return nil
	}
	var out []string
	for _, ifc := range inv.Interfaces {
		if m, err := proto.NormalizeMAC(ifc.MAC); err == nil {
			out = append(out, m)
		}
	}
	return out
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
