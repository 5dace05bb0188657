package fsm

import (
	"fmt"
	"slices"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Out-of-band control: intents (power, boot device, BMC verification) and
// the rack agents' answers to them (bmc reports), power sync readings,
// console sessions, and the node history they write.

func init() {
	handlers[TypeNodeIntent] = decode(applyNodeIntent)
	handlers[TypeIntentsExpire] = decode(applyIntentsExpire)
}

// IntentsExpire ends the listed intents that are still pending after
// their Expires, as of Now: their agent never answered (it died, was
// rebuilt, or lost its way to the coordinators), so their outcome is
// unknown. The leader proposes it (package leader) for the intents it
// found expired; Apply checks each again.
type IntentsExpire struct {
	Now   time.Time         `json:"now"`
	Items []IntentReference `json:"items"`
}

// IntentReference names one intent.
type IntentReference struct {
	Node       string `json:"node"`
	Generation uint64 `json:"generation"`
}

func (IntentsExpire) Type() Type { return TypeIntentsExpire }

// IntentsExpireResult counts the intents ended.
type IntentsExpireResult struct {
	Expired int `json:"expired"`
}

func applyIntentsExpire(tx *state.Tx, c *IntentsExpire) (any, error) {
	res := &IntentsExpireResult{}
	for _, it := range c.Items {
		node := tx.Node(it.Node)
		if node == nil {
			continue
		}
		i := slices.IndexFunc(node.Intents, func(x proto.Intent) bool { return x.Generation == it.Generation })
		if i < 0 || node.Intents[i].Done || node.Intents[i].Expires.IsZero() || !c.Now.After(node.Intents[i].Expires) {
			continue
		}
		n := node.Clone()
		in := &n.Intents[i]
		why := fmt.Sprintf("no result from rack agent %s by %s: outcome unknown", in.Agent, in.Expires.Format(time.RFC3339))
		in.Done, in.Error, in.DoneAt = true, why, c.Now
		n.LastError = in.Describe() + " failed: " + why
		n.UpdatedAt = c.Now
		tx.PutNode(n)
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: c.Now, Kind: "intent-result", User: "system",
			Message: fmt.Sprintf("generation %d: %s", in.Generation, n.LastError)})
		res.Expired++
	}
	return res, nil
}

// ExpiredIntents lists the pending intents of n past their expiry at now.
func ExpiredIntents(n *proto.Node, now time.Time) []IntentReference {
	var out []IntentReference
	for _, in := range n.Intents {
		if !in.Done && !in.Expires.IsZero() && now.After(in.Expires) {
			out = append(out, IntentReference{Node: n.UUID, Generation: in.Generation})
		}
	}
	return out
}

// endIntents marks every pending intent of n done with why (the node
// moved to another rack: the old rack's agents will not answer, and the
// new rack's must not act on them).
func endIntents(tx *state.Tx, n *proto.Node, why string, now time.Time) {
	for i := range n.Intents {
		in := &n.Intents[i]
		if in.Done {
			continue
		}
		in.Done, in.Error, in.DoneAt = true, why, now
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "intent-result", User: "system",
			Message: fmt.Sprintf("generation %d: %s not executed: %s", in.Generation, in.Describe(), why)})
	}
}

// NodeIntent records an out-of-band intent on node Ref. The proposer
// fills Intent's Action, Power or Boot, Agent (the rack agent that will
// execute it), OnSuccess, By and At; Apply gives it the node's next
// generation and returns the node.
type NodeIntent struct {
	Ref    string       `json:"ref"`
	Intent proto.Intent `json:"intent"`
}

func (NodeIntent) Type() Type { return TypeNodeIntent }

func applyNodeIntent(tx *state.Tx, c *NodeIntent) (any, error) {
	n, err := findNode(tx, c.Ref)
	if err != nil {
		return nil, err
	}
	in := c.Intent
	switch in.Action {
	case proto.ActionVerify:
	case proto.ActionPower:
		if !in.Power.Valid() {
			return nil, proto.Errorf(proto.CodeInvalid, "target %q: want on, off, soft-off or reboot", in.Power)
		}
	case proto.ActionBootDevice:
		if in.Boot == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "a boot-device intent needs a device")
		}
		if err := in.Boot.Check(); err != nil {
			return nil, err
		}
	default:
		return nil, proto.Errorf(proto.CodeInvalid, "action %q: want verify, power or boot-device", in.Action)
	}
	if err := CanDriveBMC(n); err != nil {
		return nil, err
	}
	if in.Request != "" && slices.ContainsFunc(n.Intents, func(x proto.Intent) bool {
		return x.Action == in.Action && x.Request == in.Request
	}) {
		return n, nil // a retry of a request already recorded
	}
	if in.Agent == "" {
		return nil, proto.Errorf(proto.CodeInternal, "an intent without an agent to execute it")
	}
	if in.OnSuccess != "" {
		if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, in.OnSuccess); err != nil {
			return nil, err
		}
	}
	addIntent(tx, n, in)
	n.UpdatedAt = in.At
	tx.PutNode(n)
	return n.Clone(), nil
}

// CanDriveBMC says why no rack agent can reach n's BMC, if so.
func CanDriveBMC(n *proto.Node) error {
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		return proto.Errorf(proto.CodeWrongState, "node %s has no BMC: set its driver and address (metalfleet node set %s --bmc-driver ipmi --bmc-address ADDR ...)", nodeRef(n), nodeRef(n))
	}
	if n.Rack == "" {
		return proto.Errorf(proto.CodeWrongState, "node %s has no rack, so no rack agent drives its BMC", nodeRef(n))
	}
	return nil
}

// addIntent gives in n's next generation and stores it in place of n's
// intent of the same action, keeping the list in generation order.
func addIntent(tx *state.Tx, n *proto.Node, in proto.Intent) {
	if in.Action == proto.ActionVerify && in.OnSuccess == "" {
		// A verify replacing a pending manage (the BMC fields changed
		// meanwhile) still manages the node when it succeeds.
		for _, x := range n.Intents {
			if x.Action == proto.ActionVerify && !x.Done && x.OnSuccess != "" {
				in.OnSuccess = x.OnSuccess
			}
		}
	}
	if in.Expires.IsZero() && !in.At.IsZero() {
		in.Expires = in.At.Add(proto.IntentTTL)
	}
	n.BMCGeneration++
	in.Generation = n.BMCGeneration
	in.Done, in.Error, in.DoneAt = false, "", time.Time{}
	n.Intents = slices.DeleteFunc(n.Intents, func(x proto.Intent) bool { return x.Action == in.Action })
	n.Intents = append(n.Intents, in)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: in.At, Kind: "intent", User: in.By,
		Message: fmt.Sprintf("%s requested (generation %d, agent %s)", in.Describe(), in.Generation, in.Agent)})
}

// applyBMCResult applies an agent's answer to an intent. An answer to an
// intent that is no longer the node's (a newer one replaced it) or that
// is already done changes nothing: a re-delivered result never acts twice.
func applyBMCResult(tx *state.Tx, node *proto.Node, r *proto.AgentReport) error {
	if node == nil {
		return proto.Errorf(proto.CodeInvalid, "bmc report without a known node")
	}
	if r.PowerState != "" && !r.PowerState.Valid() {
		return proto.Errorf(proto.CodeInvalid, "power_state %q: want on, off or unknown", r.PowerState)
	}
	i := slices.IndexFunc(node.Intents, func(x proto.Intent) bool {
		return x.Generation == r.Generation && x.Action == r.Action
	})
	if i < 0 || node.Intents[i].Done {
		return nil
	}
	if node.Intents[i].Agent != r.Agent {
		// Only the agent the intent was given to answers it.
		return proto.Errorf(proto.CodeForbidden, "generation %d of node %s is agent %s's to answer, not %s",
			r.Generation, nodeRef(node), node.Intents[i].Agent, r.Agent)
	}
	n := node.Clone()
	in := &n.Intents[i]
	in.Done, in.Error, in.DoneAt = true, r.Error, r.Time
	setBMCStatus(n, r)
	if r.PowerState != "" && !r.Time.Before(n.PowerUpdatedAt) {
		n.PowerState, n.PowerUpdatedAt = r.PowerState, r.Time
	}
	msg := in.Describe() + ": done"
	switch {
	case r.Error != "":
		msg = in.Describe() + " failed: " + r.Error
		if in.OnSuccess == "manage" {
			n.LastError = "BMC verification failed, node stays " + string(n.ProvisionState) + ": " + r.Error
		} else {
			n.LastError = in.Describe() + " failed: " + r.Error
		}
	case in.OnSuccess != "":
		to, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, in.OnSuccess)
		if err != nil {
			msg += "; " + err.Error()
		} else {
			n.ProvisionState, n.LastError = to, ""
			msg += "; node is " + string(to)
		}
	}
	if r.PowerState != "" {
		msg += "; power " + string(r.PowerState)
	}
	n.UpdatedAt = r.Time
	diskBooted(tx, n, "", r.Time)
	tx.PutNode(n)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: r.Time, Kind: "intent-result", User: r.Agent,
		Message: fmt.Sprintf("generation %d: %s", in.Generation, msg)})
	return nil
}

// setBMCStatus records what a bmc or power report found of the BMC (an
// intent that lapsed unexecuted found nothing).
func setBMCStatus(n *proto.Node, r *proto.AgentReport) {
	if r.ErrorKind == proto.BMCErrExpired {
		return
	}
	st := proto.BMCStatus{State: proto.BMCOK, CheckedAt: r.Time}
	if n.BMCStatus != nil {
		st.Info = n.BMCStatus.Info
		if r.Time.Before(n.BMCStatus.CheckedAt) {
			return // an older reading never hides a newer one
		}
	}
	if r.Error != "" {
		kind := r.ErrorKind
		if kind == "" {
			kind = proto.BMCErrRefused
		}
		st.State, st.Error = kind.State(), r.Error
	}
	if r.BMCInfo != nil {
		info := *r.BMCInfo
		st.Info = &info
	}
	n.BMCStatus = &st
}

// applyPowerReading applies a power sync reading: the state read, or
// unknown with the error when the BMC did not answer (never a stale on).
func applyPowerReading(tx *state.Tx, node *proto.Node, r *proto.AgentReport) error {
	if node == nil {
		return proto.Errorf(proto.CodeInvalid, "power report without a known node")
	}
	ps := r.PowerState
	if r.Error != "" {
		ps = proto.PowerUnknown
	}
	if !ps.Valid() {
		return proto.Errorf(proto.CodeInvalid, "power_state %q: want on, off or unknown", r.PowerState)
	}
	if r.Time.Before(node.PowerUpdatedAt) {
		return nil // an older reading never overwrites a newer one
	}
	n := node.Clone()
	oldState := proto.BMCState("")
	if n.BMCStatus != nil {
		oldState = n.BMCStatus.State
	}
	setBMCStatus(n, r)
	var msgs []string
	if n.PowerState != ps && node.PowerState != "" {
		msgs = append(msgs, fmt.Sprintf("power %s -> %s (read by %s)", node.PowerState, ps, r.Agent))
	}
	if n.BMCStatus.State != oldState && oldState != "" && oldState != proto.BMCUnverified {
		m := fmt.Sprintf("BMC %s -> %s", oldState, n.BMCStatus.State)
		if r.Error != "" {
			m += ": " + r.Error
		}
		msgs = append(msgs, m)
	}
	n.PowerState, n.PowerUpdatedAt, n.UpdatedAt = ps, r.Time, r.Time
	tx.PutNode(n)
	for _, m := range msgs {
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: r.Time, Kind: "power-sync", User: r.Agent, Message: m})
	}
	return nil
}

// applyConsoleEvent records a console session's start or end.
func applyConsoleEvent(tx *state.Tx, node *proto.Node, r *proto.AgentReport) error {
	if node == nil {
		return proto.Errorf(proto.CodeInvalid, "console report without a known node")
	}
	var what string
	switch r.Event {
	case "console-start":
		what = "started"
	case "console-end":
		what = "ended"
	default:
		return proto.Errorf(proto.CodeInvalid, "console event %q: want console-start or console-end", r.Event)
	}
	tx.AppendHistory(node.UUID, proto.HistoryEvent{Time: r.Time, Kind: r.Event, User: r.User,
		Message: fmt.Sprintf("console session (%s) %s, through agent %s", r.Mode, what, r.Agent)})
	return nil
}
