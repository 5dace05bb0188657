//go:build linux

package e2e

// The virtual BMC: OpenIPMI's ipmi_sim serving IPMI over LAN (RMCP+ with
// cipher suite 3, and v1.5) on an address of the lab's namespace, whose
// chassis_control program (testdata/ipmi_sim/chassis-control.sh) hands each
// call ipmi_sim makes ("0x20 set power 1", "0x20 get power", ...) over TCP
// on the namespace's loopback to the vbmc's controller in the test, which
// starts and stops the VM (QEMU, a child of the test process) and keeps its
// boot device. (The program is a bash script, not a Go binary: ipmi_sim
// waits for it and an IPMI client retransmits after about a second, which
// ipmi_sim executes again; bash starts in milliseconds even on busy cores,
// a race-built test binary in about one second.) SOL is
// ipmi_sim's own, connected to QEMU's serial port (a TCP chardev server in
// the namespace); QEMU also writes everything the guest prints to a log file.
//
// The VM's boot devices, as QEMU is started for each power-on:
//
//	pxe      the NIC first (its iPXE ROM): a network boot from the rack agent
//	default  the "installed OS": a small busybox system with a shell on the
//	         serial console (testdata/os/init), booted by QEMU's -kernel and
//	         -initrd, which stand in for a disk; it does no DHCP.
//
// A boot device is set for the next power-on or reset only: ipmi_sim does not
// pass the persistent flag to chassis_control. A reset with the boot device
// of the running power-on is QEMU's system_reset (the same process, so SOL
// stays connected); with another one, QEMU is restarted with the new device.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
)

// Boot devices as ipmi_sim names them to chassis_control.
const (
	bootPXE     = "pxe"
	bootDefault = "default"
)

// osMarker is the line the installed OS prints when its /init runs.
const osMarker = "MF-E2E-OS up"

// vbmc is one virtual BMC and the VM it powers.
type vbmc struct {
	t    *testing.T
	l    *lab
	name string
	dir  string
	spec vmSpec

	Addr     string // IPMI LAN address, a /32 on the namespace's lo
	User     string
	Password string

	Serial     string // the VM's serial console log, every power-on appended
	serialPort int    // QEMU's serial chardev server (127.0.0.1, in the namespace)
	monitor    string // QEMU's HMP monitor socket
	sim        *netlab.Proc
	ln         net.Listener  // the controller: TCP on 127.0.0.1 in the namespace
	served     chan struct{} // closed when the controller has stopped

	kernel, osInitrd string // the installed OS

	mu       sync.Mutex
	qemu     *vmProc
	nextBoot string      // set by "set boot": for the next power-on or reset
	ops      []chassisOp // every chassis_control call, oldest first
	starts   []vmStart   // every QEMU start, oldest first
	resets   int         // system_resets done
	runs     int         // QEMU processes started (numbers their logs)
	closing  bool
	powerGet int // "get power" calls: ipmi_sim asks on every chassis status
}

// chassisOp is one chassis_control call as the controller answered it.
type chassisOp struct {
	At   time.Time
	Args string
	Out  string
	Code int
}

// vmStart is one start of QEMU (a power-on, or a reset that changed the
// boot device).
type vmStart struct {
	At   time.Time
	Boot string
	Pid  int
}

// vmProc is one QEMU process.
type vmProc struct {
	cmd    *exec.Cmd
	boot   string
	done   chan struct{}
	exited time.Time
	err    error
}

func (p *vmProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// newVBMC starts ipmi_sim as the BMC number n (from 1) of a VM with the
// hardware of spec, on LAN address 10.98.X.(n+1), with user admin and
// password. The VM is off. Everything is stopped when the test ends:
// ipmi_sim, then QEMU, each by its pid, then (the lab's cleanup) the
// namespace with the address.
func newVBMC(t *testing.T, l *lab, n int, spec vmSpec, password string) *vbmc {
	t.Helper()
	v := &vbmc{t: t, l: l, name: fmt.Sprintf("vbmc%d", n), spec: spec,
		Addr: fmt.Sprintf("10.98.%d.%d", l.X, n+1), User: "admin", Password: password,
		serialPort: 9100 + n, served: make(chan struct{})}
	v.dir = filepath.Join(l.dir, v.name)
	if err := os.MkdirAll(filepath.Join(v.dir, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	v.Serial = filepath.Join(v.dir, "serial.log")
	v.monitor = filepath.Join(v.dir, "monitor.sock")
	v.kernel = l.images.Kernel
	v.osInitrd = filepath.Join(v.dir, "os.cpio.gz")
	kver := ""
	for _, f := range strings.Fields(l.images.Info) {
		if k, ok := strings.CutPrefix(f, "kernel_version="); ok {
			kver = k
		}
	}
	if err := writeOSInitrd(v.osInitrd, kver); err != nil {
		t.Fatalf("the VM's installed OS: %v", err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, "sercon-port.bin"), []byte{0xf8, 0x03}, 0o644); err != nil {
		t.Fatal(err)
	}
	// The BMC's address: a /32 on lo (LAB.md: a second address on the
	// bridge makes replies leave from the wrong source).
	netlab.Run(t, "ip", "-n", l.NS, "addr", "add", v.Addr+"/32", "dev", "lo")

	// The controller, on a thread of its own: QEMU dies with that thread
	// (Pdeathsig), so with the test process too.
	if err := netlab.Do(l.NS, func() error {
		var err error
		v.ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("the vbmc's controller: %v", err)
	}
	go v.serve()
	t.Cleanup(v.close)

	program, err := filepath.Abs(filepath.Join("testdata", "ipmi_sim", "chassis-control.sh"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join("testdata", "ipmi_sim", "lan.conf.in"))
	if err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("@NAME@", v.name, "@ADDR@", v.Addr, "@GUID@", fmt.Sprintf("a1234567%024x", n),
		"@CHASSIS@", fmt.Sprintf("VBMC_CONTROL_PORT=%d bash %s", v.ln.Addr().(*net.TCPAddr).Port, program),
		"@USER@", v.User, "@PASSWORD@", v.Password, "@SOLPORT@", strconv.Itoa(v.serialPort))
	confPath := filepath.Join(v.dir, "lan.conf")
	if err := os.WriteFile(confPath, []byte(r.Replace(string(conf))), 0o600); err != nil {
		t.Fatal(err)
	}
	emu, err := filepath.Abs(filepath.Join("testdata", "ipmi_sim", "bmc.emu"))
	if err != nil {
		t.Fatal(err)
	}
	v.sim = netlab.Start(t, "ipmi_sim "+v.name, l.NS, filepath.Join(v.dir, "ipmi_sim.log"),
		"ipmi_sim", "-c", confPath, "-f", emu, "-s", filepath.Join(v.dir, "state"), "-n")
	testkit.Until(t, 20*time.Second, "ipmi_sim "+v.name+" to answer chassis power status", func() error {
		if !v.sim.Running() {
			t.Fatalf("ipmi_sim exited: %v\n%s", v.sim.Err, netlab.Tail(v.sim.LogPath, 20))
		}
		_, err := v.ipmitool("chassis", "power", "status")
		return err
	})
	return v
}

// ipmitool runs ipmitool against the BMC from inside the namespace, as an
// operator at the BMC would (RMCP+, cipher suite 3).
func (v *vbmc) ipmitool(args ...string) (string, error) {
	return v.ipmitoolAs(v.Password, args...)
}

func (v *vbmc) ipmitoolAs(password string, args ...string) (string, error) {
	argv := append([]string{"netns", "exec", v.l.NS, "ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2",
		"-H", v.Addr, "-U", v.User, "-P", password}, args...)
	cmd := exec.Command("ip", argv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ipmitool %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// serve answers chassis_control calls one at a time (ipmi_sim makes them
// one at a time) on a locked OS thread that QEMU processes are started
// from.
func (v *vbmc) serve() {
	runtime.LockOSThread() // never unlocked: the thread ends with serve
	defer close(v.served)
	defer v.killVM()
	for {
		c, err := v.ln.Accept()
		if err != nil {
			return
		}
		v.handle(c)
	}
}

// handle answers one call: a line of arguments in, the output lines and
// "exit N" out.
func (v *vbmc) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	args := strings.Fields(line)
	out, code := v.chassis(args)
	v.mu.Lock()
	v.ops = append(v.ops, chassisOp{At: time.Now(), Args: strings.Join(args, " "), Out: out, Code: code})
	v.mu.Unlock()
	fmt.Fprintf(c, "%sexit %d\n", out, code)
}

// chassis executes one call: "MC get PARM..." or "MC set PARM VAL...".
func (v *vbmc) chassis(args []string) (string, int) {
	if len(args) < 2 {
		return fmt.Sprintf("want: MC get|set PARM...; got %q\n", args), 1
	}
	switch op, parms := args[1], args[2:]; op {
	case "get":
		var b strings.Builder
		for _, p := range parms {
			switch p {
			case "power":
				v.mu.Lock()
				v.powerGet++
				on := v.qemu != nil && v.qemu.running()
				v.mu.Unlock()
				fmt.Fprintf(&b, "power:%d\n", map[bool]int{false: 0, true: 1}[on])
			case "boot":
				v.mu.Lock()
				nb := v.nextBoot
				v.mu.Unlock()
				if nb == "" {
					nb = bootDefault
				}
				fmt.Fprintf(&b, "boot:%s\n", nb)
			default:
				return fmt.Sprintf("Invalid parameter: %s\n", p), 1
			}
		}
		return b.String(), 0
	case "set":
		for len(parms) >= 2 {
			p, val := parms[0], parms[1]
			parms = parms[2:]
			var err error
			switch p {
			case "power":
				if val == "1" {
					err = v.powerOn()
				} else {
					v.killVM()
				}
			case "reset":
				err = v.reset()
			case "boot":
				switch val {
				case bootPXE, bootDefault, "none", "cdrom", "bios":
					v.mu.Lock()
					v.nextBoot = val
					v.mu.Unlock()
				default:
					return fmt.Sprintf("Invalid boot value: %s\n", val), 1
				}
			case "shutdown":
				// An ACPI power button press: the installed OS's acpid
				// powers off; firmware (a PXE boot) ignores it.
				err = v.hmp("system_powerdown")
			case "identify":
				if len(parms) > 0 {
					parms = parms[1:] // interval and force: ignored
				}
			default:
				return fmt.Sprintf("Invalid parameter: %s\n", p), 1
			}
			if err != nil {
				return err.Error() + "\n", 1
			}
		}
		return "", 0
	case "check":
		return "", 1
	default:
		return fmt.Sprintf("Unknown operation: %s\n", op), 1
	}
}

// takeBoot is the boot device of the next start, which it uses up.
func (v *vbmc) takeBoot() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	b := v.nextBoot
	v.nextBoot = ""
	if b != bootPXE {
		b = bootDefault
	}
	return b
}

// powerOn starts QEMU unless it runs.
func (v *vbmc) powerOn() error {
	v.mu.Lock()
	on := v.qemu != nil && v.qemu.running()
	v.mu.Unlock()
	if on {
		return nil
	}
	return v.startVM(v.takeBoot())
}

// reset is a hard reset of a running VM: QEMU's system_reset, or a restart
// of QEMU when the boot device differs from the running one's. A VM that is
// off stays off.
func (v *vbmc) reset() error {
	v.mu.Lock()
	q := v.qemu
	nb := v.nextBoot
	v.mu.Unlock()
	if q == nil || !q.running() {
		return nil
	}
	if nb != bootPXE {
		nb = bootDefault
	}
	if nb == q.boot {
		v.takeBoot()
		if err := v.hmp("system_reset"); err != nil {
			return err
		}
		v.mu.Lock()
		v.resets++
		v.mu.Unlock()
		return nil
	}
	v.killVM()
	return v.startVM(v.takeBoot())
}

// startVM starts QEMU in the namespace, booting boot (pxe or default).
func (v *vbmc) startVM(boot string) error {
	v.mu.Lock()
	if v.closing {
		v.mu.Unlock()
		return errors.New("the test is ending")
	}
	v.runs++
	n := v.runs
	s := v.spec
	s.Disks = append([]vmDisk(nil), v.spec.Disks...)
	v.mu.Unlock()
	nic := "virtio-net-pci,netdev=n0,mac=" + s.MAC
	args := []string{"netns", "exec", v.l.NS, "qemu-system-x86_64",
		"-name", v.name + ",process=mf-e2e-" + v.name,
		"-accel", "tcg", "-machine", "pc", "-smp", strconv.Itoa(s.CPUs), "-m", strconv.Itoa(s.MemMiB),
		"-display", "none", "-vga", "none",
		"-monitor", "unix:" + v.monitor + ",server=on,wait=off",
		"-fw_cfg", "name=etc/sercon-port,file=" + filepath.Join(v.dir, "sercon-port.bin"),
		"-chardev", fmt.Sprintf("socket,id=ser0,host=127.0.0.1,port=%d,server=on,wait=off,logfile=%s,logappend=on", v.serialPort, v.Serial),
		"-serial", "chardev:ser0",
		"-smbios", fmt.Sprintf("type=1,manufacturer=%s,product=%s,serial=%s,uuid=%s", s.Manufacturer, s.Product, s.Serial, s.UUID),
		"-netdev", "tap,id=n0,ifname=" + tapName + ",script=no,downscript=no",
	}
	if s.UEFI {
		// OVMF, with the VM's own copy of the UEFI variables (kept
		// across power-ons, as a machine's NVRAM).
		vars := filepath.Join(v.dir, "OVMF_VARS.fd")
		if _, err := os.Stat(vars); err != nil {
			b, err := os.ReadFile(ovmfVars)
			if err != nil {
				return err
			}
			if err := os.WriteFile(vars, b, 0o644); err != nil {
				return err
			}
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	diskBoot := boot != bootPXE && s.DiskBoot
	disks, err := v.diskArgs(s.Disks, diskBoot)
	if err != nil {
		return err
	}
	args = append(args, disks...)
	if boot == bootPXE {
		args = append(args, "-device", nic+",bootindex=1")
	} else if diskBoot {
		// The disks (bootindex in order); the NIC without a boot entry.
		args = append(args, "-device", nic)
	} else {
		// The installed OS (QEMU's -kernel boots first whatever the
		// NIC's bootindex); the NIC is there, without a boot entry.
		args = append(args, "-device", nic,
			"-kernel", v.kernel, "-initrd", v.osInitrd, "-append", "console=ttyS0,115200 quiet panic=5")
	}
	args = append(args, "-boot", "strict=on")
	logf, err := os.OpenFile(filepath.Join(v.dir, fmt.Sprintf("qemu-%d.log", n)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &vmProc{cmd: cmd, boot: boot, done: make(chan struct{})}
	fmt.Fprintf(logf, "%s power-on, boot %s: %s\n", time.Now().Format(time.RFC3339Nano), boot, strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start QEMU: %w", err)
	}
	now := time.Now()
	go func() {
		p.err = cmd.Wait()
		p.exited = time.Now()
		logf.Close()
		close(p.done)
	}()
	v.mu.Lock()
	v.qemu = p
	v.starts = append(v.starts, vmStart{At: now, Boot: boot, Pid: cmd.Process.Pid})
	v.mu.Unlock()
	return nil
}

// diskArgs are QEMU's arguments for the spec's disks: virtio-blk with the
// disk's serial, backed by a sparse raw file of the vbmc's directory named
// for the serial, made on the first power-on and kept for the next ones
// (what the guest wrote stays, as on a real disk). bootable: each disk
// gets a bootindex, in order.
func (v *vbmc) diskArgs(disks []vmDisk, bootable bool) ([]string, error) {
	var args []string
	for i, d := range disks {
		f := v.DiskFile(d.Serial)
		if _, err := os.Stat(f); err != nil {
			fh, err := os.Create(f)
			if err != nil {
				return nil, err
			}
			err = fh.Truncate(d.Size)
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
		}
		dev := fmt.Sprintf("virtio-blk-pci,drive=d%d,serial=%s", i+1, d.Serial)
		if bootable {
			dev += fmt.Sprintf(",bootindex=%d", i+1)
		}
		args = append(args,
			"-drive", fmt.Sprintf("if=none,id=d%d,file=%s,format=raw", i+1, f),
			"-device", dev)
	}
	return args, nil
}

// DiskFile is the file behind the VM's disk with this serial.
func (v *vbmc) DiskFile(serial string) string {
	return filepath.Join(v.dir, "disk-"+serial+".img")
}

// AddDisk adds a disk to the VM from its next power-on (a disk put in
// while the machine is off).
func (v *vbmc) AddDisk(d vmDisk) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.spec.Disks = append(v.spec.Disks, d)
}

// killVM stops QEMU at once (SIGKILL: power is cut) and waits for it.
func (v *vbmc) killVM() {
	v.mu.Lock()
	q := v.qemu
	v.mu.Unlock()
	if q == nil || !q.running() {
		return
	}
	_ = q.cmd.Process.Kill()
	select {
	case <-q.done:
	case <-time.After(5 * time.Second):
	}
}

// hmp sends one command to QEMU's monitor.
func (v *vbmc) hmp(command string) error {
	c, err := net.DialTimeout("unix", v.monitor, 500*time.Millisecond)
	if err != nil {
		return fmt.Errorf("QEMU monitor: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	r := bufio.NewReader(c)
	prompt := func() error {
		var seen []byte
		for !bytes.HasSuffix(seen, []byte("(qemu) ")) {
			b, err := r.ReadByte()
			if err != nil {
				return fmt.Errorf("QEMU monitor: %w", err)
			}
			seen = append(seen, b)
		}
		return nil
	}
	if err := prompt(); err != nil {
		return err
	}
	if _, err := c.Write([]byte(command + "\n")); err != nil {
		return fmt.Errorf("QEMU monitor: %w", err)
	}
	return prompt()
}

func (v *vbmc) close() {
	v.mu.Lock()
	v.closing = true
	v.mu.Unlock()
	v.ln.Close()
	select {
	case <-v.served:
	case <-time.After(10 * time.Second):
		v.t.Errorf("%s: the chassis controller did not stop", v.name)
	}
	v.killVM()
	if v.t.Failed() {
		v.t.Logf("--- %s: chassis_control calls ---\n%s", v.name, v.opsText(40))
		v.t.Logf("--- %s: VM serial console (%s), last lines ---\n%s", v.name, v.Serial, consoleText(v.Serial, 40))
		v.mu.Lock()
		n := v.runs
		v.mu.Unlock()
		if n > 0 {
			q := filepath.Join(v.dir, fmt.Sprintf("qemu-%d.log", n))
			v.t.Logf("--- %s: the last QEMU's output (%s) ---\n%s", v.name, q, netlab.Tail(q, 10))
		}
	}
}

// --- what the test reads ---

// On reports whether QEMU runs.
func (v *vbmc) On() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.qemu != nil && v.qemu.running()
}

// Pid is the running QEMU's pid (0 when off).
func (v *vbmc) Pid() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.qemu == nil || !v.qemu.running() {
		return 0
	}
	return v.qemu.cmd.Process.Pid
}

// Exited is when the last QEMU exited (zero while it runs).
func (v *vbmc) Exited() time.Time {
	v.mu.Lock()
	q := v.qemu
	v.mu.Unlock()
	if q == nil || q.running() {
		return time.Time{}
	}
	return q.exited
}

// Starts is every QEMU start so far.
func (v *vbmc) Starts() []vmStart {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]vmStart(nil), v.starts...)
}

// Resets is how many system_resets the BMC did.
func (v *vbmc) Resets() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.resets
}

// PowerGets is how many times ipmi_sim asked the power state.
func (v *vbmc) PowerGets() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.powerGet
}

// Ops returns the chassis_control calls made since t whose arguments
// contain sub.
func (v *vbmc) Ops(since time.Time, sub string) []chassisOp {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []chassisOp
	for _, o := range v.ops {
		if !o.At.Before(since) && strings.Contains(o.Args, sub) {
			out = append(out, o)
		}
	}
	return out
}

func (v *vbmc) opsText(n int) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	ops := v.ops
	if len(ops) > n {
		ops = ops[len(ops)-n:]
	}
	for _, o := range ops {
		fmt.Fprintf(&b, "%s %s -> %d %q\n", o.At.Format("15:04:05.000"), o.Args, o.Code, strings.TrimSpace(o.Out))
	}
	return b.String()
}

// KillBehindBack kills QEMU without the BMC: the machine lost power.
func (v *vbmc) KillBehindBack() {
	v.killVM()
}

// SerialCount is how many times sub occurs in the serial log (cleaned of
// terminal escapes).
func (v *vbmc) SerialCount(sub string) int {
	b, _ := os.ReadFile(v.Serial)
	return strings.Count(cleanConsole(b), sub)
}

// SOLConnected reports whether ipmi_sim holds a TCP connection to QEMU's
// serial port (it connects about every 10 s after QEMU starts), read from
// ipmi_sim's own /proc/PID/net/tcp (its namespace's table).
func (v *vbmc) SOLConnected() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", v.sim.Cmd.Process.Pid))
	if err != nil {
		return false
	}
	want := fmt.Sprintf("0100007F:%04X", v.serialPort)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// sl local rem st: an established (01) connection to the port.
		if len(f) > 3 && f[2] == want && f[3] == "01" {
			return true
		}
	}
	return false
}

// writeOSInitrd writes the installed OS's initramfs (newc cpio, gzip):
// the static busybox of busybox-static as /bin/busybox, testdata/os/init
// as /init, the console device nodes, and the kernel kver's modules for
// the power button (evdev, button), if it has them as modules.
func writeOSInitrd(path, kver string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w (package busybox-static)", err)
	}
	initScript, err := os.ReadFile(filepath.Join("testdata", "os", "init"))
	if err != nil {
		return err
	}
	var raw bytes.Buffer
	w := &cpioWriter{w: &raw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "root", "sbin", "usr", "usr/bin", "usr/sbin"} {
		w.add(d, 0o040755, nil, 0, 0)
	}
	w.add("dev/console", 0o020600, nil, 5, 1)
	w.add("dev/ttyS0", 0o020660, nil, 4, 64)
	w.add("bin/busybox", 0o100755, bb, 0, 0)
	w.add("lib", 0o040755, nil, 0, 0)
	w.add("lib/modules", 0o040755, nil, 0, 0)
	for _, m := range []string{"drivers/input/evdev.ko", "drivers/acpi/button.ko"} {
		if b, err := os.ReadFile(filepath.Join("/lib/modules", kver, "kernel", m)); err == nil {
			w.add("lib/modules/"+filepath.Base(m), 0o100644, b, 0, 0)
		}
	}
	w.add("init", 0o100755, initScript, 0, 0)
	w.add("TRAILER!!!", 0, nil, 0, 0)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpioWriter writes a newc ("070701") cpio archive.
type cpioWriter struct {
	w   *bytes.Buffer
	ino int
}

func (c *cpioWriter) add(name string, mode int, data []byte, rmajor, rminor int) {
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad()
	c.w.Write(data)
	c.pad()
}

func (c *cpioWriter) pad() {
	for c.w.Len()%4 != 0 {
		c.w.WriteByte(0)
	}
}
