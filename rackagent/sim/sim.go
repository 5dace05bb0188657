// Package sim simulates machines network-booting from a rack agent with
// the real protocols: DHCP through a relay address, iPXE's first stage
// over TFTP, the iPXE script, kernel and initrd over HTTP, and the
// ramdisk's inventory callback, with a synthetic inventory, or a task
// ramdisk's task, run by the real task runner on simulated hardware
// (TaskMachine). Dev mode and benchmarks use it where there is no
// hardware and no QEMU.
//
// A machine behaves like firmware under load: it retransmits DHCP with
// backoff, retries TFTP blocks and HTTP fetches, and when a boot fails it
// reboots and starts over after a pause. Every retry is counted in the
// Result, and each step's duration is recorded by Phase.
//
// A Host is a machine with power and, optionally, a BMC on loopback: IPMI
// RMCP+ over UDP (rackagent/bmc/ipmisim) or Redfish over HTTP
// (rackagent/bmc/redfishsim). Its power decides whether it boots: off, it
// sends nothing; powered on, reset or cycled, it boots from the start;
// powered off, its boot stops. Its firmware prints each step on a serial
// console (the IPMI BMC's Serial-over-LAN), which echoes what is typed.
// A BMC can be made slow, silent, or to refuse the password a node is
// given (BMCConfig), and Credentials are what a node needs to reach it.
// Storms boot plain machines, or press the power buttons of hosts.
package sim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	ptftp "github.com/pin/tftp/v3"

	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
)

// ReportFunc makes ONE attempt at posting a ramdisk step's body to the
// agent's callback with client (which sends from the machine's leased
// address): the nodeagent's own reporting code in dev mode. The machine
// retries an error whose Temporary() says true (or a network error).
type ReportFunc func(ctx context.Context, client *http.Client, callbackURL, mac, token, step string, body any) error

// Phase is one step of a network boot.
type Phase int

// The phases of a boot, in order.
const (
	PhaseDHCP      Phase = iota // PXE firmware's DISCOVER to ACK
	PhaseTFTP                   // iPXE's first stage over TFTP
	PhaseIPXEDHCP               // iPXE's own DISCOVER to ACK
	PhaseScript                 // GET of the iPXE script
	PhaseImages                 // kernel and initrd over HTTP
	PhaseInventory              // the inventory callback, until the agent accepted it
	PhaseTask                   // a task boot's task, from the plan's fetch to its last step
	NumPhases
)

var phaseNames = [NumPhases]string{"DHCP (PXE)", "TFTP first stage", "DHCP (iPXE)", "iPXE script", "kernel+initrd", "inventory POST", "task"}

func (p Phase) String() string {
	if p >= 0 && p < NumPhases {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Firmware is how a machine waits and retries. The zero value takes the
// defaults noted on each field.
type Firmware struct {
	// DHCPTimeouts are the waits for an answer to each transmission of
	// a DHCP message, each with up to 25% of jitter (default 1, 2, 4
	// and 8 s, as iPXE; a PXE ROM waits 4, 8, 16, 32 s).
	DHCPTimeouts []time.Duration
	// TFTPTimeout is the wait for one TFTP block (default 2 s, 5 tries).
	TFTPTimeout time.Duration
	// HTTPTimeout bounds one HTTP request (default 30 s).
	HTTPTimeout time.Duration
	// HTTPTries is how often a fetch is tried before the boot fails
	// (default 3).
	HTTPTries int
	// CallbackFor bounds the retries of the inventory callback (default
	// 60 s).
	CallbackFor time.Duration
	// RebootAfter is the pause before a failed boot starts over (default
	// 5 s, with up to 50% of jitter).
	RebootAfter time.Duration
	// MaxBoots bounds the boots Run makes (default 5).
	MaxBoots int
}

func (f Firmware) withDefaults() Firmware {
	if len(f.DHCPTimeouts) == 0 {
		f.DHCPTimeouts = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	}
	if f.TFTPTimeout == 0 {
		f.TFTPTimeout = 2 * time.Second
	}
	if f.HTTPTimeout == 0 {
		f.HTTPTimeout = 30 * time.Second
	}
	if f.HTTPTries == 0 {
		f.HTTPTries = 3
	}
	if f.CallbackFor == 0 {
		f.CallbackFor = time.Minute
	}
	if f.RebootAfter == 0 {
		f.RebootAfter = 5 * time.Second
	}
	if f.MaxBoots == 0 {
		f.MaxBoots = 5
	}
	return f
}

// Machine is one simulated server.
type Machine struct {
	MAC net.HardwareAddr
	// DHCP is the agent's DHCP address; requests come from a relay socket
	// on RelayIP (which must be in the rack's subnet).
	DHCP    *net.UDPAddr
	RelayIP net.IP
	// TFTPPort is the agent's TFTP port (0: skip the first stage).
	TFTPPort int
	// BindLease sends every HTTP request from the address the machine
	// leased, as a real one does (the agent binds a discovery inventory
	// to it). The address must be local: on Linux any 127.0.0.0/8
	// address is, so dev racks on loopback can.
	BindLease bool
	// Report posts the inventory (one attempt).
	Report ReportFunc
	// Firmware is how the machine retries (zero: the defaults).
	Firmware Firmware
	// OnLease, if set, hears every address the machine is ACKed.
	OnLease func(mac net.HardwareAddr, ip net.IP, lease time.Duration)
	// Log, if set, gets one line per step.
	Log func(format string, args ...any)
	// Serial, if set, is the machine's serial console: its firmware
	// prints each step of the boot there ("sim: DHCPDISCOVER", ...).
	Serial *Serial
	// A task boot's hardware (see TaskMachine): TaskDir holds its
	// temporary files ("": the system's temporary directory); TaskMemory
	// and TaskDiskBytes override DefaultTaskMemory and
	// DefaultTaskDiskBytes.
	TaskDir       string
	TaskMemory    int64
	TaskDiskBytes int64
	// BeforeKernel, if set, is called once a ramdisk boot has fetched
	// its kernel and initrd, before it runs them (and so before the
	// ramdisk first calls the agent): a test may hold the boot there;
	// ctx ends with the boot.
	BeforeKernel func(ctx context.Context)

	labMu    sync.Mutex
	labPath  string // the lab device file (see TaskMachine), once made
	diskPath string // the directory of the disk files (see TaskMachine), once made
}

// Retries counts what a machine had to do again.
type Retries struct {
	DHCP     int // DHCP messages retransmitted after no answer, and restarts after a NAK
	TFTP     int // TFTP packets retransmitted
	HTTP     int // script, kernel or initrd fetches tried again
	Callback int // inventory posts tried again
	Boots    int // whole boots started again after a failure
}

// Add adds o to r.
func (r *Retries) Add(o Retries) {
	r.DHCP += o.DHCP
	r.TFTP += o.TFTP
	r.HTTP += o.HTTP
	r.Callback += o.Callback
	r.Boots += o.Boots
}

// Result is what a boot did.
type Result struct {
	IP       string
	Script   string
	Kernel   int64 // bytes fetched
	Initrd   int64
	Reported bool
	// Task is the task a task boot ran (metalfleet.task), and TaskErr
	// its failed step, reported (nodeagent.ErrStepFailed wrapped): the
	// boot itself succeeded, and waits to be powered off.
	Task    string
	TaskErr error
	// Took is the whole time from the first boot's start, failed boots
	// included.
	Took time.Duration
	// Phases are the durations of the successful boot's steps (zero for
	// steps it did not take).
	Phases [NumPhases]time.Duration
	// Retries counts retransmissions and retries over every boot.
	Retries Retries
	// Errors are the errors of the failed boots, in order.
	Errors []error
}

// Run boots the machine like firmware does: when a boot fails it reboots
// after Firmware.RebootAfter and tries again, up to Firmware.MaxBoots
// boots. It returns the successful boot's result, or the last error
// (with the result so far).
func (m *Machine) Run(ctx context.Context) (*Result, error) {
	fw := m.Firmware.withDefaults()
	start := time.Now()
	total := &Result{}
	for boot := 1; ; boot++ {
		res, err := m.Boot(ctx)
		total.Retries.Add(res.Retries)
		if err == nil {
			res.Retries = total.Retries
			res.Errors = total.Errors
			res.Took = time.Since(start)
			return res, nil
		}
		total.Errors = append(total.Errors, err)
		total.Took = time.Since(start)
		if boot >= fw.MaxBoots || ctx.Err() != nil {
			if ctx.Err() == nil {
				m.say("sim: boot failed: %v; no bootable device", err)
			}
			return total, err
		}
		m.logf("%s: boot %d failed (%v); rebooting", m.MAC, boot, err)
		m.say("sim: boot failed: %v; rebooting", err)
		total.Retries.Boots++
		if !wait(ctx, jitter(fw.RebootAfter, 0.5)) {
			return total, ctx.Err()
		}
	}
}

// Boot runs one network boot: PXE DHCP, first stage over TFTP, iPXE DHCP,
// script, kernel and initrd over HTTP, and for a ramdisk boot the
// inventory callback. A local-disk script ends the boot there. The result
// is never nil (its Retries count even a failed boot's).
func (m *Machine) Boot(ctx context.Context) (*Result, error) {
	fw := m.Firmware.withDefaults()
	start := time.Now()
	res := &Result{}
	mark := time.Now()
	phase := func(p Phase) {
		now := time.Now()
		res.Phases[p] = now.Sub(mark)
		mark = now
	}
	pxe := []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
	m.say("sim: SimBIOS 1.0, network boot (PXE) from %s", m.MAC)
	ack, err := m.dora(ctx, fw, pxe, &res.Retries)
	if err != nil {
		return res, fmt.Errorf("PXE DHCP: %w", err)
	}
	phase(PhaseDHCP)
	res.IP = ack.YourIPAddr.String()
	m.say("sim: got lease %s from %s", res.IP, ack.ServerIPAddr)
	m.logf("%s: PXE lease %s, first stage %q from %s", m.MAC, res.IP, ack.BootFileNameOption(), ack.ServerIPAddr)
	if m.TFTPPort != 0 && ack.BootFileNameOption() != "" {
		m.say("sim: TFTP %s from %s", ack.BootFileNameOption(), ack.ServerIPAddr)
		n, err := m.tftp(fw, ack.ServerIPAddr, ack.BootFileNameOption(), &res.Retries)
		if err != nil {
			return res, fmt.Errorf("TFTP %s: %w", ack.BootFileNameOption(), err)
		}
		m.logf("%s: first stage %d bytes over TFTP", m.MAC, n)
	}
	phase(PhaseTFTP)
	ipxe := append(pxe, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	ack, err = m.dora(ctx, fw, ipxe, &res.Retries)
	if err != nil {
		return res, fmt.Errorf("iPXE DHCP: %w", err)
	}
	phase(PhaseIPXEDHCP)
	res.IP = ack.YourIPAddr.String()
	scriptURL := ack.BootFileNameOption()
	m.say("sim: iPXE got lease %s, fetching script %s", res.IP, scriptURL)
	if !strings.HasPrefix(scriptURL, "http") {
		return res, fmt.Errorf("iPXE was given %q, not a script URL (boot loop)", scriptURL)
	}
	client := m.httpClient(fw, ack.YourIPAddr)
	defer client.CloseIdleConnections()
	var script []byte
	if err := m.retryHTTP(ctx, fw, &res.Retries, func() (err error) { script, err = get(ctx, client, scriptURL); return err }); err != nil {
		return res, fmt.Errorf("script: %w", err)
	}
	phase(PhaseScript)
	res.Script = string(script)
	kernel, initrd, cmdline := parseScript(res.Script)
	if kernel == "" {
		m.logf("%s: script says boot the local disk", m.MAC)
		m.say("sim: booting from local disk")
		res.Took = time.Since(start)
		return res, nil
	}
	m.say("sim: fetching kernel %s", kernel)
	if err := m.retryHTTP(ctx, fw, &res.Retries, func() (err error) { res.Kernel, err = fetch(ctx, client, kernel); return err }); err != nil {
		return res, fmt.Errorf("kernel: %w", err)
	}
	m.say("sim: fetching initrd %s", initrd)
	if err := m.retryHTTP(ctx, fw, &res.Retries, func() (err error) { res.Initrd, err = fetch(ctx, client, initrd); return err }); err != nil {
		return res, fmt.Errorf("initrd: %w", err)
	}
	phase(PhaseImages)
	if m.BeforeKernel != nil {
		m.BeforeKernel(ctx)
	}
	m.logf("%s: kernel %d bytes, initrd %d bytes", m.MAC, res.Kernel, res.Initrd)
	m.say("sim: booting kernel (%d bytes), initrd (%d bytes)", res.Kernel, res.Initrd)
	cb, mac, token := cmdline[proto.CmdlineCallback], cmdline[proto.CmdlineMAC], cmdline[proto.CmdlineToken]
	if cb == "" {
		return res, errors.New("kernel command line has no " + proto.CmdlineCallback)
	}
	if mac == "" {
		mac = m.MAC.String()
	}
	if task := cmdline[proto.CmdlineTask]; task != "" && task != proto.TaskDiscovery {
		// A task ramdisk: the real task runner. A failed step was
		// reported (the coordinator powers the machine off); any other
		// error fails the boot, and the machine reboots into the task
		// again, resuming at the step the coordinator recorded.
		res.Task = task
		err := m.runTask(ctx, fw, ack.YourIPAddr, cb, mac, token, task)
		phase(PhaseTask)
		res.Took = time.Since(start)
		if err != nil && !errors.Is(err, nodeagent.ErrStepFailed) {
			return res, fmt.Errorf("task %s: %w", task, err)
		}
		res.TaskErr = err
		m.logf("%s: task %s ended in %s (err %v)", m.MAC, task, res.Took.Round(time.Millisecond), err)
		return res, nil
	}
	if err := m.callback(ctx, fw, client, cb, mac, token, &res.Retries); err != nil {
		return res, fmt.Errorf("inventory callback: %w", err)
	}
	phase(PhaseInventory)
	res.Reported = true
	res.Took = time.Since(start)
	m.say("sim: inventory reported; ramdisk waiting for work")
	m.logf("%s: inventory reported in %s", m.MAC, res.Took.Round(time.Millisecond))
	return res, nil
}

// callback posts the inventory, retrying what may succeed later (a
// network error, 408, 429, 5xx) with backoff for up to CallbackFor.
func (m *Machine) callback(ctx context.Context, fw Firmware, client *http.Client, cb, mac, token string, r *Retries) error {
	deadline := time.Now().Add(fw.CallbackFor)
	backoff := 250 * time.Millisecond
	for {
		err := m.Report(ctx, client, cb, mac, token, proto.StepInventory, Inventory(m.MAC))
		if err == nil || !temporary(err) || ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			return err
		}
		r.Callback++
		if !wait(ctx, jitter(backoff, 0.25)) {
			return ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// temporary says whether a report error may clear: one that says so, or
// a network error.
func temporary(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) {
		return t.Temporary()
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

func (m *Machine) retryHTTP(ctx context.Context, fw Firmware, r *Retries, f func() error) error {
	var err error
	for try := 1; ; try++ {
		if err = f(); err == nil || try >= fw.HTTPTries || ctx.Err() != nil {
			return err
		}
		var se *statusError
		if errors.As(err, &se) && se.status < 500 && se.status != http.StatusTooManyRequests {
			return err // a refusal; a retry gets the same answer
		}
		r.HTTP++
		if !wait(ctx, jitter(time.Duration(try)*500*time.Millisecond, 0.25)) {
			return ctx.Err()
		}
	}
}

// httpClient sends from ip when BindLease is set.
func (m *Machine) httpClient(fw Firmware, ip net.IP) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if m.BindLease {
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second, DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: fw.HTTPTimeout}
}

func (m *Machine) logf(format string, args ...any) {
	if m.Log != nil {
		m.Log(format, args...)
	}
}

// say prints a line on the machine's serial console.
func (m *Machine) say(format string, args ...any) {
	if m.Serial != nil {
		m.Serial.Printf(format, args...)
	}
}

// dora gets a lease: DISCOVER, OFFER, REQUEST, ACK, each message sent
// again after no answer (fw.DHCPTimeouts), and the whole exchange
// started over after a NAK (once per timeout step).
func (m *Machine) dora(ctx context.Context, fw Firmware, mods []dhcpv4.Modifier, r *Retries) (*dhcpv4.DHCPv4, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: m.RelayIP})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1500)
	x := func(p *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
		p.GatewayIPAddr = m.RelayIP
		for try, timeout := range fw.DHCPTimeouts {
			if try > 0 {
				r.DHCP++
			}
			m.say("sim: DHCP%s", strings.ToUpper(p.MessageType().String()))
			if _, err := c.WriteTo(p.ToBytes(), m.DHCP); err != nil {
				return nil, err
			}
			c.SetReadDeadline(time.Now().Add(jitter(timeout, 0.25)))
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					break
				}
				if r, err := dhcpv4.FromBytes(buf[:n]); err == nil && r.TransactionID == p.TransactionID {
					return r, nil
				}
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		return nil, fmt.Errorf("no answer to %s after %d tries", p.MessageType(), len(fw.DHCPTimeouts))
	}
	var last error
	for attempt := 0; attempt < len(fw.DHCPTimeouts); attempt++ {
		if attempt > 0 {
			r.DHCP++ // a NAK sends the client back to DISCOVER
		}
		d, err := dhcpv4.NewDiscovery(m.MAC, mods...)
		if err != nil {
			return nil, err
		}
		off, err := x(d)
		if err != nil {
			return nil, err
		}
		if off.MessageType() != dhcpv4.MessageTypeOffer {
			last = fmt.Errorf("got %s (%s) to DISCOVER, want OFFER", off.MessageType(), off.Message())
			continue
		}
		req, err := dhcpv4.NewRequestFromOffer(off, mods...)
		if err != nil {
			return nil, err
		}
		ack, err := x(req)
		if err != nil {
			return nil, err
		}
		if ack.MessageType() != dhcpv4.MessageTypeAck {
			last = fmt.Errorf("got %s (%s), want ACK", ack.MessageType(), ack.Message())
			continue
		}
		if m.OnLease != nil {
			m.OnLease(m.MAC, ack.YourIPAddr, ack.IPAddressLeaseTime(0))
		}
		return ack, nil
	}
	return nil, last
}

func (m *Machine) tftp(fw Firmware, server net.IP, file string, r *Retries) (int64, error) {
	c, err := ptftp.NewClient(net.JoinHostPort(server.String(), fmt.Sprint(m.TFTPPort)))
	if err != nil {
		return 0, err
	}
	c.SetTimeout(fw.TFTPTimeout)
	c.SetBlockSize(1432) // iPXE's, under a 1500-byte MTU
	var retries atomic.Int64
	c.SetBackoff(func(int) time.Duration { retries.Add(1); return jitter(100*time.Millisecond, 1) })
	defer func() { r.TFTP += int(retries.Load()) }()
	wt, err := c.Receive(file, "octet")
	if err != nil {
		return 0, err
	}
	return wt.WriteTo(io.Discard)
}

type statusError struct {
	url    string
	status int
	body   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("GET %s: %d %s %s", e.url, e.status, http.StatusText(e.status), e.body)
}

func get(ctx context.Context, c *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{u, resp.StatusCode, strings.TrimSpace(string(b))}
	}
	return b, err
}

func fetch(ctx context.Context, c *http.Client, u string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, &statusError{u, resp.StatusCode, strings.TrimSpace(string(b))}
	}
	return io.Copy(io.Discard, resp.Body)
}

// jitter returns d plus up to frac*d more, at random.
func jitter(d time.Duration, frac float64) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + time.Duration(rand.Float64()*frac*float64(d))
}

// wait waits d or until ctx ends; it reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// parseScript reads an iPXE script's kernel and initrd URLs and the
// kernel command line's key=value words.
func parseScript(s string) (kernel, initrd string, cmdline map[string]string) {
	cmdline = map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "kernel":
			kernel = f[1]
			for _, w := range f[2:] {
				if k, v, ok := strings.Cut(w, "="); ok {
					cmdline[k] = v
				}
			}
		case "initrd":
			initrd = f[1]
		}
	}
	if u, err := url.Parse(kernel); err != nil || u.Scheme == "" {
		kernel = ""
	}
	return kernel, initrd, cmdline
}

// cpuFlags are a real Xeon's /proc/cpuinfo flags (the first 120 of
// them): an inventory carries them all.
var cpuFlags = strings.Fields(`fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush
	dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts
	rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3
	sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand
	lahf_lm abm 3dnowprefetch cpuid_fault epb cat_l3 invpcid_single intel_ppin ssbd mba ibrs ibpb stibp ibrs_enhanced
	tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a avx512f
	avx512dq rdseed adx smap avx512ifma clflushopt clwb intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec`)

// Inventory is a synthetic but plausible inventory of about 4 KB (a real
// one is 3-8 KB), the same every time for a MAC: the machine's identity
// (a uuid and a serial no firmware ships as a placeholder, distinct for
// every MAC), sizes, disks and a second NIC derive from it. The second
// NIC's MAC is the boot MAC with the high bit of its third byte flipped,
// so it belongs to no other simulated machine whose boot MACs keep that
// bit clear.
func Inventory(mac net.HardwareAddr) proto.Inventory {
	h := sha256.Sum256(mac)
	seed := binary.BigEndian.Uint32(h[:4])
	cpus := []int{8, 16, 32, 64}[seed%4]
	memGiB := int64([]int{32, 64, 128, 256}[(seed>>2)%4])
	hexMAC := strings.ToUpper(strings.ReplaceAll(mac.String(), ":", ""))
	second := append(net.HardwareAddr{}, mac...)
	if len(second) == 6 {
		second[2] ^= 0x80
	}
	var dimms []proto.DIMM
	for i := range 8 {
		dimms = append(dimms, proto.DIMM{Locator: fmt.Sprintf("DIMM_%c%d", 'A'+i/2, i%2+1), SizeBytes: memGiB << 30 / 8, Type: "DDR4", SpeedMTs: 3200})
	}
	inv := proto.Inventory{
		Version: proto.InventoryVersion,
		System: proto.System{Vendor: "Metalfleet Sim", Product: "SimServer 1U", Serial: "SIM-" + hexMAC,
			UUID: uuid.NewSHA1(uuid.NameSpaceOID, mac).String()},
		Firmware: proto.Firmware{Vendor: "SimBIOS", Version: "1.0", Date: "01/01/2026"},
		BootMode: "bios", PXEMAC: mac.String(),
		CPUs: proto.CPUs{Count: cpus, Model: "Simulated CPU @ 2.40GHz", Architecture: "x86_64", Sockets: 1, Cores: cpus / 2,
			Threads: cpus, MHz: 2400, Flags: cpuFlags},
		Memory: proto.Memory{TotalBytes: memGiB << 30, PhysicalBytes: memGiB << 30, DIMMs: dimms},
		Disks: []proto.Disk{
			{Name: "sda", SizeBytes: 480 << 30, Model: "SimSSD", Serial: "SSD" + hexMAC, WWN: fmt.Sprintf("0x5000c500%08x", seed),
				ByPath: "pci-0000:00:17.0-ata-1", Rotational: false},
			{Name: "sdb", SizeBytes: 4 << 40, Model: "SimHDD", Serial: "HDD" + hexMAC, WWN: fmt.Sprintf("0x5000c501%08x", seed),
				ByPath: "pci-0000:00:17.0-ata-2", Rotational: true},
			{Name: "nvme0n1", SizeBytes: 1920 << 30, Model: "SimNVMe 1.92TB", Serial: "NVM" + hexMAC, ByPath: "pci-0000:5e:00.0-nvme-1"},
		},
		Interfaces: []proto.Interface{
			{Name: "eth0", MAC: mac.String(), Driver: "sim", SpeedMbps: 25000, Carrier: true,
				LLDP: &proto.LLDP{ChassisID: "00:1c:73:00:00:01", PortID: fmt.Sprintf("Ethernet%d", seed%48+1), SystemName: "tor-sim"}},
			{Name: "eth1", MAC: second.String(), Driver: "sim", SpeedMbps: 25000, Carrier: false},
		},
		PCI: []proto.PCIDevice{
			{Address: "0000:00:00.0", Vendor: "8086", Device: "09a2", Class: "060000"},
			{Address: "0000:00:17.0", Vendor: "8086", Device: "a182", Class: "010601"},
			{Address: "0000:03:00.0", Vendor: "102b", Device: "0536", Class: "030000"},
			{Address: "0000:5e:00.0", Vendor: "144d", Device: "a80a", Class: "010802"},
			{Address: "0000:31:00.0", Vendor: "15b3", Device: "1017", Class: "020000"},
			{Address: "0000:31:00.1", Vendor: "15b3", Device: "1017", Class: "020000"},
		},
		Collected: proto.CollectedInfo{Agent: "sim"},
	}
	return inv
}
