package bmc

// The ipmi driver. IPMI v2.0 RMCP+ ("lanplus", the default) goes through
// github.com/bougou/go-ipmi's pure-Go client with one session kept open
// and reused across calls; IPMI v1.5 ("lan") goes through
// github.com/vmware/goipmi's native lan transport. goipmi's own lanplus
// runs an ipmitool process per call and cannot pass a cipher suite, so it
// is not used (DESIGN.md has the figures).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/metalfleet/metalfleet/proto"
)

func init() { Register(proto.DriverIPMI, OpenIPMI) }

// IPMI timings: one request waits ipmiAttemptTimeout for its answer and
// is sent ipmiRetries more times before the call fails (a caller's ctx
// deadline cuts it shorter); a reset or a power cycle is sent once.
const (
	ipmiAttemptTimeout = 2 * time.Second
	ipmiRetries        = 1
	ipmiDefaultPort    = 623
	ipmiCloseTimeout   = time.Second
)

// ipmiDriver is one BMC over IPMI. Not safe for concurrent use (the
// Driver contract).
type ipmiDriver struct {
	host, user, pass string
	port             int
	lan              bool // IPMI v1.5 through goipmi

	// lanplus: the open RMCP+ session and its cipher suite.
	cl    *client.Client
	suite types.CipherSuiteID
	// connected is when cl connected (its keepalive's clock).
	connected time.Time

	// lan: the open v1.5 session.
	v15 *lanSession
}

// OpenIPMI makes an ipmi Driver for cfg (it does not contact the BMC).
func OpenIPMI(cfg Config) (Driver, error) {
	if cfg.Address == "" {
		return nil, Errorf("connect", proto.BMCErrRefused, "address: empty")
	}
	port := cfg.Port
	if port == 0 {
		port = ipmiDefaultPort
	}
	if port < 1 || port > 65535 {
		return nil, Errorf("connect", proto.BMCErrRefused, "port %d: want 1-65535", cfg.Port)
	}
	if len(cfg.Username) > 16 {
		return nil, Errorf("connect", proto.BMCErrRefused, "username: longer than 16 bytes")
	}
	if len(cfg.Password) > 20 {
		return nil, Errorf("connect", proto.BMCErrRefused, "password: longer than 20 bytes")
	}
	d := &ipmiDriver{host: cfg.Address, port: port, user: cfg.Username, pass: cfg.Password}
	switch cfg.Interface {
	case "", proto.IPMILanplus:
	case proto.IPMILan:
		d.lan = true
	default:
		return nil, Errorf("connect", proto.BMCErrUnsupported, "interface %q: want lanplus or lan", cfg.Interface)
	}
	return d, nil
}

// connect opens the RMCP+ session: it asks the BMC for its cipher suites
// (Get Channel Cipher Suites) and takes 17 if offered, else 3.
func (d *ipmiDriver) connect(ctx context.Context) error {
	if d.cl != nil {
		return nil
	}
	offered, err := channelCipherSuites(ctx, d.host, d.port)
	var try []types.CipherSuiteID
	var cc errCipherCC
	switch {
	case errors.As(err, &cc):
		// A BMC without Get Channel Cipher Suites: the strong suite first.
		try = []types.CipherSuiteID{types.CipherSuiteID17, types.CipherSuiteID3}
	case err != nil:
		return err // no answer: trying suites would not get one either
	default:
		for _, want := range []types.CipherSuiteID{types.CipherSuiteID17, types.CipherSuiteID3} {
			if slices.Contains(offered, want) {
				try = []types.CipherSuiteID{want}
				break
			}
		}
		if len(try) == 0 {
			return &Error{Op: "connect", Kind: proto.BMCErrUnsupported,
				Err: fmt.Errorf("the BMC offers cipher suites %v, neither 17 nor 3", offered)}
		}
	}
	var errs []error
	for _, id := range try {
		c, err := d.newClient()
		if err != nil {
			return err
		}
		c.WithCipherSuiteID(id)
		if err := c.Connect(ctx); err != nil {
			closeClient(c, false)
			errs = append(errs, fmt.Errorf("cipher suite %d: %w", id, err))
			if ctx.Err() != nil || isNoAnswer(err) {
				break
			}
			continue
		}
		d.cl, d.suite, d.connected = c, id, time.Now()
		return nil
	}
	return errors.Join(errs...)
}

func (d *ipmiDriver) newClient() (*client.Client, error) {
	c, err := client.NewClient(d.host, d.port, d.user, d.pass)
	if err != nil {
		return nil, err
	}
	c.WithTimeout(ipmiAttemptTimeout).WithRetry(ipmiRetries)
	return c, nil
}

// closeClient ends a client: a session it opened is closed at the BMC
// (briefly waited for), and its socket and keepalive stop.
func closeClient(c *client.Client, session bool) {
	ctx, cancel := context.WithTimeout(context.Background(), ipmiCloseTimeout)
	defer cancel()
	if !session {
		cancel() // nothing to close at the BMC: just the socket
	}
	_ = c.Close(ctx)
}

// go-ipmi keeps each session alive from a goroutine of its own: every
// keepaliveEvery after Connect it sends a request (with a context
// nothing cancels), waiting up to ipmiAttemptTimeout for each of
// ipmiRetries+1 sends. Closing the client while that goroutine sends
// crashes the process: go-ipmi v0.9.1's UDP client then writes to the
// socket Close has set to nil. (Seen in CI: the rack agent died closing
// the session of a BMC that had stopped answering.) The interval is a
// constant of go-ipmi, so the window is known, and closeWhenSafe waits
// it out.
const (
	keepaliveEvery = time.Duration(client.DefaultKeepAliveIntervalSec) * time.Second
	// keepaliveBusy: how long after a tick the keepalive may still send.
	keepaliveBusy = (ipmiRetries+1)*ipmiAttemptTimeout + 500*time.Millisecond
	// closeMargin: a close started this long before a tick may still
	// be under way at it.
	closeMargin = ipmiCloseTimeout + 500*time.Millisecond
)

// keepaliveWait is how long to wait, at now, before closing a client
// connected at connected: none unless its keepalive may be sending, or
// may start to while the close runs.
func keepaliveWait(connected, now time.Time) time.Duration {
	elapsed := now.Sub(connected)
	if elapsed < keepaliveEvery-closeMargin {
		return 0 // before the first tick
	}
	phase := elapsed % keepaliveEvery
	switch {
	case elapsed >= keepaliveEvery && phase < keepaliveBusy:
		return keepaliveBusy - phase
	case phase > keepaliveEvery-closeMargin:
		return keepaliveEvery - phase + keepaliveBusy
	}
	return 0
}

// closeWhenSafe closes a client connected at connected (see
// closeClient): now, or in the background once its keepalive cannot be
// sending (keepaliveWait).
func closeWhenSafe(c *client.Client, connected time.Time, session bool) {
	wait := keepaliveWait(connected, time.Now())
	if wait == 0 {
		closeClient(c, session)
		return
	}
	go func() {
		time.Sleep(wait)
		closeClient(c, session)
	}()
}

// dropSession forgets the RMCP+ session (the BMC dropped it or stopped
// answering).
func (d *ipmiDriver) dropSession() {
	if d.cl != nil {
		c, connected := d.cl, d.connected
		d.cl = nil
		go closeWhenSafe(c, connected, false)
	}
}

// call runs fn on the open session, opening one first if needed. When the
// BMC does not answer on a session that worked before (a BMC reboot
// forgets its sessions), it opens a new session once and retries.
func (d *ipmiDriver) call(ctx context.Context, op string, fn func(context.Context, *client.Client) error) error {
	return d.callRetry(ctx, op, true, fn)
}

// callRetry is call; with retry false, a command the BMC may have
// executed without answering is not sent again (a reset or a power
// cycle must never happen twice): the caller reads the state instead.
func (d *ipmiDriver) callRetry(ctx context.Context, op string, retry bool, fn func(context.Context, *client.Client) error) error {
	fresh := d.cl == nil || !retry
	if err := d.connect(ctx); err != nil {
		return classify("connect", err, true)
	}
	err := fn(ctx, d.cl)
	if err == nil {
		return nil
	}
	if !fresh && isNoAnswer(err) && ctx.Err() == nil {
		d.dropSession()
		if cerr := d.connect(ctx); cerr != nil {
			return classify("connect", cerr, true)
		}
		err = fn(ctx, d.cl)
		if err == nil {
			return nil
		}
	}
	if isNoAnswer(err) {
		d.dropSession()
	}
	return classify(op, err, false)
}

func (d *ipmiDriver) PowerState(ctx context.Context) (proto.PowerState, error) {
	if d.lan {
		return d.lanPowerState(ctx)
	}
	var on bool
	err := d.call(ctx, "power status", func(ctx context.Context, c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		on = st.PowerIsOn
		return nil
	})
	if err != nil {
		return "", err
	}
	return powerState(on), nil
}

func powerState(on bool) proto.PowerState {
	if on {
		return proto.PowerOn
	}
	return proto.PowerOff
}

// chassisControl maps a power action to IPMI Chassis Control.
func chassisControl(a PowerAction) (chassis.ChassisControl, error) {
	switch a {
	case PowerOn:
		return chassis.ChassisControlPowerUp, nil
	case PowerOff:
		return chassis.ChassisControlPowerDown, nil
	case PowerSoftOff:
		return chassis.ChassisControlSoftShutdown, nil
	case PowerReset:
		return chassis.ChassisControlHardReset, nil
	case PowerCycle:
		return chassis.ChassisControlPowerCycle, nil
	}
	return 0, Errorf("power "+string(a), proto.BMCErrUnsupported, "unknown power action %q", a)
}

func (d *ipmiDriver) Power(ctx context.Context, a PowerAction) error {
	ctl, err := chassisControl(a)
	if err != nil {
		return err
	}
	if d.lan {
		return d.lanPower(ctx, a, ctl)
	}
	// On, off and soft-off may be repeated harmlessly; reset and cycle
	// are sent once, by neither the driver nor go-ipmi again.
	once := sendOnce(a)
	return d.callRetry(ctx, "power "+string(a), !once, func(ctx context.Context, c *client.Client) error {
		if once {
			var cancel context.CancelFunc
			ctx, cancel = oneAttempt(ctx)
			defer cancel()
		}
		_, err := c.ChassisControl(ctx, ctl)
		return err
	})
}

// sendOnce reports a power action that must never be sent twice: a BMC
// that executed it but whose answer was lost would execute it again.
func sendOnce(a PowerAction) bool { return a == PowerReset || a == PowerCycle }

// oneAttempt cuts ctx to one wait for an answer, so that go-ipmi sends the
// request once. go-ipmi resends a request that got no answer within its
// timeout (ipmiAttemptTimeout; WithRetry), checking ctx.Err() before each
// send; the client's retry count is not changed for the call instead
// because its keepalive goroutine reads it. The deadline comes before
// go-ipmi's own (taken after the send), and Err reports it from the clock,
// not from the timer that closes Done a moment later: once the first wait
// is over, no resend starts.
func oneAttempt(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, ipmiAttemptTimeout)
	deadline, _ := ctx.Deadline()
	return onceCtx{Context: ctx, deadline: deadline}, cancel
}

type onceCtx struct {
	context.Context
	deadline time.Time
}

func (c onceCtx) Err() error {
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// bootFlags is IPMI boot flags parameter 5 (Set System Boot Options) for b.
func bootFlags(b proto.BootDeviceSpec) (*types.BootOptionParam_BootFlags, error) {
	if err := b.Check(); err != nil {
		return nil, Errorf("set boot device", proto.BMCErrRefused, "%v", err)
	}
	f := &types.BootOptionParam_BootFlags{BootFlagsValid: true, Persist: b.Persistent}
	switch b.Device {
	case proto.BootDevicePXE:
		f.BootDeviceSelector = types.BootDeviceSelectorForcePXE
	case proto.BootDeviceDisk:
		f.BootDeviceSelector = types.BootDeviceSelectorForceHardDrive
	}
	f.BIOSBootType = b.Mode == proto.BootModeUEFI
	return f, nil
}

func (d *ipmiDriver) SetBootDevice(ctx context.Context, b proto.BootDeviceSpec) error {
	f, err := bootFlags(b)
	if err != nil {
		return err
	}
	if d.lan {
		return d.lanSetBootDevice(ctx, f)
	}
	return d.call(ctx, "set boot device", func(ctx context.Context, c *client.Client) error {
		return c.SetSystemBootOptionsParamFor(ctx, f)
	})
}

func (d *ipmiDriver) Identify(ctx context.Context) (proto.BMCInfo, error) {
	if d.lan {
		return d.lanIdentify(ctx)
	}
	var info proto.BMCInfo
	err := d.call(ctx, "identify", func(ctx context.Context, c *client.Client) error {
		id, err := c.GetDeviceID(ctx)
		if err != nil {
			return err
		}
		info = deviceInfo(id.ManufacturerID, id.ProductID, id.MajorFirmwareRevision, id.MinorFirmwareRevision)
		return nil
	})
	if err != nil {
		return proto.BMCInfo{}, err
	}
	info.Protocol = fmt.Sprintf("lanplus cipher %d", d.suite)
	return info, nil
}

// vendors names the IANA enterprise numbers of common BMC makers.
var vendors = map[uint32]string{
	2:     "IBM",
	11:    "HP",
	343:   "Intel",
	674:   "Dell",
	2011:  "Huawei",
	5771:  "Cisco",
	7244:  "Quanta",
	10368: "Fujitsu",
	10876: "Supermicro",
	19046: "Lenovo",
	47196: "HPE",
}

// deviceInfo makes a BMCInfo from Get Device ID's fields (the firmware
// minor revision is BCD).
func deviceInfo(mfr uint32, product uint16, major, minor uint8) proto.BMCInfo {
	vendor, ok := vendors[mfr]
	if !ok {
		vendor = fmt.Sprintf("IANA %d", mfr)
	}
	return proto.BMCInfo{
		Vendor:          vendor,
		Model:           fmt.Sprintf("product 0x%04x", product),
		FirmwareVersion: fmt.Sprintf("%d.%02x", major&0x7f, minor),
	}
}

func (d *ipmiDriver) Console(ctx context.Context) (io.ReadWriteCloser, error) {
	if d.lan {
		return nil, Errorf("console", proto.BMCErrUnsupported, "Serial-over-LAN needs IPMI v2.0 (interface lanplus)")
	}
	return d.openSOL(ctx)
}

func (d *ipmiDriver) Close() error {
	if d.cl != nil {
		closeWhenSafe(d.cl, d.connected, true)
		d.cl = nil
	}
	if d.v15 != nil {
		d.lanClose(d.v15)
		d.v15 = nil
	}
	return nil
}

// isNoAnswer reports whether err means the BMC did not answer (as
// opposed to answering with an error).
func isNoAnswer(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := types.IsResponseError(err); ok {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// go-ipmi's "no matching IPMI response before the read deadline"
	// is unexported; its message is stable.
	msg := err.Error()
	for _, s := range []string{"no matching IPMI response", "no UDP datagram matched", "timed out", "deadline exceeded"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// isUnreachable reports a network that refused or has no route to the BMC.
func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// classify makes err an *Error of the right kind. connecting says the
// error came while opening a session, where a refusal is about the
// credentials.
func classify(op string, err error, connecting bool) error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	kind := proto.BMCErrRefused
	var re *types.ResponseError
	var rs *types.RmcpStatusError
	var dns *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		kind = proto.BMCErrTimeout
	case errors.As(err, &rs):
		kind = rmcpStatusKind(uint8(rs.StatusCode()))
	case strings.Contains(err.Error(), client.ErrRAKPAuthentication.Error()):
		// go-ipmi's Connect flattens its errors into text.
		kind = proto.BMCErrAuth
	case strings.Contains(err.Error(), "RMCP+ status 0x"):
		_, code, _ := strings.Cut(err.Error(), "RMCP+ status 0x")
		n, _ := strconv.ParseUint(code[:min(2, len(code))], 16, 8)
		kind = rmcpStatusKind(uint8(n))
	case errors.As(err, &re):
		kind = proto.BMCErrRefused
		if connecting {
			kind = proto.BMCErrAuth
		}
		err = fmt.Errorf("completion code %#02x: %s", uint8(re.CompletionCode()), describeCC(re))
	case errors.As(err, &dns), isUnreachable(err):
		kind = proto.BMCErrUnreachable
	case isNoAnswer(err):
		kind = proto.BMCErrTimeout
	}
	return &Error{Op: op, Kind: kind, Err: err}
}

// rmcpStatusKind classifies an RMCP+ Open Session or RAKP status code
// (IPMI v2.0 table 13-15): a refused name, role or key is authentication.
func rmcpStatusKind(code uint8) proto.BMCErrorKind {
	switch types.RmcpStatusCode(code) {
	case types.RmcpStatusCodeInvalidRole, types.RmcpStatusCodeUnauthorizedRoleOfPriLevel,
		types.RmcpStatusCodeInvalidNameLength, types.RmcpStatusCodeUnauthorizedName,
		types.RmcpStatusCodeUnauthorizedGUID, types.RmcpStatusCodeInvalidIntegrityCheckValue:
		return proto.BMCErrAuth
	}
	return proto.BMCErrRefused
}

// describeCC is a completion code's meaning without go-ipmi's prefix.
func describeCC(re *types.ResponseError) string {
	if _, after, ok := strings.Cut(re.Error(), "is not normal: "); ok {
		return after
	}
	return re.CompletionCode().String()
}
