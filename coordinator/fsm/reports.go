package fsm

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Rack agent reports: de-duplication by (agent, incarnation, seq), sightings, boot events, power readings and dynamic leases.

// applyAgentReports applies a batch of one rack's reports. Each is
// applied once for any backlog: a report at or below its agent
// incarnation's high-water seq is a repeat, acknowledged and not applied
// again. A report that cannot be applied is rejected alone, with its
// reason, and counts as done (a resend is a repeat).
func applyAgentReports(tx *state.Tx, c *AgentReports) (any, error) {
	if tx.Rack(c.Rack) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", c.Rack)
	}
	res := &AgentReportsResult{Acked: []string{}, Rejected: map[string]string{}}
	for i := range c.Reports {
		r := &c.Reports[i]
		if r.Agent == "" || r.Incarnation == "" || r.Seq == 0 {
			// The API refuses these before they get here.
			res.Rejected[r.ID] = "report without agent, incarnation and seq"
			continue
		}
		if r.Rack != c.Rack {
			res.Rejected[r.ID] = fmt.Sprintf("report for rack %q in a batch for rack %q", r.Rack, c.Rack)
			continue
		}
		if tx.ReportApplied(c.Rack, r.Agent, r.Incarnation, r.Seq) {
			res.Acked = append(res.Acked, r.ID)
			continue
		}
		err := applyAgentReport(tx, c.Rack, r)
		tx.MarkApplied(c.Rack, r.Agent, r.Incarnation, r.Seq)
		if err != nil {
			res.Rejected[r.ID] = err.Error()
			continue
		}
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
	if node != nil && node.Rack != rack {
		why := fmt.Sprintf("node %s is in rack %q, not %q", nodeRef(node), node.Rack, rack)
		if r.Kind == proto.ReportCallback && r.Step == proto.StepInventory && mac != "" {
			recordConflict(tx, rack, mac, r, "inventory from rack "+rack+": "+why)
		}
		return proto.Errorf(proto.CodeForbidden, "%s", why)
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
		if node.LastBoot != nil && r.Time.Before(node.LastBoot.Time) {
			return nil // an older event (a backlog) never hides a newer one
		}
		n := node.Clone()
		n.LastBoot = &proto.BootEvent{Event: ev, Agent: r.Agent, Time: r.Time}
		if ev == "script" {
			// Served its boot script: with a local-disk boot config, the
			// node takes the local-boot path.
			diskBooted(tx, n, "seen taking the local-boot path (rack agent "+r.Agent+" served its local-disk script)", r.Time)
		}
		tx.PutNode(n)
		return nil
	case proto.ReportLease:
		return applyLease(tx, rack, mac, r)
	case proto.ReportPower:
		return applyPowerReading(tx, node, r)
	case proto.ReportBMC:
		return applyBMCResult(tx, node, r)
	case proto.ReportConsole:
		return applyConsoleEvent(tx, node, r)
	case proto.ReportCallback:
		switch r.Step {
		case proto.StepInventory:
			return applyDiscovery(tx, rack, mac, r)
		case proto.StepTask:
			return applyTaskStep(tx, node, r)
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
	if !tx.Rack(rack).Addrs().InPool(ip) {
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
	// Leases long expired whose end nobody reported (an agent that died
	// with them) are forgotten by the leader's LeasesExpire, not here:
	// a report costs O(1) whatever the rack's size.
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
