package bmc

import (
	"context"
	"io"
	"sync"

	"github.com/metalfleet/metalfleet/proto"
)

// The fake driver: an in-memory BMC per address, shared by every Driver
// opened on that address in this process, so a test can look at what the
// rack agent did (FakeFor) and inject failures.

func init() { Register(proto.DriverFake, openFake) }

// FakeBMC is one in-memory BMC.
type FakeBMC struct {
	mu       sync.Mutex
	power    proto.PowerState
	boot     proto.BootDeviceSpec
	password string // "" accepts any
	fail     proto.BMCErrorKind
	actions  []PowerAction
}

var fakes sync.Map // address -> *FakeBMC

// FakeFor returns the fake BMC at address, creating it (power off).
func FakeFor(address string) *FakeBMC {
	b, _ := fakes.LoadOrStore(address, &FakeBMC{power: proto.PowerOff})
	return b.(*FakeBMC)
}

// SetPassword makes the fake refuse any other password ("" accepts any).
func (b *FakeBMC) SetPassword(p string) { b.mu.Lock(); b.password = p; b.mu.Unlock() }

// Fail makes every call fail with kind k ("" to stop failing).
func (b *FakeBMC) Fail(k proto.BMCErrorKind) { b.mu.Lock(); b.fail = k; b.mu.Unlock() }

// SetPower changes the power as if someone pressed the button.
func (b *FakeBMC) SetPower(p proto.PowerState) { b.mu.Lock(); b.power = p; b.mu.Unlock() }

// Power returns the current power state.
func (b *FakeBMC) Power() proto.PowerState { b.mu.Lock(); defer b.mu.Unlock(); return b.power }

// BootDevice returns the last boot device set.
func (b *FakeBMC) BootDevice() proto.BootDeviceSpec { b.mu.Lock(); defer b.mu.Unlock(); return b.boot }

// Actions returns every power action performed, in order.
func (b *FakeBMC) Actions() []PowerAction {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]PowerAction(nil), b.actions...)
}

type fakeDriver struct {
	b        *FakeBMC
	password string
}

func openFake(cfg Config) (Driver, error) {
	return &fakeDriver{b: FakeFor(cfg.Address), password: cfg.Password}, nil
}

func (d *fakeDriver) check(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Kind: proto.BMCErrTimeout, Err: err}
	}
	if d.b.fail != "" {
		return Errorf(op, d.b.fail, "fake BMC set to fail")
	}
	if d.b.password != "" && d.password != d.b.password {
		return Errorf(op, proto.BMCErrAuth, "wrong password")
	}
	return nil
}

func (d *fakeDriver) PowerState(ctx context.Context) (proto.PowerState, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.check(ctx, "power status"); err != nil {
		return proto.PowerUnknown, err
	}
	return d.b.power, nil
}

func (d *fakeDriver) Power(ctx context.Context, a PowerAction) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.check(ctx, "power "+string(a)); err != nil {
		return err
	}
	switch a {
	case PowerOn, PowerCycle, PowerReset:
		if a == PowerReset && d.b.power != proto.PowerOn {
			return Errorf("power reset", proto.BMCErrRefused, "the chassis is off")
		}
		d.b.power = proto.PowerOn
	case PowerOff, PowerSoftOff:
		d.b.power = proto.PowerOff
	default:
		return Errorf("power "+string(a), proto.BMCErrUnsupported, "unknown action")
	}
	d.b.actions = append(d.b.actions, a)
	return nil
}

func (d *fakeDriver) SetBootDevice(ctx context.Context, s proto.BootDeviceSpec) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.check(ctx, "set boot device"); err != nil {
		return err
	}
	d.b.boot = s
	return nil
}

func (d *fakeDriver) Identify(ctx context.Context) (proto.BMCInfo, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.check(ctx, "identify"); err != nil {
		return proto.BMCInfo{}, err
	}
	return proto.BMCInfo{Vendor: "Metalfleet", Model: "fake BMC", FirmwareVersion: "1.0", Protocol: "fake"}, nil
}

// Console returns an echoing console: what is written is read back.
func (d *fakeDriver) Console(ctx context.Context) (io.ReadWriteCloser, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.check(ctx, "console"); err != nil {
		return nil, err
	}
	r, w := io.Pipe()
	return &fakeConsole{r: r, w: w}, nil
}

func (d *fakeDriver) Close() error { return nil }

type fakeConsole struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func (c *fakeConsole) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *fakeConsole) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *fakeConsole) Close() error {
	c.w.Close()
	return c.r.Close()
}
