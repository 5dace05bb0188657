package httpapi_test

// Tests of the limits on what agents send (POST /v1/agent/reports) and of
// the agents known from their API calls (GET /v1/agents with gossip off).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/proto"
)

// startAPIClock is startAPI with the API's clock a fake one.
func startAPIClock(t *testing.T, clk *clock.Fake) *apiEnv {
	t.Helper()
	dir := t.TempDir()
	cfg := coordtest.Config(t, "s1", dir)
	cfg.Bootstrap = true
	cfg.API.Now = func() time.Time { return clk.Now().UTC() }
	s := coordtest.Start(t, cfg)
	coordtest.WaitFor(t, 10*time.Second, "leader with admin token", func() bool {
		return s.IsLeader() && len(s.Store().Tokens()) > 0
	})
	e := &apiEnv{t: t, srv: s, base: "http://" + s.HTTPAddr(), admin: coordtest.AdminToken(t, dir),
		client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// send is call with extra headers.
func (e *apiEnv) send(method, path, auth string, hdr map[string]string, body []byte) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if auth == asAdmin {
		auth = bearer(e.admin)
	}
	req.Header.Set("Authorization", auth)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

func (e *agentEnv) agents(query string) []proto.AgentInfo {
	e.t.Helper()
	var ags []proto.AgentInfo
	e.ok(200, "GET", "/v1/agents"+query, asAdmin, nil, &ags)
	return ags
}

// TestAPIAgentsFromAPICalls: with gossip off (as in metalfleet dev), an
// agent that polls its boot state or posts reports is listed, with its
// rack, its management address and a status from its last call.
func TestAPIAgentsFromAPICalls(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	e := withAgents(startAPIClock(t, clk))
	if ags := e.agents(""); len(ags) != 0 {
		t.Fatalf("agents before any call: %+v, want none", ags)
	}
	// agent-a polls its boot state, naming its management address.
	r := e.send("GET", "/v1/agent/bootstate?rack=r1", e.agent1,
		map[string]string{httpapi.AgentHeader: "agent-a", proto.AgentMgmtHeader: "10.9.0.2:7481"}, nil)
	if r.Status != 200 {
		t.Fatalf("boot state: %d %s", r.Status, r.Body)
	}
	// agent-b posts a report with a management address that is not one,
	// and a caller with a name that is not a name is not remembered.
	body, _ := json.Marshal(proto.ReportBatch{Reports: e.stamp([]proto.AgentReport{{ID: "b-1", Kind: proto.ReportMACSeen,
		Rack: "r2", Agent: "agent-b", Time: clk.Now(), MAC: mac(40)}})})
	if r := e.send("POST", "/v1/agent/reports?rack=r2", e.agent2,
		map[string]string{httpapi.AgentHeader: "agent-b", proto.AgentMgmtHeader: "not an address"}, body); r.Status != 200 {
		t.Fatalf("report: %d %s", r.Status, r.Body)
	}
	if r := e.send("GET", "/v1/agent/bootstate?rack=r2", e.agent2,
		map[string]string{httpapi.AgentHeader: "bad name " + strings.Repeat("x", 200)}, nil); r.Status != 200 {
		t.Fatalf("boot state: %d %s", r.Status, r.Body)
	}

	ags := e.agents("")
	if len(ags) != 2 {
		t.Fatalf("agents: %+v, want agent-a and agent-b", ags)
	}
	a, b := ags[0], ags[1]
	if a.Name != "agent-a" || a.Rack != "r1" || a.Status != "alive" || a.MgmtAddr != "10.9.0.2:7481" || a.Source != "api" || !a.LastContact.Equal(clk.Now()) {
		t.Errorf("agent-a: %+v, want rack r1, alive, mgmt_addr 10.9.0.2:7481, source api, last contact now", a)
	}
	if b.Name != "agent-b" || b.Rack != "r2" || b.Status != "alive" || b.MgmtAddr != "" {
		t.Errorf("agent-b: %+v, want rack r2, alive, no mgmt_addr (the header was not host:port)", b)
	}
	if got := e.agents("?rack=r2"); len(got) != 1 || got[0].Name != "agent-b" {
		t.Errorf("agents?rack=r2: %+v, want agent-b only", got)
	}
	// Silent for longer than the window: unknown (still listed).
	clk.Advance(3 * time.Minute)
	if got := e.agents("?rack=r1"); len(got) != 1 || got[0].Status != "unknown" {
		t.Errorf("agent-a 3 min after its last call: %+v, want status unknown", got)
	}
	// A later call without the header keeps the address it gave.
	e.send("GET", "/v1/agent/bootstate?rack=r1", e.agent1, map[string]string{httpapi.AgentHeader: "agent-a"}, nil)
	if got := e.agents("?rack=r1"); len(got) != 1 || got[0].Status != "alive" || got[0].MgmtAddr != "10.9.0.2:7481" {
		t.Errorf("agent-a after calling again: %+v, want alive with its management address", got)
	}
}

// TestAPIReportLimits: each field over its limit is refused before Raft,
// naming the field: per report in the ack's rejected, for the batch as a
// whole with 400 or 413.
func TestAPIReportLimits(t *testing.T) {
	e := startAgentAPI(t)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	base := func(id string) proto.AgentReport {
		return proto.AgentReport{ID: id, Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Incarnation: "inc-1", Time: t0, MAC: mac(60)}
	}
	inventory := func(mut func(*proto.Inventory)) json.RawMessage {
		inv := proto.Inventory{Version: proto.InventoryVersion, Interfaces: []proto.Interface{{Name: "eth0", MAC: mac(61)}}}
		mut(&inv)
		b, _ := json.Marshal(inv)
		return b
	}
	long := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		id   string
		mut  func(*proto.AgentReport)
		want string
	}{
		{"agent-long", func(r *proto.AgentReport) { r.Agent = long(129) }, "agent: 129 bytes, at most 128"},
		{"agent-spaces", func(r *proto.AgentReport) { r.Agent = "a b" }, `agent "a b": want letters`},
		{"no-incarnation", func(r *proto.AgentReport) { r.Incarnation = "" }, "incarnation is required"},
		{"incarnation-long", func(r *proto.AgentReport) { r.Incarnation = long(200) }, "incarnation: 200 bytes, at most 128"},
		{"no-seq", func(r *proto.AgentReport) { r.Seq = 0 }, "seq is required"},
		{"kind-long", func(r *proto.AgentReport) { r.Kind = proto.ReportKind(long(100)) }, "kind: 100 bytes, at most 32"},
		{"event-long", func(r *proto.AgentReport) { r.Event = long(81) }, "event: 81 bytes, at most 80"},
		{"step-bad", func(r *proto.AgentReport) { r.Kind, r.Step = proto.ReportCallback, "a step" }, `step "a step": want a step name`},
		{"arch-long", func(r *proto.AgentReport) { r.Arch = long(65) }, "arch: 65 bytes, at most 64"},
		{"iface-long", func(r *proto.AgentReport) { r.Interface = long(65) }, "interface: 65 bytes, at most 64"},
		{"count", func(r *proto.AgentReport) { r.Count = proto.MaxReportCount + 1 }, "count 1048577: want 0-1048576"},
		{"lease-event", func(r *proto.AgentReport) { r.Kind, r.LeaseEvent = proto.ReportLease, "stolen" }, `lease_event "stolen"`},
		{"inv-ifaces", func(r *proto.AgentReport) {
			r.Kind, r.Step = proto.ReportCallback, proto.StepInventory
			r.Data = inventory(func(inv *proto.Inventory) { inv.Interfaces = make([]proto.Interface, proto.MaxInvInterfaces+1) })
		}, "data.interfaces: 257 entries, at most 256"},
		{"inv-disks", func(r *proto.AgentReport) {
			r.Kind, r.Step = proto.ReportCallback, proto.StepInventory
			r.Data = inventory(func(inv *proto.Inventory) { inv.Disks = make([]proto.Disk, proto.MaxInvDisks+1) })
		}, "data.disks: 1025 entries, at most 1024"},
		{"inv-serial", func(r *proto.AgentReport) {
			r.Kind, r.Step = proto.ReportCallback, proto.StepInventory
			r.Data = inventory(func(inv *proto.Inventory) { inv.System.Serial = long(300) })
		}, "data.system.serial: 300 bytes, at most 256"},
		{"inv-mac", func(r *proto.AgentReport) {
			r.Kind, r.Step = proto.ReportCallback, proto.StepInventory
			r.Data = inventory(func(inv *proto.Inventory) { inv.Interfaces[0].MAC = "nope" })
		}, `data.interfaces[0].mac "nope"`},
	}
	var batch []proto.AgentReport
	for i, tc := range cases {
		r := base(tc.id)
		r.Seq = uint64(i + 1)
		tc.mut(&r)
		batch = append(batch, r)
	}
	ok := base("fine")
	ok.Seq = uint64(len(cases) + 1)
	batch = append(batch, ok)
	idx0 := e.srv.Store().Index()
	var ack proto.ReportAck
	e.ok(200, "POST", "/v1/agent/reports?rack=r1", e.agent1, proto.ReportBatch{Reports: batch}, &ack)
	for i, tc := range cases {
		why := ack.Rejected[tc.id]
		if !strings.Contains(why, tc.want) || !strings.Contains(why, "reports[") {
			t.Errorf("report %s (reports[%d]): rejected %q, want a reason naming the report and containing %q", tc.id, i, why, tc.want)
		}
	}
	if len(ack.Acked) != 1 || ack.Acked[0] != "fine" {
		t.Errorf("acked %v, want only the report within the limits", ack.Acked)
	}

	// The batch as a whole: refused, nothing applied.
	idx1 := e.srv.Store().Index()
	if idx1 == idx0 {
		t.Fatal("the valid report of the mixed batch was not applied")
	}
	bigID := base(strings.Repeat("i", 1<<20))
	bigID.Seq = 100
	smallBigID := base(strings.Repeat("i", 65))
	smallBigID.Seq = 101
	ctrlID := base("id\x01")
	ctrlID.Seq = 102
	tooBig := base("too-big")
	tooBig.Seq = 103
	tooBig.Kind, tooBig.Step, tooBig.Data = proto.ReportCallback, "other", json.RawMessage(`"`+long(proto.MaxReportBytes)+`"`)
	e.runErrCases([]errCase{
		{name: "a 1 MiB report id", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: proto.ReportBatch{Reports: []proto.AgentReport{bigID}}, status: 413, code: proto.CodeTooLarge, msg: "body is larger than"},
		{name: "a 65-byte report id", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: proto.ReportBatch{Reports: []proto.AgentReport{ok, smallBigID}}, status: 413, code: proto.CodeTooLarge, msg: "reports[1].id: 65 bytes, at most 64"},
		{name: "a control byte in a report id", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: proto.ReportBatch{Reports: []proto.AgentReport{ctrlID}}, status: 400, code: proto.CodeInvalid, msg: "reports[0].id: byte 2 (0x01) is not printable"},
		{name: "one report over its size", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: proto.ReportBatch{Reports: []proto.AgentReport{tooBig}}, status: 413, code: proto.CodeTooLarge, msg: "reports[0]: 262"},
		{name: "a field of the wrong type", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: `{"reports":[{"id":"x","seq":"one"}]}`, status: 400, code: proto.CodeUndecodable, msg: `reports[0]`},
	})
	if got := e.srv.Store().Index(); got != idx1 {
		t.Errorf("state index moved from %d to %d: a refused batch reached Raft", idx1, got)
	}

	// A newer agent's field this coordinator does not know is ignored,
	// not refused: the agent would drop the report.
	newer, _ := json.Marshal(ok)
	newer = append(newer[:len(newer)-1], []byte(`,"from_the_future":1}`)...)
	newer = bytes.Replace(newer, []byte(`"id":"fine"`), []byte(`"id":"newer"`), 1)
	newer = bytes.Replace(newer, []byte(fmt.Sprintf(`"seq":%d`, ok.Seq)), []byte(`"seq":200`), 1)
	e.ok(200, "POST", "/v1/agent/reports?rack=r1", e.agent1, json.RawMessage(`{"reports":[`+string(newer)+`],"batch_field_from_the_future":1}`), &ack)
	if len(ack.Acked) != 1 || ack.Acked[0] != "newer" {
		t.Errorf("a report with an unknown field: %+v, want acked", ack)
	}
	idx1 = e.srv.Store().Index()

	// An older agent's sound report (no incarnation, no seq) gets a
	// retryable 503, never a rejection it would drop.
	old := base("legacy")
	old.Incarnation, old.Seq = "", 0
	e.runErrCases([]errCase{
		{name: "a report of an older agent", method: "POST", path: "/v1/agent/reports?rack=r1", auth: e.agent1,
			body: proto.ReportBatch{Reports: []proto.AgentReport{old}}, status: 503, code: proto.CodeUnavailable, msg: "upgrade the agent"},
	})
	if got := e.srv.Store().Index(); got != idx1 {
		t.Errorf("state index moved from %d to %d: a refused batch reached Raft", idx1, got)
	}
}
