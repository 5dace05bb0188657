package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
	"github.com/metalfleet/metalfleet/rackagent/agent"
	"github.com/metalfleet/metalfleet/rackagent/bmc"
	"github.com/metalfleet/metalfleet/rackagent/bmc/ipmisim"
)

// consoleRun is one metalfleet command running in the background.
type consoleRun struct {
	out, errb testkit.SyncBuffer
	done      chan error
	cancel    context.CancelFunc
}

func startCmd(t *testing.T, addr, token string, stdin io.Reader, args ...string) *consoleRun {
	t.Helper()
	r := &consoleRun{done: make(chan error, 1)}
	root := newRoot(&r.out, &r.errb)
	root.SetArgs(append([]string{"--addr", addr, "--token", token}, args...))
	root.SetIn(stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	r.cancel = cancel
	go func() { r.done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// wait waits for the command to end and returns its error.
func (r *consoleRun) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("command still running after 30 s; stdout %q, stderr %q", r.out.String(), r.errb.String())
		return nil
	}
}

// consoleFleet is a real coordinator (its API on a fake clock) with rack
// r1 served by a real rack agent, n1 there with a fake BMC, n2 without a
// BMC, rack r2 with n3 (a fake BMC), and operator tokens for alice and
// bob.
type consoleFleet struct {
	addr       string
	coords     []string // every coordinator's API address
	admin      *apiclient.Client
	clk        *clock.Fake
	alice, bob string
	agentR1    string
	agentR2    string
	agent      *agent.Agent
	n1, n2, n3 *proto.Node
	adminToken string
}

func newConsoleFleet(t testing.TB) *consoleFleet {
	t.Helper()
	f := &consoleFleet{clk: clock.NewFake(time.Now().UTC())}
	dir := t.TempDir()
	cfg := coordtest.Config(t, "s1", dir)
	cfg.Bootstrap = true
	cfg.API.Now = f.clk.Now
	s := coordtest.Start(t, cfg)
	coordtest.WaitFor(t, 10*time.Second, "leader with admin token", func() bool {
		return s.IsLeader() && len(s.Store().Tokens()) > 0
	})
	f.addr, f.coords = s.HTTPAddr(), []string{s.HTTPAddr()}
	f.populate(t, coordtest.AdminToken(t, dir))
	return f
}

// populate makes the racks, tokens and nodes through the API at f.addr.
func (f *consoleFleet) populate(t testing.TB, adminToken string) {
	t.Helper()
	ctx := context.Background()
	f.adminToken = adminToken
	f.admin = apiclient.New(f.addr, f.adminToken)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.admin.CreateRack(ctx, proto.Rack{Name: "r1", Subnet: "127.0.0.0/24", BootServer: "127.0.0.1"})
	must(err)
	_, err = f.admin.CreateRack(ctx, proto.Rack{Name: "r2", Subnet: "127.0.1.0/24", BootServer: "127.0.1.1"})
	must(err)
	tok := func(role proto.Role, rack, desc string) string {
		t.Helper()
		tc, err := f.admin.CreateToken(ctx, proto.TokenCreate{Role: role, Rack: rack, Description: desc})
		must(err)
		return tc.Secret
	}
	f.alice, f.bob = tok(proto.RoleOperator, "", "alice"), tok(proto.RoleOperator, "", "bob")
	f.agentR1, f.agentR2 = tok(proto.RoleAgent, "r1", "agent r1"), tok(proto.RoleAgent, "r2", "agent r2")
	fake := proto.BMC{Driver: proto.DriverFake, Address: "cli-console-" + t.Name()}
	f.n1, err = f.admin.CreateNode(ctx, proto.NodeCreate{Name: "n1", MACs: []string{"52:54:00:00:10:01"}, Rack: "r1", BMC: fake})
	must(err)
	f.n2, err = f.admin.CreateNode(ctx, proto.NodeCreate{Name: "n2", MACs: []string{"52:54:00:00:10:02"}, Rack: "r1"})
	must(err)
	fake.Address += "-n3"
	f.n3, err = f.admin.CreateNode(ctx, proto.NodeCreate{Name: "n3", MACs: []string{"52:54:00:00:10:03"}, Rack: "r2", BMC: fake})
	must(err)
}

// startAgent runs a real rack agent for r1 and waits until it holds n1's
// BMC in its boot state and the coordinator knows its management
// address.
func (f *consoleFleet) startAgent(t testing.TB) {
	t.Helper()
	a, err := agent.New(agent.Config{Name: "a1", Rack: "r1", DataDir: t.TempDir(), Coordinators: f.coords, Token: f.agentR1,
		DHCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AdvertiseIP: netip.MustParseAddr("127.0.0.1"), Logger: coordtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
	})
	f.agent = a
	testkit.Eventually(t, 10*time.Second, "the agent's boot state holds n1's BMC", func() bool {
		v := a.Boot().View()
		if v == nil {
			return false
		}
		n, ok := v.NodeByUUID(f.n1.UUID)
		return ok && n.BMC != nil
	})
	testkit.Eventually(t, 10*time.Second, "the coordinator knows the agent's management address", func() bool {
		ags, err := f.admin.Agents(context.Background())
		for _, ag := range ags {
			if err == nil && ag.Name == "a1" && ag.MgmtAddr == a.MgmtAddr() {
				return true
			}
		}
		return false
	})
}

// TestConsoleThroughCoordinator: the CLI attaches through a real
// coordinator to a real rack agent whose node has a fake BMC (its console
// echoes): bytes both ways, one keyboard, a refusal naming the holder that
// exits non-zero whatever stdin holds, --force taking over (the first is
// told), a read-only watcher, the console log, and the session closing
// with its last client.
func TestConsoleThroughCoordinator(t *testing.T) {
	f := newConsoleFleet(t)
	f.startAgent(t)
	defer func(q, l time.Duration) { consoleQuiet, consoleLinger = q, l }(consoleQuiet, consoleLinger)
	consoleQuiet, consoleLinger = 300*time.Millisecond, 5*time.Second

	// Bytes both ways, stdin not a terminal: it ends, and so does the
	// command, with the echo on stdout.
	r := startCmd(t, f.addr, f.alice, strings.NewReader("hello console\n"), "node", "console", "n1")
	if err := r.wait(t); err != nil {
		t.Fatalf("console with piped stdin: %v; stderr %q", errorLine(err), r.errb.String())
	}
	if !strings.Contains(r.out.String(), "hello console\n") {
		t.Fatalf("stdout %q does not hold the echo of what was sent", r.out.String())
	}
	if !strings.Contains(r.errb.String(), "attached to the console of node n1 as ") {
		t.Fatalf("stderr %q does not hold the agent's attach notice", r.errb.String())
	}

	// Alice holds the keyboard (her stdin stays open).
	aliceIn, aliceW := io.Pipe()
	defer aliceW.Close()
	alice := startCmd(t, f.addr, f.alice, aliceIn, "node", "console", "n1")
	testkit.Eventually(t, 10*time.Second, "alice is attached", func() bool { return strings.Contains(alice.errb.String(), "attached") })

	// A read-only watcher sees what she types.
	watcher := startCmd(t, f.addr, f.bob, strings.NewReader("ignored\n"), "node", "console", "n1", "--read-only")
	testkit.Eventually(t, 10*time.Second, "the watcher is attached", func() bool { return strings.Contains(watcher.errb.String(), "(read-only)") })
	if _, err := aliceW.Write([]byte("ping from alice\n")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the watcher sees alice's output", func() bool {
		return strings.Contains(watcher.out.String(), "ping from alice\n")
	})
	if strings.Contains(watcher.out.String(), "ignored") {
		t.Fatalf("a read-only watcher's stdin reached the console: %q", watcher.out.String())
	}

	// Bob's interactive attach is refused, naming alice, with stdin
	// holding input: non-zero exit, the reason, and nothing sent.
	refused := startCmd(t, f.addr, f.bob, strings.NewReader("should not be sent\n"), "node", "console", "n1")
	err := refused.wait(t)
	if err == nil {
		t.Fatalf("second interactive attach succeeded; stdout %q", refused.out.String())
	}
	if line := errorLine(err); !strings.Contains(line, "node n1 is held by") || !strings.Contains(line, "(alice) since") || !strings.Contains(line, "HTTP 409") {
		t.Fatalf("refusal %q does not name alice as the holder with a 409", line)
	}

	// Bob forces: alice is told and her command ends non-zero.
	bobIn, bobW := io.Pipe()
	defer bobW.Close()
	bob := startCmd(t, f.addr, f.bob, bobIn, "node", "console", "n1", "--force")
	testkit.Eventually(t, 10*time.Second, "bob is attached", func() bool { return strings.Contains(bob.errb.String(), "attached") })
	err = alice.wait(t)
	if err == nil || !strings.Contains(errorLine(err), "(bob) took over") {
		t.Fatalf("alice's command after the takeover: %v, want an error saying bob took over; stderr %q", err, alice.errb.String())
	}
	if _, err := bobW.Write([]byte("bob was here\n")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "bob's keystrokes echo to bob and the watcher", func() bool {
		return strings.Contains(bob.out.String(), "bob was here\n") && strings.Contains(watcher.out.String(), "bob was here\n")
	})
	if strings.Contains(watcher.out.String(), "should not be sent") {
		t.Fatalf("the refused attach's stdin reached the console")
	}
	bobW.Close()
	if err := bob.wait(t); err != nil {
		t.Fatalf("bob's command after stdin ended: %v", err)
	}

	// The console log holds everything, oldest first.
	var logOut testkit.SyncBuffer
	root := newRoot(&logOut, io.Discard)
	root.SetArgs([]string{"--addr", f.addr, "--token", f.alice, "node", "console-log", "n1"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("console-log: %v", errorLine(err))
	}
	lg := logOut.String()
	i, j, k := strings.Index(lg, "hello console"), strings.Index(lg, "ping from alice"), strings.Index(lg, "bob was here")
	if i < 0 || j < i || k < j {
		t.Fatalf("console log %q does not hold the session's output in order", lg)
	}

	// The session closes with its last client.
	watcher.cancel()
	testkit.Eventually(t, 10*time.Second, "the session closes with its last client", func() bool {
		_, n := f.agent.ConsoleHolder(f.n1.UUID)
		return n == 0
	})

	// Every session's start and end, user and mode reach the node's
	// history through the agent's outbox.
	want := []string{"console-start (alice) interactive", "console-start (bob) read-only", "console-start (bob) interactive",
		"console-end (alice) interactive", "console-end (bob) interactive", "console-end (bob) read-only"}
	testkit.Eventually(t, 10*time.Second, "the sessions in n1's history", func() bool {
		var evs []proto.HistoryEvent
		if _, err := f.admin.Do(context.Background(), "GET", "/v1/nodes/n1/history", nil, &evs); err != nil {
			return false
		}
		got := map[string]int{}
		for _, e := range evs {
			user := e.User[strings.LastIndex(e.User, " ")+1:]
			mode := apiclient.ConsoleReadOnly
			if strings.Contains(e.Message, "("+apiclient.ConsoleInteractive+")") {
				mode = apiclient.ConsoleInteractive
			}
			got[e.Kind+" "+user+" "+mode]++
		}
		for _, w := range want {
			if got[w] == 0 {
				return false
			}
		}
		return true
	})
}

// TestConsoleThroughFollower: an operator who reaches a follower gets the
// console all the same (the follower passes the request, upgrade
// included, to the leader, which makes the ticket and knows the agents).
func TestConsoleThroughFollower(t *testing.T) {
	c := coordtest.StartCluster(t, 3)
	f := &consoleFleet{clk: clock.NewFake(time.Now())}
	for _, s := range c.Servers {
		f.coords = append(f.coords, s.HTTPAddr())
	}
	f.addr = c.Servers[c.Leader()].HTTPAddr()
	f.populate(t, c.Token)
	f.startAgent(t)
	defer func(q, l time.Duration) { consoleQuiet, consoleLinger = q, l }(consoleQuiet, consoleLinger)
	consoleQuiet, consoleLinger = 300*time.Millisecond, 5*time.Second
	follower := c.Servers[c.Follower()].HTTPAddr()
	r := startCmd(t, follower, f.alice, strings.NewReader("via a follower\n"), "node", "console", "n1")
	if err := r.wait(t); err != nil {
		t.Fatalf("console through a follower: %v; stderr %q", errorLine(err), r.errb.String())
	}
	if !strings.Contains(r.out.String(), "via a follower\n") {
		t.Fatalf("stdout %q lacks the echo", r.out.String())
	}
	var logOut testkit.SyncBuffer
	root := newRoot(&logOut, io.Discard)
	root.SetArgs([]string{"--addr", follower, "--token", f.alice, "node", "console", "n1", "--log"})
	if err := root.ExecuteContext(context.Background()); err != nil || !strings.Contains(logOut.String(), "via a follower") {
		t.Fatalf("console --log through a follower: %v, %q", err, logOut.String())
	}
}

// TestConsoleOverIPMI: the same path to a BMC speaking real IPMI RMCP+
// over UDP on loopback (ipmisim), whose serial port is a machine that
// answers each line in capitals: Serial-over-LAN both ways.
func TestConsoleOverIPMI(t *testing.T) {
	machine, port := net.Pipe()
	defer machine.Close()
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := machine.Read(buf)
			if err != nil {
				return
			}
			if _, err := machine.Write(bytes.ToUpper(buf[:n])); err != nil {
				return
			}
		}
	}()
	sim, err := ipmisim.New(ipmisim.Config{Username: "admin", Password: "s3cret", Console: port})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	f := newConsoleFleet(t)
	host, p, _ := net.SplitHostPort(sim.Addr())
	pn, _ := strconv.Atoi(p)
	n4, err := f.admin.CreateNode(context.Background(), proto.NodeCreate{Name: "n4", MACs: []string{"52:54:00:00:10:04"}, Rack: "r1",
		BMC: proto.BMC{Driver: proto.DriverIPMI, Address: host, Port: pn, Username: "admin", Password: "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	f.startAgent(t)
	testkit.Eventually(t, 10*time.Second, "the agent holds n4's BMC", func() bool {
		n, ok := f.agent.Boot().View().NodeByUUID(n4.UUID)
		return ok && n.BMC != nil
	})
	defer func(q, l time.Duration) { consoleQuiet, consoleLinger = q, l }(consoleQuiet, consoleLinger)
	consoleQuiet, consoleLinger = 2*time.Second, 10*time.Second
	r := startCmd(t, f.addr, f.alice, strings.NewReader("hello over sol\n"), "node", "console", "n4")
	if err := r.wait(t); err != nil {
		t.Fatalf("console over IPMI: %v; stderr %q", errorLine(err), r.errb.String())
	}
	if !strings.Contains(r.out.String(), "HELLO OVER SOL") {
		t.Fatalf("stdout %q lacks the machine's answer", r.out.String())
	}
}

// TestConsoleRefusals: a node without a BMC, a node whose rack has no
// agent, and a bad mode are refused with a clear reason.
func TestConsoleRefusals(t *testing.T) {
	f := newConsoleFleet(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "console", "n2"}, "n2 has no BMC"},
		{[]string{"node", "console", "n3"}, "no rack agent of rack r2"},
		{[]string{"node", "console-log", "n3"}, "no rack agent of rack r2"},
		{[]string{"node", "console", "n1", "--read-only", "--force"}, "--force"},
		{[]string{"node", "console", "nosuch"}, "not found"},
	} {
		r := startCmd(t, f.addr, f.alice, strings.NewReader("x\n"), tc.args...)
		err := r.wait(t)
		if err == nil || !strings.Contains(errorLine(err), tc.want) {
			t.Errorf("metalfleet %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestConsoleBMCFailure: a BMC that refuses the credentials is a 409
// naming it, one that does not answer a 503; nothing is attached.
func TestConsoleBMCFailure(t *testing.T) {
	f := newConsoleFleet(t)
	f.startAgent(t)
	fake := bmc.FakeFor("cli-console-" + t.Name())
	defer fake.Fail("")
	for _, tc := range []struct {
		kind       proto.BMCErrorKind
		want, code string
	}{
		{proto.BMCErrAuth, "authentication refused", "HTTP 409"},
		{proto.BMCErrUnreachable, "unreachable", "HTTP 503"},
	} {
		fake.Fail(tc.kind)
		r := startCmd(t, f.addr, f.alice, strings.NewReader("x\n"), "node", "console", "n1")
		err := r.wait(t)
		if err == nil || !strings.Contains(errorLine(err), tc.want) || !strings.Contains(errorLine(err), tc.code) {
			t.Errorf("console with the BMC failing %s: %v, want an error with %q and %q", tc.kind, err, tc.want, tc.code)
		}
		if _, n := f.agent.ConsoleHolder(f.n1.UUID); n != 0 {
			t.Errorf("%d clients attached after a failed open", n)
		}
	}
}

// TestConsoleTicketRedeem: a stand-in rack agent of r2 catches the
// tickets the coordinator sends it; the redeem endpoint answers one only
// for its own rack's agent, once, and not after it expired.
func TestConsoleTicketRedeem(t *testing.T) {
	f := newConsoleFleet(t)
	tickets := make(chan string, 4)
	fakeAgent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tickets <- strings.TrimPrefix(r.Header.Get("Authorization"), "Ticket ")
		proto.WriteError(w, proto.Errorf(proto.CodeUnavailable, "stand-in agent"))
	}))
	defer fakeAgent.Close()
	ctx := context.Background()
	r2 := apiclient.New(f.addr, f.agentR2)
	r2.SetHeader("X-Metalfleet-Agent", "fake-r2")
	r2.SetHeader(proto.AgentMgmtHeader, strings.TrimPrefix(fakeAgent.URL, "http://"))
	if _, err := r2.BootState(ctx, "r2", 0, 0); err != nil {
		t.Fatal(err)
	}
	catch := func(args ...string) string {
		t.Helper()
		r := startCmd(t, f.addr, f.alice, strings.NewReader(""), args...)
		if err := r.wait(t); err == nil || !strings.Contains(errorLine(err), "stand-in agent") {
			t.Fatalf("metalfleet %s: %v, want the stand-in agent's refusal passed on", strings.Join(args, " "), err)
		}
		select {
		case s := <-tickets:
			return s
		default:
			t.Fatal("the stand-in agent got no ticket")
			return ""
		}
	}
	secret := catch("node", "console", "n3", "--read-only")
	r1 := apiclient.New(f.addr, f.agentR1)
	if _, err := r1.RedeemConsoleTicket(ctx, "r1", secret); err == nil || !strings.Contains(err.Error(), "rack r2") {
		t.Fatalf("r1's agent redeeming r2's ticket: %v, want a refusal naming rack r2", err)
	}
	tk, err := r2.RedeemConsoleTicket(ctx, "r2", secret)
	if err != nil {
		t.Fatalf("r2's agent redeeming its ticket: %v", err)
	}
	if tk.Node != f.n3.UUID || tk.Mode != apiclient.ConsoleReadOnly || tk.Purpose != apiclient.PurposeConsole || !strings.Contains(tk.User, "(alice)") {
		t.Fatalf("ticket = %+v, want n3, read-only, console, alice", tk)
	}
	if _, err := r2.RedeemConsoleTicket(ctx, "r2", secret); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second redeem: %v, want refused as used", err)
	}

	logSecret := catch("node", "console-log", "n3")
	f.clk.Advance(apiclientTicketTTL + time.Second)
	if _, err := r2.RedeemConsoleTicket(ctx, "r2", logSecret); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("redeeming an expired ticket: %v, want refused", err)
	}
	if _, err := r2.RedeemConsoleTicket(ctx, "r2", strings.Repeat("0", 64)); err == nil {
		t.Fatal("redeeming a made-up ticket succeeded")
	}
}

// apiclientTicketTTL is the coordinator's ticket lifetime
// (httpapi.ConsoleTicketTTL).
const apiclientTicketTTL = 30 * time.Second

func TestConsoleEscapes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		left bool
	}{
		{"ls\r", "ls\r", false},
		{"~.", "", true},
		{"ls\r~.", "ls\r", true},
		{"a~.", "a~.", false},
		{"~~.", "~.", false},
		{"\r~x", "\r~x", false},
		{"\n~.rest", "\n", true},
	} {
		out, _, _, left := escapes([]byte(tc.in), true, false)
		if string(out) != tc.want || left != tc.left {
			t.Errorf("escapes(%q) = %q, left %v; want %q, left %v", tc.in, out, left, tc.want, tc.left)
		}
	}
	// A tilde at the end of one read and a dot at the start of the next.
	out, atStart, tilde, left := escapes([]byte("x\r~"), true, false)
	if string(out) != "x\r" || !tilde || left {
		t.Fatalf("first half: %q tilde %v left %v", out, tilde, left)
	}
	if _, _, _, left = escapes([]byte("."), atStart, tilde); !left {
		t.Fatal("~ then . across two reads did not leave")
	}
}

// BenchmarkConsoleRoundTrip: one keystroke from the client through the
// coordinator and the rack agent to the (fake, echoing) BMC console and
// back, on loopback.
func BenchmarkConsoleRoundTrip(b *testing.B) {
	f := newConsoleFleet(b)
	f.startAgent(b)
	ctx := context.Background()
	conn, err := apiclient.New(f.addr, f.alice).Console(ctx, "n1", apiclient.ConsoleOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseNow()
	b.ResetTimer()
	for range b.N {
		if err := conn.Write(ctx, websocket.MessageBinary, []byte("x")); err != nil {
			b.Fatal(err)
		}
		for {
			typ, p, err := conn.Read(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if typ == websocket.MessageBinary && bytes.Contains(p, []byte("x")) {
				break
			}
		}
	}
}

// BenchmarkConsoleAttach: an attach through the coordinator (a ticket
// committed in Raft, redeemed by the agent in another commit, both
// WebSocket handshakes, the agent's attach notice) and a detach.
func BenchmarkConsoleAttach(b *testing.B) {
	f := newConsoleFleet(b)
	f.startAgent(b)
	ctx := context.Background()
	c := apiclient.New(f.addr, f.alice)
	b.ResetTimer()
	for range b.N {
		conn, err := c.Console(ctx, "n1", apiclient.ConsoleOptions{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		if typ, _, err := conn.Read(ctx); err != nil || typ != websocket.MessageText {
			b.Fatalf("first message: %v, %v; want the attach notice", typ, err)
		}
		conn.Close(websocket.StatusNormalClosure, "")
	}
}
