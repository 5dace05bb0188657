// Package bmc drives a node's baseboard management controller: power,
// boot device, identity and the serial console, behind one small
// interface with three drivers: ipmi (IPMI v2.0 RMCP+ by default, v1.5
// when a node is configured for it), redfish (DMTF Redfish over HTTPS) and
// fake (in memory, for tests and labs).
//
// A Driver is one BMC's connection; it is not safe for concurrent use:
// the caller (rackagent/power) runs one operation per BMC at a time and
// adds timeouts, retries and waits for the state to settle. Every error a
// driver returns is an *Error that says what failed.
package bmc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/metalfleet/metalfleet/proto"
)

// PowerAction is a power control a driver performs.
type PowerAction string

// Power actions.
const (
	PowerOn      PowerAction = "on"       // IPMI chassis power up; Redfish On
	PowerOff     PowerAction = "off"      // IPMI power down (hard); Redfish ForceOff
	PowerSoftOff PowerAction = "soft-off" // IPMI soft shutdown (ACPI); Redfish GracefulShutdown
	PowerReset   PowerAction = "reset"    // IPMI hard reset; Redfish ForceRestart
	PowerCycle   PowerAction = "cycle"    // IPMI power cycle; Redfish PowerCycle
)

// Driver is one BMC.
type Driver interface {
	// PowerState reads the chassis power: on or off.
	PowerState(ctx context.Context) (proto.PowerState, error)
	// Power performs a power action and returns when the BMC accepted it
	// (not when the state has settled).
	Power(ctx context.Context, a PowerAction) error
	// SetBootDevice sets the next boot device (or every boot's, when
	// persistent).
	SetBootDevice(ctx context.Context, b proto.BootDeviceSpec) error
	// Identify reads the BMC's identity: vendor, model, firmware version
	// and the protocol negotiated.
	Identify(ctx context.Context) (proto.BMCInfo, error)
	// Console opens the serial console (IPMI Serial-over-LAN). Reads are
	// the console's output, writes are keystrokes; Close ends the session.
	// A driver without a console returns an *Error of kind
	// proto.BMCErrUnsupported.
	Console(ctx context.Context) (io.ReadWriteCloser, error)
	// Close ends the driver's session with the BMC.
	Close() error
}

// Config is how to reach one BMC: the node's BMC fields.
type Config = proto.BMC

// Error is a failed BMC call: which operation, what kind of failure, and
// the driver's error.
type Error struct {
	Op   string // "power status", "power on", "set boot device", "identify", "console", "connect"
	Kind proto.BMCErrorKind
	Err  error
}

func (e *Error) Error() string {
	return fmt.Sprintf("bmc %s: %s: %v", e.Op, kindText(e.Kind), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func kindText(k proto.BMCErrorKind) string {
	switch k {
	case proto.BMCErrUnreachable:
		return "unreachable"
	case proto.BMCErrAuth:
		return "authentication refused"
	case proto.BMCErrRefused:
		return "command refused"
	case proto.BMCErrTimeout:
		return "timed out"
	case proto.BMCErrUnsupported:
		return "not supported"
	}
	return string(k)
}

// Errorf makes an *Error.
func Errorf(op string, kind proto.BMCErrorKind, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the kind of err: an *Error's, timeout for a context
// deadline, else refused.
func KindOf(err error) proto.BMCErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return proto.BMCErrTimeout
	}
	return proto.BMCErrRefused
}

// Opener makes a Driver for a node's BMC config. Open does not contact the
// BMC; the first call does.
type Opener func(cfg Config) (Driver, error)

// drivers are the registered Openers, by driver name.
var drivers = map[string]Opener{}

// Register adds a driver; drivers register themselves in init.
func Register(name string, o Opener) { drivers[name] = o }

// Open makes a Driver for cfg with the driver cfg names (ipmi when empty).
func Open(cfg Config) (Driver, error) {
	name := cfg.Driver
	if name == "" {
		name = proto.DriverIPMI
	}
	o, ok := drivers[name]
	if !ok {
		return nil, Errorf("connect", proto.BMCErrUnsupported, "driver %q is not built into this agent", name)
	}
	return o(cfg)
}
