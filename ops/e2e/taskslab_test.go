//go:build linux

package e2e

// Helpers of the servicing-task test (tasks_test.go): the test's image
// server, a `metalfleet node task ... --wait -o json` process, what the
// task ramdisk must hold, the member disks' md superblocks read from the
// host, and a task's phases.

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	binenc "encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// imageServer serves files over HTTP on 127.0.0.1 in the lab's namespace,
// as an operator's artifact store would: the coordinator's images point
// at it and the rack agent fetches them from it into its cache.
type imageServer struct {
	URL string // http://127.0.0.1:PORT
	dir string
	srv *http.Server

	mu   sync.Mutex
	gets map[string]int // GETs by path
}

func newImageServer(t *testing.T, l *lab) *imageServer {
	t.Helper()
	s := &imageServer{dir: t.TempDir(), gets: map[string]int{}}
	var ln net.Listener
	if err := netlab.Do(l.NS, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("image server: %v", err)
	}
	s.URL = "http://" + ln.Addr().String()
	files := http.FileServer(http.Dir(s.dir))
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			s.mu.Lock()
			s.gets[r.URL.Path]++
			s.mu.Unlock()
		}
		files.ServeHTTP(w, r)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = s.srv.Close()
		<-done
	})
	return s
}

// add writes a file to serve; it returns its URL and sha256 (hex).
func (s *imageServer) add(t *testing.T, name string, b []byte) (string, string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return s.URL + "/" + name, hex.EncodeToString(sum[:])
}

// Gets is how many GETs the file name had.
func (s *imageServer) Gets(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets["/"+name]
}

// taskCLI is one `metalfleet node task NODE KIND ... --wait -o json`
// process: stdout must be exactly one JSON document (the task), stderr
// the progress.
type taskCLI struct {
	args    []string
	cmd     *exec.Cmd
	stdout  testkit.SyncBuffer
	stderr  testkit.SyncBuffer
	started time.Time
	// console notes when the VM's serial console shows the boot's
	// milestones (what it printed since the command started).
	console    *consoleWatch
	initrdDone string // its marker of the initrd fetched
	done       chan struct{}
	ended      time.Time
	err        error
}

// startTaskCLI runs `metalfleet node task NODE KIND --param P... --timeout
// 20m --wait -o json` in the namespace; the process is killed, by its
// pid, if it still runs when the test ends.
func (o *oob) startTaskCLI(t *testing.T, node string, kind proto.TaskKind, params ...string) *taskCLI {
	t.Helper()
	args := []string{"node", "task", node, string(kind)}
	for _, p := range params {
		args = append(args, "--param", p)
	}
	args = append(args, "--timeout", "20m", "--wait", "-o", "json")
	c := &taskCLI{args: args, done: make(chan struct{})}
	c.cmd = exec.Command("ip", append([]string{"netns", "exec", o.l.NS, o.l.bin}, args...)...)
	c.cmd.Env = append(os.Environ(), "METALFLEET_TOKEN="+o.l.adminToken)
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var from int64
	if fi, err := os.Stat(o.v.Serial); err == nil {
		from = fi.Size()
	}
	// iPXE prints "URL... ok" once a download is done (bootVM).
	c.initrdDone = regexp.QuoteMeta(o.l.images.RamdiskSHA) + `\.\.\.[ 0-9%.]*o`
	c.console = watchConsoleFrom(o.v.Serial, from, []string{c.initrdDone, markInit})
	t.Cleanup(c.console.stop)
	c.started = time.Now()
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("metalfleet %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		c.err = c.cmd.Wait()
		c.ended = time.Now()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *taskCLI) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// wait waits for the command to exit and parses its stdout: exactly one
// JSON document, the task. It fails the test if the command runs past
// limit or prints anything else.
func (c *taskCLI) wait(t *testing.T, limit time.Duration) proto.Task {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(limit):
		t.Fatalf("metalfleet %s still runs after %s; stderr so far:\n%s", strings.Join(c.args, " "), limit, tail(c.stderr.String(), 20))
	}
	out := c.stdout.String()
	dec := json.NewDecoder(strings.NewReader(out))
	var task proto.Task
	if err := dec.Decode(&task); err != nil {
		t.Fatalf("metalfleet %s (exit: %v): stdout is not a task as JSON: %v\nstdout: %q\nstderr:\n%s", strings.Join(c.args, " "), c.err, err, out, tail(c.stderr.String(), 20))
	}
	var more json.RawMessage
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		t.Errorf("metalfleet %s: stdout holds more than one JSON document (then %q, %v)", strings.Join(c.args, " "), more, err)
	}
	if task.ID == "" || !task.State.Ended() {
		t.Errorf("metalfleet %s returned a task with id %q and state %q: want a finished task", strings.Join(c.args, " "), task.ID, task.State)
	}
	if failed := task.State != proto.TaskSucceeded; failed != (c.err != nil) {
		t.Errorf("metalfleet %s: task %s, exit %v: want a non-zero exit exactly when the task did not succeed", strings.Join(c.args, " "), task.State, c.err)
	}
	return task
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// cpioNames lists the names in gzip'd newc cpio archives (one after
// another, as Linux unpacks an initramfs), without a leading "./", with a
// symbolic link's target ("name -> target").
func cpioNames(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return nil, err
	}
	var names []string
	for off := 0; off+110 <= len(raw); {
		h := raw[off : off+110]
		if string(h[:6]) != "070701" {
			return names, fmt.Errorf("%s: no cpio header at offset %d", file, off)
		}
		field := func(i int) int {
			n, _ := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			return int(n)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		nameAt := off + 110
		if nameAt+nameSize > len(raw) {
			break
		}
		name := strings.TrimPrefix(strings.TrimRight(string(raw[nameAt:nameAt+nameSize]), "\x00"), "./")
		dataAt := (nameAt + nameSize + 3) &^ 3
		if name == "TRAILER!!!" {
			// Another archive may follow (Linux unpacks them all), after
			// zero padding.
			off = (dataAt + size + 3) &^ 3
			for off < len(raw) && raw[off] == 0 {
				off++
			}
			continue
		}
		if mode&0o170000 == 0o120000 && dataAt+size <= len(raw) {
			name += " -> " + string(raw[dataAt:dataAt+size])
		}
		names = append(names, name)
		off = (dataAt + size + 3) &^ 3
	}
	return names, nil
}

// needTasks skips the test (fails it under CI) when the pieces of the
// servicing tasks are not there: a ramdisk without the lab vendor tool
// (/bin/mflab) or mdadm, a metalfleet without `node task`.
func needTasks(t *testing.T, images ramdiskFiles, bin string) {
	t.Helper()
	var missing []string
	names, err := cpioNames(images.Ramdisk)
	if err != nil {
		t.Fatalf("the task ramdisk: %v", err)
	}
	has := func(base string) bool {
		for _, n := range names {
			n, _, _ = strings.Cut(n, " -> ")
			if path.Base(n) == base {
				return true
			}
		}
		return false
	}
	for _, b := range []string{"mflab", "mdadm"} {
		if !has(b) {
			missing = append(missing, b+" in the task ramdisk (build/ramdisk or $METALFLEET_E2E_RAMDISK; make ramdisk)")
		}
	}
	out, _ := exec.Command(bin, "node", "task", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("metalfleet node task")) {
		missing = append(missing, "the `metalfleet node task` command in "+bin)
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but the task test cannot run: missing %s", strings.Join(missing, "; "))
	}
	t.Skipf("needs %s (set CI=true to make this a failure)", strings.Join(missing, "; "))
}

// mdSuper is the part of a Linux md v1.2 superblock (4 KiB into a member
// device) the test reads.
type mdSuper struct {
	UUID  string
	Name  string
	Level int32
	Disks uint32 // raid_disks
}

// readMDSuper reads the md v1.2 superblock of a member disk's file
// (linux/raid/md_p.h, struct mdp_superblock_1: magic a92b4efc at 0,
// major_version 1 at 4, set_uuid at 16, set_name at 32, level at 72,
// raid_disks at 92).
func readMDSuper(file string) (mdSuper, error) {
	f, err := os.Open(file)
	if err != nil {
		return mdSuper{}, err
	}
	defer f.Close()
	b := make([]byte, 256)
	if _, err := f.ReadAt(b, 4096); err != nil {
		return mdSuper{}, err
	}
	le := binenc.LittleEndian
	if m := le.Uint32(b[0:]); m != 0xa92b4efc {
		return mdSuper{}, fmt.Errorf("%s: no md v1.2 superblock at 4 KiB (magic %#x)", filepath.Base(file), m)
	}
	if v := le.Uint32(b[4:]); v != 1 {
		return mdSuper{}, fmt.Errorf("%s: md superblock major version %d, want 1", filepath.Base(file), v)
	}
	return mdSuper{
		UUID:  hex.EncodeToString(b[16:32]),
		Name:  strings.TrimRight(string(b[32:64]), "\x00"),
		Level: int32(le.Uint32(b[72:])),
		Disks: le.Uint32(b[92:]),
	}, nil
}

// taskTimes is one task as the test saw it: the CLI's start, the VM's
// power-on, the agent's log of the boot, the steps as the coordinator
// recorded them, the VM's power-off and the node back to manageable.
type taskTimes struct {
	CLI         time.Time // `node task ... --wait` started
	Created     time.Time // task.created_at
	VMStart     time.Time // QEMU started by the BMC (power cycle done)
	Boot        *bootRecord
	Fetched     time.Time // iPXE has the initrd (console)
	Init        time.Time // the ramdisk's /init (nodeagent) runs (console)
	PlanServed  time.Time // the agent served the task plan (its log)
	FirstStep   time.Time // the first step's start report
	LastStep    time.Time // the last step's end
	Ended       time.Time // task.ended_at
	CLIDone     time.Time // the CLI returned
	VMOff       time.Time // QEMU exited
	Manageable  time.Time // the node manageable and power_state off (polled)
	Steps       []proto.Step
	VMStartBoot string
}

// phaseLines are the task's phases as a Markdown table, for BENCHMARKS.md.
func (tt *taskTimes) phaseLines(title string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n| phase | from -> to | seconds |\n|---|---|---:|\n", title)
	row := func(phase, span string, from, to time.Time) {
		if from.IsZero() || to.IsZero() {
			fmt.Fprintf(&b, "| %s | %s | - |\n", phase, span)
			return
		}
		fmt.Fprintf(&b, "| %s | %s | %.2f |\n", phase, span, to.Sub(from).Seconds())
	}
	row("request", "CLI started -> task recorded", tt.CLI, tt.Created)
	row("power cycle", "task recorded -> QEMU started by the BMC (boot device "+tt.VMStartBoot+")", tt.Created, tt.VMStart)
	if r := tt.Boot; r != nil {
		row("  boot: firmware DHCP", "QEMU started -> first DHCPDISCOVER at the agent", tt.VMStart, r.Discover)
		row("  boot: iPXE", "first DHCPDISCOVER -> boot script served", r.Discover, r.Script)
		row("  boot: kernel and initrd over HTTP", "boot script -> initrd fetched (console)", r.Script, tt.Fetched)
		row("  boot: Linux", "initrd fetched -> /init (nodeagent) runs (console)", tt.Fetched, tt.Init)
		row("  boot: nodeagent", "/init runs -> the ramdisk's DHCP lease (modules, DHCP)", tt.Init, r.RamdiskLease)
		row("  boot: plan", "the ramdisk's DHCP lease -> task plan served (agent)", r.RamdiskLease, tt.PlanServed)
		row("  boot: first step", "task plan served -> first step started", tt.PlanServed, tt.FirstStep)
	}
	row("boot", "QEMU started -> first step started", tt.VMStart, tt.FirstStep)
	for _, s := range tt.Steps {
		row("  step "+s.Name, "started -> ended", s.StartedAt, s.EndedAt)
	}
	row("steps", "first step started -> last step ended", tt.FirstStep, tt.LastStep)
	row("task end", "last step ended -> task ended", tt.LastStep, tt.Ended)
	row("power off", "task ended -> QEMU exited", tt.Ended, tt.VMOff)
	row("node back", "QEMU exited -> node manageable, power_state off", tt.VMOff, tt.Manageable)
	row("total", "CLI started -> node manageable, power off", tt.CLI, tt.Manageable)
	row("CLI --wait", "CLI started -> CLI returned", tt.CLI, tt.CLIDone)
	return strings.TrimRight(b.String(), "\n")
}

// --- the lab vendor tool (/bin/mflab, rackagent/nodeagent/mflab.go) ---

// firmwareImageKind is the image kind a firmware task takes.
var firmwareImageKind = proto.ImageFirmware

// labFirmwareImage is a lab firmware image for component at version: the
// header line "MFLAB-FIRMWARE <component> <version>", then a 256 KiB
// payload (the tool writes it to the component's slot and reads it back).
func labFirmwareImage(component, version string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "MFLAB-FIRMWARE %s %s\n", component, version)
	block := sha256.Sum256([]byte(version))
	for b.Len() < 256<<10 {
		b.Write(block[:])
		block = sha256.Sum256(block[:])
	}
	return b.Bytes()
}

// firmwareResult is a firmware step's result (each step has the fields
// it knows).
type firmwareResult struct {
	Component     string `json:"component"`
	Image         string `json:"image"`
	SHA256        string `json:"sha256"`
	VersionBefore string `json:"version_before"`
	VersionAfter  string `json:"version_after"`
}

// firmwareVersions reads the version before from the download step's
// result and the version after from the verify step's.
func firmwareVersions(t *testing.T, task proto.Task) (before, after string) {
	t.Helper()
	var d, v firmwareResult
	for _, x := range []struct {
		step string
		res  *firmwareResult
	}{{proto.StepNameDownload, &d}, {proto.StepNameVerify, &v}} {
		s := stepByName(t, task, x.step)
		if err := json.Unmarshal(s.Result, x.res); err != nil {
			t.Errorf("firmware %s step: result %q: %v", x.step, s.Result, err)
		}
		t.Logf("firmware %s step result: %s", x.step, s.Result)
	}
	if v.VersionBefore != "" && v.VersionBefore != d.VersionBefore {
		t.Errorf("firmware: version before %q in the download step, %q in the verify step", d.VersionBefore, v.VersionBefore)
	}
	return d.VersionBefore, v.VersionAfter
}

// readBackSettings reads the settings read back from a bios verify
// step's result ({"settings": {...}, "asked": {...}, "matched": N}).
func readBackSettings(t *testing.T, result json.RawMessage) map[string]string {
	t.Helper()
	var res struct {
		Settings map[string]string `json:"settings"`
	}
	if err := json.Unmarshal(result, &res); err != nil || res.Settings == nil {
		t.Fatalf("bios verify result %s: no settings read back (%v)", result, err)
	}
	return res.Settings
}

// labIgnoresSet is a vendor tool for the lab VM whose BIOS Set does not
// apply anything (mflab help: exit 0, nothing written), while Get reads
// the device: a BIOS that takes settings and silently keeps its own, so
// a readback cannot match. mflab itself has no read-only setting.
var labIgnoresSet = proto.VendorTool{
	Name: "lab-bios-ignores-set", Vendor: "QEMU", Product: "LabVM-Tasks",
	BIOS: &proto.ToolCommands{Program: "/bin/mflab", Get: []string{"bios-get"}, Set: []string{"help"}},
}
