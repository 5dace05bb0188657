package fsm

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Type is the first byte of every Raft log entry: which command the rest
// of the entry holds. The numbers are append-only: never renumber or reuse
// one, since old logs and snapshots hold them.
type Type byte

// Command types.
const (
	TypeNodeCreate         Type = 1
	TypeNodeUpdate         Type = 2
	TypeNodeDelete         Type = 3
	TypeNodeSetEnrolled    Type = 4
	TypeNodeSetMaintenance Type = 5
	TypeNodeProvision      Type = 6
	TypeRackPut            Type = 7
	TypeRackDelete         Type = 8
	TypeFlavorPut          Type = 9
	TypeFlavorDelete       Type = 10
	TypeImagePut           Type = 11
	TypeImageDelete        Type = 12
	TypeInstanceCreate     Type = 13
	TypeInstanceDelete     Type = 14
	TypeSettingsUpdate     Type = 15
	TypeTokenCreate        Type = 16
	TypeTokenRevoke        Type = 17
	TypeServerPut          Type = 18
	TypeServerRemove       Type = 19
	_                      Type = 20 // was Report (power readings); never used, retired
	TypeNoop               Type = 21
	TypeAgentReports       Type = 22
	TypeLeasesExpire       Type = 23
	TypeNodeIntent         Type = 24 // out-of-band intents (nodes_bmc.go)
	TypeConsoleTicketMake  Type = 25 // console tickets (console.go)
	TypeConsoleTicketTake  Type = 26
	TypeIntentsExpire      Type = 27 // intents no agent answered (nodes_bmc.go)
	TypeTaskCreate         Type = 28 // servicing tasks (tasks.go)
	TypeTaskAbort          Type = 29
	TypeTaskTimeout        Type = 30
	TypeTaskConsoleLog     Type = 31
	TypeInstanceStart      Type = 32 // instances (instances.go)
	TypeInstanceRescue     Type = 33
	TypeInstanceUnrescue   Type = 34
	TypeInstancePatch      Type = 35
	TypeInstanceTimeout    Type = 36
)

// Command is implemented by every command body. Time and ids are decided
// by the caller before the command is proposed and travel inside it, so
// every server applies the same entry to the same result.
type Command interface {
	Type() Type
}

// NodeCreate adds a node. UUID, times and the initial state are the
// proposer's; Apply checks the name, MACs and rack.
type NodeCreate struct {
	Node proto.Node `json:"node"`
}

// NodeUpdate changes fields of the node Ref (uuid, name or MAC).
//
// A change of the BMC fields (or the rack) makes the BMC unverified and,
// when Agent names the rack agent to ask, records a verify intent for it.
type NodeUpdate struct {
	Ref   string          `json:"ref"`
	Patch proto.NodePatch `json:"patch"`
	Now   time.Time       `json:"now"`
	Agent string          `json:"agent,omitempty"`
	By    string          `json:"by,omitempty"`
}

// NodeDelete removes the node Ref if it is not in use.
type NodeDelete struct {
	Ref string `json:"ref"`
}

// NodeSetEnrolled enrolls (discovered -> enrolled) or unenrolls a node.
type NodeSetEnrolled struct {
	Ref      string    `json:"ref"`
	Enrolled bool      `json:"enrolled"`
	Now      time.Time `json:"now"`
}

// NodeSetMaintenance sets or clears the maintenance flag.
type NodeSetMaintenance struct {
	Ref         string    `json:"ref"`
	Maintenance bool      `json:"maintenance"`
	Reason      string    `json:"reason,omitempty"`
	Now         time.Time `json:"now"`
}

// NodeProvision moves a node along one transition of proto.Transitions.
// Actor says who asks; a transition for another actor is refused.
type NodeProvision struct {
	Ref       string      `json:"ref"`
	Event     proto.Event `json:"event"`
	Actor     proto.Actor `json:"actor"`
	LastError string      `json:"last_error,omitempty"`
	Now       time.Time   `json:"now"`
}

// RackPut creates (Create) or replaces a rack.
type RackPut struct {
	Rack   proto.Rack `json:"rack"`
	Create bool       `json:"create"`
}

// RackDelete removes a rack no node or flavor names.
type RackDelete struct {
	Name string `json:"name"`
}

// FlavorPut creates (Create) or replaces a flavor.
type FlavorPut struct {
	Flavor proto.Flavor `json:"flavor"`
	Create bool         `json:"create"`
}

// FlavorDelete removes a flavor no instance uses.
type FlavorDelete struct {
	Name string `json:"name"`
}

// ImagePut creates (Create) or replaces an image.
type ImagePut struct {
	Image  proto.Image `json:"image"`
	Create bool        `json:"create"`
}

// ImageDelete removes an image nothing refers to.
type ImageDelete struct {
	Name string `json:"name"`
}

// InstanceCreate records an instance bound to the node Instance.Node
// (the scheduler's choice, or an administrator's when Forced), queued; a
// forced one starts its deploy at once through Agent. Request makes a
// retried create return the first.
type InstanceCreate struct {
	Instance proto.Instance `json:"instance"`
	Forced   bool           `json:"forced,omitempty"`
	Request  string         `json:"request,omitempty"`
	Agent    string         `json:"agent,omitempty"`
	Key      []byte         `json:"key,omitempty"`
	By       string         `json:"by,omitempty"`
	Now      time.Time      `json:"now"`
}

// InstanceDelete deletes an instance: a queued one (or one without a
// node) at once, else through cleaning its node by Agent.
type InstanceDelete struct {
	Ref   string    `json:"ref"`
	Agent string    `json:"agent,omitempty"`
	Key   []byte    `json:"key,omitempty"`
	By    string    `json:"by,omitempty"`
	Now   time.Time `json:"now"`
}

// SettingsUpdate changes fleet settings.
type SettingsUpdate struct {
	Patch proto.SettingsPatch `json:"patch"`
}

// TokenCreate stores a token; only the hash of its secret travels.
type TokenCreate struct {
	Token      proto.Token `json:"token"`
	SecretHash string      `json:"secret_hash"`
	// IfAbsent makes a repeat with the same id a no-op instead of an
	// error (used for the bootstrap admin token, which a restarted first
	// server proposes again).
	IfAbsent bool `json:"if_absent,omitempty"`
}

// TokenRevoke deletes a token.
type TokenRevoke struct {
	ID string `json:"id"`
}

// ServerPut records a coordinator's addresses.
type ServerPut struct {
	Server proto.Server `json:"server"`
}

// ServerRemove forgets a coordinator.
type ServerRemove struct {
	ID string `json:"id"`
}

// AgentReports applies a batch of rack agent reports. Each report is
// applied at most once (by id); one that cannot be applied is rejected
// alone, with its reason, and the rest go on.
type AgentReports struct {
	Rack    string              `json:"rack"`
	Reports []proto.AgentReport `json:"reports"`
}

// AgentReportsResult says what became of each report.
type AgentReportsResult struct {
	Acked    []string          `json:"acked"`
	Rejected map[string]string `json:"rejected,omitempty"`
}

// LeasesExpire forgets the dynamic leases, of every rack, that expired
// before Before: leases of agents that died with them and never came back
// to report their end. The leader proposes it now and then (package
// leader), with Before = its clock minus LeaseKeep.
type LeasesExpire struct {
	Before time.Time `json:"before"`
}

// LeasesExpireResult counts the leases forgotten.
type LeasesExpireResult struct {
	Expired int `json:"expired"`
}

// Noop changes nothing; it is used to measure the cost of the log itself.
type Noop struct{}

func (NodeCreate) Type() Type         { return TypeNodeCreate }
func (NodeUpdate) Type() Type         { return TypeNodeUpdate }
func (NodeDelete) Type() Type         { return TypeNodeDelete }
func (NodeSetEnrolled) Type() Type    { return TypeNodeSetEnrolled }
func (NodeSetMaintenance) Type() Type { return TypeNodeSetMaintenance }
func (NodeProvision) Type() Type      { return TypeNodeProvision }
func (RackPut) Type() Type            { return TypeRackPut }
func (RackDelete) Type() Type         { return TypeRackDelete }
func (FlavorPut) Type() Type          { return TypeFlavorPut }
func (FlavorDelete) Type() Type       { return TypeFlavorDelete }
func (ImagePut) Type() Type           { return TypeImagePut }
func (ImageDelete) Type() Type        { return TypeImageDelete }
func (InstanceCreate) Type() Type     { return TypeInstanceCreate }
func (InstanceDelete) Type() Type     { return TypeInstanceDelete }
func (SettingsUpdate) Type() Type     { return TypeSettingsUpdate }
func (TokenCreate) Type() Type        { return TypeTokenCreate }
func (TokenRevoke) Type() Type        { return TypeTokenRevoke }
func (ServerPut) Type() Type          { return TypeServerPut }
func (ServerRemove) Type() Type       { return TypeServerRemove }
func (Noop) Type() Type               { return TypeNoop }
func (AgentReports) Type() Type       { return TypeAgentReports }
func (LeasesExpire) Type() Type       { return TypeLeasesExpire }

// Encode turns a command into a log entry: its type byte, then JSON.
func Encode(c Command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", c.Type(), err)
	}
	return append([]byte{byte(c.Type())}, b...), nil
}
