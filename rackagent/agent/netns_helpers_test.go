//go:build linux

package agent_test

// Helpers for the network-namespace tests (netns_test.go): a lab of two
// namespaces joined by a veth pair, a real coordinator and a real rack
// agent running as child processes in the agent's namespace, real Debian
// clients (dhclient, tftp) run in the client's namespace, and a way for
// the test process itself to open sockets in either namespace.
//
// Wiring of one lab (X is a per-test number):
//
//	namespace mfA-PID-N ("agent side")          namespace mfB-PID-N ("client side")
//	  lo 127.0.0.1 (up)                           lo (down)
//	    coordinator  127.0.0.1:7480 (API)
//	                 127.0.0.1:7481 (Raft)
//	  mfaPIDxN 10.77.X.1/24  <------ veth ------>  mfbPIDxN (no address; MAC set per run)
//	    rackagent: DHCP 0.0.0.0:67 bound to           dhclient, tftp, the Go DHCP client
//	    mfaPIDxN, TFTP 10.77.X.1:69,
//	    HTTP 10.77.X.1:8080
//
// Both servers run in the agent namespace because a process in a
// namespace cannot reach the host's loopback: the agent reaches the
// coordinator on the namespace's own loopback. The test process drives
// the coordinator's API (and probes the agent's HTTP) with sockets it
// opens inside the agent namespace (a goroutine locked to an OS thread
// that setns(2)s into it for the socket() call and back out again), so
// no link to the host namespace is needed and every packet stays inside
// the two namespaces the test created. Nothing has an uplink.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// nsNeed skips the test when it cannot run here (not root, or a Debian
// binary missing), unless CI is set: CI installs ops/apt-packages.txt and
// runs as root, so there the test fails instead of skipping silently.
func nsNeed(t *testing.T) {
	t.Helper()
	netlab.Need(t, []string{"ip", "dhclient", "tftp"}, map[string]string{
		"/usr/lib/ipxe/undionly.kpxe": "package ipxe", "/usr/lib/ipxe/ipxe.efi": "package ipxe"})
}

var nsSeq atomic.Int32

// nsNames are this package's lab namespaces: mfA-PID-N and mfB-PID-N.
var nsNames = regexp.MustCompile(`^mf[AB]-(\d+)-\d+$`)

// nsLab is one test's namespaces, link, coordinator and agent.
type nsLab struct {
	t        *testing.T
	dir      string
	bin      string
	A, B     string // namespace names: agent side, client side
	IfA, IfB string // the veth's ends
	X        int    // third octet of 10.77.X.0/24
	ServerIP string // 10.77.X.1, the agent's address

	coord      *netlab.Proc
	adminToken string
	api        *http.Client
	agent      *netlab.Proc
	agentArgs  []string
	agentDir   string
	agentSeq   int

	KnownMAC, KnownIP string
	dhclientRuns      int // for file names
}

// nsBinary returns $METALFLEET_BIN or a binary built for this test.
func nsBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("METALFLEET_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	out := filepath.Join(t.TempDir(), "metalfleet")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/metalfleet/metalfleet/cmd/metalfleet").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// newNSLab creates the namespaces and the veth between them. Everything
// is removed when the test ends, whatever happens (processes first, by
// pid; then the namespaces, which takes the veth with them).
func newNSLab(t *testing.T) *nsLab {
	t.Helper()
	nsNeed(t)
	netlab.ReapStale(t, nsNames)
	n := int(nsSeq.Add(1))
	pid := os.Getpid()
	l := &nsLab{t: t, dir: t.TempDir(),
		A: fmt.Sprintf("mfA-%d-%d", pid, n), B: fmt.Sprintf("mfB-%d-%d", pid, n),
		IfA: fmt.Sprintf("mfa%dx%d", pid, n), IfB: fmt.Sprintf("mfb%dx%d", pid, n),
		X: 1 + n%250}
	l.ServerIP = fmt.Sprintf("10.77.%d.1", l.X)
	os.Chmod(l.dir, 0o755)
	for _, ns := range []string{l.A, l.B} {
		netlab.Run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v %s", ns, err, out)
			}
		})
	}
	// Created straight into the two namespaces: the host namespace never
	// has either end.
	netlab.Run(t, "ip", "link", "add", l.IfA, "netns", l.A, "type", "veth", "peer", "name", l.IfB, "netns", l.B)
	netlab.Run(t, "ip", "-n", l.A, "link", "set", "lo", "up")
	netlab.Run(t, "ip", "-n", l.A, "addr", "add", l.ServerIP+"/24", "dev", l.IfA)
	netlab.Run(t, "ip", "-n", l.A, "link", "set", l.IfA, "up")
	netlab.Run(t, "ip", "-n", l.B, "link", "set", l.IfB, "up")
	l.api = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: netlab.Dialer(l.A), DisableKeepAlives: true}}
	return l
}

func (l *nsLab) prefix() string { return fmt.Sprintf("10.77.%d", l.X) }

// nsWait polls cond every 50 ms until it holds or d passes; it gives up
// early if proc (when not nil) has exited.
func (l *nsLab) wait(d time.Duration, what string, proc *netlab.Proc, cond func() bool) {
	l.t.Helper()
	testkit.Eventually(l.t, d, what, func() bool {
		if proc != nil && !proc.Running() {
			l.t.Fatalf("waiting for %s: %s exited: %v", what, proc.Name, proc.Err)
		}
		return cond()
	})
}

// call sends a JSON request to the coordinator's API (inside namespace A).
func (l *nsLab) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://127.0.0.1:7480"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+l.adminToken)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (l *nsLab) mustCall(method, path string, in, out any) {
	l.t.Helper()
	if err := l.call(method, path, in, out); err != nil {
		l.t.Fatal(err)
	}
}

// startFleet starts the coordinator in namespace A and creates rack r1
// (10.77.X.0/24, pool .100-.199, boot server 10.77.X.1), an agent token,
// discovery images (file:// URLs of small files), discovery on, and a
// known node (knownMAC) in r1.
func (l *nsLab) startFleet(knownMAC string) {
	t := l.t
	t.Helper()
	if l.bin == "" {
		l.bin = nsBinary(t)
	}
	dataDir := filepath.Join(l.dir, "coord")
	l.coord = netlab.Start(t, "coordinator", l.A, filepath.Join(l.dir, "coordinator.log"), l.bin, "coordinator",
		"--bootstrap", "--node-id", "c1", "--data-dir", dataDir,
		"--http-addr", "127.0.0.1:7480", "--raft-addr", "127.0.0.1:7481",
		"--raft-heartbeat-timeout", "300ms", "--raft-election-timeout", "300ms", "--raft-leader-lease", "150ms")
	l.wait(20*time.Second, "coordinator admin token", l.coord, func() bool {
		b, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
		l.adminToken = strings.TrimSpace(string(b))
		return err == nil && l.adminToken != ""
	})
	l.wait(20*time.Second, "coordinator API", l.coord, func() bool { return l.call("GET", "/v1/status", nil, nil) == nil })

	p := l.prefix()
	l.mustCall("POST", "/v1/racks", proto.Rack{Name: "r1", Subnet: p + ".0/24", Gateway: p + ".1", BootServer: p + ".1",
		PoolStart: p + ".100", PoolEnd: p + ".199"}, nil)
	var tok proto.TokenCreated
	l.mustCall("POST", "/v1/tokens", proto.TokenCreate{Role: proto.RoleAgent, Rack: "r1"}, &tok)
	if err := os.WriteFile(filepath.Join(l.dir, "agent.token"), []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, im := range []struct {
		name string
		kind proto.ImageKind
	}{{"disc-kernel", proto.ImageKernel}, {"disc-ramdisk", proto.ImageRamdisk}} {
		body := []byte(strings.Repeat(im.name+" ", 500))
		path := filepath.Join(l.dir, im.name)
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		l.mustCall("POST", "/v1/images", proto.Image{Name: im.name, Kind: im.kind, URL: "file://" + path, SHA256: hex.EncodeToString(sum[:])}, nil)
	}
	l.setDiscovery(true)
	var n proto.Node
	l.mustCall("POST", "/v1/nodes", proto.NodeCreate{Name: "n1", MACs: []string{knownMAC}, Rack: "r1"}, &n)
	if n.IP == "" || !strings.HasPrefix(n.IP, p+".") {
		t.Fatalf("known node got reservation %q, want one in %s.0/24", n.IP, p)
	}
	l.KnownMAC, l.KnownIP = knownMAC, n.IP
}

func (l *nsLab) setDiscovery(on bool) {
	k, r := "disc-kernel", "disc-ramdisk"
	l.mustCall("PATCH", "/v1/settings", proto.SettingsPatch{DiscoveryEnabled: &on, DiscoveryKernel: &k, DiscoveryRamdisk: &r}, nil)
}

// startAgent runs `metalfleet rackagent` in namespace A on the veth, and
// waits until it serves the known node's boot script (its boot state is
// synced).
func (l *nsLab) startAgent() {
	t := l.t
	t.Helper()
	if l.agentArgs == nil {
		l.agentDir = filepath.Join(l.dir, "agent")
		l.agentArgs = []string{l.bin, "rackagent", "--name", "a1", "--rack", "r1", "--data-dir", l.agentDir,
			"--coordinator", "127.0.0.1:7480", "--token-file", filepath.Join(l.dir, "agent.token"),
			"--interface", l.IfA, "--advertise-ip", l.ServerIP,
			"--tftp-addr", l.ServerIP + ":69", "--http-addr", l.ServerIP + ":8080", "--log-level", "debug"}
	}
	l.agentSeq++
	l.agent = netlab.Start(t, fmt.Sprintf("rackagent#%d", l.agentSeq), l.A, filepath.Join(l.dir, fmt.Sprintf("agent-%d.log", l.agentSeq)), l.agentArgs...)
	l.wait(20*time.Second, "agent serving the known node's script", l.agent, func() bool { return l.scriptStatus(l.KnownMAC) == 200 })
}

// scriptStatus is the agent's answer to HEAD /boot/MAC.ipxe (no side
// effects): 200 once the agent knows how to boot MAC, 404 when it does
// not, 0 if it cannot be reached.
func (l *nsLab) scriptStatus(mac string) int {
	req, _ := http.NewRequest("HEAD", "http://"+l.ServerIP+":8080/boot/"+mac+".ipxe", nil)
	resp, err := l.api.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// setClientMAC sets the client veth's MAC (dhclient uses the interface's).
func (l *nsLab) setClientMAC(mac string) {
	netlab.Run(l.t, "ip", "-n", l.B, "link", "set", "dev", l.IfB, "address", mac)
}

// nsDhclientResult is what one dhclient run got.
type nsDhclientResult struct {
	IP        string // the bound address, "" if none
	Binds     int    // "bound to" lines seen
	LeaseFile string
	Lease     string // the lease file's text
	Output    string // dhclient's -v output
	Took      time.Duration
}

// option returns a `option NAME VALUE;` value from the lease file.
func (r nsDhclientResult) option(name string) string {
	m := regexp.MustCompile(`(?m)^\s*option ` + regexp.QuoteMeta(name) + ` (.*);$`).FindStringSubmatch(r.Lease)
	if m == nil {
		return ""
	}
	return strings.Trim(m[1], `"`)
}

var nsBoundRE = regexp.MustCompile(`bound to (\d+\.\d+\.\d+\.\d+)`)

// dhclient runs Debian's dhclient once in namespace B on the client veth
// (with the veth's current MAC): -1 (one try), -d (foreground, so the pid
// started is dhclient's), -sf /bin/true (configures nothing). It returns
// once dhclient has bound (then it is stopped by its pid) or given up
// after timeoutSec. leaseFile "" means a fresh one. pxe sends a PXE ROM's
// vendor class.
func (l *nsLab) dhclient(pxe bool, leaseFile string, timeoutSec int) nsDhclientResult {
	l.t.Helper()
	return l.dhclientRun(nsDhclientOpts{PXE: pxe, LeaseFile: leaseFile, Timeout: timeoutSec})
}

// nsDhclientOpts tunes one dhclient run.
type nsDhclientOpts struct {
	PXE       bool
	LeaseFile string
	Timeout   int // dhclient's own timeout, seconds
	// Binds is how many "bound to" lines to wait for (renewals print one
	// each); default 1.
	Binds int
	// OnBound runs after the first bind, while dhclient keeps running.
	OnBound func(ip string)
}

func (l *nsLab) dhclientRun(o nsDhclientOpts) nsDhclientResult {
	t := l.t
	t.Helper()
	if o.Binds == 0 {
		o.Binds = 1
	}
	l.dhclientRuns++
	base := filepath.Join(l.dir, fmt.Sprintf("dhclient-%d", l.dhclientRuns))
	leaseFile := o.LeaseFile
	if leaseFile == "" {
		leaseFile = base + ".leases"
	}
	conf := fmt.Sprintf("timeout %d;\nretry 1;\ninitial-interval 1;\nselect-timeout 0;\n", o.Timeout)
	if o.PXE {
		conf += "send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n"
	}
	if err := os.WriteFile(base+".conf", []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("ip", "netns", "exec", l.B, "dhclient", "-4", "-1", "-d", "-v", "-sf", "/bin/true",
		"-lf", leaseFile, "-pf", base+".pid", "-cf", base+".conf", l.IfB)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("dhclient: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	var mu sync.Mutex
	var out strings.Builder
	bound := make(chan string, 16)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := nsBoundRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case bound <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	res := nsDhclientResult{}
	limit := time.After(time.Duration(o.Timeout+10) * time.Second)
wait:
	for {
		select {
		case ip := <-bound:
			res.IP = ip
			res.Binds++
			if res.Binds == 1 && o.OnBound != nil {
				o.OnBound(ip)
			}
			if res.Binds < o.Binds {
				continue
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(3 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			break wait
		case err := <-exited:
			// -1: exit 2 when no lease came in time.
			var ee *exec.ExitError
			if res.Binds == 0 && (!errors.As(err, &ee) || ee.ExitCode() != 2) {
				t.Errorf("dhclient exited with %v, want exit 2 (no lease)", err)
			}
			break wait
		case <-limit:
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("dhclient: %d of %d binds within %ds", res.Binds, o.Binds, o.Timeout+10)
			break wait
		}
	}
	<-scanned
	res.Took = time.Since(start)
	mu.Lock()
	res.Output = out.String()
	mu.Unlock()
	b, _ := os.ReadFile(leaseFile)
	res.Lease, res.LeaseFile = string(b), leaseFile
	return res
}

// nsDHCPClient is a DHCP client socket in namespace B: UDP 0.0.0.0:68
// bound to the client veth (SO_BINDTODEVICE), broadcasting to
// 255.255.255.255:67 from 0.0.0.0, as a client without an address does.
//
// It is what nclient4 does over the same kind of socket (NewWithConn), in
// a few lines: importing dhcpv4/nclient4 would add github.com/mdlayher/
// packet to go.mod (its raw-socket transport), which this package's tests
// do not otherwise need.
type nsDHCPClient struct {
	t    *testing.T
	conn net.PacketConn
}

func (l *nsLab) dhcpClient() *nsDHCPClient {
	l.t.Helper()
	var conn net.PacketConn
	if err := netlab.Do(l.B, func() error {
		var err error
		conn, err = server4.NewIPv4UDPConn(l.IfB, &net.UDPAddr{Port: 68})
		return err
	}); err != nil {
		l.t.Fatalf("client socket in %s: %v", l.B, err)
	}
	l.t.Cleanup(func() { conn.Close() })
	return &nsDHCPClient{t: l.t, conn: conn}
}

// exchange broadcasts m and returns the first answer with its xid.
func (c *nsDHCPClient) exchange(m *dhcpv4.DHCPv4, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	if _, err := c.conn.WriteTo(m.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
		return nil, err
	}
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			return nil, fmt.Errorf("no answer to %s: %w", m.MessageType(), err)
		}
		if r, err := dhcpv4.FromBytes(buf[:n]); err == nil && r.TransactionID == m.TransactionID && r.OpCode == dhcpv4.OpcodeBootReply {
			return r, nil
		}
	}
}

// request runs DISCOVER, OFFER, REQUEST, ACK for mac with mods on both
// client messages.
func (c *nsDHCPClient) request(mac net.HardwareAddr, mods ...dhcpv4.Modifier) (offer, ack *dhcpv4.DHCPv4, err error) {
	d, err := dhcpv4.NewDiscovery(mac, mods...)
	if err != nil {
		return nil, nil, err
	}
	if offer, err = c.exchange(d, 3*time.Second); err != nil {
		return nil, nil, err
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		return offer, nil, fmt.Errorf("got %s to DISCOVER, want OFFER", offer.MessageType())
	}
	r, err := dhcpv4.NewRequestFromOffer(offer, mods...)
	if err != nil {
		return offer, nil, err
	}
	ack, err = c.exchange(r, 3*time.Second)
	return offer, ack, err
}
