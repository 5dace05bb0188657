package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// fsmBackend is a Backend that applies commands straight to a real FSM
// and store (no Raft): the API in-process, for fuzzing.
type fsmBackend struct {
	mu    sync.Mutex
	idx   uint64
	store *state.Store
	fsm   *fsm.FSM
}

func newFSMBackend() *fsmBackend {
	st := state.New()
	return &fsmBackend{store: st, fsm: fsm.New(st, nil)}
}

func (b *fsmBackend) NodeID() string               { return "s1" }
func (b *fsmBackend) Store() *state.Store          { return b.store }
func (b *fsmBackend) IsLeader() bool               { return true }
func (b *fsmBackend) VerifyLeader() error          { return nil }
func (b *fsmBackend) LeaderHTTP() (string, string) { return "s1", "" }
func (b *fsmBackend) Status() proto.Status         { return proto.Status{NodeID: "s1"} }
func (b *fsmBackend) Join(context.Context, proto.JoinRequest) error {
	return proto.Errorf(proto.CodeUnsupported, "no")
}
func (b *fsmBackend) RemovePeer(context.Context, string) error {
	return proto.Errorf(proto.CodeUnsupported, "no")
}

func (b *fsmBackend) Apply(_ context.Context, c fsm.Command) (any, uint64, error) {
	data, err := fsm.Encode(c)
	if err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idx++
	res := b.fsm.ApplyBytes(b.idx, data)
	return res.Value, b.idx, res.Err
}

// fuzzEnv is an API over an fsmBackend with rack r1 and an agent token.
type fuzzEnv struct {
	b     *fsmBackend
	api   *API
	agent string // Authorization header value
}

func newFuzzEnv(t testing.TB) *fuzzEnv {
	b := newFSMBackend()
	ctx := context.Background()
	rack := proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2", PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}
	if _, _, err := b.Apply(ctx, fsm.RackPut{Rack: rack, Create: true}); err != nil {
		t.Fatal(err)
	}
	secret := NewSecret()
	tok := proto.Token{ID: "tok-agent", Role: proto.RoleAgent, Rack: "r1", CreatedAt: time.Unix(0, 0).UTC()}
	if _, _, err := b.Apply(ctx, fsm.TokenCreate{Token: tok, SecretHash: HashSecret(secret)}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	api := New(b, Config{Now: func() time.Time { return now }}, nil, nil)
	return &fuzzEnv{b: b, api: api, agent: "Bearer " + secret}
}

// post sends a report batch body with the agent and management headers.
func (e *fuzzEnv) post(body []byte, agent, mgmt string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "/v1/agent/reports?rack=r1", strings.NewReader(string(body)))
	req.Header.Set("Authorization", e.agent)
	if agent != "" {
		req.Header[AgentHeader] = []string{agent}
	}
	if mgmt != "" {
		req.Header[proto.AgentMgmtHeader] = []string{mgmt}
	}
	w := httptest.NewRecorder()
	e.api.Handler().ServeHTTP(w, req)
	return w
}

// checkStored fails if anything in the store is over a limit.
func (e *fuzzEnv) checkStored(t testing.TB) {
	t.Helper()
	st := e.b.store
	for _, s := range st.Sightings("") {
		if len(s.MAC) > 17 || len(s.Agent) > proto.MaxAgentNameLen || len(s.Arch) > proto.MaxArchLen ||
			len(s.Interface) > proto.MaxInterfaceLen || len(s.Giaddr) > 45 || len(s.Conflict) > 4096 {
			t.Fatalf("stored sighting over a limit: %.300v", *s)
		}
	}
	for _, l := range st.Leases("r1") {
		if len(l.MAC) > 17 || len(l.IP) > 45 || len(l.Agent) > proto.MaxAgentNameLen {
			t.Fatalf("stored lease over a limit: %.300v", *l)
		}
	}
	for _, n := range st.Nodes(state.NodeFilter{}) {
		if len(n.Inventory) > proto.MaxCallbackBytes {
			t.Fatalf("node %s: stored inventory of %d bytes", n.UUID, len(n.Inventory))
		}
		if len(n.Inventory) > 0 {
			var inv proto.Inventory
			if err := json.Unmarshal(n.Inventory, &inv); err != nil {
				t.Fatalf("node %s: stored inventory does not decode: %v", n.UUID, err)
			}
			if err := inv.Validate(); err != nil {
				t.Fatalf("node %s: stored inventory over a limit: %v", n.UUID, err)
			}
		}
		if n.LastBoot != nil && (len(n.LastBoot.Event) > proto.MaxEventLen || len(n.LastBoot.Agent) > proto.MaxAgentNameLen) {
			t.Fatalf("node %s: stored last boot over a limit: %.300v", n.UUID, *n.LastBoot)
		}
	}
	for _, ct := range e.api.contacts.all() {
		if len(ct.name) > proto.MaxAgentNameLen || len(ct.mgmt) > proto.MaxHostPortLen {
			t.Fatalf("contact over a limit: %.300v", ct)
		}
	}
	if n := e.api.contacts.len(); n > MaxContacts {
		t.Fatalf("%d contacts, at most %d", n, MaxContacts)
	}
}

func validBatch(reports ...proto.AgentReport) []byte {
	b, _ := json.Marshal(proto.ReportBatch{Reports: reports})
	return b
}

// FuzzAgentReports: whatever a caller with an agent token sends to POST
// /v1/agent/reports, the answer is 2xx or 4xx (never 5xx, never a panic;
// but for the one retryable 503 a sound report of an older agent gets)
// and nothing over the limits is stored. Seeds are in
// testdata/fuzz/FuzzAgentReports and below.
func FuzzAgentReports(f *testing.F) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	base := proto.AgentReport{ID: "r-1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "a1", Incarnation: "i1", Seq: 1, Time: t0, MAC: "52:54:00:00:00:01"}
	inv := base
	inv.ID, inv.Seq, inv.Kind, inv.Step = "r-2", 2, proto.ReportCallback, proto.StepInventory
	inv.Data = json.RawMessage(`{"version":1,"system":{"serial":"S1","uuid":"6b1c7a52-3b0e-4c55-9d3e-6d2d0b8f4a11"},"interfaces":[{"name":"eth0","mac":"52:54:00:00:00:01"}]}`)
	lease := base
	lease.ID, lease.Seq, lease.Kind, lease.LeaseEvent = "r-3", 3, proto.ReportLease, "bound"
	lease.Lease = &proto.Lease{MAC: "52:54:00:00:00:01", IP: "10.9.0.150", Expires: t0.Add(time.Hour)}
	f.Add(validBatch(base), "a1", "10.9.0.2:7481")
	f.Add(validBatch(base, inv, lease), "a1", "")
	f.Add([]byte(`{"reports":[{"id":"x"}]}`), "", "")
	f.Add([]byte(`{"reports":null}`), "a b", "host:99999")
	f.Add([]byte(`{"reports":[{"id":"`+strings.Repeat("i", 70)+`"}]}`), "", "")
	f.Fuzz(func(t *testing.T, body []byte, agent, mgmt string) {
		e := fuzzEnvFor(t)
		w := e.post(body, agent, mgmt)
		legacy := w.Code == 503 && bytes.Contains(w.Body.Bytes(), []byte(LegacyReportMessage))
		if (w.Code >= 500 && !legacy) || w.Code < 200 {
			t.Fatalf("status %d for body %.200q: %s", w.Code, body, w.Body.Bytes())
		}
		if w.Code >= 300 {
			var eb proto.ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.Error == nil || eb.Error.Message == "" {
				t.Fatalf("status %d without a JSON error: %s", w.Code, w.Body.Bytes())
			}
		}
		e.checkStored(t)
	})
}

// One environment per fuzz worker: building one per input would spend the
// fuzzing time on setup. Reports accumulate in it, which is what a long
// running coordinator sees.
var (
	fuzzOnce sync.Once
	fuzzE    *fuzzEnv
)

func fuzzEnvFor(t testing.TB) *fuzzEnv {
	fuzzOnce.Do(func() { fuzzE = newFuzzEnv(t) })
	return fuzzE
}

// TestContactsBounded: the last-contact map never holds more than its
// bound, forgets the agent heard of longest ago, and keeps only names
// that are names.
func TestContactsBounded(t *testing.T) {
	k := contacts{max: 3}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i, name := range []string{"a", "b", "c"} {
		k.touch(name, "r1", "", t0.Add(time.Duration(i)*time.Second))
	}
	k.touch("a", "r1", "10.0.0.1:1", t0.Add(10*time.Second)) // a is now the most recent
	k.touch("d", "r1", "", t0.Add(11*time.Second))           // b goes
	k.touch(strings.Repeat("x", 1<<20), "r1", "", t0)        // not a name: not kept
	k.touch("e f", "r1", "", t0)
	var names []string
	for _, ct := range k.all() {
		names = append(names, ct.name)
	}
	if strings.Join(names, ",") != "d,a,c" {
		t.Errorf("contacts %v, want d,a,c (most recent first; b evicted; bad names never kept)", names)
	}
	for i := 0; i < 1000; i++ {
		k.touch("agent-"+strconv.Itoa(i), "r1", "", t0)
	}
	if k.len() > 3 {
		t.Errorf("%d contacts after a flood, want at most 3", k.len())
	}
	var big contacts
	for i := 0; i < MaxContacts+100; i++ { // two agents a rack, as many racks as it takes
		big.touch("agent-"+strconv.Itoa(i), "r"+strconv.Itoa(i/2), "", t0)
	}
	if big.len() != MaxContacts {
		t.Errorf("%d contacts after %d agents, want the bound %d", big.len(), MaxContacts+100, MaxContacts)
	}
}
