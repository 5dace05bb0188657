package redfishsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// The service checked against DSP0266 with plain net/http requests.

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
}

// do makes a request; auth is "basic", a session token, or "" for none.
func do(t *testing.T, s *Server, method, path, auth string, body any, hdr ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	switch auth {
	case "":
	case "basic":
		req.SetBasicAuth("admin", "password")
	default:
		req.Header.Set("X-Auth-Token", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := reply{status: resp.StatusCode, header: resp.Header}
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &r.body); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, b)
		}
	}
	return r
}

// messageID is the first @Message.ExtendedInfo MessageId of an error.
func messageID(r reply) string {
	e, _ := r.body["error"].(map[string]any)
	info, _ := e["@Message.ExtendedInfo"].([]any)
	if len(info) == 0 {
		return ""
	}
	m, _ := info[0].(map[string]any)
	id, _ := m["MessageId"].(string)
	return id
}

func want(t *testing.T, r reply, status int, id string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (body %v)", r.status, status, r.body)
	}
	if id != "" && messageID(r) != "Base.1.15."+id {
		t.Fatalf("MessageId %q, want Base.1.15.%s", messageID(r), id)
	}
}

func TestServiceRootOpenEverythingElseNeedsCredentials(t *testing.T) {
	s := start(t, Options{})
	r := do(t, s, "GET", "/redfish/v1/", "", nil)
	want(t, r, 200, "")
	links, _ := r.body["Links"].(map[string]any)
	sessions, _ := links["Sessions"].(map[string]any)
	if r.body["@odata.id"] != "/redfish/v1/" || sessions["@odata.id"] != "/redfish/v1/SessionService/Sessions" || r.header.Get("OData-Version") != "4.0" {
		t.Errorf("service root %v (OData-Version %q)", r.body, r.header.Get("OData-Version"))
	}
	r = do(t, s, "GET", "/redfish/v1/Systems", "", nil)
	want(t, r, 401, "NoValidSession")
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
		t.Errorf("401 without WWW-Authenticate: %v", r.header)
	}
	r = do(t, s, "GET", "/redfish/v1/Systems", "basic", nil)
	want(t, r, 200, "")
	if r.body["Members@odata.count"] != 1.0 || r.header.Get("ETag") == "" {
		t.Errorf("Systems %v, ETag %q", r.body, r.header.Get("ETag"))
	}
}

func TestSessionLoginAndLogout(t *testing.T) {
	s := start(t, Options{Password: "pw"})
	want(t, do(t, s, "POST", "/redfish/v1/SessionService/Sessions", "", map[string]string{"UserName": "admin", "Password": "no"}), 401, "ResourceAtUriUnauthorized")
	want(t, do(t, s, "POST", "/redfish/v1/SessionService/Sessions", "", map[string]string{"UserName": "admin"}), 400, "PropertyMissing")
	r := do(t, s, "POST", "/redfish/v1/SessionService/Sessions", "", map[string]string{"UserName": "admin", "Password": "pw"})
	want(t, r, 201, "")
	tok, loc := r.header.Get("X-Auth-Token"), r.header.Get("Location")
	if tok == "" || loc != r.body["@odata.id"] {
		t.Fatalf("session: token %q, Location %q, body %v", tok, loc, r.body)
	}
	want(t, do(t, s, "GET", "/redfish/v1/Systems/1", tok, nil), 200, "")
	want(t, do(t, s, "DELETE", loc, tok, nil), 204, "")
	want(t, do(t, s, "GET", "/redfish/v1/Systems/1", tok, nil), 401, "NoValidSession")
	if st := s.Stats(); st.SessionsCreated != 1 || st.SessionsDeleted != 1 || st.SessionsLive != 0 {
		t.Errorf("stats %+v", st)
	}

	n := start(t, Options{NoSessionService: true})
	r = do(t, n, "GET", "/redfish/v1/", "", nil)
	if _, ok := r.body["SessionService"]; ok {
		t.Errorf("service root without a session service links one: %v", r.body)
	}
	want(t, do(t, n, "POST", "/redfish/v1/SessionService/Sessions", "", map[string]string{"UserName": "admin", "Password": "password"}), 401, "")
	want(t, do(t, n, "POST", "/redfish/v1/SessionService/Sessions", "basic", map[string]string{"UserName": "admin", "Password": "password"}), 404, "ResourceNotFound")
}

func TestPatchBootWithETags(t *testing.T) {
	s := start(t, Options{})
	r := do(t, s, "GET", "/redfish/v1/Systems/1", "basic", nil)
	etag := r.header.Get("ETag")
	if etag == "" || r.body["@odata.etag"] != etag || r.body["@odata.type"] != "#ComputerSystem.v1_20_0.ComputerSystem" {
		t.Fatalf("system: ETag %q, body %v", etag, r.body)
	}
	pxe := map[string]any{"Boot": map[string]string{"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}
	want(t, do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", pxe, "If-Match", `W/"stale"`), 412, "PreconditionFailed")
	r = do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", pxe, "If-Match", etag)
	want(t, r, 200, "")
	if r.header.Get("ETag") == etag {
		t.Errorf("the ETag did not change with the resource")
	}
	if b := s.Boot(); b != (BootOverride{Target: "Pxe", Enabled: "Once", Mode: "UEFI"}) {
		t.Errorf("boot %+v", b)
	}
	want(t, do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", map[string]any{"Boot": map[string]string{"BootSourceOverrideTarget": "Floppy"}}), 400, "PropertyValueNotInList")
	want(t, do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", map[string]any{"PowerState": "On"}), 400, "PropertyNotWritable")
	want(t, do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", map[string]any{"Colour": "red"}), 400, "PropertyUnknown")
	want(t, do(t, s, "DELETE", "/redfish/v1/Systems/1", "basic", nil), 405, "OperationNotAllowed")

	strict := start(t, Options{RequireIfMatch: true})
	want(t, do(t, strict, "PATCH", "/redfish/v1/Systems/1", "basic", pxe), 428, "PreconditionRequired")
}

func TestResetValidationAndTaskMonitor(t *testing.T) {
	s := start(t, Options{AsyncReset: true, AsyncPolls: 2, ResetAllowed: []string{"On", "ForceOff"}})
	const reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
	want(t, do(t, s, "POST", reset, "basic", map[string]any{}), 400, "ActionParameterMissing")
	want(t, do(t, s, "POST", reset, "basic", map[string]any{"ResetType": "PowerCycle"}), 400, "ActionParameterValueNotInList")
	want(t, do(t, s, "POST", reset, "basic", map[string]any{"ResetType": "On", "Delay": 3}), 400, "ActionParameterUnknown")

	r := do(t, s, "POST", reset, "basic", map[string]any{"ResetType": "On"})
	want(t, r, 202, "")
	monitor := r.header.Get("Location")
	task, _ := r.body["@odata.id"].(string)
	if monitor == "" || r.body["TaskState"] != "Running" {
		t.Fatalf("202 with Location %q and task %v", monitor, r.body)
	}
	want(t, do(t, s, "GET", monitor, "basic", nil), 202, "")
	if p := s.Backend().PowerState(); p != proto.PowerOff {
		t.Fatalf("the machine is %s before its task completed", p)
	}
	want(t, do(t, s, "GET", monitor, "basic", nil), 204, "")
	if p := s.Backend().PowerState(); p != proto.PowerOn {
		t.Fatalf("the machine is %s after its task completed", p)
	}
	r = do(t, s, "GET", task, "basic", nil)
	if r.body["TaskState"] != "Completed" || r.body["TaskStatus"] != "OK" {
		t.Errorf("task %v", r.body)
	}
	if n := s.Stats().Resets["On"]; n != 1 {
		t.Errorf("%d resets On, want 1", n)
	}
}

type bootRecorder struct {
	*MemoryBackend
	boots []BootOverride
}

func (b *bootRecorder) PowerBoot(a PowerAction, o BootOverride) error {
	b.boots = append(b.boots, o)
	return b.Power(a)
}

func TestBootAwareBackendSeesTheOverride(t *testing.T) {
	b := &bootRecorder{MemoryBackend: NewMemoryBackend(proto.PowerOff)}
	s := start(t, Options{Backend: b})
	want(t, do(t, s, "PATCH", "/redfish/v1/Systems/1", "basic", map[string]any{"Boot": map[string]string{"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}), 200, "")
	for range 2 {
		want(t, do(t, s, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", "basic", map[string]any{"ResetType": "ForceRestart"}), 409, "GeneralError") // off: refused
		want(t, do(t, s, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", "basic", map[string]any{"ResetType": "On"}), 204, "")
		want(t, do(t, s, "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", "basic", map[string]any{"ResetType": "ForceOff"}), 204, "")
	}
	var targets []string
	for _, o := range b.boots {
		if o.Enabled != "Disabled" {
			targets = append(targets, o.Target)
		}
	}
	// The Once override is used by the first boot only.
	if len(b.boots) != 6 || strings.Join(targets, ",") != "Pxe,Pxe" || b.boots[1].Enabled != "Once" || b.boots[4].Enabled != "Disabled" {
		t.Errorf("boots seen: %+v", b.boots)
	}
}
