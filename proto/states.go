package proto

import (
	"fmt"
	"slices"
	"strings"
)

// ProvisionState is where a node is in its life (DESIGN.md, "The life of a
// node").
type ProvisionState string

// Provision states.
const (
	StateDiscovered ProvisionState = "discovered"
	StateEnrolled   ProvisionState = "enrolled"
	StateManageable ProvisionState = "manageable"
	StateServicing  ProvisionState = "servicing"
	StateAvailable  ProvisionState = "available"
	StateDeploying  ProvisionState = "deploying"
	StateActive     ProvisionState = "active"
	StateCleaning   ProvisionState = "cleaning"
	StateRescuing   ProvisionState = "rescuing"
	StateRescue     ProvisionState = "rescue"
	StateUnrescuing ProvisionState = "unrescuing"
	StateFailed     ProvisionState = "failed"
)

// AllStates lists every provision state.
var AllStates = []ProvisionState{
	StateDiscovered, StateEnrolled, StateManageable, StateServicing,
	StateAvailable, StateDeploying, StateActive, StateCleaning,
	StateRescuing, StateRescue, StateUnrescuing, StateFailed,
}

// Valid reports whether s is a known state.
func (s ProvisionState) Valid() bool { return slices.Contains(AllStates, s) }

// Busy reports whether a task is running on a node in this state: such a
// node may not be deleted, unenrolled, or moved by an operator except
// through the task's own transitions.
func (s ProvisionState) Busy() bool {
	switch s {
	case StateServicing, StateDeploying, StateCleaning, StateRescuing, StateUnrescuing:
		return true
	}
	return false
}

// InUse reports whether the node carries or is about to carry a workload.
func (s ProvisionState) InUse() bool {
	return s.Busy() || s == StateActive || s == StateRescue
}

// PowerState is what the rack agent last read from the BMC.
type PowerState string

// Power states.
const (
	PowerUnknown PowerState = "unknown"
	PowerOn      PowerState = "on"
	PowerOff     PowerState = "off"
)

// Valid reports whether p is a known power state.
func (p PowerState) Valid() bool {
	return p == PowerUnknown || p == PowerOn || p == PowerOff
}

// Event names a transition of the node state machine.
type Event string

// Who may cause a transition.
type Actor int

const (
	// ActorOperator: asked for through POST /v1/nodes/{id}/provision.
	ActorOperator Actor = iota
	// ActorToggle: the enrolled toggle (PUT /v1/nodes/{id}/enrolled), or
	// the auto-enroll setting.
	ActorToggle
	// ActorSystem: the coordinator's reconcilers, on a rack agent's or
	// ramdisk's report.
	ActorSystem
)

// Transition is one edge of the node state machine.
type Transition struct {
	Event Event
	From  []ProvisionState
	To    ProvisionState
	Actor Actor
	// Hardware is set where the transition starts work on the machine (a
	// ramdisk task, a power cycle): these arrive with the rack agent and
	// ramdisk; until then the API refuses them.
	Hardware bool
	// Doc is a one-line description for help texts and errors.
	Doc string
}

// Transitions is the node state machine: the one table that the FSM uses to
// accept or refuse a change and that the API uses to explain a refusal.
var Transitions = []Transition{
	{Event: "enroll", From: []ProvisionState{StateDiscovered}, To: StateEnrolled, Actor: ActorToggle,
		Doc: "take a discovered node under management"},
	{Event: "unenroll", From: []ProvisionState{StateEnrolled, StateManageable}, To: StateDiscovered, Actor: ActorToggle,
		Doc: "set a node apart again as discovered"},
	{Event: "manage", From: []ProvisionState{StateEnrolled, StateAvailable, StateFailed}, To: StateManageable, Actor: ActorOperator,
		Doc: "make a node manageable (once its rack agent has verified the BMC), or take it back from available or failed"},
	{Event: "provide", From: []ProvisionState{StateManageable}, To: StateAvailable, Actor: ActorOperator,
		Doc: "offer a manageable node to the scheduler"},
	{Event: "service", From: []ProvisionState{StateManageable}, To: StateServicing, Actor: ActorOperator, Hardware: true,
		Doc: "run a task (inspect, burn-in, firmware, bios, raid) on a manageable node"},
	{Event: "service-done", From: []ProvisionState{StateServicing}, To: StateManageable, Actor: ActorSystem,
		Doc: "a servicing task finished"},
	{Event: "deploy", From: []ProvisionState{StateAvailable}, To: StateDeploying, Actor: ActorSystem, Hardware: true,
		Doc: "place an instance on the node"},
	{Event: "deploy-done", From: []ProvisionState{StateDeploying}, To: StateActive, Actor: ActorSystem,
		Doc: "the instance's image is deployed and booted"},
	{Event: "undeploy", From: []ProvisionState{StateActive, StateDeploying, StateRescuing, StateRescue, StateUnrescuing, StateFailed}, To: StateCleaning, Actor: ActorSystem, Hardware: true,
		Doc: "remove the instance and clean the node"},
	{Event: "clean-done", From: []ProvisionState{StateCleaning}, To: StateAvailable, Actor: ActorSystem,
		Doc: "cleaning finished"},
	{Event: "rescue", From: []ProvisionState{StateActive}, To: StateRescuing, Actor: ActorSystem, Hardware: true,
		Doc: "boot the instance's node into its rescue image"},
	{Event: "rescue-done", From: []ProvisionState{StateRescuing}, To: StateRescue, Actor: ActorSystem,
		Doc: "the rescue ramdisk reported in"},
	{Event: "unrescue", From: []ProvisionState{StateRescue, StateRescuing}, To: StateUnrescuing, Actor: ActorSystem, Hardware: true,
		Doc: "restore the node's boot config and boot it"},
	{Event: "unrescue-done", From: []ProvisionState{StateUnrescuing}, To: StateActive, Actor: ActorSystem,
		Doc: "the node booted its instance again"},
	{Event: "fail", From: []ProvisionState{StateServicing, StateDeploying, StateCleaning, StateRescuing, StateUnrescuing}, To: StateFailed, Actor: ActorSystem,
		Doc: "a task failed; last_error says why"},
}

// LookupTransition returns the transition named by ev.
func LookupTransition(ev Event) (Transition, bool) {
	for _, t := range Transitions {
		if t.Event == ev {
			return t, true
		}
	}
	return Transition{}, false
}

// Allows reports whether t may start from s.
func (t Transition) Allows(s ProvisionState) bool { return slices.Contains(t.From, s) }

// OperatorEvents lists the events an operator may ask for through the
// provision API, in table order.
func OperatorEvents() []Event {
	var evs []Event
	for _, t := range Transitions {
		if t.Actor == ActorOperator {
			evs = append(evs, t.Event)
		}
	}
	return evs
}

// CheckTransition returns nil if the node named node may take ev from
// state s, and otherwise a CodeWrongState (or CodeInvalid for an unknown
// event) error that says which states ev is allowed from.
func CheckTransition(node string, s ProvisionState, ev Event) (ProvisionState, error) {
	t, ok := LookupTransition(ev)
	if !ok {
		return "", Errorf(CodeInvalid, "unknown transition %q", ev)
	}
	if !t.Allows(s) {
		return "", Errorf(CodeWrongState, "cannot %s node %s: it is %s; %s is allowed from %s",
			ev, node, s, ev, joinStates(t.From))
	}
	return t.To, nil
}

func joinStates(ss []ProvisionState) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = string(s)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return fmt.Sprintf("%s or %s", strings.Join(parts[:len(parts)-1], ", "), parts[len(parts)-1])
}
