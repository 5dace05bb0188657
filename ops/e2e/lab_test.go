//go:build linux

package e2e

// The lab: one network namespace with a bridge and a tap, a coordinator
// and a rack agent running in it as child processes, and sockets the test
// opens inside it. See doc.go for the wiring.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// Names inside the lab's own namespace: they cannot clash with another
// run's, whose devices live in another namespace.
const (
	bridgeName = "mfbr0"
	tapName    = "mftap0"
)

// e2eNeed skips the test unless METALFLEET_E2E=1, and when it cannot run
// here (not root, a binary or file missing): a skip, or a failure when CI
// is set (CI installs ops/apt-packages.txt and runs as root).
func e2eNeed(t *testing.T, files map[string]string) {
	t.Helper()
	if os.Getenv("METALFLEET_E2E") != "1" {
		t.Skip("boots a QEMU VM; set METALFLEET_E2E=1 (make e2e) to run it")
	}
	netlab.Need(t, []string{"ip", "qemu-system-x86_64", "go"}, files)
}

// repoRoot is the module's root (the test runs in ops/e2e).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// binary returns $METALFLEET_BIN (a relative path is from the
// repository's root) or a binary built for this test.
func binary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("METALFLEET_BIN"); b != "" {
		abs := b
		if !filepath.IsAbs(b) {
			abs = filepath.Join(repoRoot(t), b)
		}
		if _, err := os.Stat(abs); err != nil {
			t.Fatalf("METALFLEET_BIN: %v", err)
		}
		return abs
	}
	out := filepath.Join(t.TempDir(), "metalfleet")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/metalfleet")
	cmd.Dir = repoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// ramdiskFiles is a snapshot of the discovery kernel and ramdisk.
type ramdiskFiles struct {
	Kernel, Ramdisk       string // paths of this run's copies
	KernelSHA, RamdiskSHA string
	Info                  string // BUILD-INFO
}

// ramdisk returns copies, in dir, of build/ramdisk/vmlinuz and
// metalfleet-ramdisk.cpio.gz, running ops/ramdisk/build.sh first if
// either is missing. Copies, so that a rebuild while the test runs cannot
// change the bytes under the agent (which checks them against the sha256
// the images were registered with); a copy that disagrees with
// BUILD-INFO (a build was writing) is taken again.
func ramdisk(t *testing.T, dir string) ramdiskFiles {
	t.Helper()
	root := repoRoot(t)
	src := filepath.Join(root, "build", "ramdisk")
	if d := os.Getenv("METALFLEET_E2E_RAMDISK"); d != "" {
		src = d // another build (ops/ramdisk/build.sh OUT=DIR), used as it is
	}
	kernel, rd := filepath.Join(src, "vmlinuz"), filepath.Join(src, "metalfleet-ramdisk.cpio.gz")
	_, err1 := os.Stat(kernel)
	_, err2 := os.Stat(rd)
	if (err1 != nil || err2 != nil) && os.Getenv("METALFLEET_E2E_RAMDISK") != "" {
		t.Fatalf("METALFLEET_E2E_RAMDISK=%s: no vmlinuz and metalfleet-ramdisk.cpio.gz there", src)
	}
	if err1 != nil || err2 != nil {
		t.Logf("%s has no kernel and ramdisk: running ops/ramdisk/build.sh", src)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", filepath.Join(root, "ops", "ramdisk", "build.sh"))
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ops/ramdisk/build.sh: %v\n%s", err, out)
		}
	}
	var f ramdiskFiles
	// Each try copies and hashes ~14 MB: once a second, not every Poll.
	testkit.EventuallyEvery(t, time.Minute, time.Second, "build/ramdisk to agree with its BUILD-INFO (a build may be writing it)", func() bool {
		var err error
		f.Kernel, f.KernelSHA, err = copySHA(kernel, filepath.Join(dir, "vmlinuz"))
		if err != nil {
			t.Fatal(err)
		}
		f.Ramdisk, f.RamdiskSHA, err = copySHA(rd, filepath.Join(dir, "metalfleet-ramdisk.cpio.gz"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(src, "BUILD-INFO"))
		f.Info = strings.TrimSpace(string(b))
		return err != nil || (strings.Contains(f.Info, "kernel_sha256="+f.KernelSHA) && strings.Contains(f.Info, "ramdisk_sha256="+f.RamdiskSHA))
	})
	return f
}

func copySHA(from, to string) (string, string, error) {
	b, err := os.ReadFile(from)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(b)
	return to, hex.EncodeToString(sum[:]), nil
}

var seq atomic.Int32

// nsRE names the namespaces of these tests: mfE-PID-N.
var nsRE = regexp.MustCompile(`^mfE-(\d+)-\d+$`)

// lab is one test's namespace, coordinator and agent.
type lab struct {
	// ipv6 is the IPv6 mode: "ra" (the agent sends router
	// advertisements), "on" (no advertisements) or "off" (disabled).
	ipv6     string
	t        *testing.T
	dir      string
	bin      string
	NS       string
	X        int    // third octet of 10.99.X.0/24
	ServerIP string // 10.99.X.1, the agent's address on the bridge

	coord      *netlab.Proc
	agent      *netlab.Proc
	adminToken string
	api        *http.Client
	images     ramdiskFiles
	// agentArgs are more flags for the rack agent.
	agentArgs []string
	// apiAddr is the coordinator the test and the CLI talk to (""
	// means 127.0.0.1:7480, the first server); coordAddrs, when set,
	// is the rack agent's --coordinator list (a cluster of servers).
	apiAddr    string
	coordAddrs string
}

// addr is the API address of the coordinator the test talks to.
func (l *lab) addr() string {
	if l.apiAddr != "" {
		return l.apiAddr
	}
	return "127.0.0.1:7480"
}

func (l *lab) prefix() string { return fmt.Sprintf("10.99.%d", l.X) }

// file is the path of a file of the run's directory.
func (l *lab) file(name string) string { return filepath.Join(l.dir, name) }

// newLab creates the namespace with lo up, the bridge with the agent's
// address, and the VM's tap on it. Everything is removed when the test
// ends, whatever happens: processes first (their cleanups run before
// this one's, being registered later), then the namespace, which takes
// the bridge and the tap with it.
func newLab(t *testing.T, ipv6 string) *lab {
	t.Helper()
	netlab.ReapStale(t, nsRE)
	n := int(seq.Add(1))
	pid := os.Getpid()
	l := &lab{t: t, dir: t.TempDir(), NS: fmt.Sprintf("mfE-%d-%d", pid, n), X: 100 + (pid+n)%150, ipv6: ipv6}
	l.ServerIP = l.prefix() + ".1"
	// The agent and QEMU read files here; keep it readable.
	_ = os.Chmod(l.dir, 0o755)
	netlab.Run(t, "ip", "netns", "add", l.NS)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", l.NS).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", l.NS, err, out)
		}
	})
	ip := func(args ...string) { netlab.Run(t, "ip", append([]string{"-n", l.NS}, args...)...) }
	ip("link", "set", "lo", "up")
	ip("link", "add", bridgeName, "type", "bridge") // STP off: a port forwards at once
	switch ipv6 {
	case "off":
		netlab.Run(t, "ip", "netns", "exec", l.NS, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
			"net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf."+bridgeName+".disable_ipv6=1")
	case "ra":
		// A link-local address at once (no DAD) for the agent to send
		// router advertisements from (a real NIC has one anyway).
		ip("addr", "add", "fe80::1/64", "dev", bridgeName, "nodad")
	}
	// A persistent tap: QEMU, started in the namespace, opens it by name.
	ip("tuntap", "add", "dev", tapName, "mode", "tap")
	ip("link", "set", tapName, "master", bridgeName)
	ip("addr", "add", l.ServerIP+"/24", "dev", bridgeName)
	ip("link", "set", tapName, "up")
	ip("link", "set", bridgeName, "up")
	l.api = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: netlab.Dialer(l.NS), DisableKeepAlives: true}}
	return l
}

// wait polls cond every 100 ms until it holds or d passes; it fails early
// if proc (when not nil) has exited.
func (l *lab) wait(d time.Duration, what string, p *netlab.Proc, cond func() bool) {
	l.t.Helper()
	testkit.Eventually(l.t, d, what, func() bool {
		if p != nil && !p.Running() {
			l.t.Fatalf("waiting for %s: %s exited: %v\n%s", what, p.Name, p.Err, netlab.Tail(p.LogPath, 30))
		}
		return cond()
	})
}

// call sends a JSON request to the coordinator's API (inside the
// namespace) and returns the write's Raft index (X-Metalfleet-Index).
func (l *lab) call(method, path string, in, out any) (uint64, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+l.addr()+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+l.adminToken)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.api.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode >= 300 {
		return 0, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	idx, _ := strconv.ParseUint(resp.Header.Get("X-Metalfleet-Index"), 10, 64)
	if out != nil {
		return idx, json.Unmarshal(raw, out)
	}
	return idx, nil
}

func (l *lab) mustCall(method, path string, in, out any) uint64 {
	l.t.Helper()
	idx, err := l.call(method, path, in, out)
	if err != nil {
		l.t.Fatal(err)
	}
	return idx
}

// Image names registered for discovery.
const (
	kernelImage  = "discovery-kernel"
	ramdiskImage = "discovery-ramdisk"
)

// discoveryCmdline is the discovery boot's extra kernel command line:
// Linux and the nodeagent on the serial console (quiet: the kernel's
// own boot messages are slow to print under TCG; the nodeagent's and a
// panic's still show), and a panic (no initrd, say) reboots, which ends
// QEMU (-no-reboot), instead of hanging until the test gives up.
var discoveryCmdline = "console=ttyS0,115200 quiet panic=5"

// startFleet starts the coordinator and sets up, through its API: rack
// r1 (10.99.X.0/24, gateway and boot server 10.99.X.1, pool .100-.200),
// an agent token, the discovery images (file:// URLs of this run's
// copies of build/ramdisk) and settings (discovery on, auto_enroll).
func (l *lab) startFleet() {
	t := l.t
	t.Helper()
	dataDir := filepath.Join(l.dir, "coord")
	l.coord = netlab.Start(t, "coordinator", l.NS, filepath.Join(l.dir, "coordinator.log"), l.bin, "coordinator",
		"--bootstrap", "--node-id", "c1", "--data-dir", dataDir,
		"--http-addr", "127.0.0.1:7480", "--raft-addr", "127.0.0.1:7481",
		"--raft-heartbeat-timeout", "300ms", "--raft-election-timeout", "300ms", "--raft-leader-lease", "150ms")
	l.wait(30*time.Second, "coordinator admin token", l.coord, func() bool {
		b, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
		l.adminToken = strings.TrimSpace(string(b))
		return err == nil && l.adminToken != ""
	})
	l.wait(30*time.Second, "coordinator API", l.coord, func() bool { _, err := l.call("GET", "/v1/status", nil, nil); return err == nil })

	p := l.prefix()
	l.mustCall("POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: p + ".0/24", Gateway: p + ".1", BootServer: p + ".1",
		PoolStart: p + ".100", PoolEnd: p + ".200"}, nil)
	var tok proto.TokenCreated
	l.mustCall("POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1", Description: "e2e agent"}, &tok)
	if err := os.WriteFile(filepath.Join(l.dir, "agent.token"), []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	im := l.images
	l.mustCall("POST", "/v1/images", proto.Image{Name: kernelImage, Kind: proto.ImageKernel, URL: "file://" + im.Kernel, SHA256: im.KernelSHA}, nil)
	l.mustCall("POST", "/v1/images", proto.Image{Name: ramdiskImage, Kind: proto.ImageRamdisk, URL: "file://" + im.Ramdisk, SHA256: im.RamdiskSHA}, nil)
	on, k, r, c := true, kernelImage, ramdiskImage, discoveryCmdline
	l.mustCall("PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &on, DiscoveryKernel: &k, DiscoveryRamdisk: &r,
		DiscoveryCmdline: &c, AutoEnroll: &on}, nil)
}

// startAgent runs `metalfleet rackagent` on the bridge and waits until it
// has synced the rack's boot state and serves HTTP.
func (l *lab) startAgent() {
	t := l.t
	t.Helper()
	argv := append([]string{l.bin, "rackagent",
		"--name", "a1", "--rack", "r1", "--data-dir", filepath.Join(l.dir, "agent"),
		"--coordinator", cmp.Or(l.coordAddrs, "127.0.0.1:7480"), "--token-file", filepath.Join(l.dir, "agent.token"),
		"--interface", bridgeName, "--advertise-ip", l.ServerIP,
		"--tftp-addr", l.ServerIP + ":69", "--http-addr", l.ServerIP + ":8080", "--log-level", "debug",
		"--no-router-adverts=" + fmt.Sprint(l.ipv6 != "ra")}, l.agentArgs...)
	l.agent = netlab.Start(t, "rackagent", l.NS, filepath.Join(l.dir, "agent.log"), argv...)
	l.wait(30*time.Second, "agent synced and serving HTTP", l.agent, func() bool { return l.agentIndex() > 0 })
}

// agentIndex is the coordinator index of the boot state the agent
// serves (its /metrics), 0 if it has none or cannot be reached.
func (l *lab) agentIndex() uint64 {
	resp, err := l.api.Get("http://" + l.ServerIP + ":8080/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "metalfleet_agent_bootstate_index "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return uint64(f)
		}
	}
	return 0
}

// nodesWithMAC lists the coordinator's nodes that hold mac.
func (l *lab) nodesWithMAC(mac string) ([]proto.Node, error) {
	var all []proto.Node
	if _, err := l.call("GET", "/v1/nodes?rack=r1", nil, &all); err != nil {
		return nil, err
	}
	var out []proto.Node
	for _, n := range all {
		for _, m := range n.MACs {
			if strings.EqualFold(m, mac) {
				out = append(out, n)
				break
			}
		}
	}
	return out, nil
}
