package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// ModuleListFile lists, in load order, the kernel modules the ramdisk
// build put under /lib/modules/$(uname -r).
const ModuleListFile = "/etc/metalfleet/modules"

// Link is a network interface backed by a device.
type Link struct {
	Name    string
	MAC     string
	Carrier bool
}

// listLinks reads the device-backed interfaces of /sys/class/net.
func listLinks(fs sysfs) []Link {
	var out []Link
	for _, name := range fs.list("sys/class/net") {
		n := "sys/class/net/" + name + "/"
		if name == "lo" || !fs.exists(n+"device") {
			continue
		}
		out = append(out, Link{Name: name, MAC: strings.ToLower(fs.str(n + "address")), Carrier: fs.str(n+"carrier") == "1"})
	}
	return out
}

// ChooseInterfaces picks the interfaces to take a DHCP lease on: the one
// with the boot MAC when it is there; else every interface with carrier;
// else every interface (carrier can be slow to show, and trying costs
// only time).
func ChooseInterfaces(links []Link, mac string) []Link {
	if mac != "" {
		for _, l := range links {
			if l.MAC == mac {
				return []Link{l}
			}
		}
	}
	var up []Link
	for _, l := range links {
		if l.Carrier {
			up = append(up, l)
		}
	}
	if len(up) > 0 {
		return up
	}
	return links
}

// Lease is an IPv4 DHCP lease on one interface.
type Lease struct {
	Interface string
	MAC       string
	Addr      net.IPNet // address and mask
	Router    net.IP    // nil when the server gave none
	DNS       []net.IP
	Server    net.IP
	Duration  time.Duration
}

func (l *Lease) String() string {
	return fmt.Sprintf("%s %s router=%v dns=%v server=%v lease=%s", l.Interface, l.Addr.String(), l.Router, l.DNS, l.Server, l.Duration)
}

// initSystem is what the ramdisk's init needs of the machine. The Linux
// one is in init_linux.go; tests fake it.
type initSystem struct {
	// mountAll mounts /proc, /sys, /dev and /run.
	mountAll func() error
	// loadModules loads the ramdisk's module list; it returns one error
	// per module that failed.
	loadModules func() (loaded int, errs []error)
	cmdline     func() (string, error)
	links       func() []Link
	linkUp      func(name string) error
	dhcp        func(ctx context.Context, l Link) (*Lease, error)
	configure   func(l *Lease) error
	lldp        func(ctx context.Context, ifaces []string, wait time.Duration) map[string]*proto.LLDP
	collect     func(ctx context.Context, o Options) (*proto.Inventory, error)
	report      func(ctx context.Context, callback, mac, token, step string, body any) error
	// runTask runs a servicing task (RunTask; the Machine is filled in
	// when env has none).
	runTask  func(ctx context.Context, env TaskEnv) error
	powerOff func() error
	reboot   func() error
	// sleep waits d or until ctx ends.
	sleep func(ctx context.Context, d time.Duration)
	out   io.Writer // the console
	log   *slog.Logger
}

// runInit is the ramdisk's whole life from mounting to the report. It
// returns what happened; finish acts on it.
func runInit(ctx context.Context, sys *initSystem) (BootParams, error) {
	log := sys.log
	if err := sys.mountAll(); err != nil {
		log.Error("mount", "err", err)
	} else {
		log.Info("mounted /proc /sys /dev /run")
	}
	n, errs := sys.loadModules()
	failed := 0
	for _, err := range errs {
		if nd, ok := err.(interface{ NoDevice() bool }); ok && nd.NoDevice() {
			log.Info("module found no device", "err", err)
			continue
		}
		failed++
		log.Warn("module", "err", err)
	}
	log.Info("modules loaded", "loaded", n, "no_device", len(errs)-failed, "failed", failed)

	raw, err := sys.cmdline()
	if err != nil {
		log.Error("reading /proc/cmdline", "err", err)
	}
	p, err := ParseCmdline(raw)
	if err != nil {
		log.Warn("kernel command line", "err", err)
	}
	if p.Task == string(proto.TaskRescue) && p.PowerOff {
		// A rescue ramdisk stays up: the coordinator ends the rescue.
		log.Warn("metalfleet.poweroff ignored: a rescue ramdisk stays up")
		p.PowerOff = false
	}
	log.Info("parameters", "params", p.String())

	// Wait for the NICs to show (the boot MAC's, or any), bring them
	// all up, and give carrier a moment.
	links := waitLinks(ctx, sys, p.MAC, 10*time.Second)
	for _, l := range links {
		if err := sys.linkUp(l.Name); err != nil {
			log.Warn("link up", "iface", l.Name, "err", err)
		}
	}
	links = waitCarrier(ctx, sys, p.MAC, 5*time.Second)
	for _, l := range links {
		log.Info("interface", "iface", l.Name, "mac", l.MAC, "carrier", l.Carrier)
	}

	var lldpDone chan map[string]*proto.LLDP
	if p.LLDPWait > 0 {
		var names []string
		for _, l := range links {
			if l.Carrier {
				names = append(names, l.Name)
			}
		}
		lldpDone = make(chan map[string]*proto.LLDP, 1)
		go func() { lldpDone <- sys.lldp(ctx, names, p.LLDPWait) }()
		log.Info("listening for LLDP", "ifaces", names, "wait", p.LLDPWait)
	}

	lease, dhcpErr := dhcpFirst(ctx, sys, ChooseInterfaces(links, p.MAC), p.DHCPTimeout)
	if dhcpErr != nil {
		log.Error("dhcp", "err", dhcpErr)
	} else {
		log.Info("dhcp lease", "lease", lease.String())
		if err := sys.configure(lease); err != nil {
			log.Error("configuring the lease", "iface", lease.Interface, "err", err)
			dhcpErr = err
		}
	}
	mac := p.MAC
	if mac == "" && lease != nil {
		mac = lease.MAC
	}

	if p.Task != "" && p.Task != proto.TaskDiscovery && p.Token != "" {
		return p, runTaskInit(ctx, sys, p, mac, dhcpErr)
	}

	o := Options{Root: "/", Live: true, PXEMAC: mac, Log: log, LLDP: map[string]*proto.LLDP{}}
	if lldpDone != nil {
		select {
		case o.LLDP = <-lldpDone:
		case <-ctx.Done():
		}
	}
	inv, err := sys.collect(ctx, o)
	if err != nil {
		return p, fmt.Errorf("collecting the inventory: %w", err)
	}
	log.Info("inventory collected", "ms", inv.Collected.DurationMS, "cpus", inv.CPUs.Count,
		"memory_bytes", inv.Memory.TotalBytes, "disks", len(inv.Disks), "interfaces", len(inv.Interfaces), "bmc", inv.BMCAddress)
	if p.Print {
		b, _ := json.MarshalIndent(inv, "", "  ")
		fmt.Fprintf(sys.out, "----- metalfleet inventory -----\n%s\n----- end inventory -----\n", b)
	}

	if p.Callback == "" {
		log.Info("no metalfleet.callback: not reporting")
		return p, nil
	}
	if dhcpErr != nil {
		return p, fmt.Errorf("no network to report on: %w", dhcpErr)
	}
	if mac == "" {
		return p, errors.New("no MAC to report as (no BOOTIF or metalfleet.mac)")
	}
	if err := sys.report(ctx, p.Callback, mac, p.Token, StepInventory, inv); err != nil {
		return p, fmt.Errorf("reporting the inventory: %w", err)
	}
	log.Info("inventory reported", "callback", p.Callback, "step", StepInventory)
	return p, nil
}

// runTaskInit runs the servicing task the command line names instead of
// the discovery inventory. A step that failed and was reported is not an
// error of the ramdisk: the coordinator ends the task and powers the
// node off, so the ramdisk finishes as after a success (and does not
// reboot into the task again).
func runTaskInit(ctx context.Context, sys *initSystem, p BootParams, mac string, dhcpErr error) error {
	switch {
	case p.Callback == "":
		return fmt.Errorf("task %s: no %s to fetch the plan from", p.Task, proto.CmdlineCallback)
	case dhcpErr != nil:
		return fmt.Errorf("no network to run the task on: %w", dhcpErr)
	case mac == "":
		return errors.New("no MAC to run the task as (no BOOTIF or metalfleet.mac)")
	}
	sys.log.Info("running the task", "task", p.Task, "callback", p.Callback)
	err := sys.runTask(ctx, TaskEnv{CallbackURL: p.Callback, MAC: mac, Token: p.Token, Log: sys.log})
	if errors.Is(err, ErrStepFailed) {
		sys.log.Error("the task failed; the coordinator ends it and powers the node off", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("task %s: %w", p.Task, err)
	}
	sys.log.Info("the task is done; the coordinator powers the node off")
	return nil
}

// finish does what the command line says once the run is over: power
// off, reboot, or stay up. It returns only when staying up ends with ctx,
// or when powering off fails.
func finish(ctx context.Context, sys *initSystem, p BootParams, runErr error) error {
	log := sys.log
	action := OnErrorStay
	switch {
	case runErr == nil && p.PowerOff:
		action = OnErrorPowerOff
	case runErr == nil:
		log.Info("done; staying up (metalfleet.poweroff=false)")
	default:
		log.Error("task failed", "err", runErr, "onerror", p.OnError)
		action = p.OnError
	}
	switch action {
	case OnErrorPowerOff:
		log.Info("powering off")
		return sys.powerOff()
	case OnErrorReboot:
		log.Info("rebooting in 10s")
		sys.sleep(ctx, 10*time.Second)
		return sys.reboot()
	}
	if runErr != nil {
		log.Info("staying up (metalfleet.onerror=stay)")
	}
	// Sleep rather than block on ctx.Done(): with a background context
	// and nothing else running, the Go runtime would call a bare channel
	// wait a deadlock and exit, and PID 1 exiting panics the kernel.
	for ctx.Err() == nil {
		sys.sleep(ctx, time.Hour)
	}
	return ctx.Err()
}

// waitLinks waits up to max for the interface with mac (or, without a
// MAC, for any interface) to appear, and returns the interfaces then.
func waitLinks(ctx context.Context, sys *initSystem, mac string, max time.Duration) []Link {
	const step = 100 * time.Millisecond
	for waited := time.Duration(0); ; waited += step {
		links := sys.links()
		found := len(links) > 0
		if mac != "" {
			found = false
			for _, l := range links {
				found = found || l.MAC == mac
			}
		}
		if found || waited >= max || ctx.Err() != nil {
			if !found {
				sys.log.Warn("interface not found", "mac", orNone(mac), "waited", max, "have", len(links))
			}
			return links
		}
		sys.sleep(ctx, step)
	}
}

// waitCarrier waits up to max for carrier on the interfaces DHCP will
// use: the boot MAC's, or at least one.
func waitCarrier(ctx context.Context, sys *initSystem, mac string, max time.Duration) []Link {
	const step = 100 * time.Millisecond
	for waited := time.Duration(0); ; waited += step {
		links := sys.links()
		ok := false
		for _, l := range links {
			if l.Carrier && (mac == "" || l.MAC == mac) {
				ok = true
			}
		}
		if ok || waited >= max || ctx.Err() != nil {
			return links
		}
		sys.sleep(ctx, step)
	}
}

// dhcpFirst asks for a lease on every candidate at once and returns the
// first one granted; the others are cancelled.
func dhcpFirst(ctx context.Context, sys *initSystem, cands []Link, timeout time.Duration) (*Lease, error) {
	if len(cands) == 0 {
		return nil, errors.New("no network interface")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		lease *Lease
		err   error
	}
	results := make(chan result, len(cands))
	var wg sync.WaitGroup
	for _, l := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, err := sys.dhcp(ctx, l)
			if err != nil {
				err = fmt.Errorf("%s: %w", l.Name, err)
			}
			results <- result{lease, err}
		}()
	}
	var errs []error
	for range cands {
		r := <-results
		if r.err == nil {
			cancel()
			wg.Wait()
			return r.lease, nil
		}
		errs = append(errs, r.err)
	}
	return nil, errors.Join(errs...)
}
