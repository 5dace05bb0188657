package proto

// API request and response bodies of the coordinator's /v1 HTTP API.

// NodeCreate is the body of POST /v1/nodes. A node created by an operator
// is enrolled unless Enrolled is false (then it is discovered).
type NodeCreate struct {
	Name       string            `json:"name,omitempty"`
	MACs       []string          `json:"macs"`
	Rack       string            `json:"rack,omitempty"`
	IP         string            `json:"ip,omitempty"`
	BMC        BMC               `json:"bmc"`
	Properties map[string]string `json:"properties,omitempty"`
	Enrolled   *bool             `json:"enrolled,omitempty"`
}

// NodePatch is the body of PATCH /v1/nodes/{id}: a field that is present is
// set, one that is absent is left alone. Properties, when present, replace
// the node's properties; a BMC field, when present, replaces that field.
type NodePatch struct {
	Name       *string            `json:"name,omitempty"`
	MACs       *[]string          `json:"macs,omitempty"`
	Rack       *string            `json:"rack,omitempty"`
	IP         *string            `json:"ip,omitempty"`
	BMC        *BMCPatch          `json:"bmc,omitempty"`
	Properties *map[string]string `json:"properties,omitempty"`
	// Traits replaces the operator's traits; RootDevice the root-disk
	// hint (an empty hint clears it).
	Traits     *[]string       `json:"traits,omitempty"`
	RootDevice *RootDeviceHint `json:"root_device,omitempty"`
}

// BMCPatch changes some fields of a node's BMC.
type BMCPatch struct {
	Driver    *string `json:"driver,omitempty"`
	Address   *string `json:"address,omitempty"`
	Port      *int    `json:"port,omitempty"`
	Username  *string `json:"username,omitempty"`
	Password  *string `json:"password,omitempty"`
	Interface *string `json:"interface,omitempty"`
	CACert    *string `json:"ca_cert,omitempty"`
	Insecure  *bool   `json:"insecure,omitempty"`
}

// EnrolledRequest is the body of PUT /v1/nodes/{id}/enrolled.
type EnrolledRequest struct {
	Enrolled bool `json:"enrolled"`
}

// MaintenanceRequest is the body of PUT /v1/nodes/{id}/maintenance.
type MaintenanceRequest struct {
	Maintenance bool   `json:"maintenance"`
	Reason      string `json:"reason,omitempty"`
}

// ProvisionRequest is the body of POST /v1/nodes/{id}/provision. Target
// names a transition of the state machine ("manage", "provide", ...).
type ProvisionRequest struct {
	Target Event `json:"target"`
}

// SettingsPatch is the body of PATCH /v1/settings.
type SettingsPatch struct {
	AutoEnroll       *bool   `json:"auto_enroll,omitempty"`
	DiscoveryEnabled *bool   `json:"discovery_enabled,omitempty"`
	DiscoveryKernel  *string `json:"discovery_kernel,omitempty"`
	DiscoveryRamdisk *string `json:"discovery_ramdisk,omitempty"`
	DiscoveryCmdline *string `json:"discovery_cmdline,omitempty"`
	TasksKernel      *string `json:"tasks_kernel,omitempty"`
	TasksRamdisk     *string `json:"tasks_ramdisk,omitempty"`
	TasksCmdline     *string `json:"tasks_cmdline,omitempty"`
	// VendorTools replaces the whole list (an empty list: the built-in
	// lab tool only).
	VendorTools *[]VendorTool `json:"vendor_tools,omitempty"`
	// DeployMax and DeployMaxPerRack bound the deploys running at once.
	DeployMax        *int `json:"deploy_max,omitempty"`
	DeployMaxPerRack *int `json:"deploy_max_per_rack,omitempty"`
}

// TokenCreate is the body of POST /v1/tokens.
type TokenCreate struct {
	Role        Role   `json:"role"`
	Description string `json:"description,omitempty"`
	Rack        string `json:"rack,omitempty"`
}

// JoinRequest is the body of POST /v1/cluster/join: a new coordinator asks
// to be added as a voter.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// Status is the answer to GET /v1/status.
type Status struct {
	NodeID       string `json:"node_id"`
	RaftState    string `json:"raft_state"`
	LeaderID     string `json:"leader_id"`
	LeaderAddr   string `json:"leader_addr"`
	LeaderHTTP   string `json:"leader_http,omitempty"`
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Term         uint64 `json:"term"`
	Peers        []Peer `json:"peers"`
	Version      int    `json:"protocol_version"`
}

// Peer is one server of the Raft configuration.
type Peer struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// Health is the answer to GET /v1/health.
type Health struct {
	Status string `json:"status"` // "ok"
	Leader bool   `json:"leader"`
}
