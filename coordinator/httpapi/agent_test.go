package httpapi_test

// Integration tests of the rack agent routes (boot state, reports),
// sightings, agents and node addresses, against a real single-server
// coordinator through net/http only.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// agentEnv is a coordinator with two racks and an agent token for each.
type agentEnv struct {
	*apiEnv
	agent1, agent2 string // Authorization header values of r1's and r2's agent tokens
	seqs           map[string]uint64
}

// stamp fills what every report must carry and a test leaves out: an
// agent, an incarnation and a sequence number (one per report id, so a
// report sent again keeps its number, as an agent's retry does).
func (e *agentEnv) stamp(rs []proto.AgentReport) []proto.AgentReport {
	out := slices.Clone(rs)
	for i := range out {
		r := &out[i]
		if r.Agent == "" {
			r.Agent = "agent-x"
		}
		if r.Incarnation == "" {
			r.Incarnation = "inc-1"
		}
		if r.Seq == 0 {
			if e.seqs[r.ID] == 0 {
				e.seqs[r.ID] = uint64(len(e.seqs) + 1)
			}
			r.Seq = e.seqs[r.ID]
		}
	}
	return out
}

// rack1 is the rack most agent tests use: 10.9.0.0/24 with its gateway
// and boot server at .1 and .2 and the dynamic pool .100-.199.
var rack1 = proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2",
	PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}

func startAgentAPI(t *testing.T) *agentEnv {
	t.Helper()
	return withAgents(startAPI(t))
}

// withAgents adds racks r1 and r2 and an agent token for each.
func withAgents(e *apiEnv) *agentEnv {
	e.t.Helper()
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, rack1, nil)
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "r2", Subnet: "10.9.1.0/24", Gateway: "10.9.1.1",
		BootServer: "10.9.1.2", PoolStart: "10.9.1.100", PoolEnd: "10.9.1.199"}, nil)
	return &agentEnv{apiEnv: e,
		agent1: bearer(e.createToken(proto.RoleAgent, "r1").Secret),
		agent2: bearer(e.createToken(proto.RoleAgent, "r2").Secret),
		seqs:   map[string]uint64{}}
}

// bootState reads rack's boot state with auth and checks that the body's
// index is the header's.
func (e *agentEnv) bootState(query, auth string) (proto.RackBootState, reply) {
	e.t.Helper()
	var st proto.RackBootState
	r := e.ok(200, "GET", "/v1/agent/bootstate"+query, auth, nil, &st)
	if st.Index != r.index(e.t) {
		e.t.Errorf("GET /v1/agent/bootstate%s: body index %d, header %d", query, st.Index, r.index(e.t))
	}
	return st, r
}

// report sends a batch as auth for rack and returns the ack.
func (e *agentEnv) report(rack, auth string, reports ...proto.AgentReport) proto.ReportAck {
	e.t.Helper()
	var ack proto.ReportAck
	r := e.ok(200, "POST", "/v1/agent/reports?rack="+rack, auth, proto.ReportBatch{Reports: e.stamp(reports)}, &ack)
	if ack.Index == 0 || ack.Index != r.index(e.t) {
		e.t.Errorf("report ack index %d, header %d", ack.Index, r.index(e.t))
	}
	return ack
}

func (e *agentEnv) sightings(query string) []proto.Sighting {
	e.t.Helper()
	var sg []proto.Sighting
	e.ok(200, "GET", "/v1/sightings"+query, asAdmin, nil, &sg)
	return sg
}

func bootNode(t *testing.T, st proto.RackBootState, name string) proto.BootNode {
	t.Helper()
	for _, n := range st.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("boot state of rack %s has no node %s: %+v", st.Rack.Name, name, st.Nodes)
	return proto.BootNode{}
}

// inFlight reads how many requests to route ("GET /v1/nodes") the server
// is serving now, from its metalfleet_api_requests_in_flight gauge.
func (e *apiEnv) inFlight(route string) (int, error) {
	resp, err := e.client.Get(e.base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	prefix := `metalfleet_api_requests_in_flight{route="` + route + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			return int(n), err
		}
	}
	return 0, nil
}

// sendWhenBlocked sends a request from another goroutine once a request
// to route is being served (a blocking read parked on its index), for that
// read to wake on; the channel gets the write's index, or an error.
func (e *apiEnv) sendWhenBlocked(route, method, path, body string) <-chan sent {
	done := make(chan sent, 1)
	go func() {
		// Wait (bounded) for the blocking read to be in flight; e.t
		// must not be used from this goroutine.
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(testkit.Poll)
		defer tick.Stop()
		for {
			if n, err := e.inFlight(route); err == nil && n > 0 {
				break
			}
			if time.Now().After(deadline) {
				done <- sent{err: "the blocking read " + route + " was never in flight"}
				return
			}
			<-tick.C
		}
		s := sent{at: time.Now()}
		// e.call would t.Fatal from the wrong goroutine.
		req, _ := http.NewRequest(method, e.base+path, strings.NewReader(body))
		req.Header.Set("Authorization", bearer(e.admin))
		resp, err := e.client.Do(req)
		if err != nil {
			s.err = err.Error()
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				s.err = resp.Status + " " + string(b)
			}
			s.index, _ = strconv.ParseUint(resp.Header.Get(proto.IndexHeader), 10, 64)
		}
		done <- s
	}()
	return done
}

type sent struct {
	at    time.Time
	index uint64
	err   string
}

func TestAPIAgentBootState(t *testing.T) {
	e := startAgentAPI(t)
	reader := bearer(e.createToken(proto.RoleReader, "").Secret)
	operator := bearer(e.createToken(proto.RoleOperator, "").Secret)

	st, r := e.bootState("?rack=r1", e.agent1)
	want := rack1
	want.Meta = st.Rack.Meta
	if !reflectEqualJSON(st.Rack, want) || st.Rack.CreateIndex == 0 {
		t.Errorf("boot state rack: %+v, want %+v", st.Rack, want)
	}
	if st.DiscoveryEnabled || st.Discovery.Kind != proto.BootDiscovery || st.Discovery.Kernel != nil || st.Discovery.Initrd != nil {
		t.Errorf("boot state without discovery settings: enabled %v, discovery %+v", st.DiscoveryEnabled, st.Discovery)
	}
	// Empty lists are [], not null: an agent ranges over them.
	for _, f := range []string{`"nodes": []`, `"leases": []`} {
		if !strings.Contains(string(r.Body), f) {
			t.Errorf("boot state of an empty rack lacks %s: %s", f, r.Body)
		}
	}

	// Nodes get reserved addresses: .1 is the gateway and .2 the boot
	// server, so the first node gets .3, the next .4.
	n1 := e.createNode(proto.NodeCreate{Name: "n1", MACs: []string{mac(1)}, Rack: "r1"})
	d1 := e.createNode(proto.NodeCreate{Name: "d1", MACs: []string{mac(2)}, Rack: "r1", Enrolled: new(false)})
	other := e.createNode(proto.NodeCreate{Name: "o1", MACs: []string{mac(3)}, Rack: "r2"})
	if n1.IP != "10.9.0.3" || d1.IP != "10.9.0.4" || other.IP != "10.9.1.3" {
		t.Errorf("reserved addresses: n1 %q, d1 %q, o1 %q; want 10.9.0.3, 10.9.0.4, 10.9.1.3", n1.IP, d1.IP, other.IP)
	}
	st, _ = e.bootState("?rack=r1", e.agent1)
	if len(st.Nodes) != 2 {
		t.Fatalf("boot state of r1: %d nodes, want n1 and d1 only: %+v", len(st.Nodes), st.Nodes)
	}
	bn := bootNode(t, st, "n1")
	if bn.UUID != n1.UUID || bn.IP != "10.9.0.3" || !slices.Equal(bn.MACs, []string{mac(1)}) || bn.Boot.Kind != proto.BootLocalDisk || bn.Boot.Kernel != nil {
		t.Errorf("enrolled node n1 in the boot state: %+v, want ip 10.9.0.3 booting local-disk", bn)
	}
	if bd := bootNode(t, st, "d1"); bd.IP != "10.9.0.4" || bd.Boot.Kind != proto.BootLocalDisk {
		t.Errorf("discovered node d1 in the boot state with discovery off: %+v, want ip 10.9.0.4 booting local-disk", bd)
	}

	// Discovery is enabled only once the settings also name a kernel and
	// a ramdisk.
	kernel := proto.Image{Name: "k1", Kind: proto.ImageKernel, URL: "http://images.example/vmlinuz", SHA256: strings.Repeat("1a", 32), Size: 1234}
	ramdisk := proto.Image{Name: "rd1", Kind: proto.ImageRamdisk, URL: "http://images.example/initrd", SHA256: strings.Repeat("2b", 32)}
	e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, kernel, nil)
	e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, ramdisk, nil)
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_enabled":true}`, nil)
	if st, _ = e.bootState("?rack=r1", e.agent1); st.DiscoveryEnabled {
		t.Errorf("discovery_enabled without a kernel and ramdisk: %+v", st.Discovery)
	}
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_kernel":"k1","discovery_ramdisk":"rd1"}`, nil)
	st, _ = e.bootState("?rack=r1", e.agent1)
	wantK := &proto.Artifact{Name: "k1", URL: kernel.URL, SHA256: kernel.SHA256, Size: 1234}
	wantI := &proto.Artifact{Name: "rd1", URL: ramdisk.URL, SHA256: ramdisk.SHA256}
	if !st.DiscoveryEnabled || st.Discovery.Kind != proto.BootDiscovery || !reflectEqualJSON(st.Discovery.Kernel, wantK) || !reflectEqualJSON(st.Discovery.Initrd, wantI) {
		t.Errorf("discovery after the settings name k1 and rd1: enabled %v, %+v (kernel %+v, initrd %+v)",
			st.DiscoveryEnabled, st.Discovery, st.Discovery.Kernel, st.Discovery.Initrd)
	}
	if bd := bootNode(t, st, "d1"); !reflectEqualJSON(bd.Boot, st.Discovery) {
		t.Errorf("discovered node d1 boots %+v, want the discovery config %+v", bd.Boot, st.Discovery)
	}
	if bn := bootNode(t, st, "n1"); bn.Boot.Kind != proto.BootLocalDisk || bn.Boot.Kernel != nil {
		t.Errorf("enrolled node n1 boots %+v with discovery on, want local-disk", bn.Boot)
	}
	// Discovery switched off again: the artifacts stay, the flag goes.
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_enabled":false}`, nil)
	if st, _ = e.bootState("?rack=r1", e.agent1); st.DiscoveryEnabled || st.Discovery.Kernel == nil {
		t.Errorf("discovery switched off: enabled %v, kernel %+v", st.DiscoveryEnabled, st.Discovery.Kernel)
	}

	// Who may read which rack.
	st, _ = e.bootState("?rack=r1", asAdmin)
	if st.Rack.Name != "r1" || len(st.Nodes) != 2 {
		t.Errorf("admin reads r1: rack %q, %d nodes", st.Rack.Name, len(st.Nodes))
	}
	if st, _ = e.bootState("", e.agent2); st.Rack.Name != "r2" || len(st.Nodes) != 1 || st.Nodes[0].IP != "10.9.1.3" {
		t.Errorf("an r2 agent without ?rack reads %q with %+v, want its own rack r2 with o1", st.Rack.Name, st.Nodes)
	}
	e.runErrCases([]errCase{
		{name: "another rack's agent", method: "GET", path: "/v1/agent/bootstate?rack=r1", auth: e.agent2,
			status: 403, code: proto.CodeForbidden, msg: "bound to rack r2, not r1"},
		{name: "an agent on an unknown rack", method: "GET", path: "/v1/agent/bootstate?rack=nosuch", auth: e.agent1,
			status: 403, code: proto.CodeForbidden, msg: "bound to rack r1, not nosuch"},
		{name: "reader", method: "GET", path: "/v1/agent/bootstate?rack=r1", auth: reader,
			status: 403, code: proto.CodeForbidden, msg: "a reader token may not GET /v1/agent/bootstate (needs agent)"},
		{name: "operator", method: "GET", path: "/v1/agent/bootstate?rack=r1", auth: operator,
			status: 403, code: proto.CodeForbidden, msg: "needs agent"},
		{name: "no token", method: "GET", path: "/v1/agent/bootstate?rack=r1", auth: noAuth,
			status: 401, code: proto.CodeUnauthorized, msg: "missing Authorization"},
		{name: "unknown rack", method: "GET", path: "/v1/agent/bootstate?rack=nosuch",
			status: 404, code: proto.CodeNotFound, msg: `rack "nosuch" not found`},
		{name: "admin without a rack", method: "GET", path: "/v1/agent/bootstate",
			status: 400, code: proto.CodeInvalid, msg: "say which rack"},
		{name: "bad index", method: "GET", path: "/v1/agent/bootstate?rack=r1&index=x", auth: e.agent1,
			status: 400, code: proto.CodeInvalid, msg: `index "x"`},
		{name: "bad wait", method: "GET", path: "/v1/agent/bootstate?rack=r1&index=1&wait=soon", auth: e.agent1,
			status: 400, code: proto.CodeInvalid, msg: `wait "soon"`},
		{name: "agent reads nodes", method: "GET", path: "/v1/nodes", auth: e.agent1,
			status: 403, code: proto.CodeForbidden, msg: "an agent token may not GET /v1/nodes"},
		{name: "agent reads sightings", method: "GET", path: "/v1/sightings", auth: e.agent1,
			status: 403, code: proto.CodeForbidden, msg: "an agent token may not GET /v1/sightings"},
		{name: "agent writes a node", method: "POST", path: "/v1/nodes", auth: e.agent1, body: `{"macs":["` + mac(9) + `"]}`,
			status: 403, code: proto.CodeForbidden, msg: "needs operator"},
	})
}

// reflectEqualJSON compares two values by their JSON.
func reflectEqualJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

func TestAPIAgentBootStateBlocking(t *testing.T) {
	e := startAgentAPI(t)
	_, r := e.bootState("?rack=r1", e.agent1)
	idx0 := r.index(t)

	t.Run("wakes on a change to its rack", func(t *testing.T) {
		done := e.sendWhenBlocked("GET /v1/agent/bootstate", "POST", "/v1/nodes", `{"name":"late","rack":"r1","macs":["`+mac(7)+`"]}`)
		start := time.Now()
		st, r := e.bootState(fmt.Sprintf("?rack=r1&index=%d&wait=5s", idx0), e.agent1)
		returned := time.Now()
		w := <-done
		if w.err != "" {
			t.Fatalf("the write failed: %s", w.err)
		}
		if returned.Before(w.at) {
			t.Errorf("the blocking read returned %s after it started, before the write was sent (%s after)", returned.Sub(start), w.at.Sub(start))
		}
		if r.Took >= 4*time.Second {
			t.Errorf("the blocking read took %s: it should wake on the write, not wait out 5s", r.Took)
		}
		if st.Index <= idx0 || st.Index < w.index {
			t.Errorf("boot index after the write %d, want > %d and >= the write's %d", st.Index, idx0, w.index)
		}
		if len(st.Nodes) != 1 || st.Nodes[0].Name != "late" || st.Nodes[0].IP != "10.9.0.3" {
			t.Errorf("the blocking read answered %+v, want the new node with 10.9.0.3", st.Nodes)
		}
	})

	t.Run("another rack's change does not wake it", func(t *testing.T) {
		_, r := e.bootState("?rack=r1", e.agent1)
		idx := r.index(t)
		done := e.sendWhenBlocked("GET /v1/agent/bootstate", "POST", "/v1/nodes", `{"name":"elsewhere","rack":"r2","macs":["`+mac(8)+`"]}`)
		st, r := e.bootState(fmt.Sprintf("?rack=r1&index=%d&wait=700ms", idx), e.agent1)
		w := <-done
		if w.err != "" {
			t.Fatalf("the write to r2 failed: %s", w.err)
		}
		if w.index <= idx {
			t.Fatalf("the write to r2 applied at %d, not past r1's boot index %d: the test proves nothing", w.index, idx)
		}
		if r.Took < 600*time.Millisecond {
			t.Errorf("the r1 read returned after %s: a change to r2 woke it", r.Took)
		}
		if r.Took > 5*time.Second {
			t.Errorf("a 700ms wait took %s", r.Took)
		}
		if st.Index != idx {
			t.Errorf("r1's boot index moved from %d to %d on a change to r2", idx, st.Index)
		}
		// The r2 agent does see it.
		if st2, _ := e.bootState("?rack=r2", e.agent2); len(st2.Nodes) != 1 || st2.Index < w.index {
			t.Errorf("r2's boot state after the write: index %d (write %d), nodes %+v", st2.Index, w.index, st2.Nodes)
		}
	})

	t.Run("settings wake every rack", func(t *testing.T) {
		_, r := e.bootState("?rack=r2", e.agent2)
		idx := r.index(t)
		done := e.sendWhenBlocked("GET /v1/agent/bootstate", "PATCH", "/v1/settings", `{"discovery_enabled":true}`)
		st, r := e.bootState(fmt.Sprintf("?rack=r2&index=%d&wait=5s", idx), e.agent2)
		w := <-done
		if w.err != "" {
			t.Fatalf("the settings write failed: %s", w.err)
		}
		if r.Took >= 4*time.Second || st.Index < w.index {
			t.Errorf("r2 read after a settings change: took %s, index %d (write %d)", r.Took, st.Index, w.index)
		}
	})
}

func TestAPIAgentReports(t *testing.T) {
	e := startAgentAPI(t)
	reader := bearer(e.createToken(proto.RoleReader, "").Secret)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	unknown := "52:54:00:AA:BB:01" // reported upper-case, stored lower-case
	seen := proto.AgentReport{ID: "seen-1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Time: t0,
		MAC: unknown, Arch: "00:07", Interface: "eth1", Count: 3}

	t.Run("mac_seen makes a sighting, once per id", func(t *testing.T) {
		ack := e.report("r1", e.agent1, seen)
		if !slices.Equal(ack.Acked, []string{"seen-1"}) || len(ack.Rejected) != 0 {
			t.Fatalf("ack: %+v, want seen-1 acked", ack)
		}
		check := func(what string) {
			t.Helper()
			sg := e.sightings("")
			if len(sg) != 1 {
				t.Fatalf("%s: sightings %+v, want one", what, sg)
			}
			s := sg[0]
			if s.MAC != "52:54:00:aa:bb:01" || s.Rack != "r1" || s.Agent != "agent-a" || s.Arch != "00:07" || s.Interface != "eth1" ||
				s.Count != 3 || !s.FirstSeen.Equal(t0) || !s.LastSeen.Equal(t0) || s.CreateIndex == 0 {
				t.Errorf("%s: sighting %+v", what, s)
			}
		}
		check("first batch")
		// The same batch again (an agent retrying after a lost answer):
		// acked again, counted once.
		ack = e.report("r1", e.agent1, seen)
		if !slices.Equal(ack.Acked, []string{"seen-1"}) || len(ack.Rejected) != 0 {
			t.Errorf("ack of the repeated batch: %+v, want seen-1 acked", ack)
		}
		check("repeated batch")

		// A new report of the same MAC adds to the count and moves
		// last_seen.
		again := seen
		again.ID, again.Time, again.Count = "seen-2", t0.Add(time.Minute), 0
		e.report("r1", e.agent1, again)
		sg := e.sightings("?rack=r1")
		if len(sg) != 1 || sg[0].Count != 4 || !sg[0].LastSeen.Equal(t0.Add(time.Minute)) || !sg[0].FirstSeen.Equal(t0) {
			t.Errorf("after a second sighting: %+v, want count 4 and last_seen a minute later", sg)
		}
		if sg := e.sightings("?rack=r2"); len(sg) != 0 {
			t.Errorf("sightings of r2: %+v, want none", sg)
		}
		var raw []proto.Sighting
		if r := e.ok(200, "GET", "/v1/sightings?rack=r2", reader, nil, &raw); strings.TrimSpace(string(r.Body)) != "[]" {
			t.Errorf("sightings of r2 as reader: %s, want []", r.Body)
		}
	})

	t.Run("rejected reports", func(t *testing.T) {
		ack := e.report("r1", e.agent1,
			proto.AgentReport{ID: "ok-1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(100)},
			proto.AgentReport{ID: "other-rack", Kind: proto.ReportMACSeen, Rack: "r2", Agent: "agent-a", Time: t0, MAC: mac(101)},
			proto.AgentReport{ID: "no-time", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", MAC: mac(102)},
			proto.AgentReport{ID: "callback", Kind: proto.ReportCallback, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(103),
				Step: "inventory", Data: json.RawMessage(`{"cpus":8}`)},
			proto.AgentReport{ID: "bogus-kind", Kind: "teleport", Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(104)},
			proto.AgentReport{ID: "bad-mac", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Time: t0, MAC: "zz"},
			proto.AgentReport{ID: "lease-outside", Kind: proto.ReportLease, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(105),
				LeaseEvent: "bound", Lease: &proto.Lease{IP: "10.9.0.50", Expires: t0.Add(time.Hour)}},
		)
		if !slices.Equal(ack.Acked, []string{"ok-1"}) {
			t.Errorf("acked %v, want only ok-1", ack.Acked)
		}
		for id, frag := range map[string]string{
			"other-rack":    "rack r2",
			"no-time":       "reports[2].time is required",
			"callback":      "reports[3].data: not an inventory",
			"bogus-kind":    `reports[4].kind "teleport"`,
			"bad-mac":       `reports[5].mac "zz": want an Ethernet MAC`,
			"lease-outside": "outside rack r1's pool",
		} {
			if why, ok := ack.Rejected[id]; !ok || !strings.Contains(why, frag) {
				t.Errorf("report %s: rejected %q (present %v), want a reason containing %q", id, why, ok, frag)
			}
		}
		if len(ack.Rejected) != 6 {
			t.Errorf("rejected %v, want 6 reports", ack.Rejected)
		}
		var macs []string
		for _, s := range e.sightings("") {
			macs = append(macs, s.MAC)
		}
		if !slices.Equal(macs, []string{"52:54:00:00:00:64", "52:54:00:aa:bb:01"}) {
			t.Errorf("sightings after the mixed batch: %v, want only ok-1's MAC added", macs)
		}
		// A rejected report is not remembered as applied: sent again, it
		// is judged again (and rejected again).
		ack = e.report("r1", e.agent1, proto.AgentReport{ID: "callback", Kind: proto.ReportCallback, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(103)})
		if len(ack.Acked) != 0 || ack.Rejected["callback"] == "" {
			t.Errorf("callback sent again: %+v, want rejected again", ack)
		}
	})

	t.Run("batch errors", func(t *testing.T) {
		valid := proto.AgentReport{ID: "valid", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(110)}
		tooMany := make([]proto.AgentReport, httpapi.MaxReportBatch+1)
		for i := range tooMany {
			tooMany[i] = proto.AgentReport{ID: fmt.Sprintf("many-%d", i), Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(200 + i)}
		}
		e.runErrCases([]errCase{
			{name: "a report without id", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
				body:   proto.ReportBatch{Reports: e.stamp([]proto.AgentReport{valid, {Kind: proto.ReportMACSeen, Rack: "r1", Time: t0, MAC: mac(111)}})},
				status: 400, code: proto.CodeInvalid, msg: "reports[1]: id is required"},
			{name: "more than 1000 reports", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
				body:   proto.ReportBatch{Reports: e.stamp(tooMany)},
				status: 413, code: proto.CodeTooLarge, msg: "1001 in one batch, at most 1000"},
			{name: "not JSON", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
				body:   `{"reports":[`,
				status: 400, code: proto.CodeUndecodable, msg: `ends early`},
			{name: "r1 agent posts for r2", method: "POST", path: "/v1/agent/reports?rack=r2", auth: e.agent1,
				body:   proto.ReportBatch{Reports: []proto.AgentReport{{ID: "x", Kind: proto.ReportMACSeen, Rack: "r2", Time: t0, MAC: mac(112)}}},
				status: 403, code: proto.CodeForbidden, msg: "bound to rack r1, not r2"},
			{name: "reader posts", method: "POST", path: "/v1/agent/reports?rack=r1", auth: reader,
				body:   proto.ReportBatch{Reports: e.stamp([]proto.AgentReport{valid})},
				status: 403, code: proto.CodeForbidden, msg: "a reader token may not POST /v1/agent/reports (needs agent)"},
			{name: "admin without a rack", method: "POST", path: "/v1/agent/reports",
				body:   proto.ReportBatch{Reports: e.stamp([]proto.AgentReport{valid})},
				status: 400, code: proto.CodeInvalid, msg: "say which rack"},
			{name: "admin on an unknown rack", method: "POST", path: "/v1/agent/reports?rack=nosuch",
				body:   proto.ReportBatch{Reports: e.stamp([]proto.AgentReport{valid})},
				status: 404, code: proto.CodeNotFound, msg: `rack "nosuch" not found`},
		})
		// Nothing of a refused batch was applied, not even its valid
		// reports.
		for _, s := range e.sightings("") {
			if s.MAC == mac(110) || s.MAC == mac(200) || s.MAC == mac(112) {
				t.Errorf("a refused batch left sighting %s", s.MAC)
			}
		}
		// An admin may report for any rack.
		if ack := e.report("r2", asAdmin, proto.AgentReport{ID: "admin-1", Kind: proto.ReportMACSeen, Rack: "r2", Time: t0, MAC: mac(113)}); !slices.Equal(ack.Acked, []string{"admin-1"}) {
			t.Errorf("admin report for r2: %+v", ack)
		}
	})

	t.Run("leases", func(t *testing.T) {
		exp := t0.Add(12 * time.Hour)
		bound := proto.AgentReport{ID: "lease-1", Kind: proto.ReportLease, Rack: "r1", Agent: "agent-a", Time: t0, MAC: mac(120),
			LeaseEvent: "bound", Lease: &proto.Lease{MAC: mac(120), IP: "10.9.0.150", Expires: exp}}
		if ack := e.report("r1", e.agent1, bound); !slices.Equal(ack.Acked, []string{"lease-1"}) || len(ack.Rejected) != 0 {
			t.Fatalf("lease ack: %+v", ack)
		}
		st, _ := e.bootState("?rack=r1", e.agent1)
		want := []proto.Lease{{MAC: mac(120), IP: "10.9.0.150", Expires: exp, Agent: "agent-a"}}
		if !reflectEqualJSON(st.Leases, want) {
			t.Errorf("leases in the boot state: %+v, want %+v", st.Leases, want)
		}
		if st2, _ := e.bootState("?rack=r2", e.agent2); len(st2.Leases) != 0 {
			t.Errorf("r1's lease shows in r2's boot state: %+v", st2.Leases)
		}
		// Another MAC may not take the address while the lease holds.
		taken := proto.AgentReport{ID: "lease-2", Kind: proto.ReportLease, Rack: "r1", Agent: "agent-b", Time: t0.Add(time.Minute), MAC: mac(121),
			LeaseEvent: "bound", Lease: &proto.Lease{IP: "10.9.0.150", Expires: exp}}
		if ack := e.report("r1", e.agent1, taken); !strings.Contains(ack.Rejected["lease-2"], "leased to "+mac(120)) {
			t.Errorf("binding a leased address: %+v", ack)
		}
		released := proto.AgentReport{ID: "lease-3", Kind: proto.ReportLease, Rack: "r1", Agent: "agent-a", Time: t0.Add(time.Hour), MAC: mac(120),
			LeaseEvent: "released", Lease: &proto.Lease{IP: "10.9.0.150"}}
		e.report("r1", e.agent1, released)
		if st, _ := e.bootState("?rack=r1", e.agent1); len(st.Leases) != 0 {
			t.Errorf("leases after the release: %+v, want none", st.Leases)
		}
	})

	t.Run("boot events of known nodes", func(t *testing.T) {
		n := e.createNode(proto.NodeCreate{Name: "n1", MACs: []string{mac(130)}, Rack: "r1"})
		if n.LastBoot != nil {
			t.Errorf("a new node has last_boot %+v", n.LastBoot)
		}
		ev := proto.AgentReport{ID: "boot-1", Kind: proto.ReportBootEvent, Rack: "r1", Agent: "agent-a", Time: t0.Add(2 * time.Hour),
			Node: n.UUID, Event: "kernel"}
		if ack := e.report("r1", e.agent1, ev); !slices.Equal(ack.Acked, []string{"boot-1"}) {
			t.Fatalf("boot event ack: %+v", ack)
		}
		var got proto.Node
		r := e.ok(200, "GET", "/v1/nodes/n1", reader, nil, &got)
		want := &proto.BootEvent{Event: "kernel", Agent: "agent-a", Time: t0.Add(2 * time.Hour)}
		if !reflectEqualJSON(got.LastBoot, want) {
			t.Errorf("last_boot after a boot event: %+v, want %+v (body %s)", got.LastBoot, want, r.Body)
		}
		// A known node's MAC seen is a boot step (dhcp), not a sighting.
		e.report("r1", e.agent1, proto.AgentReport{ID: "boot-2", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-b", Time: t0.Add(3 * time.Hour), MAC: mac(130)})
		e.ok(200, "GET", "/v1/nodes/n1", reader, nil, &got)
		if got.LastBoot == nil || got.LastBoot.Event != "dhcp" || got.LastBoot.Agent != "agent-b" {
			t.Errorf("last_boot after the node's MAC was seen: %+v, want dhcp by agent-b", got.LastBoot)
		}
		for _, s := range e.sightings("") {
			if s.MAC == mac(130) {
				t.Errorf("a known node's MAC became a sighting: %+v", s)
			}
		}
		// A boot event for a node that does not exist is rejected.
		ack := e.report("r1", e.agent1, proto.AgentReport{ID: "boot-3", Kind: proto.ReportBootEvent, Rack: "r1", Time: t0, Node: "nosuch", Event: "kernel"})
		if !strings.Contains(ack.Rejected["boot-3"], `node "nosuch" not found`) {
			t.Errorf("boot event of an unknown node: %+v", ack)
		}
	})

	t.Run("creating a node forgets its sighting", func(t *testing.T) {
		e.createNode(proto.NodeCreate{Name: "found", MACs: []string{unknown}, Rack: "r1", Enrolled: new(false)})
		for _, s := range e.sightings("") {
			if s.MAC == "52:54:00:aa:bb:01" {
				t.Errorf("the sighting of a MAC now a node's is still listed: %+v", s)
			}
		}
	})
}

func TestAPINodeIPAndAgents(t *testing.T) {
	e := startAgentAPI(t)
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "bare"}, nil)

	a := e.createNode(proto.NodeCreate{Name: "a", MACs: []string{mac(1)}, Rack: "r1"})
	b := e.createNode(proto.NodeCreate{Name: "b", MACs: []string{mac(2)}, Rack: "r1"})
	fixed := e.createNode(proto.NodeCreate{Name: "fixed", MACs: []string{mac(3)}, Rack: "r1"})
	bare := e.createNode(proto.NodeCreate{Name: "bare1", MACs: []string{mac(4)}, Rack: "bare"})
	loose := e.createNode(proto.NodeCreate{Name: "loose", MACs: []string{mac(5)}})
	if a.IP != "10.9.0.3" || b.IP != "10.9.0.4" || fixed.IP != "10.9.0.5" || bare.IP != "" || loose.IP != "" {
		t.Errorf("addresses: a %q b %q fixed %q bare1 %q loose %q; want 10.9.0.3, 10.9.0.4, 10.9.0.5, none, none",
			a.IP, b.IP, fixed.IP, bare.IP, loose.IP)
	}
	var n proto.Node
	e.ok(200, "PATCH", "/v1/nodes/fixed", asAdmin, `{"ip":"10.9.0.10"}`, &n)
	if n.IP != "10.9.0.10" {
		t.Errorf("after PATCH ip 10.9.0.10: %q", n.IP)
	}

	e.runErrCases([]errCase{
		{name: "patch ip to a taken address", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"10.9.0.3"}`,
			status: 409, code: proto.CodeConflict, msg: "ip 10.9.0.3 in rack r1 belongs to node " + a.UUID},
		{name: "patch ip into the pool", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"10.9.0.100"}`,
			status: 400, code: proto.CodeInvalid, msg: "ip 10.9.0.100: inside the dynamic pool 10.9.0.100-10.9.0.199"},
		{name: "patch ip to the gateway", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"10.9.0.1"}`,
			status: 400, code: proto.CodeInvalid, msg: "an address of the rack's own"},
		{name: "patch ip to the broadcast address", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"10.9.0.255"}`,
			status: 400, code: proto.CodeInvalid, msg: "broadcast address"},
		{name: "patch ip outside the subnet", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"10.9.1.5"}`,
			status: 400, code: proto.CodeInvalid, msg: "outside subnet 10.9.0.0/24"},
		{name: "patch ip not an address", method: "PATCH", path: "/v1/nodes/b", body: `{"ip":"ten"}`,
			status: 400, code: proto.CodeInvalid, msg: `ip "ten": want an IPv4 address`},
		{name: "patch ip of a node without a rack", method: "PATCH", path: "/v1/nodes/loose", body: `{"ip":"10.9.0.20"}`,
			status: 400, code: proto.CodeInvalid, msg: "needs a rack"},
		{name: "patch ip in a rack without subnet", method: "PATCH", path: "/v1/nodes/bare1", body: `{"ip":"10.9.0.20"}`,
			status: 400, code: proto.CodeInvalid, msg: "rack bare has no subnet"},
	})

	// b moves to .20; its old .4 is free again for the next node.
	e.ok(200, "PATCH", "/v1/nodes/b", asAdmin, `{"ip":"10.9.0.20"}`, &n)
	if n.IP != "10.9.0.20" {
		t.Errorf("after PATCH ip: %q, want 10.9.0.20", n.IP)
	}
	if c := e.createNode(proto.NodeCreate{Name: "c", MACs: []string{mac(6)}, Rack: "r1"}); c.IP != "10.9.0.4" {
		t.Errorf("node created after b moved: ip %q, want the freed 10.9.0.4", c.IP)
	}
	// Patching ip to "" allocates the lowest free address again (.5 was
	// freed when fixed moved to .10).
	e.ok(200, "PATCH", "/v1/nodes/b", asAdmin, `{"ip":""}`, &n)
	if n.IP != "10.9.0.5" {
		t.Errorf("after PATCH ip \"\": %q, want 10.9.0.5", n.IP)
	}
	// A move to another rack takes an address there.
	e.ok(200, "PATCH", "/v1/nodes/b", asAdmin, `{"rack":"r2"}`, &n)
	if n.IP != "10.9.1.3" {
		t.Errorf("after moving b to r2: ip %q, want 10.9.1.3", n.IP)
	}
	var nodes []proto.Node
	e.ok(200, "GET", "/v1/nodes?rack=r1", asAdmin, nil, &nodes)
	ips := map[string]string{}
	for _, n := range nodes {
		ips[n.Name] = n.IP
	}
	if want := map[string]string{"a": "10.9.0.3", "c": "10.9.0.4", "fixed": "10.9.0.10"}; !reflectEqualJSON(ips, want) {
		t.Errorf("ips listed in r1: %v, want %v", ips, want)
	}

	// Agents: none until one calls (or gossip brings some); see
	// TestAPIAgentsFromAPICalls.
	reader := bearer(e.createToken(proto.RoleReader, "").Secret)
	for _, auth := range []string{asAdmin, reader} {
		var ags []proto.AgentInfo
		r := e.ok(200, "GET", "/v1/agents", auth, nil, &ags)
		if strings.TrimSpace(string(r.Body)) != "[]" {
			t.Errorf("GET /v1/agents: %s, want []", r.Body)
		}
		r.index(t)
	}
	wantError(t, "agents as an agent", e.call("GET", "/v1/agents", e.agent1, nil), 403, proto.CodeForbidden, "an agent token may not GET /v1/agents")
}

// TestAPINodeCreateWithIP checks the ip of POST /v1/nodes.
func TestAPINodeCreateWithIP(t *testing.T) {
	e := startAgentAPI(t)
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "bare"}, nil)
	a := e.createNode(proto.NodeCreate{Name: "a", MACs: []string{mac(1)}, Rack: "r1"})
	fixed := e.createNode(proto.NodeCreate{Name: "fixed", MACs: []string{mac(2)}, Rack: "r1", IP: "10.9.0.10"})
	if a.IP != "10.9.0.3" || fixed.IP != "10.9.0.10" {
		t.Errorf("addresses: a %q, fixed %q; want 10.9.0.3 and the 10.9.0.10 asked for", a.IP, fixed.IP)
	}
	e.runErrCases([]errCase{
		{name: "ip inside the pool", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.0.150"}`,
			status: 400, code: proto.CodeInvalid, msg: "ip 10.9.0.150: inside the dynamic pool 10.9.0.100-10.9.0.199"},
		{name: "ip of the gateway", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.0.1"}`,
			status: 400, code: proto.CodeInvalid, msg: "an address of the rack's own"},
		{name: "ip of the boot server", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.0.2"}`,
			status: 400, code: proto.CodeInvalid, msg: "an address of the rack's own"},
		{name: "network address", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.0.0"}`,
			status: 400, code: proto.CodeInvalid, msg: "network address"},
		{name: "ip outside the subnet", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.1.5"}`,
			status: 400, code: proto.CodeInvalid, msg: "outside subnet 10.9.0.0/24"},
		{name: "ip not an address", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"ten"}`,
			status: 400, code: proto.CodeInvalid, msg: `ip "ten": want an IPv4 address`},
		{name: "ip without a rack", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"ip":"10.9.0.20"}`,
			status: 400, code: proto.CodeInvalid, msg: "needs a rack"},
		{name: "ip in a rack without subnet", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"bare","ip":"10.9.0.20"}`,
			status: 400, code: proto.CodeInvalid, msg: "rack bare has no subnet"},
		{name: "ip taken", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(10) + `"],"rack":"r1","ip":"10.9.0.10"}`,
			status: 409, code: proto.CodeConflict, msg: "ip 10.9.0.10 in rack r1 belongs to node " + fixed.UUID},
	})
	// None of the refused creates made a node.
	if _, ok := e.srv.Store().Node(mac(10)); ok {
		t.Errorf("a refused create left node %s behind", mac(10))
	}
	// The next allocated address skips the one asked for.
	if n := e.createNode(proto.NodeCreate{Name: "next", MACs: []string{mac(3)}, Rack: "r1", IP: "10.9.0.4"}); n.IP != "10.9.0.4" {
		t.Errorf("node next: ip %q, want 10.9.0.4", n.IP)
	}
	if n := e.createNode(proto.NodeCreate{Name: "auto", MACs: []string{mac(4)}, Rack: "r1"}); n.IP != "10.9.0.5" {
		t.Errorf("node auto: ip %q, want 10.9.0.5 (.3 and .4 taken)", n.IP)
	}
}
