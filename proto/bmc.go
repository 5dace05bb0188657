package proto

import (
	"time"
)

// Out-of-band control: what an operator asks of a node's BMC (power, boot
// device, verification of the credentials) as desired state with a
// generation, what a rack agent reports back, and the node's BMC status.
//
// Intents flow one way. The API records an Intent in Raft (the node's
// next BMCGeneration) naming the rack agent that executes it; the agent
// sees it in its rack boot state, executes each generation at most once
// (it records the generation before acting), and reports the outcome as a
// ReportBMC report through its outbox; the FSM marks the intent done and
// moves the node on. A repeated or re-delivered intent does not act twice,
// and Metalfleet never re-asserts a past intent: a change made at the BMC
// is recorded by power sync, not undone.

// BMC drivers.
const (
	DriverIPMI    = "ipmi"
	DriverRedfish = "redfish"
	DriverFake    = "fake" // an in-memory BMC in the rack agent, for tests and labs
)

// IPMI interfaces.
const (
	IPMILanplus = "lanplus" // IPMI v2.0 RMCP+ (the default)
	IPMILan     = "lan"     // IPMI v1.5, only when a node is configured for it
)

// BMCAction is an out-of-band action a rack agent takes on a node's BMC.
type BMCAction string

// BMC actions.
const (
	// ActionVerify: connect with the node's credentials and read the
	// device identity (manage, and any change of the BMC fields).
	ActionVerify BMCAction = "verify"
	// ActionPower: take the node's power to Intent.Power.
	ActionPower BMCAction = "power"
	// ActionBootDevice: set the next boot device (Intent.Boot).
	ActionBootDevice BMCAction = "boot-device"
)

// PowerTarget is what an operator asks a node's power to become.
type PowerTarget string

// Power targets. Reboot of a node that is on is a hard reset (never off
// then on); of a node that is off, it powers on.
const (
	PowerTargetOn      PowerTarget = "on"
	PowerTargetOff     PowerTarget = "off"
	PowerTargetSoftOff PowerTarget = "soft-off"
	PowerTargetReboot  PowerTarget = "reboot"
)

// Valid reports whether t is a known power target.
func (t PowerTarget) Valid() bool {
	switch t {
	case PowerTargetOn, PowerTargetOff, PowerTargetSoftOff, PowerTargetReboot:
		return true
	}
	return false
}

// BootDevice is where a node boots next.
type BootDevice string

// Boot devices.
const (
	BootDevicePXE  BootDevice = "pxe"
	BootDeviceDisk BootDevice = "disk"
)

// BootMode is the firmware boot mode a boot-device override asks for.
type BootMode string

// Boot modes; empty leaves the BMC's choice.
const (
	BootModeUEFI   BootMode = "uefi"
	BootModeLegacy BootMode = "legacy"
)

// BootDeviceSpec is a boot-device override.
type BootDeviceSpec struct {
	Device BootDevice `json:"device"`
	// Persistent keeps the override for every boot; otherwise it is for
	// the next boot only.
	Persistent bool     `json:"persistent,omitempty"`
	Mode       BootMode `json:"mode,omitempty"`
}

// Check validates a boot-device override.
func (b *BootDeviceSpec) Check() error {
	if b.Device != BootDevicePXE && b.Device != BootDeviceDisk {
		return Errorf(CodeInvalid, "device %q: want pxe or disk", b.Device)
	}
	if b.Mode != "" && b.Mode != BootModeUEFI && b.Mode != BootModeLegacy {
		return Errorf(CodeInvalid, "mode %q: want uefi, legacy or empty", b.Mode)
	}
	return nil
}

// Intent is one piece of desired out-of-band state of a node.
type Intent struct {
	// Generation is the node's BMCGeneration when the intent was made:
	// unique per node and increasing.
	Generation uint64          `json:"generation"`
	Action     BMCAction       `json:"action"`
	Power      PowerTarget     `json:"power,omitempty"`
	Boot       *BootDeviceSpec `json:"boot,omitempty"`
	// Agent is the rack agent that executes the intent.
	Agent string `json:"agent"`
	// OnSuccess is the transition the node takes when the intent
	// succeeds (manage, after a verify).
	OnSuccess Event `json:"on_success,omitempty"`
	// Request is the client's id for the request that made the intent: a
	// retry with the same id returns this intent instead of making
	// another (a client that lost the answer to a failover retries safely).
	Request string `json:"request,omitempty"`
	// By names who asked (a token id, or "system").
	By string    `json:"by,omitempty"`
	At time.Time `json:"at"`
	// Expires is when the intent lapses: an agent does not act on it
	// later (it answers "expired, not executed"), and the leader marks it
	// done with its outcome unknown when no result came by then.
	Expires time.Time `json:"expires,omitzero"`

	// Done is set when the agent's result is in; Error says why it failed
	// ("" when it succeeded).
	Done   bool      `json:"done,omitempty"`
	Error  string    `json:"error,omitempty"`
	DoneAt time.Time `json:"done_at,omitzero"`
}

// Describe says what the intent asks for, for history, errors and the CLI:
// "power reboot", "boot device pxe (once) uefi", "BMC verification, then
// manage".
func (in Intent) Describe() string {
	switch in.Action {
	case ActionPower:
		return "power " + string(in.Power)
	case ActionBootDevice:
		if in.Boot == nil {
			return "boot device"
		}
		s := "boot device " + string(in.Boot.Device)
		if in.Boot.Persistent {
			s += " (persistent)"
		} else {
			s += " (once)"
		}
		if in.Boot.Mode != "" {
			s += " " + string(in.Boot.Mode)
		}
		return s
	case ActionVerify:
		if in.OnSuccess != "" {
			return "BMC verification, then " + string(in.OnSuccess)
		}
		return "BMC verification"
	}
	return string(in.Action)
}

// BMCState is what the last contact with a node's BMC found.
type BMCState string

// BMC states.
const (
	BMCUnverified  BMCState = "unverified"  // never reached with the current fields
	BMCOK          BMCState = "ok"          // the last call succeeded
	BMCUnreachable BMCState = "unreachable" // no answer (network, timeout)
	BMCAuthFailed  BMCState = "auth-failed" // the BMC refused the credentials
	BMCError       BMCState = "error"       // the BMC answered but refused a command
)

// BMCErrorKind classifies a failed BMC call.
type BMCErrorKind string

// BMC error kinds, as drivers classify them.
const (
	BMCErrUnreachable BMCErrorKind = "unreachable"
	BMCErrAuth        BMCErrorKind = "auth"
	BMCErrRefused     BMCErrorKind = "refused"
	BMCErrTimeout     BMCErrorKind = "timeout"
	BMCErrUnsupported BMCErrorKind = "unsupported"
	// BMCErrExpired: the intent lapsed before the agent could act (or the
	// agent's record of actions is newer than the intent): not executed.
	// It says nothing about the BMC.
	BMCErrExpired BMCErrorKind = "expired"
)

// IntentTTL is how long an intent may wait for its agent.
const IntentTTL = 15 * time.Minute

// State is the BMC state a failed call of kind k leaves.
func (k BMCErrorKind) State() BMCState {
	switch k {
	case BMCErrUnreachable, BMCErrTimeout:
		return BMCUnreachable
	case BMCErrAuth:
		return BMCAuthFailed
	}
	return BMCError
}

// BMCInfo is a BMC's device identity, read when it is verified.
type BMCInfo struct {
	Vendor          string `json:"vendor,omitempty"`
	Model           string `json:"model,omitempty"`
	FirmwareVersion string `json:"firmware_version,omitempty"`
	// Protocol says what the driver negotiated, e.g. "lanplus cipher 3".
	Protocol string `json:"protocol,omitempty"`
}

// BMCStatus is the node's BMC as its rack agent last found it.
type BMCStatus struct {
	State     BMCState  `json:"state"`
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	Info      *BMCInfo  `json:"info,omitempty"`
}

// BootBMC is what a rack agent needs to drive one node's BMC: its
// credentials (sent only to the agents of the node's rack) and the
// intents it has not yet acted on.
type BootBMC struct {
	BMC
	Intents []Intent `json:"intents,omitempty"`
	// Maintenance: no automatic power actions (an operator's explicit
	// intents still run).
	Maintenance bool `json:"maintenance,omitempty"`
}

// PowerRequest is the body of PUT /v1/nodes/{id}/power.
type PowerRequest struct {
	Target PowerTarget `json:"target"`
	// RequestID makes a retried request safe (see Intent.Request).
	RequestID string `json:"request_id,omitempty"`
}

// BootDeviceRequest is the body of PUT /v1/nodes/{id}/boot-device.
type BootDeviceRequest struct {
	BootDeviceSpec
	RequestID string `json:"request_id,omitempty"`
}

// IntentAccepted answers a power or boot-device request (202): the
// recorded intent; with ?wait=, its result too.
type IntentAccepted struct {
	Node   string `json:"node"`
	Intent Intent `json:"intent"`
}

// HistoryEvent is one entry of a node's history: console sessions, power
// and boot-device intents and their results, BMC verification.
type HistoryEvent struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // console-start, console-end, intent, intent-result, ...
	User    string    `json:"user,omitempty"`
	Message string    `json:"message"`
}

// MaxHistory is how many events a node's history keeps (the oldest go);
// MaxHistoryMessage bounds an event's message (longer ones are cut).
const (
	MaxHistory        = 200
	MaxHistoryMessage = 512
)
