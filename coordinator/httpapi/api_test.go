package httpapi_test

// Integration tests of the /v1 API against a real single-server
// coordinator (Raft on loopback, real HTTP), through net/http only.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/proto"
)

// apiEnv is a running coordinator and a client for it.
type apiEnv struct {
	t      *testing.T
	srv    *coordtest.Server
	base   string
	admin  string // admin token secret
	client *http.Client
}

func startAPI(t *testing.T) *apiEnv {
	t.Helper()
	s, admin := coordtest.StartSingle(t)
	e := &apiEnv{t: t, srv: s, base: "http://" + s.HTTPAddr(), admin: admin,
		client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// Values of the auth argument of call other than a header value.
const (
	asAdmin = ""     // the bootstrap admin token
	noAuth  = "none" // no Authorization header
)

func bearer(secret string) string { return "Bearer " + secret }

// reply is an API answer, read whole.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
	// Took is the time from sending the request to reading the answer.
	Took time.Duration
}

// call sends a request. body is sent as is if it is a string or []byte,
// else as its JSON; nil sends none.
func (e *apiEnv) call(method, path, auth string, body any) reply {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	switch auth {
	case asAdmin:
		req.Header.Set("Authorization", bearer(e.admin))
	case noAuth:
	default:
		req.Header.Set("Authorization", auth)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return reply{Status: resp.StatusCode, Header: resp.Header, Body: b, Took: time.Since(start)}
}

// ok sends a request that must answer want, and decodes the answer into
// out (if not nil).
func (e *apiEnv) ok(want int, method, path, auth string, body, out any) reply {
	e.t.Helper()
	r := e.call(method, path, auth, body)
	if r.Status != want {
		e.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.Status, want, r.Body)
	}
	if out != nil {
		// Decode into a zero value: a field the answer omits (omitempty)
		// must not keep what an earlier answer put there.
		reflect.ValueOf(out).Elem().SetZero()
		if err := json.Unmarshal(r.Body, out); err != nil {
			e.t.Fatalf("%s %s: decoding %s: %v", method, path, r.Body, err)
		}
	}
	return r
}

func (r reply) index(t *testing.T) uint64 {
	t.Helper()
	h := r.Header.Get(proto.IndexHeader)
	v, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		t.Fatalf("%s header %q: %v", proto.IndexHeader, h, err)
	}
	return v
}

// wantError checks an error answer: status, JSON envelope, code and a
// fragment of the message.
func wantError(t *testing.T, what string, r reply, status int, code proto.Code, fragment string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: status %d, want %d; body %s", what, r.Status, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var eb proto.ErrorBody
	if err := json.Unmarshal(r.Body, &eb); err != nil || eb.Error == nil {
		t.Errorf("%s: body %q is not an error envelope (%v)", what, r.Body, err)
		return
	}
	if eb.Error.Code != code {
		t.Errorf("%s: code %q, want %q (message %q)", what, eb.Error.Code, code, eb.Error.Message)
	}
	if code.Status() != status {
		t.Errorf("%s: test bug: code %s maps to %d, not %d", what, code, code.Status(), status)
	}
	if !strings.Contains(eb.Error.Message, fragment) {
		t.Errorf("%s: message %q does not contain %q", what, eb.Error.Message, fragment)
	}
}

// errCase is one request that must fail.
type errCase struct {
	name         string
	method, path string
	auth         string // asAdmin, noAuth or an Authorization header value
	body         any
	status       int
	code         proto.Code
	msg          string // a fragment of the message
}

func (e *apiEnv) runErrCases(cases []errCase) {
	e.t.Helper()
	for _, tc := range cases {
		e.t.Run(tc.name, func(t *testing.T) {
			r := e.call(tc.method, tc.path, tc.auth, tc.body)
			wantError(t, tc.method+" "+tc.path, r, tc.status, tc.code, tc.msg)
			if r.Header.Get(proto.IndexHeader) != "" {
				t.Errorf("an error answer carries %s %q", proto.IndexHeader, r.Header.Get(proto.IndexHeader))
			}
		})
	}
}

func mac(i int) string { return fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8&0xff, i&0xff) }

// createNode creates a node through the API and returns it.
func (e *apiEnv) createNode(body proto.NodeCreate) *proto.Node {
	e.t.Helper()
	var n proto.Node
	e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, body, &n)
	return &n
}

// createToken creates a token with role (and rack, for an agent).
func (e *apiEnv) createToken(role proto.Role, rack string) proto.TokenCreated {
	e.t.Helper()
	var tc proto.TokenCreated
	r := e.ok(http.StatusCreated, "POST", "/v1/tokens", asAdmin, proto.TokenCreate{Role: role, Rack: rack, Description: "test " + string(role)}, &tc)
	if !strings.HasPrefix(tc.Secret, "mf_") || tc.Role != role || tc.Rack != rack || tc.ID == "" || tc.CreatedAt.IsZero() || tc.CreateIndex != r.index(e.t) {
		e.t.Fatalf("token created: %+v (index %d)", tc, r.index(e.t))
	}
	return tc
}

func TestAPIBodyErrors(t *testing.T) {
	e := startAPI(t)
	big := `{"macs":["` + mac(1) + `"],"name":"` + strings.Repeat("a", 1<<20+1024) + `"}`
	e.runErrCases([]errCase{
		{name: "syntax", method: "POST", path: "/v1/nodes", body: `{"macs": [}`,
			status: 400, code: proto.CodeUndecodable, msg: "not valid JSON at byte"},
		{name: "truncated", method: "POST", path: "/v1/nodes", body: `{"macs": [`,
			status: 400, code: proto.CodeUndecodable, msg: "ends early"},
		{name: "unknown field", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"],"colour":"red"}`,
			status: 400, code: proto.CodeUndecodable, msg: `unknown field "colour"`},
		{name: "unknown nested field", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"],"bmc":{"pasword":"x"}}`,
			status: 400, code: proto.CodeUndecodable, msg: `unknown field "pasword"`},
		{name: "macs as a string", method: "POST", path: "/v1/nodes", body: `{"macs":"` + mac(1) + `"}`,
			status: 400, code: proto.CodeUndecodable, msg: "field macs: want an array, got string"},
		{name: "nested wrong type", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"],"bmc":{"port":"623"}}`,
			status: 400, code: proto.CodeUndecodable, msg: "field bmc.port: want a number, got string"},
		{name: "array instead of object", method: "POST", path: "/v1/nodes", body: `[]`,
			status: 400, code: proto.CodeUndecodable, msg: "body: want an object, got array"},
		{name: "empty body", method: "POST", path: "/v1/nodes", body: ``,
			status: 400, code: proto.CodeUndecodable, msg: "body is empty"},
		{name: "two JSON values", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"]} {}`,
			status: 400, code: proto.CodeInvalid, msg: "more than one JSON value"},
		{name: "trailing garbage", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"]} x`,
			status: 400, code: proto.CodeUndecodable, msg: "not valid JSON"},
		{name: "over 1 MiB", method: "POST", path: "/v1/nodes", body: big,
			status: 413, code: proto.CodeTooLarge, msg: "larger than 1048576 bytes"},
		{name: "invalid MAC", method: "POST", path: "/v1/nodes", body: `{"macs":["52:54:00:zz:00:01"]}`,
			status: 400, code: proto.CodeInvalid, msg: `macs: "52:54:00:zz:00:01" is not an Ethernet MAC address`},
		{name: "no MAC", method: "POST", path: "/v1/nodes", body: `{"name":"n1","macs":[]}`,
			status: 400, code: proto.CodeInvalid, msg: "at least one MAC"},
		{name: "MAC listed twice", method: "POST", path: "/v1/nodes", body: `{"macs":["52:54:00:00:00:01","52-54-00-00-00-01"]}`,
			status: 400, code: proto.CodeInvalid, msg: "listed twice"},
		{name: "bad name", method: "POST", path: "/v1/nodes", body: `{"name":"-x","macs":["` + mac(1) + `"]}`,
			status: 400, code: proto.CodeInvalid, msg: `name "-x"`},
		{name: "unknown rack", method: "POST", path: "/v1/nodes", body: `{"rack":"nosuch","macs":["` + mac(1) + `"]}`,
			status: 400, code: proto.CodeInvalid, msg: `rack "nosuch" does not exist`},
		{name: "password_set in a request", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"],"bmc":{"password_set":true}}`,
			status: 400, code: proto.CodeInvalid, msg: "bmc.password_set is read-only"},
		{name: "bad BMC driver", method: "POST", path: "/v1/nodes", body: `{"macs":["` + mac(1) + `"],"bmc":{"driver":"pigeon"}}`,
			status: 400, code: proto.CodeInvalid, msg: `bmc.driver "pigeon": want ipmi, redfish or fake`},
		{name: "rack bad CIDR", method: "POST", path: "/v1/racks", body: `{"name":"r1","subnet":"10.0.0.0/33"}`,
			status: 400, code: proto.CodeInvalid, msg: `subnet "10.0.0.0/33": want an IPv4 CIDR`},
		{name: "rack gateway outside subnet", method: "POST", path: "/v1/racks", body: `{"name":"r1","subnet":"10.0.0.0/24","gateway":"10.0.1.1"}`,
			status: 400, code: proto.CodeInvalid, msg: "outside subnet 10.0.0.0/24"},
		{name: "rack lease_time a number", method: "POST", path: "/v1/racks", body: `{"name":"r1","lease_time":12}`,
			status: 400, code: proto.CodeInvalid, msg: "duration must be a string"},
		{name: "rack name differs from path", method: "PUT", path: "/v1/racks/r1", body: `{"name":"r2"}`,
			status: 400, code: proto.CodeInvalid, msg: `differs from "r1" in the path`},
		{name: "image bad sha256", method: "POST", path: "/v1/images", body: `{"name":"i1","kind":"disk","url":"http://x/i","sha256":"abc"}`,
			status: 400, code: proto.CodeInvalid, msg: "want 64 hex digits"},
		{name: "token bad role", method: "POST", path: "/v1/tokens", body: `{"role":"root"}`,
			status: 400, code: proto.CodeInvalid, msg: `role "root"`},
		{name: "join without addresses", method: "POST", path: "/v1/cluster/join", body: `{"id":"s2"}`,
			status: 400, code: proto.CodeInvalid, msg: "join needs id, raft_addr and http_addr"},
	})
	// None of the refused bodies reached the state.
	var nodes []proto.Node
	e.ok(200, "GET", "/v1/nodes", asAdmin, nil, &nodes)
	if len(nodes) != 0 {
		t.Errorf("refused creates left nodes behind: %+v", nodes)
	}
}

func TestAPIAuth(t *testing.T) {
	e := startAPI(t)
	reader := e.createToken(proto.RoleReader, "").Secret
	operator := e.createToken(proto.RoleOperator, "").Secret
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "r1"}, nil)
	agent := e.createToken(proto.RoleAgent, "r1").Secret
	revoked := e.createToken(proto.RoleReader, "")
	var toks []proto.Token
	e.ok(200, "GET", "/v1/tokens", asAdmin, nil, &toks)
	if len(toks) != 5 {
		t.Fatalf("%d tokens, want 5: %+v", len(toks), toks)
	}
	e.ok(http.StatusNoContent, "DELETE", "/v1/tokens/"+revoked.ID, asAdmin, nil, nil)

	e.runErrCases([]errCase{
		{name: "missing Authorization", method: "GET", path: "/v1/nodes", auth: noAuth,
			status: 401, code: proto.CodeUnauthorized, msg: "missing Authorization: Bearer <token> header"},
		{name: "missing Authorization on a write", method: "POST", path: "/v1/nodes", auth: noAuth, body: `{"macs":["` + mac(1) + `"]}`,
			status: 401, code: proto.CodeUnauthorized, msg: "missing Authorization"},
		{name: "wrong token", method: "GET", path: "/v1/nodes", auth: bearer("mf_notatoken"),
			status: 401, code: proto.CodeUnauthorized, msg: "unknown or revoked token"},
		{name: "revoked token", method: "GET", path: "/v1/nodes", auth: bearer(revoked.Secret),
			status: 401, code: proto.CodeUnauthorized, msg: "unknown or revoked token"},
		{name: "lower-case scheme with a wrong token", method: "GET", path: "/v1/nodes", auth: "bearer mf_notatoken",
			status: 401, code: proto.CodeUnauthorized, msg: "unknown or revoked token"},
		{name: "Basic scheme", method: "GET", path: "/v1/nodes", auth: "Basic x",
			status: 401, code: proto.CodeUnauthorized, msg: `must be "Bearer <token>"`},
		{name: "Bearer without a token", method: "GET", path: "/v1/nodes", auth: "Bearer   ",
			status: 401, code: proto.CodeUnauthorized, msg: `must be "Bearer <token>"`},
		{name: "status needs a token", method: "GET", path: "/v1/status", auth: noAuth,
			status: 401, code: proto.CodeUnauthorized, msg: "missing Authorization"},
		{name: "reader may not create a node", method: "POST", path: "/v1/nodes", auth: bearer(reader), body: `{"macs":["` + mac(1) + `"]}`,
			status: 403, code: proto.CodeForbidden, msg: "a reader token may not POST /v1/nodes (needs operator)"},
		{name: "reader may not list tokens", method: "GET", path: "/v1/tokens", auth: bearer(reader),
			status: 403, code: proto.CodeForbidden, msg: "needs admin"},
		{name: "operator may not create a token", method: "POST", path: "/v1/tokens", auth: bearer(operator), body: `{"role":"admin"}`,
			status: 403, code: proto.CodeForbidden, msg: "an operator token may not POST /v1/tokens (needs admin)"},
		{name: "operator may not remove a peer", method: "DELETE", path: "/v1/cluster/peers/s1", auth: bearer(operator),
			status: 403, code: proto.CodeForbidden, msg: "needs admin"},
		{name: "agent may not list nodes", method: "GET", path: "/v1/nodes", auth: bearer(agent),
			status: 403, code: proto.CodeForbidden, msg: "an agent token may not GET /v1/nodes (needs reader)"},
		{name: "agent token needs a rack", method: "POST", path: "/v1/tokens", body: `{"role":"agent"}`,
			status: 400, code: proto.CodeInvalid, msg: "an agent token is bound to one rack"},
		{name: "last admin token may not revoke itself", method: "DELETE", path: "/v1/tokens/admin-bootstrap",
			status: 409, code: proto.CodeConflict, msg: "last admin token"},
		{name: "unknown token id", method: "DELETE", path: "/v1/tokens/tok-nosuch",
			status: 404, code: proto.CodeNotFound, msg: `token "tok-nosuch" not found`},
		{name: "the last voter may not be removed", method: "DELETE", path: "/v1/cluster/peers/s1",
			status: 409, code: proto.CodeConflict, msg: "server s1 is the last voter"},
	})

	// What each role may do.
	for _, tc := range []struct {
		name         string
		auth         string
		method, path string
		body         any
		want         int
	}{
		{"reader lists nodes", bearer(reader), "GET", "/v1/nodes", nil, 200},
		{"reader reads status", bearer(reader), "GET", "/v1/status", nil, 200},
		{"reader reads settings", bearer(reader), "GET", "/v1/settings", nil, 200},
		{"operator creates a node", bearer(operator), "POST", "/v1/nodes", proto.NodeCreate{MACs: []string{mac(2)}}, 201},
		{"operator patches settings", bearer(operator), "PATCH", "/v1/settings", proto.SettingsPatch{}, 200},
		{"admin lists tokens", asAdmin, "GET", "/v1/tokens", nil, 200},
		{"health needs no token", noAuth, "GET", "/v1/health", nil, 200},
		{"openapi needs no token", noAuth, "GET", "/v1/openapi.json", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := e.call(tc.method, tc.path, tc.auth, tc.body); r.Status != tc.want {
				t.Errorf("%s %s: status %d, want %d; body %s", tc.method, tc.path, r.Status, tc.want, r.Body)
			}
		})
	}

	// The secret is shown once: listing tokens never shows it.
	r := e.ok(200, "GET", "/v1/tokens", asAdmin, nil, nil)
	for _, s := range []string{reader, operator, agent, revoked.Secret, e.admin, `"secret"`} {
		if bytes.Contains(r.Body, []byte(s)) {
			t.Errorf("GET /v1/tokens shows %q: %s", s, r.Body)
		}
	}
}

func TestAPIStatesAndConflicts(t *testing.T) {
	e := startAPI(t)
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "r1", Subnet: "10.1.0.7/24"}, nil)
	n1 := e.createNode(proto.NodeCreate{Name: "n1", MACs: []string{"52:54:00:AA:00:01"}, Rack: "r1"})
	if n1.ProvisionState != proto.StateEnrolled || !n1.Enrolled || n1.MACs[0] != "52:54:00:aa:00:01" {
		t.Fatalf("created node: %+v", n1)
	}
	disc := e.createNode(proto.NodeCreate{Name: "d1", MACs: []string{mac(9)}, Enrolled: new(false)})
	if disc.ProvisionState != proto.StateDiscovered || disc.Enrolled {
		t.Fatalf("created discovered node: %+v", disc)
	}
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "f1", CPUs: 2, Rack: "r1"}, nil)

	e.runErrCases([]errCase{
		{name: "provide an enrolled node", method: "POST", path: "/v1/nodes/n1/provision", body: `{"target":"provide"}`,
			status: 409, code: proto.CodeWrongState, msg: "cannot provide node n1: it is enrolled; provide is allowed from manageable"},
		{name: "manage a discovered node", method: "POST", path: "/v1/nodes/d1/provision", body: `{"target":"manage"}`,
			status: 409, code: proto.CodeWrongState, msg: "manage is allowed from enrolled, available or failed"},
		{name: "delete a rack a node is in", method: "DELETE", path: "/v1/racks/r1",
			status: 409, code: proto.CodeConflict, msg: `rack "r1" is in use by 1 node(s)`},
		{name: "create a rack twice", method: "POST", path: "/v1/racks", body: `{"name":"r1"}`,
			status: 409, code: proto.CodeConflict, msg: `rack "r1" exists`},
		{name: "replace a missing rack", method: "PUT", path: "/v1/racks/nosuch", body: `{}`,
			status: 404, code: proto.CodeNotFound, msg: `rack "nosuch" not found`},
		{name: "duplicate node name", method: "POST", path: "/v1/nodes", body: `{"name":"n1","macs":["` + mac(2) + `"]}`,
			status: 409, code: proto.CodeConflict, msg: `node name "n1" is taken by node ` + n1.UUID},
		{name: "duplicate MAC", method: "POST", path: "/v1/nodes", body: `{"name":"n2","macs":["52-54-00-aa-00-01"]}`,
			status: 409, code: proto.CodeConflict, msg: "MAC 52:54:00:aa:00:01 belongs to node " + n1.UUID},
		{name: "rename onto a taken name", method: "PATCH", path: "/v1/nodes/d1", body: `{"name":"n1"}`,
			status: 409, code: proto.CodeConflict, msg: `node name "n1" is taken`},
		{name: "unknown node", method: "GET", path: "/v1/nodes/nosuch",
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "provision an unknown node", method: "POST", path: "/v1/nodes/nosuch/provision", body: `{"target":"manage"}`,
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "patch an unknown node", method: "PATCH", path: "/v1/nodes/" + uuid.NewString(), body: `{}`,
			status: 404, code: proto.CodeNotFound, msg: "not found"},
		{name: "delete an unknown node", method: "DELETE", path: "/v1/nodes/nosuch",
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "provision target service", method: "POST", path: "/v1/nodes/n1/provision", body: `{"target":"service"}`,
			status: 400, code: proto.CodeInvalid, msg: "target service: start a task instead: POST /v1/nodes/{id}/tasks"},
		{name: "unknown target", method: "POST", path: "/v1/nodes/n1/provision", body: `{"target":"explode"}`,
			status: 400, code: proto.CodeInvalid, msg: `target "explode": want one of manage, provide, service`},
		{name: "system target", method: "POST", path: "/v1/nodes/n1/provision", body: `{"target":"deploy-done"}`,
			status: 400, code: proto.CodeInvalid, msg: "want one of manage, provide, service"},
		{name: "no target", method: "POST", path: "/v1/nodes/n1/provision", body: `{}`,
			status: 400, code: proto.CodeInvalid, msg: `target "": want one of`},
		{name: "unknown flavor", method: "GET", path: "/v1/flavors/nosuch",
			status: 404, code: proto.CodeNotFound, msg: `flavor "nosuch" not found`},
		{name: "unknown image", method: "DELETE", path: "/v1/images/nosuch",
			status: 404, code: proto.CodeNotFound, msg: `image "nosuch" not found`},
		{name: "unknown instance", method: "GET", path: "/v1/instances/nosuch",
			status: 404, code: proto.CodeNotFound, msg: `instance "nosuch" not found`},
		{name: "settings name a missing image", method: "PATCH", path: "/v1/settings", body: `{"discovery_kernel":"nosuch"}`,
			status: 400, code: proto.CodeInvalid, msg: `discovery_kernel: image "nosuch" does not exist`},
	})

	// The good path through the state machine, by name, uuid and MAC.
	n := *e.manageViaAgent("n1")
	if n.ProvisionState != proto.StateManageable {
		t.Fatalf("after manage: %s", n.ProvisionState)
	}
	idx := e.srv.Store().Index()
	r := e.ok(200, "POST", "/v1/nodes/"+n1.UUID+"/provision", asAdmin, proto.ProvisionRequest{Target: "provide"}, &n)
	if n.ProvisionState != proto.StateAvailable || r.index(t) <= idx {
		t.Fatalf("after provide: %s at index %d (manage was at %d)", n.ProvisionState, r.index(t), idx)
	}
	e.ok(200, "PUT", "/v1/nodes/52:54:00:aa:00:01/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true, Reason: "fan"}, &n)
	if !n.Maintenance || n.MaintenanceReason != "fan" {
		t.Fatalf("after maintenance: %+v", n)
	}
	wantError(t, "unenroll an available node", e.call("PUT", "/v1/nodes/n1/enrolled", asAdmin, proto.EnrolledRequest{Enrolled: false}),
		409, proto.CodeWrongState, "unenroll is allowed from enrolled or manageable")
	e.ok(200, "PUT", "/v1/nodes/d1/enrolled", asAdmin, proto.EnrolledRequest{Enrolled: true}, &n)
	if n.ProvisionState != proto.StateEnrolled || !n.Enrolled {
		t.Fatalf("after enroll: %+v", n)
	}

	// A rack is free again once its nodes and flavors are gone.
	e.ok(http.StatusNoContent, "DELETE", "/v1/nodes/n1", asAdmin, nil, nil)
	wantError(t, "delete a rack a flavor names", e.call("DELETE", "/v1/racks/r1", asAdmin, nil),
		409, proto.CodeConflict, `rack "r1" is in use by flavor(s) [f1]`)
	e.ok(http.StatusNoContent, "DELETE", "/v1/flavors/f1", asAdmin, nil, nil)
	r = e.ok(http.StatusNoContent, "DELETE", "/v1/racks/r1", asAdmin, nil, nil)
	if len(r.Body) != 0 {
		t.Errorf("204 with a body: %q", r.Body)
	}
	r.index(t)
	wantError(t, "get the deleted node", e.call("GET", "/v1/nodes/n1", asAdmin, nil), 404, proto.CodeNotFound, "not found")
}

func TestAPIBMCPasswordNeverReturned(t *testing.T) {
	e := startAPI(t)
	const pw1, pw2 = "s3cr3t-Pa55w0rd-one", "s3cr3t-Pa55w0rd-two"
	check := func(what string, r reply) {
		t.Helper()
		for _, pw := range []string{pw1, pw2} {
			if bytes.Contains(r.Body, []byte(pw)) {
				t.Errorf("%s: the answer contains the BMC password: %s", what, r.Body)
			}
		}
		if bytes.Contains(r.Body, []byte(`"password"`)) {
			t.Errorf("%s: the answer has a password field: %s", what, r.Body)
		}
	}
	passwordSet := func(what string, n proto.Node) {
		t.Helper()
		if !n.BMC.PasswordSet || n.BMC.Password != "" {
			t.Errorf("%s: bmc %+v, want password_set and no password", what, n.BMC)
		}
	}

	var n proto.Node
	r := e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, proto.NodeCreate{
		Name: "bmc1", MACs: []string{mac(1)},
		BMC: proto.BMC{Driver: "ipmi", Address: "10.0.0.5", Port: 623, Username: "root", Password: pw1},
	}, &n)
	check("create", r)
	passwordSet("create", n)
	if n.BMC.Username != "root" || n.BMC.Address != "10.0.0.5" || n.BMC.Port != 623 {
		t.Errorf("create: bmc %+v lost fields", n.BMC)
	}
	// The store keeps it: it is redacted, not dropped.
	if sn, ok := e.srv.Store().Node(n.UUID); !ok || sn.BMC.Password != pw1 {
		t.Fatalf("the store does not hold the password (node found: %v)", ok)
	}

	r = e.ok(200, "GET", "/v1/nodes/bmc1", asAdmin, nil, &n)
	check("get", r)
	passwordSet("get", n)

	var list []proto.Node
	r = e.ok(200, "GET", "/v1/nodes", asAdmin, nil, &list)
	check("list", r)
	if len(list) != 1 {
		t.Fatalf("list: %d nodes", len(list))
	}
	passwordSet("list", list[0])
	r = e.ok(200, "GET", "/v1/nodes?stale&rack=", asAdmin, nil, nil)
	check("stale list", r)

	r = e.ok(200, "PATCH", "/v1/nodes/bmc1", asAdmin, proto.NodePatch{Properties: &map[string]string{"cpu": "x86"}}, &n)
	check("patch properties", r)
	passwordSet("patch properties", n)

	r = e.ok(200, "PATCH", "/v1/nodes/bmc1", asAdmin, `{"bmc":{"password":"`+pw2+`","port":6230}}`, &n)
	check("patch password", r)
	passwordSet("patch password", n)
	if n.BMC.Port != 6230 || n.BMC.Username != "root" {
		t.Errorf("patch password: bmc %+v, want port 6230 and the username kept", n.BMC)
	}
	if sn, _ := e.srv.Store().Node(n.UUID); sn.BMC.Password != pw2 {
		t.Errorf("the patched password was not stored")
	}

	r = e.ok(200, "PUT", "/v1/nodes/bmc1/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true}, &n)
	check("maintenance", r)
	r = e.ok(200, "GET", "/v1/nodes/bmc1/history", asAdmin, nil, nil)
	check("history", r)
	e.manageViaAgent("bmc1", func(r reply) {
		check("provision", r)
		var n proto.Node
		if err := json.Unmarshal(r.Body, &n); err != nil {
			t.Fatal(err)
		}
		passwordSet("provision", n)
	})

	// Clearing the password clears password_set.
	e.ok(200, "PATCH", "/v1/nodes/bmc1", asAdmin, `{"bmc":{"password":""}}`, &n)
	if n.BMC.PasswordSet {
		t.Errorf("password_set after clearing the password: %+v", n.BMC)
	}

	// A node without a password says so.
	var n2 proto.Node
	e.ok(http.StatusCreated, "POST", "/v1/nodes", asAdmin, proto.NodeCreate{MACs: []string{mac(2)}}, &n2)
	if n2.BMC.PasswordSet {
		t.Errorf("password_set on a node without a password: %+v", n2.BMC)
	}
}

func TestAPIBlockingQuery(t *testing.T) {
	e := startAPI(t)
	idx0 := e.ok(200, "GET", "/v1/nodes", asAdmin, nil, nil).index(t)
	if idx0 == 0 {
		t.Fatal("index 0 after bootstrap")
	}

	t.Run("wakes on a write", func(t *testing.T) {
		// The write is sent once the blocking read is being served.
		done := e.sendWhenBlocked("GET /v1/nodes", "POST", "/v1/nodes", `{"name":"late","macs":["`+mac(7)+`"]}`)
		start := time.Now()
		var nodes []proto.Node
		r := e.ok(200, "GET", fmt.Sprintf("/v1/nodes?index=%d&wait=5s", idx0), asAdmin, nil, &nodes)
		returned := time.Now()
		w := <-done
		if w.err != "" {
			t.Fatalf("the write failed: %s", w.err)
		}
		if returned.Before(w.at) {
			t.Errorf("the blocking read returned %s after it started, before the write was sent (%s after)",
				returned.Sub(start), w.at.Sub(start))
		}
		if r.Took >= 4*time.Second {
			t.Errorf("the blocking read took %s: it should wake on the write, not wait out 5s", r.Took)
		}
		idx1 := r.index(t)
		if idx1 <= idx0 || idx1 < w.index {
			t.Errorf("index after the write %d, want > %d and >= the write's %d", idx1, idx0, w.index)
		}
		if len(nodes) != 1 || nodes[0].Name != "late" {
			t.Errorf("the blocking read answered %+v, want the new node", nodes)
		}
	})

	t.Run("times out without a change", func(t *testing.T) {
		idx := e.ok(200, "GET", "/v1/nodes", asAdmin, nil, nil).index(t)
		r := e.ok(200, "GET", fmt.Sprintf("/v1/nodes?index=%d&wait=300ms", idx), asAdmin, nil, nil)
		if r.Took < 290*time.Millisecond || r.Took > 5*time.Second {
			t.Errorf("a 300ms wait took %s", r.Took)
		}
		if got := r.index(t); got != idx {
			t.Errorf("index %d after a wait without change, want %d", got, idx)
		}
	})

	t.Run("an older index answers at once", func(t *testing.T) {
		r := e.ok(200, "GET", fmt.Sprintf("/v1/nodes?index=%d&wait=5s", idx0-1), asAdmin, nil, nil)
		if r.Took > 4*time.Second {
			t.Errorf("a read with an index already passed took %s", r.Took)
		}
	})

	t.Run("stale blocking read", func(t *testing.T) {
		idx := e.ok(200, "GET", "/v1/settings", asAdmin, nil, nil).index(t)
		r := e.ok(200, "GET", fmt.Sprintf("/v1/settings?stale&index=%d&wait=200ms", idx), asAdmin, nil, nil)
		if r.Took < 190*time.Millisecond || r.index(t) != idx {
			t.Errorf("stale wait: took %s, index %d (want >= 200ms, %d)", r.Took, r.index(t), idx)
		}
	})

	e.runErrCases([]errCase{
		{name: "index not a number", method: "GET", path: "/v1/nodes?index=abc",
			status: 400, code: proto.CodeInvalid, msg: `index "abc": want a non-negative integer`},
		{name: "bad wait", method: "GET", path: "/v1/nodes?index=1&wait=forever",
			status: 400, code: proto.CodeInvalid, msg: `wait "forever": want a duration`},
		{name: "negative wait", method: "GET", path: "/v1/nodes?index=1&wait=-1s",
			status: 400, code: proto.CodeInvalid, msg: `wait "-1s"`},
	})
}

func TestAPIMisc(t *testing.T) {
	e := startAPI(t)

	var h proto.Health
	r := e.ok(200, "GET", "/v1/health", noAuth, nil, &h)
	if h.Status != "ok" || !h.Leader {
		t.Errorf("health: %+v", h)
	}
	r.index(t)

	// The served document is the embedded one.
	r = e.ok(200, "GET", "/v1/openapi.json", noAuth, nil, nil)
	var served, embedded any
	if err := json.Unmarshal(r.Body, &served); err != nil {
		t.Fatalf("served openapi.json: %v", err)
	}
	if err := json.Unmarshal(httpapi.OpenAPI(), &embedded); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(served, embedded) {
		t.Error("GET /v1/openapi.json differs from the embedded document")
	}

	var st proto.Status
	e.ok(200, "GET", "/v1/status", asAdmin, nil, &st)
	if st.NodeID != "s1" || st.RaftState != "leader" || len(st.Peers) != 1 || st.Version != proto.Version {
		t.Errorf("status: %+v", st)
	}

	// Filters.
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "r1"}, nil)
	e.createNode(proto.NodeCreate{Name: "a", MACs: []string{mac(1)}, Rack: "r1"})
	e.createNode(proto.NodeCreate{Name: "b", MACs: []string{mac(2)}, Enrolled: new(false)})
	e.createNode(proto.NodeCreate{Name: "c", MACs: []string{mac(3)}})
	e.ok(200, "PUT", "/v1/nodes/c/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true, Reason: "disk"}, nil)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"a", "b", "c"}},
		{"?rack=r1", []string{"a"}},
		{"?rack=nosuch", []string{}},
		{"?enrolled=false", []string{"b"}},
		{"?enrolled=true", []string{"a", "c"}},
		{"?maintenance=1", []string{"c"}},
		{"?provision_state=discovered", []string{"b"}},
		{"?provision_state=enrolled&maintenance=false", []string{"a"}},
		{"?instance=nosuch", []string{}},
	} {
		var nodes []proto.Node
		r := e.ok(200, "GET", "/v1/nodes"+tc.query, asAdmin, nil, &nodes)
		got := []string{}
		for _, n := range nodes {
			got = append(got, n.Name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("GET /v1/nodes%s: %v, want %v", tc.query, got, tc.want)
		}
		if len(tc.want) == 0 && strings.TrimSpace(string(r.Body)) != "[]" {
			t.Errorf("GET /v1/nodes%s: body %q, want []", tc.query, r.Body)
		}
	}

	e.runErrCases([]errCase{
		{name: "unknown path", method: "GET", path: "/v1/nope", auth: noAuth,
			status: 404, code: proto.CodeNotFound, msg: "no route GET /v1/nope"},
		{name: "unknown path outside v1", method: "GET", path: "/", auth: noAuth,
			status: 404, code: proto.CodeNotFound, msg: "no route GET /"},
		// A known path with a method it does not serve is a JSON 405
		// that lists the methods it does serve.
		{name: "known path, other method", method: "PUT", path: "/v1/nodes",
			status: 405, code: proto.CodeNotAllowed, msg: "allowed: GET, POST"},
		{name: "known path with a parameter, other method", method: "POST", path: "/v1/nodes/n1",
			status: 405, code: proto.CodeNotAllowed, msg: "allowed: GET, PATCH, DELETE"},
		{name: "enrolled=maybe", method: "GET", path: "/v1/nodes?enrolled=maybe",
			status: 400, code: proto.CodeInvalid, msg: `enrolled "maybe": want true or false`},
		{name: "maintenance=2", method: "GET", path: "/v1/nodes?maintenance=2",
			status: 400, code: proto.CodeInvalid, msg: `maintenance "2": want true or false`},
		{name: "provision_state=bogus", method: "GET", path: "/v1/nodes?provision_state=bogus",
			status: 400, code: proto.CodeInvalid, msg: `provision_state "bogus" is not a state`},
	})
}

// applyCommand proposes a command through Raft directly, for state the
// API cannot make yet.
func applyCommand(t *testing.T, e *apiEnv, c fsm.Command) any {
	t.Helper()
	data, err := fsm.Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _, err := e.srv.Raft().Apply(ctx, data)
	if err != nil {
		t.Fatalf("apply %T: %v", c, err)
	}
	res, ok := resp.(*fsm.Result)
	if !ok {
		t.Fatalf("apply %T: FSM answered %T", c, resp)
	}
	if res.Err != nil {
		t.Fatalf("apply %T: %v", c, res.Err)
	}
	return res.Value
}

func TestAPIInstanceFilters(t *testing.T) {
	e := startAPI(t)
	free := e.createNode(proto.NodeCreate{Name: "free", MACs: []string{mac(1)}})
	host := e.createNode(proto.NodeCreate{Name: "host", MACs: []string{mac(2)}})

	// Before any instance.
	var insts []proto.Instance
	r := e.ok(200, "GET", "/v1/instances?node="+free.UUID, asAdmin, nil, &insts)
	if len(insts) != 0 || strings.TrimSpace(string(r.Body)) != "[]" {
		t.Errorf("instances on a node without one: %s", r.Body)
	}
	var nodes []proto.Node
	r = e.ok(200, "GET", "/v1/nodes?instance=nosuch", asAdmin, nil, &nodes)
	if len(nodes) != 0 || strings.TrimSpace(string(r.Body)) != "[]" {
		t.Errorf("nodes of an unknown instance: %s", r.Body)
	}
	unknown := uuid.NewString()
	wantError(t, "instances of an unknown node", e.call("GET", "/v1/instances?node="+unknown, asAdmin, nil),
		404, proto.CodeNotFound, fmt.Sprintf("node %q not found", unknown))

	// An instance bound to host, made through Raft (queued: no deploy
	// starts without a rack agent). host has a BMC and the flavor asks
	// for nothing its missing inventory could not give.
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "small"}, nil)
	drv, addr := proto.DriverFake, "bmc-host"
	e.ok(200, "PATCH", "/v1/nodes/"+host.UUID, asAdmin, proto.NodePatch{BMC: &proto.BMCPatch{Driver: &drv, Address: &addr}}, nil)
	e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, proto.Image{
		Name: "debian", Kind: proto.ImageDisk, URL: "http://images.example/debian.img", SHA256: strings.Repeat("ab", 32)}, nil)
	in := proto.Instance{UUID: uuid.NewString(), Name: "web-1", Flavor: "small", Image: "debian", Node: host.UUID,
		CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
	for _, ev := range []proto.Event{"manage", "provide"} { // instances go on available nodes
		applyCommand(t, e, fsm.NodeProvision{Ref: host.UUID, Event: ev, Actor: proto.ActorOperator, Now: time.Now().UTC()})
	}
	applyCommand(t, e, fsm.InstanceCreate{Instance: in, Now: time.Now().UTC()})

	for _, ref := range []string{"web-1", in.UUID} {
		var nodes []proto.Node
		e.ok(200, "GET", "/v1/nodes?instance="+ref, asAdmin, nil, &nodes)
		if len(nodes) != 1 || nodes[0].UUID != host.UUID || nodes[0].InstanceUUID != in.UUID {
			t.Errorf("GET /v1/nodes?instance=%s: %+v, want exactly node host holding %s", ref, nodes, in.UUID)
		}
	}
	for _, ref := range []string{host.UUID, "host", mac(2)} {
		var insts []proto.Instance
		e.ok(200, "GET", "/v1/instances?node="+ref, asAdmin, nil, &insts)
		if len(insts) != 1 || insts[0].UUID != in.UUID || insts[0].Node != host.UUID || insts[0].State != proto.InstanceQueued {
			t.Errorf("GET /v1/instances?node=%s: %+v, want instance web-1", ref, insts)
		}
	}
	e.ok(200, "GET", "/v1/instances?node="+free.UUID, asAdmin, nil, &insts)
	if len(insts) != 0 {
		t.Errorf("instances on the free node: %+v", insts)
	}
	var all []proto.Instance
	e.ok(200, "GET", "/v1/instances", asAdmin, nil, &all)
	if len(all) != 1 {
		t.Errorf("all instances: %+v", all)
	}
	var got proto.Instance
	e.ok(200, "GET", "/v1/instances/web-1", asAdmin, nil, &got)
	if got.UUID != in.UUID {
		t.Errorf("GET /v1/instances/web-1: %+v", got)
	}

	// What an instance holds on to.
	e.runErrCases([]errCase{
		{name: "delete a node holding an instance", method: "DELETE", path: "/v1/nodes/host",
			status: 409, code: proto.CodeWrongState, msg: "holds instance " + in.UUID},
		{name: "unenroll a node holding an instance", method: "PUT", path: "/v1/nodes/host/enrolled", body: `{"enrolled":false}`,
			status: 409, code: proto.CodeWrongState, msg: "holds instance " + in.UUID},
		{name: "delete a flavor in use", method: "DELETE", path: "/v1/flavors/small",
			status: 409, code: proto.CodeConflict, msg: `flavor "small" is in use by instance(s) [web-1]`},
		{name: "delete an image in use", method: "DELETE", path: "/v1/images/debian",
			status: 409, code: proto.CodeConflict, msg: "instance web-1"},
	})
}
