// Package proto holds every type that crosses a process boundary in
// Metalfleet: API bodies, stored objects as the API shows them, and the
// node state machine's table. Coordinator, rack agent and CLI all use these
// definitions, so the two ends of a wire can never disagree.
package proto

import (
	"encoding/json"
	"time"
)

// Version is the wire protocol version.
//
// History:
//
//	1: first version (coordinator API v1).
const Version = 1

// IndexHeader carries the Raft index a response reflects. Writes return the
// index at which they were applied; reads return the store's index, which a
// caller passes back as ?index=N to block until something changes.
const IndexHeader = "X-Metalfleet-Index"

// NextHeader carries the opaque marker of a list's next page (?after=);
// absent on the last page.
const NextHeader = "X-Metalfleet-Next"

// Meta is embedded in every stored object: the Raft indexes at which it was
// created and last modified.
type Meta struct {
	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
}

// GetMeta returns m itself: every stored object has it through Meta, so
// the state store can stamp any of them.
func (m *Meta) GetMeta() *Meta { return m }

// BMC is how a node's baseboard management controller is reached. The
// password is write-only: the API never returns it (see Redacted).
type BMC struct {
	// Driver is ipmi, redfish or fake (DriverIPMI, ...).
	Driver string `json:"driver,omitempty"`
	// Address is a host name or IP for ipmi; for redfish, a URL used as
	// given: https://host[:port][/redfish/v1/Systems/ID] (http for labs).
	Address  string `json:"address,omitempty"`
	Port     int    `json:"port,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Interface is the IPMI interface: lanplus (default, RMCP+) or lan
	// (IPMI v1.5, only when a BMC needs it).
	Interface string `json:"interface,omitempty"`
	// CACert is a PEM bundle that verifies a redfish BMC's certificate
	// (the system roots when empty); Insecure skips verification.
	CACert   string `json:"ca_cert,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
	// PasswordSet tells API readers whether a password is stored.
	PasswordSet bool `json:"password_set,omitempty"`
}

// Node is one physical server.
type Node struct {
	UUID string   `json:"uuid"`
	Name string   `json:"name,omitempty"`
	MACs []string `json:"macs"`
	Rack string   `json:"rack,omitempty"`
	// IP is the node's reserved address in its rack, allocated by the
	// coordinator outside the rack's dynamic pool (or set by an operator).
	IP             string         `json:"ip,omitempty"`
	ProvisionState ProvisionState `json:"provision_state"`
	PowerState     PowerState     `json:"power_state"`
	// PowerUpdatedAt is when the power state was read (by the agent's
	// clock); an older reading never overwrites a newer one.
	PowerUpdatedAt    time.Time         `json:"power_updated_at,omitzero"`
	Maintenance       bool              `json:"maintenance"`
	MaintenanceReason string            `json:"maintenance_reason,omitempty"`
	Enrolled          bool              `json:"enrolled"`
	BMC               BMC               `json:"bmc"`
	Properties        map[string]string `json:"properties,omitempty"`
	Inventory         json.RawMessage   `json:"inventory,omitempty"`
	LastError         string            `json:"last_error,omitempty"`
	InstanceUUID      string            `json:"instance_uuid,omitempty"`
	// LastBoot is the last boot step a rack agent saw the node take.
	LastBoot *BootEvent `json:"last_boot,omitempty"`
	// BMCStatus is the BMC as the rack agent last found it.
	BMCStatus *BMCStatus `json:"bmc_status,omitempty"`
	// Intents are the node's out-of-band intents, the latest per action.
	Intents []Intent `json:"intents,omitempty"`
	// BMCGeneration is the generation of the node's latest intent.
	BMCGeneration uint64 `json:"bmc_generation,omitempty"`
	// Boot is the node's boot config when a task set one (nil: what its
	// state gives, decide.NodeBoot); SavedBoot is the one a running task
	// replaced, restored when the task ends.
	Boot      *BootConfig `json:"boot,omitempty"`
	SavedBoot *SavedBoot  `json:"saved_boot,omitempty"`
	// Task is the id of the node's running task.
	Task string `json:"task,omitempty"`
	// Traits are set by operators (CUSTOM_GPU, ...); the scheduler adds
	// those the inventory makes obvious (decide.NodeTraits).
	Traits []string `json:"traits,omitempty"`
	// RootDevice picks the disk an instance's image goes to (before the
	// flavor's hint).
	RootDevice *RootDeviceHint `json:"root_device,omitempty"`
	// TaskResults is the latest finished task of each kind.
	TaskResults map[TaskKind]*TaskSummary `json:"task_results,omitempty"`
	CreatedAt   time.Time                 `json:"created_at"`
	UpdatedAt   time.Time                 `json:"updated_at"`
	Meta
}

// SavedBoot is a boot config a task replaced: Boot nil means the node
// had none of its own (it booted what its state gives).
type SavedBoot struct {
	Boot *BootConfig `json:"boot,omitempty"`
	// Task is the task that saved it.
	Task string `json:"task"`
}

// Clone returns a deep copy, so a caller may change it without touching
// the store's object.
func (n *Node) Clone() *Node {
	c := *n
	c.MACs = append([]string(nil), n.MACs...)
	if n.Properties != nil {
		c.Properties = make(map[string]string, len(n.Properties))
		for k, v := range n.Properties {
			c.Properties[k] = v
		}
	}
	if n.Inventory != nil {
		c.Inventory = append(json.RawMessage(nil), n.Inventory...)
	}
	if n.LastBoot != nil {
		b := *n.LastBoot
		c.LastBoot = &b
	}
	if n.BMCStatus != nil {
		b := *n.BMCStatus
		if b.Info != nil {
			i := *b.Info
			b.Info = &i
		}
		c.BMCStatus = &b
	}
	c.Boot = n.Boot.Clone()
	c.Traits = append([]string(nil), n.Traits...)
	if n.RootDevice != nil {
		h := *n.RootDevice
		c.RootDevice = &h
	}
	if n.SavedBoot != nil {
		sb := SavedBoot{Boot: n.SavedBoot.Boot.Clone(), Task: n.SavedBoot.Task}
		c.SavedBoot = &sb
	}
	if n.TaskResults != nil {
		c.TaskResults = make(map[TaskKind]*TaskSummary, len(n.TaskResults))
		for k, v := range n.TaskResults {
			ts := *v
			ts.Results = make(map[string]json.RawMessage, len(v.Results))
			for rk, rv := range v.Results {
				ts.Results[rk] = append(json.RawMessage(nil), rv...)
			}
			c.TaskResults[k] = &ts
		}
	}
	if n.Intents != nil {
		c.Intents = make([]Intent, len(n.Intents))
		for i, in := range n.Intents {
			if in.Boot != nil {
				b := *in.Boot
				in.Boot = &b
			}
			c.Intents[i] = in
		}
	}
	return &c
}

// Redacted returns a copy fit for an API response: the BMC password is
// removed and PasswordSet says whether one is stored.
func (n *Node) Redacted() *Node {
	c := n.Clone()
	c.BMC.PasswordSet = n.BMC.Password != ""
	c.BMC.Password = ""
	return c
}

// Rack is a network segment served by one or two rack agents.
type Rack struct {
	Name       string   `json:"name"`
	Subnet     string   `json:"subnet,omitempty"`      // CIDR
	Gateway    string   `json:"gateway,omitempty"`     // IP
	PoolStart  string   `json:"pool_start,omitempty"`  // first dynamic address
	PoolEnd    string   `json:"pool_end,omitempty"`    // last dynamic address
	BootServer string   `json:"boot_server,omitempty"` // IP of the rack agent nodes boot from
	DNS        []string `json:"dns,omitempty"`
	LeaseTime  Duration `json:"lease_time,omitempty"`
	// AnswerNonPXE: unknown MACs that are not network-booting (no PXE or
	// iPXE client) get a pool address too. Known nodes are always answered.
	AnswerNonPXE bool `json:"answer_non_pxe,omitempty"`
	Meta
}

// Flavor describes what an instance needs from a node.
type Flavor struct {
	Name           string   `json:"name"`
	CPUs           int      `json:"cpus"`
	MemoryMB       int64    `json:"memory_mb"`
	DiskGB         int64    `json:"disk_gb"`
	RequiredTraits []string `json:"required_traits,omitempty"`
	Rack           string   `json:"rack,omitempty"`
	RescueImage    string   `json:"rescue_image,omitempty"`
	// RootDevice picks the disk an image is written to (the node's own
	// hint wins); none: the smallest disk that fits.
	RootDevice *RootDeviceHint `json:"root_device,omitempty"`
	// FullErase: cleaning after delete erases every disk whole, not only
	// its first and last MiB and its signatures.
	FullErase bool `json:"full_erase,omitempty"`
	Meta
}

// ImageKind is what an image is used as.
type ImageKind string

// Image kinds.
const (
	ImageKernel  ImageKind = "kernel"
	ImageRamdisk ImageKind = "ramdisk"
	ImageDisk    ImageKind = "disk"
	// ImageFirmware: a firmware image a firmware task applies.
	ImageFirmware ImageKind = "firmware"
)

// Image is a kernel, ramdisk or disk image that rack agents fetch from URL
// and verify against SHA256.
type Image struct {
	Name   string    `json:"name"`
	Kind   ImageKind `json:"kind"`
	URL    string    `json:"url"`
	SHA256 string    `json:"sha256"`
	Size   int64     `json:"size,omitempty"`
	// Kernel names the kernel image a ramdisk image boots with (a rescue
	// image that is not the nodeagent ramdisk); empty: the task kernel.
	Kernel string `json:"kernel,omitempty"`
	Meta
}

// InstanceState is the life of a workload.
type InstanceState string

// Instance states.
const (
	InstanceQueued     InstanceState = "queued"
	InstanceBuilding   InstanceState = "building"
	InstanceRunning    InstanceState = "running"
	InstanceRescuing   InstanceState = "rescuing"
	InstanceRescue     InstanceState = "rescue"
	InstanceUnrescuing InstanceState = "unrescuing"
	InstanceDeleting   InstanceState = "deleting"
	InstanceError      InstanceState = "error"
)

// Instance is a workload placed on one node.
type Instance struct {
	UUID   string        `json:"uuid"`
	Name   string        `json:"name"`
	Flavor string        `json:"flavor"`
	Image  string        `json:"image"`
	Node   string        `json:"node,omitempty"` // node uuid
	State  InstanceState `json:"state"`
	// RescueImage is the instance's own rescue image (else its flavor's).
	RescueImage string `json:"rescue_image,omitempty"`
	LastError   string `json:"last_error,omitempty"`
	// Forced: the node was named by an administrator (no scheduling).
	Forced bool `json:"forced,omitempty"`
	// Request is the client's request id of the create.
	Request string `json:"request_id,omitempty"`
	// Task is the node task running for this instance (deploy, clean,
	// rescue), if any.
	Task string `json:"task,omitempty"`
	// BootGen is the generation of the reboot into the instance's disk
	// (after a deploy or an unrescue): when it is done, with the boot
	// device set to disk, or when the node is seen taking the local-boot
	// path, the instance is running.
	BootGen uint64 `json:"boot_generation,omitempty"`
	// StateSince is when the instance entered its state (busy states
	// time out from it).
	StateSince time.Time `json:"state_since,omitzero"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Meta
}

// Settings are fleet-wide switches.
type Settings struct {
	AutoEnroll       bool   `json:"auto_enroll"`
	DiscoveryEnabled bool   `json:"discovery_enabled"`
	DiscoveryKernel  string `json:"discovery_kernel,omitempty"`  // image name, kind kernel
	DiscoveryRamdisk string `json:"discovery_ramdisk,omitempty"` // image name, kind ramdisk
	// DiscoveryCmdline is added to the discovery kernel's command line
	// (console=ttyS0, metalfleet.poweroff=false to keep machines up, ...).
	DiscoveryCmdline string `json:"discovery_cmdline,omitempty"`
	// TasksKernel and TasksRamdisk are the images a task boots (kernel and
	// ramdisk; a node's properties tasks.kernel and tasks.ramdisk override
	// them), TasksCmdline is added to its command line.
	TasksKernel  string `json:"tasks_kernel,omitempty"`
	TasksRamdisk string `json:"tasks_ramdisk,omitempty"`
	TasksCmdline string `json:"tasks_cmdline,omitempty"`
	// VendorTools are the vendor tools by hardware model; empty means the
	// built-in LabTool only.
	VendorTools []VendorTool `json:"vendor_tools,omitempty"`
	// DeployMax and DeployMaxPerRack bound the instance deploys running
	// at once, in the fleet and per rack (0: DefaultDeployMax,
	// DefaultDeployMaxPerRack); beyond them instances wait, queued.
	DeployMax        int `json:"deploy_max,omitempty"`
	DeployMaxPerRack int `json:"deploy_max_per_rack,omitempty"`
	Meta
}

// Role is what a token may do.
type Role string

// Roles, from most to least powerful. An agent token is bound to one rack.
const (
	RoleAdmin    Role = "admin"    // everything, including tokens and cluster membership
	RoleOperator Role = "operator" // fleet objects: nodes, racks, flavors, images, settings
	RoleReader   Role = "reader"   // reads only
	RoleAgent    Role = "agent"    // a rack agent: its rack's boot state and reports
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleAdmin, RoleOperator, RoleReader, RoleAgent:
		return true
	}
	return false
}

// Token is an API credential as stored and listed. The secret itself is
// shown once, at creation (TokenCreated); the store keeps only its SHA-256.
type Token struct {
	ID          string    `json:"id"`
	Description string    `json:"description,omitempty"`
	Role        Role      `json:"role"`
	Rack        string    `json:"rack,omitempty"`
	SecretHash  string    `json:"-"`
	CreatedAt   time.Time `json:"created_at"`
	Meta
}

// TokenCreated is the answer to a token creation: the only time the secret
// is ever returned.
type TokenCreated struct {
	Token
	Secret string `json:"secret"`
}

// Server is a coordinator that is part of the Raft configuration, as
// recorded in the replicated state so any server can reach any other's API.
type Server struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	Meta
}

// Duration is a time.Duration that reads and writes as a string ("30s").
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string such as "12h".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return Errorf(CodeInvalid, "duration must be a string such as \"12h\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return Errorf(CodeInvalid, "bad duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}
