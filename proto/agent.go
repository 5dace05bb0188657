package proto

import (
	"encoding/json"
	"time"
)

// Types shared by the coordinator and rack agents: the desired boot state
// of a rack, and the reports an agent sends about what it sees.

// BootKind is what a node boots.
type BootKind string

// Boot kinds.
const (
	// BootDiscovery: the discovery kernel and ramdisk (unknown MACs, and
	// discovered nodes).
	BootDiscovery BootKind = "discovery"
	// BootLocalDisk: leave the network boot and boot the local disk.
	BootLocalDisk BootKind = "local-disk"
	// BootRamdisk: a task ramdisk with its kernel, initrd and command line.
	BootRamdisk BootKind = "ramdisk"
)

// Artifact is a file a rack agent fetches, verifies and serves from its
// content-addressed cache.
type Artifact struct {
	Name   string `json:"name,omitempty"` // the image's name
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size,omitempty"`
}

// Clone returns a deep copy (nil for nil).
func (b *BootConfig) Clone() *BootConfig {
	if b == nil {
		return nil
	}
	c := *b
	if b.Kernel != nil {
		k := *b.Kernel
		c.Kernel = &k
	}
	if b.Initrd != nil {
		i := *b.Initrd
		c.Initrd = &i
	}
	return &c
}

// BootConfig is what one node should boot next.
type BootConfig struct {
	Kind    BootKind  `json:"kind"`
	Kernel  *Artifact `json:"kernel,omitempty"`
	Initrd  *Artifact `json:"initrd,omitempty"`
	Cmdline string    `json:"cmdline,omitempty"`
	// Task names the ramdisk task (inspect, burnin, ...), if any.
	Task string `json:"task,omitempty"`
	// TaskToken authenticates the ramdisk's callbacks for this task.
	TaskToken string `json:"task_token,omitempty"`
}

// BootNode is one known node as its rack agent needs it.
type BootNode struct {
	UUID string   `json:"uuid"`
	Name string   `json:"name,omitempty"`
	MACs []string `json:"macs"`
	// IP is the node's reserved address, allocated by the coordinator
	// outside the rack's dynamic pool.
	IP   string     `json:"ip,omitempty"`
	Boot BootConfig `json:"boot"`
	// BMC is how to reach the node's BMC, with its credentials and
	// pending intents; absent for a node without a BMC driver.
	BMC *BootBMC `json:"bmc,omitempty"`
	// Task is the node's running task, while its ramdisk should run it.
	Task *TaskPlan `json:"task,omitempty"`
}

// Lease is a dynamic-pool address bound to a MAC by one agent.
type Lease struct {
	MAC     string    `json:"mac"`
	IP      string    `json:"ip"`
	Expires time.Time `json:"expires"`
	Agent   string    `json:"agent"`
}

// RackBootState is everything a rack agent needs to answer its rack's
// DHCP, TFTP and HTTP boot requests without the coordinator.
type RackBootState struct {
	Rack      Rack       `json:"rack"`
	Discovery BootConfig `json:"discovery"`
	// DiscoveryEnabled: unknown MACs are answered (with Discovery).
	DiscoveryEnabled bool       `json:"discovery_enabled"`
	Nodes            []BootNode `json:"nodes"`
	// Leases are the dynamic leases the coordinator has heard of from
	// this rack's agents, the asking agent's own included: a survivor
	// honours its peer's leases, and an agent that lost its data
	// directory learns the leases it held (it must never offer one of
	// them to another MAC).
	Leases []Lease `json:"leases"`
	// Index is the coordinator's state index this reflects.
	Index uint64 `json:"index"`
}

// ReportKind says what an agent report is about.
type ReportKind string

// Report kinds.
const (
	// ReportMACSeen: an unknown MAC asked for an address or a boot file.
	ReportMACSeen ReportKind = "mac_seen"
	// ReportBootEvent: a known node fetched its boot script, kernel or
	// initrd, so it is booting.
	ReportBootEvent ReportKind = "boot_event"
	// ReportLease: a dynamic lease was bound, renewed, released,
	// declined or expired.
	ReportLease ReportKind = "lease"
	// ReportPower: the power state read from a node's BMC.
	ReportPower ReportKind = "power"
	// ReportCallback: a ramdisk's callback (inventory, a step's result),
	// received by the agent and passed on.
	ReportCallback ReportKind = "callback"
	// ReportBMC: the outcome of an intent (Action, Generation): Error
	// empty when it succeeded, with the power state and BMC identity read.
	ReportBMC ReportKind = "bmc"
	// ReportConsole: a console session started or ended (Event
	// "console-start" or "console-end", User, Mode).
	ReportConsole ReportKind = "console"
)

// AgentReport is one observation by a rack agent.
//
// (Agent, Incarnation, Seq) makes it idempotent for any backlog: an
// agent numbers its reports 1, 2, 3 ... in the order it queues them, in a
// sequence it persists with its queue; Incarnation names that sequence (a
// random id made when the agent's data directory is created, so a rebuilt
// agent of the same name starts a new one). The coordinator keeps, per
// agent and incarnation, the highest Seq applied, and a report at or below
// it is a repeat. Reports of one incarnation are delivered in Seq order.
// ID names the report in acks and logs.
type AgentReport struct {
	ID          string     `json:"id"`
	Kind        ReportKind `json:"kind"`
	Rack        string     `json:"rack"`
	Agent       string     `json:"agent"`
	Incarnation string     `json:"incarnation"`
	Seq         uint64     `json:"seq"`
	Time        time.Time  `json:"time"`

	MAC       string `json:"mac,omitempty"`
	Node      string `json:"node,omitempty"` // uuid, for known nodes
	Arch      string `json:"arch,omitempty"` // client architecture (option 93)
	Giaddr    string `json:"giaddr,omitempty"`
	Interface string `json:"interface,omitempty"`
	// Count is how many sightings this mac_seen report stands for (an
	// agent folds repeats together).
	Count int `json:"count,omitempty"`

	// Event is the boot event: "dhcp", "script", "kernel", "initrd".
	Event string `json:"event,omitempty"`

	// Lease events: "bound", "released", "declined", "expired".
	LeaseEvent string `json:"lease_event,omitempty"`
	Lease      *Lease `json:"lease,omitempty"`

	// Power and bmc reports: the power state read (unknown when the BMC
	// did not answer), and the failure, if any, classified.
	PowerState PowerState   `json:"power_state,omitempty"`
	Error      string       `json:"error,omitempty"`
	ErrorKind  BMCErrorKind `json:"error_kind,omitempty"`
	// Bmc reports: the intent answered, and the identity read.
	Action     BMCAction `json:"action,omitempty"`
	Generation uint64    `json:"generation,omitempty"`
	BMCInfo    *BMCInfo  `json:"bmc_info,omitempty"`
	// Console reports: who and how (ConsoleInteractive, ConsoleReadOnly).
	User string `json:"user,omitempty"`
	Mode string `json:"mode,omitempty"`

	// Callbacks: the step the ramdisk reports on and its JSON body.
	Step string          `json:"step,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
}

// ReportBatch is the body of POST /v1/agent/reports.
type ReportBatch struct {
	Reports []AgentReport `json:"reports"`
}

// ReportAck answers a ReportBatch: every id applied now or before is in
// Acked; a report the coordinator will never accept is in Rejected with
// the reason, so the agent drops it instead of retrying forever.
type ReportAck struct {
	Acked    []string          `json:"acked"`
	Rejected map[string]string `json:"rejected,omitempty"`
	Index    uint64            `json:"index"`
}

// Sighting is an unknown MAC the coordinator has heard of.
type Sighting struct {
	MAC       string    `json:"mac"`
	Rack      string    `json:"rack"`
	Agent     string    `json:"agent,omitempty"`
	Arch      string    `json:"arch,omitempty"`
	Giaddr    string    `json:"giaddr,omitempty"`
	Interface string    `json:"interface,omitempty"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Count     int       `json:"count"`
	// Conflict says why a discovery report from this MAC was refused (it
	// claimed an enrolled node's MAC with another system identity).
	Conflict string `json:"conflict,omitempty"`
	Meta
}

// BootEvent is the last boot step a node was seen taking.
type BootEvent struct {
	Event string    `json:"event"`
	Agent string    `json:"agent,omitempty"`
	Time  time.Time `json:"time"`
}

// AgentInfo is a rack agent as the coordinator sees it, through gossip
// and through the agent's own API calls.
type AgentInfo struct {
	Name        string    `json:"name"`
	Rack        string    `json:"rack"`
	Address     string    `json:"address"` // gossip address
	APIAddr     string    `json:"api_addr,omitempty"`
	Version     string    `json:"version,omitempty"`
	Status      string    `json:"status"` // alive, suspect, dead, left; unknown: not heard of lately
	LastContact time.Time `json:"last_contact"`
	// MgmtAddr is the agent's management address (host:port), from the
	// AgentMgmtHeader of its last API call.
	MgmtAddr string `json:"mgmt_addr,omitempty"`
	// Source says how the coordinator knows the agent: "gossip", or "api"
	// for an agent known only from its API calls (gossip off).
	Source string `json:"source,omitempty"`
}

// AgentMgmtHeader carries a rack agent's management address (host:port
// of its authenticated management listener) on its calls to the
// coordinator, so the coordinator learns it with gossip off too.
const AgentMgmtHeader = "X-Metalfleet-Agent-Mgmt"
