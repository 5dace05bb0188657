package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
	"github.com/metalfleet/metalfleet/rackagent/bmc/redfishsim"
)

// BMCConfig is a host's simulated BMC. The zero value is an IPMI BMC
// (RMCP+ and v1.5 over UDP on 127.0.0.1, with Serial-over-LAN) for user
// admin with password "password".
type BMCConfig struct {
	// Driver is proto.DriverIPMI (the default) or proto.DriverRedfish
	// (a Redfish service over HTTP on 127.0.0.1; it has no console).
	Driver string
	// Addr is the IPMI BMC's UDP address (127.0.0.1:0 when empty); a
	// Redfish service always listens on 127.0.0.1 on a free port.
	Addr string
	// Username and Password are the BMC's account (admin and password
	// when both are empty).
	Username, Password string

	// Failure injection. Slow delays every answer; Timeout makes the BMC
	// never answer; WrongPassword makes Credentials give a password the
	// BMC refuses (the BMC keeps its own).
	Slow          time.Duration
	Timeout       bool
	WrongPassword bool
}

// hostBMC is a host's running BMC: one of ipmi and redfish.
type hostBMC struct {
	cfg     BMCConfig
	ipmi    *ipmisim.BMC
	redfish *redfishsim.Server

	mu      sync.Mutex
	pending proto.BootDevice // redfish: the override of the action in progress
}

// StartBMC gives the host a BMC and starts it; Close stops it. The host's
// power is the BMC's: the BMC reads and changes it, and an IPMI BMC's SOL
// is the host's serial console.
func (h *Host) StartBMC(cfg BMCConfig) error {
	if cfg.Driver == "" {
		cfg.Driver = proto.DriverIPMI
	}
	if cfg.Username == "" && cfg.Password == "" {
		cfg.Username, cfg.Password = "admin", "password"
	}
	b := &hostBMC{cfg: cfg}
	switch cfg.Driver {
	case proto.DriverIPMI:
		ib, err := ipmisim.New(ipmisim.Config{Addr: cfg.Addr, Username: cfg.Username, Password: cfg.Password,
			Power: ipmiPower{h}, Console: h.serial, Slow: cfg.Slow, Drop: cfg.Timeout})
		if err != nil {
			return err
		}
		if err := ib.Start(); err != nil {
			return err
		}
		b.ipmi = ib
	case proto.DriverRedfish:
		slow := cfg.Slow
		if cfg.Timeout {
			slow = 24 * time.Hour // every request waits until the client gives up (or Close)
		}
		rs := redfishsim.New(redfishsim.Options{Username: cfg.Username, Password: cfg.Password, SystemID: "1",
			Backend: redfishPower{h, b}, Slow: slow, Model: "SimServer 1U"})
		if err := rs.Start(); err != nil {
			return err
		}
		b.redfish = rs
	default:
		return fmt.Errorf("sim: BMC driver %q: want ipmi or redfish", cfg.Driver)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.bmc != nil {
		b.close()
		if h.closed {
			return errors.New("sim: the machine is gone")
		}
		return errors.New("sim: the machine has a BMC already")
	}
	h.bmc = b
	return nil
}

// Credentials are what a node is given to reach the host's BMC (driver,
// address, port, username and password; a wrong password when the BMC
// was made to refuse it). Empty without a BMC.
func (h *Host) Credentials() proto.BMC {
	h.mu.Lock()
	b := h.bmc
	h.mu.Unlock()
	if b == nil {
		return proto.BMC{}
	}
	c := proto.BMC{Driver: b.cfg.Driver, Username: b.cfg.Username, Password: b.cfg.Password}
	if b.cfg.WrongPassword {
		c.Password = "not-" + b.cfg.Password
	}
	if b.ipmi != nil {
		c.Address, c.Port, c.Interface = b.ipmi.Host(), b.ipmi.Port(), proto.IPMILanplus
	} else {
		c.Address = b.redfish.SystemURL()
	}
	return c
}

// IPMI is the host's IPMI BMC (nil when it has none): its counters and
// failure injection.
func (h *Host) IPMI() *ipmisim.BMC {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bmc == nil {
		return nil
	}
	return h.bmc.ipmi
}

// Redfish is the host's Redfish service (nil when it has none).
func (h *Host) Redfish() *redfishsim.Server {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bmc == nil {
		return nil
	}
	return h.bmc.redfish
}

// nextBoot is the boot device the BMC's override asks of the boot that
// starts now ("" for none); a once-only override is used up.
func (b *hostBMC) nextBoot() proto.BootDevice {
	if b.ipmi != nil {
		if spec, ok := b.ipmi.NextBoot(); ok {
			return spec.Device
		}
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.pending
	b.pending = ""
	return d
}

func (b *hostBMC) close() error {
	if b.ipmi != nil {
		return b.ipmi.Close()
	}
	return b.redfish.Close()
}

// ipmiPower is the host as an IPMI BMC's chassis.
type ipmiPower struct{ h *Host }

// IPMIPower is h as the chassis of an ipmisim BMC (its power backend).
func IPMIPower(h *Host) ipmisim.PowerBackend { return ipmiPower{h} }

func (p ipmiPower) PowerState(context.Context) (bool, error) { return p.h.On(), nil }

func (p ipmiPower) Power(_ context.Context, a ipmisim.Action) error {
	switch a {
	case ipmisim.ActionOn:
		return p.h.Power(bmc.PowerOn)
	case ipmisim.ActionOff:
		return p.h.Power(bmc.PowerOff)
	case ipmisim.ActionSoftOff:
		return p.h.Power(bmc.PowerSoftOff)
	case ipmisim.ActionReset:
		return p.h.Power(bmc.PowerReset)
	case ipmisim.ActionCycle:
		return p.h.Power(bmc.PowerCycle)
	}
	return fmt.Errorf("unknown power action %q", a)
}

// redfishPower is the host as a Redfish ComputerSystem.
type redfishPower struct {
	h *Host
	b *hostBMC
}

func (p redfishPower) PowerState() proto.PowerState { return p.h.PowerState() }

func (p redfishPower) Power(a redfishsim.PowerAction) error {
	switch a {
	case redfishsim.ActionOn:
		return p.h.Power(bmc.PowerOn)
	case redfishsim.ActionOff:
		return p.h.Power(bmc.PowerOff)
	case redfishsim.ActionGraceful:
		return p.h.Power(bmc.PowerSoftOff)
	case redfishsim.ActionRestart:
		return p.h.Power(bmc.PowerReset)
	case redfishsim.ActionCycle:
		return p.h.Power(bmc.PowerCycle)
	}
	return fmt.Errorf("unknown power action %q", a)
}

// PowerBoot performs a with the boot override in force.
func (p redfishPower) PowerBoot(a redfishsim.PowerAction, o redfishsim.BootOverride) error {
	var d proto.BootDevice
	if o.Enabled == "Once" || o.Enabled == "Continuous" {
		switch o.Target {
		case "Pxe":
			d = proto.BootDevicePXE
		case "Hdd":
			d = proto.BootDeviceDisk
		}
	}
	p.b.mu.Lock()
	p.b.pending = d
	p.b.mu.Unlock()
	return p.Power(a)
}
