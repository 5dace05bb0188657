package bmc

// IPMI v1.5 ("lan") through github.com/vmware/goipmi's native transport.
// goipmi has no contexts (it waits 5 s per answer), so each call runs in a
// goroutine: when the caller's ctx ends first, the session is abandoned
// (closed once the call returns, sending no command after the caller gave
// up) and the next call opens a new one.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	goipmi "github.com/vmware/goipmi"

	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/metalfleet/metalfleet/proto"
)

// lanSession is an open goipmi v1.5 session.
type lanSession struct {
	c *goipmi.Client
}

// lanCloses are the v1.5 sessions being closed in the background, per
// BMC and user. A BMC may allow a user one session at a time (it then
// answers Activate Session 0x82): a new session it refuses while one of
// ours is being closed is asked for again once that close was answered.
var lanCloses = struct {
	mu      sync.Mutex
	pending map[string][]chan struct{}
}{pending: map[string][]chan struct{}{}}

// lanCloseWait bounds the wait for the closes under way (goipmi waits
// 5 s for the BMC's answer).
const lanCloseWait = 6 * time.Second

func (d *ipmiDriver) lanKey() string { return fmt.Sprintf("%s:%d/%s", d.host, d.port, d.user) }

// lanClose closes s in the background: goipmi waits for the BMC's
// answer, up to 5 s.
func (d *ipmiDriver) lanClose(s *lanSession) {
	key := d.lanKey()
	done := make(chan struct{})
	lanCloses.mu.Lock()
	lanCloses.pending[key] = append(lanCloses.pending[key], done)
	lanCloses.mu.Unlock()
	go func() {
		_ = s.c.Close()
		close(done)
		lanCloses.mu.Lock()
		defer lanCloses.mu.Unlock()
		p := slices.DeleteFunc(lanCloses.pending[key], func(c chan struct{}) bool { return c == done })
		if len(p) == 0 {
			delete(lanCloses.pending, key)
		} else {
			lanCloses.pending[key] = p
		}
	}()
}

// lanClosed waits, up to lanCloseWait, for the closes under way of this
// BMC's sessions for this user; false if there were none.
func (d *ipmiDriver) lanClosed() bool {
	lanCloses.mu.Lock()
	p := slices.Clone(lanCloses.pending[d.lanKey()])
	lanCloses.mu.Unlock()
	if len(p) == 0 {
		return false
	}
	t := time.NewTimer(lanCloseWait)
	defer t.Stop()
	for _, done := range p {
		select {
		case <-done:
		case <-t.C:
			return true
		}
	}
	return true
}

// lanOpen opens a v1.5 session. Refused for want of a session slot
// (Activate Session 0x81-0x83) while one of ours is being closed, it
// asks again once that close was answered.
func (d *ipmiDriver) lanOpen() (*lanSession, error) {
	s, err := d.lanOpenOnce()
	var cc goipmi.CompletionCode
	if err != nil && errors.As(err, &cc) && cc >= 0x81 && cc <= 0x83 && d.lanClosed() {
		s, err = d.lanOpenOnce()
	}
	return s, err
}

func (d *ipmiDriver) lanOpenOnce() (*lanSession, error) {
	c, err := goipmi.NewClient(&goipmi.Connection{
		Hostname:  d.host,
		Port:      d.port,
		Username:  d.user,
		Password:  d.pass,
		Interface: proto.IPMILan,
	})
	if err != nil {
		return nil, err
	}
	if err := c.Open(); err != nil {
		_ = c.Close()
		return nil, err
	}
	return &lanSession{c: c}, nil
}

type lanResult struct {
	s          *lanSession // the session the call ended with (nil: none)
	err        error
	connecting bool
}

// lanGate lets a call's goroutine send only while its caller waits: once
// the caller gave up (its ctx ended), nothing more is sent.
type lanGate struct {
	mu        sync.Mutex
	abandoned bool
}

// send reports whether a command may be sent now.
func (g *lanGate) send() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.abandoned
}

func (g *lanGate) abandon() {
	g.mu.Lock()
	g.abandoned = true
	g.mu.Unlock()
}

// errAbandoned is the goroutine's own result when its caller gave up
// before the command was sent (the caller has returned ctx's error).
var errAbandoned = errors.New("the caller gave up before the command was sent")

// lanCall runs fn on the v1.5 session (opened first if needed), reopening
// once when the BMC stops answering a session that worked before. With
// once, fn is never run twice (goipmi itself sends each request once): a
// command the BMC may have executed without answering is reported as a
// timeout, not sent again.
func (d *ipmiDriver) lanCall(ctx context.Context, op string, once bool, fn func(*goipmi.Client) error) error {
	if err := ctx.Err(); err != nil {
		return classify(op, err, false)
	}
	s := d.v15
	d.v15 = nil // ours again when the call comes back in time
	done := make(chan lanResult, 1)
	gate := &lanGate{}
	go func() {
		r := lanResult{s: s}
		defer func() { done <- r }()
		fresh := r.s == nil
		if fresh {
			if r.s, r.err = d.lanOpen(); r.err != nil {
				r.connecting = true
				return
			}
		}
		if !gate.send() {
			r.err = errAbandoned
			return
		}
		r.err = fn(r.s.c)
		if r.err != nil && !fresh && !once && isNoAnswer(r.err) && ctx.Err() == nil {
			d.lanClose(r.s)
			if r.s, r.err = d.lanOpen(); r.err != nil {
				r.connecting = true
				return
			}
			if !gate.send() {
				r.err = errAbandoned
				return
			}
			r.err = fn(r.s.c)
		}
		if r.err != nil && isNoAnswer(r.err) {
			d.lanClose(r.s)
			r.s = nil
		}
	}()
	select {
	case r := <-done:
		d.v15 = r.s
		if r.err != nil {
			if r.connecting {
				if isNoAnswer(r.err) && d.lanAnswersPreSession(ctx) {
					// A v1.5 BMC drops an Activate Session whose auth code
					// is wrong, without an answer.
					return &Error{Op: "connect", Kind: proto.BMCErrAuth,
						Err: fmt.Errorf("the BMC answers but did not activate a session (wrong username or password?): %w", r.err)}
				}
				return classifyLan("connect", r.err, true)
			}
			return classifyLan(op, r.err, false)
		}
		return nil
	case <-ctx.Done():
		gate.abandon()
		go func() {
			if r := <-done; r.s != nil {
				d.lanClose(r.s)
			}
		}()
		return classify(op, ctx.Err(), false)
	}
}

// classifyLan is classify for goipmi's errors: its completion codes are
// their own type.
func classifyLan(op string, err error, connecting bool) error {
	var cc goipmi.CompletionCode
	if errors.As(err, &cc) {
		kind := proto.BMCErrRefused
		if connecting {
			kind = proto.BMCErrAuth
			if cc >= 0x81 && cc <= 0x83 {
				// The same codes mean an unknown user to Get Session
				// Challenge and no free session slot to Activate Session.
				return &Error{Op: op, Kind: kind, Err: fmt.Errorf("completion code %#02x: the BMC refused the user a session (an unknown user name, or no free session slot for it: another tool's session?)", uint8(cc))}
			}
		}
		return &Error{Op: op, Kind: kind, Err: fmt.Errorf("completion code %#02x: %v", uint8(cc), cc)}
	}
	return classify(op, err, connecting)
}

func (d *ipmiDriver) lanPowerState(ctx context.Context) (proto.PowerState, error) {
	var on bool
	err := d.lanCall(ctx, "power status", false, func(c *goipmi.Client) error {
		res := &goipmi.ChassisStatusResponse{}
		if err := c.Send(&goipmi.Request{
			NetworkFunction: goipmi.NetworkFunctionChassis,
			Command:         goipmi.CommandChassisStatus,
			Data:            &goipmi.ChassisStatusRequest{},
		}, res); err != nil {
			return err
		}
		on = res.IsSystemPowerOn()
		return nil
	})
	if err != nil {
		return "", err
	}
	return powerState(on), nil
}

func (d *ipmiDriver) lanPower(ctx context.Context, a PowerAction, ctl chassis.ChassisControl) error {
	return d.lanCall(ctx, "power "+string(a), sendOnce(a), func(c *goipmi.Client) error {
		return c.Control(goipmi.ChassisControl(ctl))
	})
}

// lanSetBootDevice sets boot flags parameter 5 as given (goipmi's own
// SetBootDevice always asks for "next boot, legacy").
func (d *ipmiDriver) lanSetBootDevice(ctx context.Context, f *types.BootOptionParam_BootFlags) error {
	data := f.Pack()
	return d.lanCall(ctx, "set boot device", false, func(c *goipmi.Client) error {
		return c.Send(&goipmi.Request{
			NetworkFunction: goipmi.NetworkFunctionChassis,
			Command:         goipmi.CommandSetSystemBootOptions,
			Data:            &goipmi.SetSystemBootOptionsRequest{Param: goipmi.BootParamBootFlags, Data: data},
		}, &goipmi.SetSystemBootOptionsResponse{})
	})
}

// lanDeviceID is Get Device ID's answer. goipmi's DeviceIDResponse reads
// the 3-byte manufacturer id as 2 bytes (and the product id from the
// wrong offset), so the driver decodes it itself.
type lanDeviceID struct {
	cc           uint8
	major, minor uint8
	manufacturer uint32
	product      uint16
}

func (r *lanDeviceID) Code() uint8 { return r.cc }

// UnmarshalBinary decodes the response data (completion code first).
func (r *lanDeviceID) UnmarshalBinary(b []byte) error {
	if len(b) < 1 {
		return errors.New("get device id: empty answer")
	}
	r.cc = b[0]
	if len(b) < 12 {
		return fmt.Errorf("get device id: %d bytes, want 12", len(b))
	}
	r.major, r.minor = b[3], b[4]
	r.manufacturer = uint32(b[7]) | uint32(b[8])<<8 | uint32(b[9]&0x0f)<<16
	r.product = binary.LittleEndian.Uint16(b[10:12])
	return nil
}

func (d *ipmiDriver) lanIdentify(ctx context.Context) (proto.BMCInfo, error) {
	var info proto.BMCInfo
	err := d.lanCall(ctx, "identify", false, func(c *goipmi.Client) error {
		res := &lanDeviceID{}
		if err := c.Send(&goipmi.Request{
			NetworkFunction: goipmi.NetworkFunctionApp,
			Command:         goipmi.CommandGetDeviceID,
			Data:            &goipmi.DeviceIDRequest{},
		}, res); err != nil {
			return err
		}
		info = deviceInfo(res.manufacturer, res.product, res.major, res.minor)
		return nil
	})
	if err != nil {
		return proto.BMCInfo{}, err
	}
	info.Protocol = "lan (IPMI v1.5)"
	return info, nil
}

// lanAnswersPreSession reports whether the BMC answers a session-less
// command at once.
func (d *ipmiDriver) lanAnswersPreSession(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err := channelCipherSuites(ctx, d.host, d.port)
	var cc errCipherCC
	return err == nil || errors.As(err, &cc)
}
