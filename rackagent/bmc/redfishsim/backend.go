package redfishsim

import (
	"errors"
	"sync"

	"github.com/metalfleet/metalfleet/proto"
)

// PowerAction is what a ComputerSystem.Reset asks of the machine behind
// the service, after the service has mapped the Redfish ResetType.
type PowerAction string

// Power actions, and the ResetTypes (DSP0268 ResetType) that map to them.
const (
	ActionOn       PowerAction = "on"       // On, ForceOn
	ActionOff      PowerAction = "off"      // ForceOff
	ActionGraceful PowerAction = "graceful" // GracefulShutdown
	ActionRestart  PowerAction = "restart"  // ForceRestart, GracefulRestart
	ActionCycle    PowerAction = "cycle"    // PowerCycle
)

// resetActions maps the ResetTypes the service knows to power actions.
var resetActions = map[string]PowerAction{
	"On":               ActionOn,
	"ForceOn":          ActionOn,
	"ForceOff":         ActionOff,
	"GracefulShutdown": ActionGraceful,
	"ForceRestart":     ActionRestart,
	"GracefulRestart":  ActionRestart,
	"PowerCycle":       ActionCycle,
}

// PowerBackend is the machine a ComputerSystem stands for: the simulator
// plugs its simulated machines in here. Calls come from the service's
// handlers, one at a time per system.
type PowerBackend interface {
	// PowerState is the machine's power: on or off.
	PowerState() proto.PowerState
	// Power performs a; an error is reported to the client as a refused
	// action (HTTP 409 with the error's text as the Redfish message).
	Power(a PowerAction) error
}

// MemoryBackend is the default PowerBackend: a power state in memory.
// Restart of a machine that is off is refused (as many BMCs do); cycle
// of one that is off powers it on.
type MemoryBackend struct {
	mu    sync.Mutex
	state proto.PowerState
}

// NewMemoryBackend returns a backend whose machine is in state p.
func NewMemoryBackend(p proto.PowerState) *MemoryBackend {
	return &MemoryBackend{state: p}
}

// PowerState implements PowerBackend.
func (m *MemoryBackend) PowerState() proto.PowerState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// SetPower changes the power as if someone pressed the button.
func (m *MemoryBackend) SetPower(p proto.PowerState) {
	m.mu.Lock()
	m.state = p
	m.mu.Unlock()
}

// Power implements PowerBackend.
func (m *MemoryBackend) Power(a PowerAction) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch a {
	case ActionOn, ActionCycle:
		m.state = proto.PowerOn
	case ActionOff, ActionGraceful:
		m.state = proto.PowerOff
	case ActionRestart:
		if m.state != proto.PowerOn {
			return errors.New("the system is powered off; a restart needs it on")
		}
	default:
		return errors.New("unknown power action " + string(a))
	}
	return nil
}
