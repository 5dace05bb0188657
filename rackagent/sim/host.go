package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
)

// Host is a simulated machine with power: off, it sends nothing; powered
// on (or reset, or cycled) it boots (Machine.Run, from the start); powered
// off, its boot stops. Its firmware prints the boot on its serial console.
// With a BMC (StartBMC) the power is driven over real IPMI or Redfish on
// loopback, as a rack agent drives a real machine's.
type Host struct {
	// M is the machine that boots; its Serial is set to the host's.
	M *Machine
	// OnBoot, if set, hears the end of every boot that was not cut short
	// by a power action (from the boot's goroutine).
	OnBoot func(res *Result, err error)

	serial *Serial
	// running counts boot goroutines, cut-short ones that are still
	// ending included.
	running atomic.Int64

	mu      sync.Mutex
	life    context.Context
	stop    context.CancelFunc
	on      bool
	run     *bootRun
	boots   int
	actions map[bmc.PowerAction]int
	closed  bool

	bmc *hostBMC // nil without a BMC
}

// bootRun is one boot: from power-on (or reset) to its end.
type bootRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	res    *Result
	err    error
}

// NewHost makes a host for m, powered off. Close ends it.
func NewHost(m *Machine) *Host {
	h := &Host{M: m, serial: NewSerial(), actions: map[bmc.PowerAction]int{}}
	h.life, h.stop = context.WithCancel(context.Background())
	m.Serial = h.serial
	return h
}

// Serial is the host's serial port (the BMC's SOL when it has one).
func (h *Host) Serial() *Serial { return h.serial }

// On reports whether the host is powered on.
func (h *Host) On() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.on
}

// PowerState is the host's power as a BMC reports it.
func (h *Host) PowerState() proto.PowerState {
	if h.On() {
		return proto.PowerOn
	}
	return proto.PowerOff
}

// Booting reports whether a boot is still running (one cut short by a
// power action may take a moment to end): when it says false, the host
// sends nothing until it is powered on again.
func (h *Host) Booting() bool { return h.running.Load() > 0 }

// Boots is how many boots the host started.
func (h *Host) Boots() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.boots
}

// Actions is how many times the host performed power action a (through
// its BMC or Power).
func (h *Host) Actions(a bmc.PowerAction) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.actions[a]
}

// Power performs a power action, as a BMC does: on powers an off host on
// (and starts its boot; an on host stays as it is); off and soft-off stop
// it; reset restarts the boot of a host that is on (one that is off
// refuses); cycle restarts it, or powers an off host on. It returns at
// once: the boot goes on in the background.
func (h *Host) Power(a bmc.PowerAction) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errors.New("the machine is gone")
	}
	switch a {
	case bmc.PowerOn:
		if !h.on {
			h.startLocked("power on")
		}
	case bmc.PowerOff, bmc.PowerSoftOff:
		if h.on {
			h.haltLocked()
			h.on = false
			h.serial.Printf("sim: powered off (%s)", a)
		}
	case bmc.PowerReset:
		if !h.on {
			return errors.New("reset: the machine is off")
		}
		h.haltLocked()
		h.startLocked("reset")
	case bmc.PowerCycle:
		h.haltLocked()
		h.startLocked("power cycle")
	default:
		return fmt.Errorf("unknown power action %q", a)
	}
	h.actions[a]++
	return nil
}

// PressPower powers the host on as its power button does (not counted as
// a BMC action) and waits for the end of the boot it starts (or ctx's).
// A host that is on already is not touched: it waits for its current boot.
func (h *Host) PressPower(ctx context.Context) (*Result, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, errors.New("the machine is gone")
	}
	if !h.on {
		h.startLocked("power button")
	}
	r := h.run
	h.mu.Unlock()
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		return &Result{}, ctx.Err()
	}
}

// startLocked powers the host on and starts a boot.
func (h *Host) startLocked(why string) {
	h.on = true
	h.boots++
	ctx, cancel := context.WithCancel(h.life)
	r := &bootRun{cancel: cancel, done: make(chan struct{})}
	h.run = r
	h.serial.Printf("sim: %s", why)
	disk := h.bmc != nil && h.bmc.nextBoot() == proto.BootDeviceDisk
	h.running.Add(1)
	go func() {
		defer h.running.Add(-1)
		defer close(r.done)
		if disk {
			h.serial.Printf("sim: boot override: booting from local disk")
			r.res = &Result{}
		} else {
			r.res, r.err = h.M.Run(ctx)
		}
		if ctx.Err() != nil {
			r.err = ctx.Err()
			return // cut short by a power action or Close
		}
		if h.OnBoot != nil {
			h.OnBoot(r.res, r.err)
		}
	}()
}

// haltLocked stops the current boot (it ends in the background).
func (h *Host) haltLocked() {
	if h.run != nil {
		h.run.cancel()
	}
}

// Close stops the host's boot and its BMC, and closes its console.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.on = false
	b := h.bmc
	h.mu.Unlock()
	h.stop()
	var err error
	if b != nil {
		err = b.close()
	}
	h.serial.Close()
	if cerr := h.M.Close(); err == nil {
		err = cerr
	}
	return err
}
