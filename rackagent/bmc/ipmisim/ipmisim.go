// Package ipmisim is a simulated BMC that speaks real IPMI over UDP:
// IPMI v2.0 RMCP+ (cipher suites 3 and 17) and IPMI v1.5 on one port,
// with Serial-over-LAN. It is built on github.com/bougou/go-ipmi's
// reference BMC (pkg/server, pkg/bmc) with a small chassis behind it: a
// PowerBackend that owns the machine's power, and a Console that is the
// machine's serial port.
//
// It serves the rack agent's ipmi driver tests, the polling benchmark and
// the simulator (rackagent/sim), whose machines plug in their power and
// console. Failure injection: Slow delays every answer, Drop never
// answers, DropAnswers loses the next few answers, and a wrong password is just a BMC configured with another
// one.
//
//	b, err := ipmisim.New(ipmisim.Config{Username: "admin", Password: "pw"})
//	err = b.Start()
//	defer b.Close()
//	host, port := b.Host(), b.Port()
package ipmisim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gbmc "github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/clock"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/hal/mock"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/metalfleet/metalfleet/proto"
)

// Action is a power action the BMC performs on its machine (IPMI Chassis
// Control).
type Action string

// Power actions, by the Chassis Control command that asks for them.
const (
	ActionOn      Action = "on"       // power up (0x01)
	ActionOff     Action = "off"      // power down (0x00)
	ActionCycle   Action = "cycle"    // power cycle (0x02)
	ActionReset   Action = "reset"    // hard reset (0x03)
	ActionSoftOff Action = "soft-off" // soft shutdown via ACPI (0x05)
)

// PowerBackend is the machine behind the BMC: it reports and changes the
// machine's power. The simulator implements it with its simulated
// machines; NewMemPower is an in-memory one. Methods are called from the
// BMC's packet goroutines and must be safe for concurrent use; they should
// return quickly (a client waits for the answer, about a second at most).
type PowerBackend interface {
	// PowerState reports whether the machine is on.
	PowerState(ctx context.Context) (on bool, err error)
	// Power performs a power action. An error becomes the completion code
	// "unspecified error" (0xff).
	Power(ctx context.Context, a Action) error
}

// Config is one simulated BMC.
type Config struct {
	// Addr is the UDP address to listen on; "127.0.0.1:0" when empty.
	Addr string
	// Username and Password are the one administrator account (user 2);
	// "admin" and "password" when both are empty.
	Username string
	Password string
	// CipherSuites are the RMCP+ suites offered (IPMI v2.0 table 22-20
	// ids); 3 and 17 when empty.
	CipherSuites []int
	// Power is the machine's power; an in-memory one (off) when nil.
	Power PowerBackend
	// Console is the machine's serial port: reads are the machine's
	// output, writes its keyboard. The BMC reads it all the time, whether
	// or not an SOL session is active (output with no session is
	// dropped), so a PTY or pipe behind it never stalls its writer. A
	// read error ends the console. Nil: the BMC has no SOL. One end of a
	// net.Pipe() does (the machine keeps the other); so does a PTY
	// master. Keystrokes are written from one goroutine, and a console
	// that does not read them only slows the SOL client down.
	Console io.ReadWriter
	// Slow delays every answer (failure injection).
	Slow time.Duration
	// Drop makes the BMC never answer: clients time out.
	Drop bool
	// ManufacturerID and ProductID are what Get Device ID answers
	// (defaults: 343, Intel, and 0x0001); firmware version 1.00.
	ManufacturerID uint32
	ProductID      uint16
}

// BMC is a running simulated BMC.
type BMC struct {
	cfg    Config
	suites []types.CipherSuiteID
	power  PowerBackend
	ch     *chassis
	con    *console

	slow   atomic.Int64 // time.Duration
	opens  atomic.Int64 // RMCP+ Open Session Requests received
	closes atomic.Int64 // IPMI v1.5 Close Session requests received
	drop   atomic.Bool
	lose   atomic.Int64 // answers still to lose (DropAnswers)
	// closeDelay holds v1.5 Close Session requests (DelayCloseSessions).
	closeDelay atomic.Int64 // time.Duration

	mu     sync.Mutex
	conn   *net.UDPConn
	addr   *net.UDPAddr
	srv    *server.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// New makes a BMC from cfg; Start serves it.
func New(cfg Config) (*BMC, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Username == "" && cfg.Password == "" {
		cfg.Username, cfg.Password = "admin", "password"
	}
	if len(cfg.Username) > 16 {
		return nil, fmt.Errorf("ipmisim: username %q: longer than 16 bytes", cfg.Username)
	}
	if len(cfg.Password) > 20 {
		return nil, errors.New("ipmisim: password: longer than 20 bytes")
	}
	if len(cfg.CipherSuites) == 0 {
		cfg.CipherSuites = []int{3, 17}
	}
	var suites []types.CipherSuiteID
	for _, id := range cfg.CipherSuites {
		if id < 0 || id > 255 || !gbmc.SupportedCipherSuite(types.CipherSuiteID(id)) {
			return nil, fmt.Errorf("ipmisim: cipher suite %d: not supported by the reference BMC", id)
		}
		suites = append(suites, types.CipherSuiteID(id))
	}
	if cfg.ManufacturerID == 0 {
		cfg.ManufacturerID = 343
	}
	if cfg.ProductID == 0 {
		cfg.ProductID = 1
	}
	if cfg.Power == nil {
		cfg.Power = NewMemPower(false)
	}
	b := &BMC{cfg: cfg, power: cfg.Power, suites: suites}
	b.ch = &chassis{power: cfg.Power, counts: map[Action]int{}}
	if cfg.Console != nil {
		b.con = newConsole(cfg.Console)
	}
	b.slow.Store(int64(cfg.Slow))
	b.drop.Store(cfg.Drop)
	return b, nil
}

// Start listens and serves until Close.
func (b *BMC) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		return errors.New("ipmisim: already started")
	}
	ua, err := net.ResolveUDPAddr("udp", b.cfg.Addr)
	if err != nil {
		return fmt.Errorf("ipmisim: addr %q: %w", b.cfg.Addr, err)
	}
	if b.addr != nil {
		ua = b.addr // a restart keeps the port
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("ipmisim: listen %s: %w", ua, err)
	}
	b.conn = conn
	b.addr = conn.LocalAddr().(*net.UDPAddr)
	if b.con != nil {
		b.con.start()
	}

	g := b.newDevice()
	b.srv = server.NewServer(g, &packetConn{conn: conn, b: b, held: make(chan heldPacket, 16)}, server.WithCipherSuites(b.suites))
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.done = make(chan struct{})
	go func(srv *server.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(ctx)
	}(b.srv, b.done)
	return nil
}

func (b *BMC) newDevice() *gbmc.BMC {
	info := gbmc.DeviceInfo{
		DeviceID:                32,
		DeviceRevision:          1,
		FirmwareMajor:           1,
		FirmwareMinor:           0,
		IPMIVersion:             0x20,
		ManufacturerID:          b.cfg.ManufacturerID,
		ProductID:               b.cfg.ProductID,
		AdditionalDeviceSupport: 0x39,
	}
	var guid [16]byte
	copy(guid[:], "metalfleet-sim")
	h := &halImpl{HAL: mock.New(), ch: b.ch}
	if b.con != nil {
		h.con = b.con
	}
	g := gbmc.New(info, guid, h, gbmc.WithClock(clock.Real), gbmc.WithCipherSuites(b.suites))
	u, err := g.Users.Add(2, b.cfg.Username)
	if err != nil {
		panic(fmt.Sprintf("ipmisim: add user: %v", err)) // the name was checked in New
	}
	u.SetPassword([]byte(b.cfg.Password))
	u.Enabled = true
	u.ChannelAccess[1] = gbmc.UserChannelAccess{MaxPrivilege: gbmc.PrivilegeLevelAdministrator, Enabled: true}
	return g
}

// Close stops serving. The console's reader stops at its next read: the
// owner of Config.Console closes it.
func (b *BMC) Close() error {
	b.stop()
	if b.con != nil {
		b.con.close()
	}
	return nil
}

func (b *BMC) stop() {
	b.mu.Lock()
	srv, cancel, done := b.srv, b.cancel, b.done
	b.srv, b.cancel, b.done, b.conn = nil, nil, nil, nil
	b.mu.Unlock()
	if srv == nil {
		return
	}
	cancel()
	_ = srv.Close()
	<-done
}

// Restart is a BMC reboot: every session is forgotten, the port, power
// and boot flags stay.
func (b *BMC) Restart() error {
	b.stop()
	return b.Start()
}

// Addr is the address the BMC listens on ("127.0.0.1:PORT").
func (b *BMC) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.addr == nil {
		return ""
	}
	return b.addr.String()
}

// Host is the BMC's IP address.
func (b *BMC) Host() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.addr == nil {
		return ""
	}
	return b.addr.IP.String()
}

// Port is the BMC's UDP port.
func (b *BMC) Port() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.addr == nil {
		return 0
	}
	return b.addr.Port
}

// SetSlow changes the delay of every answer.
func (b *BMC) SetSlow(d time.Duration) { b.slow.Store(int64(d)) }

// SetDrop makes the BMC stop (true) or resume (false) answering.
func (b *BMC) SetDrop(drop bool) { b.drop.Store(drop) }

// LanSessionCloses is how many IPMI v1.5 Close Session requests the BMC
// received.
func (b *BMC) LanSessionCloses() int { return int(b.closes.Load()) }

// DelayCloseSessions makes the BMC serve each IPMI v1.5 Close Session
// request d after it came, serving the requests after it first (0: at
// once): a close that reaches the BMC late, after its client's next
// session asked to be activated.
func (b *BMC) DelayCloseSessions(d time.Duration) { b.closeDelay.Store(int64(d)) }

// DropAnswers makes the BMC lose its next n answers: it executes the
// requests as usual but does not send what it answers (an answer lost on
// the way back).
func (b *BMC) DropAnswers(n int) { b.lose.Store(int64(n)) }

// SessionOpens is how many RMCP+ sessions clients began to open (Open
// Session Requests received, retransmissions included).
func (b *BMC) SessionOpens() int { return int(b.opens.Load()) }

// Actions is how many times the BMC performed power action a.
func (b *BMC) Actions(a Action) int {
	b.ch.mu.Lock()
	defer b.ch.mu.Unlock()
	return b.ch.counts[a]
}

// PowerState is the machine's power as the backend reports it.
func (b *BMC) PowerState() bool {
	on, _ := b.power.PowerState(context.Background())
	return on
}

// BootDevice is the boot-device override set over IPMI (ok is false when
// none is set or it was consumed).
func (b *BMC) BootDevice() (spec proto.BootDeviceSpec, ok bool) {
	b.ch.mu.Lock()
	defer b.ch.mu.Unlock()
	return bootSpec(b.ch.flags)
}

// NextBoot is what a machine calls when it boots: the boot-device
// override, cleared unless it is persistent (IPMI boot flags "next boot
// only").
func (b *BMC) NextBoot() (spec proto.BootDeviceSpec, ok bool) {
	b.ch.mu.Lock()
	defer b.ch.mu.Unlock()
	spec, ok = bootSpec(b.ch.flags)
	if ok && !spec.Persistent {
		b.ch.flags = nil
	}
	return spec, ok
}

func bootSpec(f *types.BootOptionParam_BootFlags) (proto.BootDeviceSpec, bool) {
	if f == nil || !f.BootFlagsValid {
		return proto.BootDeviceSpec{}, false
	}
	var s proto.BootDeviceSpec
	switch f.BootDeviceSelector {
	case types.BootDeviceSelectorForcePXE:
		s.Device = proto.BootDevicePXE
	case types.BootDeviceSelectorForceHardDrive:
		s.Device = proto.BootDeviceDisk
	case types.BootDeviceSelectorNoOverride:
		return proto.BootDeviceSpec{}, false
	default:
		s.Device = proto.BootDevice(f.BootDeviceSelector.String())
	}
	s.Persistent = f.Persist
	if f.BIOSBootType == types.BIOSBootTypeEFI {
		s.Mode = proto.BootModeUEFI
	} else {
		s.Mode = proto.BootModeLegacy
	}
	return s, true
}

// packetConn is the server's transport: the UDP socket with the failure
// injection in front of every answer.
type packetConn struct {
	conn *net.UDPConn
	b    *BMC
	// held are requests held back (DelayCloseSessions) and now due.
	held chan heldPacket
}

type heldPacket struct {
	data []byte
	addr net.Addr
}

func (p *packetConn) ReadFrom(buf []byte) (int, net.Addr, error) {
	for {
		select {
		case h := <-p.held:
			return copy(buf, h.data), h.addr, nil
		default:
		}
		n, addr, err := p.conn.ReadFrom(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			// Woken to serve a held request (no other read deadline
			// is ever set).
			_ = p.conn.SetReadDeadline(time.Time{})
			continue
		}
		// RMCP, class IPMI, auth type RMCP+, payload Open Session Request.
		if n > 6 && buf[3]&0x1f == 0x07 && buf[4] == 0x06 && buf[5]&0x3f == 0x10 {
			p.b.opens.Add(1)
		}
		if isLanCloseSession(buf[:max(n, 0)]) {
			p.b.closes.Add(1)
			if d := time.Duration(p.b.closeDelay.Load()); d > 0 {
				h := heldPacket{data: bytes.Clone(buf[:n]), addr: addr}
				time.AfterFunc(d, func() {
					select {
					case p.held <- h:
						_ = p.conn.SetReadDeadline(time.Now()) // wake the reader
					default: // too many held: lost, as a datagram may be
					}
				})
				continue
			}
		}
		return n, addr, err
	}
}

// isLanCloseSession reports an IPMI v1.5 Close Session request (netfn
// App, command 0x3c): RMCP class IPMI, session auth type, sequence and id,
// a 16-byte auth code unless the auth type is none, the message length,
// then the message (rsAddr, netFn/LUN, checksum, rqAddr, rqSeq, command).
func isLanCloseSession(b []byte) bool {
	if len(b) < 14 || b[3]&0x1f != 0x07 || b[4] == 0x06 {
		return false
	}
	msg := 14
	if b[4] != 0 {
		msg += 16
	}
	return len(b) > msg+5 && b[msg+1]>>2 == 0x06 && b[msg+5] == 0x3c
}

func (p *packetConn) WriteTo(data []byte, addr net.Addr) (int, error) {
	if p.b.drop.Load() {
		return len(data), nil
	}
	for {
		n := p.b.lose.Load()
		if n <= 0 {
			break
		}
		if p.b.lose.CompareAndSwap(n, n-1) {
			return len(data), nil
		}
	}
	if d := time.Duration(p.b.slow.Load()); d > 0 {
		time.Sleep(d) // each answer is sent from its own goroutine
	}
	return p.conn.WriteTo(data, addr)
}

func (p *packetConn) Close() error { return p.conn.Close() }

// LocalAddr lets the server report its port in Activate Payload.
func (p *packetConn) LocalAddr() net.Addr { return p.conn.LocalAddr() }

// halImpl is go-ipmi's in-memory HAL with our chassis and console.
type halImpl struct {
	*mock.HAL
	ch  *chassis
	con *console
}

func (h *halImpl) Chassis() hal.ChassisHAL { return h.ch }

func (h *halImpl) Console() hal.ConsoleHAL {
	if h.con == nil {
		return nil
	}
	return h.con
}

// chassis maps Chassis Control onto the PowerBackend, counts actions and
// keeps the boot flags.
type chassis struct {
	power PowerBackend

	mu     sync.Mutex
	counts map[Action]int
	flags  *types.BootOptionParam_BootFlags
	ack    *types.BootOptionParam_BootInfoAcknowledge
}

func (c *chassis) act(ctx context.Context, a Action) error {
	if err := c.power.Power(ctx, a); err != nil {
		return err
	}
	c.mu.Lock()
	c.counts[a]++
	c.mu.Unlock()
	return nil
}

func (c *chassis) PowerState(ctx context.Context) (bool, error) { return c.power.PowerState(ctx) }

func (c *chassis) SetPower(ctx context.Context, on bool) error {
	if on {
		return c.act(ctx, ActionOn)
	}
	return c.act(ctx, ActionOff)
}

func (c *chassis) PowerCycle(ctx context.Context) error { return c.act(ctx, ActionCycle) }
func (c *chassis) ColdReset(ctx context.Context) error  { return c.act(ctx, ActionReset) }

// WarmReset is what go-ipmi's handler calls for Chassis Control soft
// shutdown (0x05).
func (c *chassis) WarmReset(ctx context.Context) error { return c.act(ctx, ActionSoftOff) }

func (c *chassis) Identify(context.Context, uint8) error        { return nil }
func (c *chassis) IntrusionState(context.Context) (bool, error) { return false, nil }

func (c *chassis) SetBootFlags(_ context.Context, f *types.BootOptionParam_BootFlags) error {
	if f == nil {
		return hal.ErrNotSupported
	}
	cp := *f
	c.mu.Lock()
	c.flags = &cp
	c.mu.Unlock()
	return nil
}

func (c *chassis) GetBootFlags(context.Context) (*types.BootOptionParam_BootFlags, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flags == nil {
		return &types.BootOptionParam_BootFlags{}, nil
	}
	cp := *c.flags
	return &cp, nil
}

func (c *chassis) SetBootInfoAcknowledge(_ context.Context, a *types.BootOptionParam_BootInfoAcknowledge) error {
	if a == nil {
		return hal.ErrNotSupported
	}
	cp := *a
	c.mu.Lock()
	c.ack = &cp
	c.mu.Unlock()
	return nil
}

func (c *chassis) GetBootInfoAcknowledge(context.Context) (*types.BootOptionParam_BootInfoAcknowledge, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ack == nil {
		return &types.BootOptionParam_BootInfoAcknowledge{}, nil
	}
	cp := *c.ack
	return &cp, nil
}

// MemPower is an in-memory PowerBackend: on, off, cycle and reset change
// (or keep) its state at once; soft-off turns it off.
type MemPower struct {
	mu sync.Mutex
	on bool
}

// NewMemPower makes an in-memory machine, on or off.
func NewMemPower(on bool) *MemPower { return &MemPower{on: on} }

// PowerState reports the machine's power.
func (m *MemPower) PowerState(context.Context) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.on, nil
}

// Power performs a.
func (m *MemPower) Power(_ context.Context, a Action) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch a {
	case ActionOn, ActionCycle:
		m.on = true
	case ActionOff, ActionSoftOff:
		m.on = false
	case ActionReset:
		if !m.on {
			return errors.New("reset: machine is off")
		}
	default:
		return fmt.Errorf("unknown action %q", a)
	}
	return nil
}

// Set changes the machine's power behind the BMC's back (a button press).
func (m *MemPower) Set(on bool) {
	m.mu.Lock()
	m.on = on
	m.mu.Unlock()
}
