package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// The tests in this file keep openapi.json in step with Routes and with the
// proto types, so the document cannot drift from the code.

type jsonObj = map[string]any

func loadOpenAPI(t *testing.T) jsonObj {
	t.Helper()
	var doc jsonObj
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	if v, _ := doc["openapi"].(string); v != "3.0.3" {
		t.Errorf("openapi version %q, want 3.0.3", v)
	}
	return doc
}

// obj returns m[key] as an object, failing the test if it is not one.
func obj(t *testing.T, m jsonObj, key, where string) jsonObj {
	t.Helper()
	v, ok := m[key].(jsonObj)
	if !ok {
		t.Fatalf("%s: %q is missing or not an object", where, key)
	}
	return v
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// opKey is one operation: an upper-case method and an OpenAPI path.
type opKey struct{ Method, Path string }

func (k opKey) String() string { return k.Method + " " + k.Path }

// openapiPath turns a ServeMux pattern path into an OpenAPI path.
func openapiPath(p string) string {
	p = strings.TrimSuffix(p, "{$}")
	return strings.ReplaceAll(p, "...}", "}")
}

// operations lists the doc's operations by method and path.
func operations(t *testing.T, doc jsonObj) map[opKey]jsonObj {
	t.Helper()
	ops := map[opKey]jsonObj{}
	for path, v := range obj(t, doc, "paths", "document") {
		item, ok := v.(jsonObj)
		if !ok {
			t.Fatalf("path %s is not an object", path)
		}
		for key, ov := range item {
			if !slices.Contains(httpMethods, key) {
				continue
			}
			op, ok := ov.(jsonObj)
			if !ok {
				t.Fatalf("%s %s is not an object", key, path)
			}
			ops[opKey{strings.ToUpper(key), path}] = op
		}
	}
	return ops
}

func sortedStrings[T fmt.Stringer](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	sort.Strings(out)
	return out
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := operations(t, doc)
	routes := map[opKey]Route{}
	for _, rt := range Routes() {
		k := opKey{rt.Method, openapiPath(rt.Path)}
		if _, dup := routes[k]; dup {
			t.Errorf("Routes lists %s twice", k)
		}
		routes[k] = rt
	}

	var missing, extra []opKey
	for k := range routes {
		if _, ok := ops[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range ops {
		if _, ok := routes[k]; !ok {
			extra = append(extra, k)
		}
	}
	for _, k := range sortedStrings(missing) {
		t.Errorf("route %s is served but missing from openapi.json", k)
	}
	for _, k := range sortedStrings(extra) {
		t.Errorf("openapi.json documents %s, which Routes does not serve", k)
	}
	if len(routes) == 0 {
		t.Fatal("Routes() is empty")
	}
}

// TestOpenAPIOperations checks each documented route against what the
// route table says about it: role, security, parameters and responses.
func TestOpenAPIOperations(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := operations(t, doc)
	paramRE := regexp.MustCompile(`\{([^}]+)\}`)
	opIDs := map[string]opKey{}
	for _, rt := range Routes() {
		k := opKey{rt.Method, openapiPath(rt.Path)}
		op, ok := ops[k]
		if !ok {
			continue // TestOpenAPIMatchesRoutes reports it
		}
		id, _ := op["operationId"].(string)
		if id == "" {
			t.Errorf("%s: no operationId", k)
		} else if other, dup := opIDs[id]; dup {
			t.Errorf("%s: operationId %q is also %s's", k, id, other)
		}
		opIDs[id] = k

		// Role and security.
		role, _ := op["x-metalfleet-role"].(string)
		if role != string(rt.Role) {
			t.Errorf("%s: x-metalfleet-role %q, want %q", k, role, rt.Role)
		}
		sec, hasSec := op["security"].([]any)
		switch {
		case rt.Role == "" && (!hasSec || len(sec) != 0):
			t.Errorf("%s needs no token: want \"security\": [] on it", k)
		case rt.Role != "" && op["security"] != nil:
			t.Errorf("%s needs a token: it must not override the global security", k)
		}

		// Parameters.
		params := map[string]string{} // "in:name" -> fmt.Sprint(required)
		for _, pv := range asSlice(op["parameters"]) {
			p := resolve(t, doc, pv)
			params[fmt.Sprint(p["in"], ":", p["name"])] = fmt.Sprint(p["required"])
		}
		wantPath := map[string]bool{}
		for _, m := range paramRE.FindAllStringSubmatch(k.Path, -1) {
			wantPath["path:"+m[1]] = true
			if req, ok := params["path:"+m[1]]; !ok {
				t.Errorf("%s: path parameter %s is not declared", k, m[1])
			} else if req != "true" {
				t.Errorf("%s: path parameter %s must be required", k, m[1])
			}
		}
		for p := range params {
			if strings.HasPrefix(p, "path:") && !wantPath[p] {
				t.Errorf("%s: declares %s, which is not in the path", k, p)
			}
		}
		// Intent routes (power, boot-device, provision) take ?wait= for
		// the rack agent's result, and answer 202, or 200 once it is in.
		resultWait := op["x-metalfleet-result-wait"] == true
		for _, q := range []string{"index", "wait", "stale"} {
			_, has := params["query:"+q]
			if want := isRead(rt.kind) || q == "wait" && resultWait; has != want {
				t.Errorf("%s: query parameter %s documented=%v, want %v (blocking and stale reads are for kindRead and kindReadOwnWait routes)", k, q, has, want)
			}
		}

		// Responses.
		resps := obj(t, op, "responses", k.String())
		var success []string
		// A WebSocket route (the console) succeeds with 101.
		upgrade := op["x-metalfleet-websocket"] == true
		for code, rv := range resps {
			r := resolve(t, doc, rv)
			if code == "101" && upgrade {
				success = append(success, code)
				continue
			}
			if strings.HasPrefix(code, "2") {
				success = append(success, code)
				hdrs, _ := r["headers"].(jsonObj)
				if _, ok := hdrs[proto.IndexHeader]; !ok {
					t.Errorf("%s: response %s does not document the %s header", k, code, proto.IndexHeader)
				}
				continue
			}
			ref := schemaRef(r)
			if ref != "#/components/schemas/Error" {
				t.Errorf("%s: error response %s has schema %q, want the Error schema", k, code, ref)
			}
		}
		slices.Sort(success)
		if len(success) != 1 && !(resultWait && slices.Equal(success, []string{"200", "202"})) {
			t.Errorf("%s: %d success responses %v, want 1 (or 200 and 202 with x-metalfleet-result-wait)", k, len(success), success)
		}
		need := []string{}
		if rt.Role != "" {
			need = append(need, "401", "403")
		}
		if rt.kind != kindLocal {
			need = append(need, "503")
		}
		if isRead(rt.kind) {
			need = append(need, "400")
		}
		if op["requestBody"] != nil {
			need = append(need, "400", "413")
		}
		if len(wantPath) > 0 {
			need = append(need, "404")
		}
		for _, code := range need {
			if _, ok := resps[code]; !ok {
				t.Errorf("%s: no %s response", k, code)
			}
		}
		// A DELETE that keeps the object (a task abort: the task stays,
		// ended) answers it with 200 instead.
		if rt.Method == "DELETE" && op["x-metalfleet-keeps-object"] != true {
			if _, ok := resps["204"]; !ok {
				t.Errorf("%s: a DELETE answers 204", k)
			}
		}
	}
}

// isRead reports whether routes of kind k are reads that take ?index,
// ?wait and ?stale (kindReadOwnWait blocks on an index of its own).
func isRead(k kind) bool { return k == kindRead || k == kindReadOwnWait }

func TestOpenAPINodeListFilters(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := operations(t, doc)
	check := func(k opKey, want map[string]string) {
		t.Helper()
		got := map[string]string{}
		for _, pv := range asSlice(ops[k]["parameters"]) {
			p := resolve(t, doc, pv)
			if p["in"] != "query" {
				continue
			}
			s, _ := p["schema"].(jsonObj)
			typ, _ := s["type"].(string)
			if ref, ok := s["$ref"].(string); ok {
				typ = ref
			}
			got[p["name"].(string)] = typ
		}
		for name, typ := range want {
			if got[name] != typ {
				t.Errorf("%s: query parameter %s has schema %q, want %q", k, name, got[name], typ)
			}
		}
	}
	check(opKey{"GET", "/v1/nodes"}, map[string]string{
		"provision_state": "#/components/schemas/ProvisionState",
		"rack":            "string", "enrolled": "boolean", "maintenance": "boolean", "instance": "string",
		"index": "integer", "wait": "string", "stale": "string",
	})
	check(opKey{"GET", "/v1/instances"}, map[string]string{"node": "string"})
}

// TestOpenAPIPagination: every paged list documents ?limit, ?after and the
// next-page header.
func TestOpenAPIPagination(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := operations(t, doc)
	for _, path := range []string{"/v1/nodes", "/v1/racks", "/v1/flavors", "/v1/images", "/v1/instances", "/v1/tokens", "/v1/sightings"} {
		op := ops[opKey{"GET", path}]
		got := map[string]bool{}
		for _, pv := range asSlice(op["parameters"]) {
			p := resolve(t, doc, pv)
			got[fmt.Sprint(p["in"], ":", p["name"])] = true
		}
		if !got["query:limit"] || !got["query:after"] {
			t.Errorf("GET %s: limit or after not documented (%v)", path, got)
		}
		r := resolve(t, doc, obj(t, obj(t, op, "responses", path), "200", path))
		if h, _ := r["headers"].(jsonObj); h[NextHeader] == nil {
			t.Errorf("GET %s: the %s header is not documented", path, NextHeader)
		}
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// resolve follows a $ref (if v is one) to the object it names.
func resolve(t *testing.T, doc jsonObj, v any) jsonObj {
	t.Helper()
	m, ok := v.(jsonObj)
	if !ok {
		t.Fatalf("want an object, got %T", v)
	}
	for i := 0; i < 10; i++ {
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		target, err := lookupRef(doc, ref)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok = target.(jsonObj); !ok {
			t.Fatalf("%s does not name an object", ref)
		}
	}
	t.Fatalf("$ref chain too long")
	return nil
}

// schemaRef returns the $ref of a response's application/json schema.
func schemaRef(r jsonObj) string {
	c, _ := r["content"].(jsonObj)
	j, _ := c["application/json"].(jsonObj)
	s, _ := j["schema"].(jsonObj)
	ref, _ := s["$ref"].(string)
	return ref
}

// lookupRef resolves a local JSON pointer such as
// "#/components/schemas/Node".
func lookupRef(doc jsonObj, ref string) (any, error) {
	ptr, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("$ref %q is not local", ref)
	}
	var cur any = doc
	for _, tok := range strings.Split(ptr, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(jsonObj)
		if !ok {
			return nil, fmt.Errorf("$ref %q: %q is inside a non-object", ref, tok)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("$ref %q does not resolve: no %q", ref, tok)
		}
	}
	return cur, nil
}

func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadOpenAPI(t)
	used := map[string]bool{}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case jsonObj:
			if ref, ok := v["$ref"]; ok {
				s, isStr := ref.(string)
				if !isStr {
					t.Errorf("%s: $ref is not a string", where)
				} else if _, err := lookupRef(doc, s); err != nil {
					t.Errorf("%s: %v", where, err)
				}
				used[s] = true
			}
			for k, e := range v {
				walk(where+"/"+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s/%d", where, i), e)
			}
		}
	}
	walk("#", doc)

	// Every component is used: an unused one is a leftover.
	comps := obj(t, doc, "components", "document")
	for _, section := range []string{"schemas", "parameters", "responses", "headers"} {
		for name := range obj(t, comps, section, "components") {
			if ref := "#/components/" + section + "/" + name; !used[ref] {
				t.Errorf("%s is never referenced", ref)
			}
		}
	}
	schemes := obj(t, comps, "securitySchemes", "components")
	if s := obj(t, schemes, "bearerAuth", "securitySchemes"); s["type"] != "http" || s["scheme"] != "bearer" {
		t.Errorf("bearerAuth is %v, want type http, scheme bearer", s)
	}
	global := asSlice(doc["security"])
	if len(global) != 1 || global[0].(jsonObj)["bearerAuth"] == nil {
		t.Errorf("global security is %v, want [{bearerAuth: []}]", global)
	}
}

// jsonFields returns the JSON names of t's fields (embedded structs
// flattened, "-" skipped) and which of them are always present (no
// omitempty or omitzero).
func jsonFields(t reflect.Type) (names []string, always map[string]bool) {
	always = map[string]bool{}
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" || !f.IsExported() && !f.Anonymous {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				visit(f.Type)
				continue
			}
			if name == "" {
				name = f.Name
			}
			names = append(names, name)
			if o := strings.Split(opts, ","); !slices.Contains(o, "omitempty") && !slices.Contains(o, "omitzero") {
				always[name] = true
			}
		}
	}
	visit(t)
	sort.Strings(names)
	return names, always
}

func TestOpenAPISchemasMatchTypes(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := obj(t, obj(t, doc, "components", "document"), "schemas", "components")
	for _, tc := range []struct {
		schema string
		typ    any
		// response: the schema describes what the API writes, so its
		// required list is exactly the fields without omitempty.
		response bool
	}{
		{"Node", proto.Node{}, true},
		{"BMC", proto.BMC{}, true},
		{"Rack", proto.Rack{}, true},
		{"Flavor", proto.Flavor{}, true},
		{"Image", proto.Image{}, true},
		{"Instance", proto.Instance{}, true},
		{"Settings", proto.SettingsView{}, true}, // GET and PATCH /v1/settings answer the view
		{"Token", proto.Token{}, true},
		{"TokenCreated", proto.TokenCreated{}, true},
		{"Status", proto.Status{}, true},
		{"Peer", proto.Peer{}, true},
		{"Health", proto.Health{}, true},
		{"Error", proto.ErrorBody{}, true},
		{"ErrorDetail", proto.Error{}, true},
		{"ConsoleTicket", apiclient.ConsoleTicket{}, true},
		{"ConsoleTicketRedeem", apiclient.ConsoleTicketRedeem{}, false},
		{"NodeCreate", proto.NodeCreate{}, false},
		{"NodePatch", proto.NodePatch{}, false},
		{"BMCPatch", proto.BMCPatch{}, false},
		{"EnrolledRequest", proto.EnrolledRequest{}, false},
		{"MaintenanceRequest", proto.MaintenanceRequest{}, false},
		{"ProvisionRequest", proto.ProvisionRequest{}, false},
		{"SettingsPatch", proto.SettingsPatch{}, false},
		{"TokenCreate", proto.TokenCreate{}, false},
		{"JoinRequest", proto.JoinRequest{}, false},
		{"BootEvent", proto.BootEvent{}, true},
		{"Sighting", proto.Sighting{}, true},
		{"AgentInfo", proto.AgentInfo{}, true},
		{"RackBootState", proto.RackBootState{}, true},
		{"BootNode", proto.BootNode{}, true},
		{"BootConfig", proto.BootConfig{}, true},
		{"Artifact", proto.Artifact{}, true},
		{"Lease", proto.Lease{}, true},
		{"ReportAck", proto.ReportAck{}, true},
		{"AgentReport", proto.AgentReport{}, false},
		{"ReportBatch", proto.ReportBatch{}, false},
		{"Task", proto.Task{}, true},
		{"Step", proto.Step{}, true},
		{"TaskSummary", proto.TaskSummary{}, true},
		{"SavedBoot", proto.SavedBoot{}, true},
		{"TaskPlan", proto.TaskPlan{}, true},
		{"PlanStep", proto.PlanStep{}, true},
		{"VendorTool", proto.VendorTool{}, true},
		{"ToolCommands", proto.ToolCommands{}, true},
		{"TaskRequest", proto.TaskRequest{}, false},
	} {
		t.Run(tc.schema, func(t *testing.T) {
			s := obj(t, schemas, tc.schema, "schemas")
			props := obj(t, s, "properties", tc.schema)
			names, always := jsonFields(reflect.TypeOf(tc.typ))
			typName := reflect.TypeOf(tc.typ).String()
			for _, n := range names {
				if _, ok := props[n]; !ok {
					t.Errorf("%s has JSON field %q; schema %s lacks it", typName, n, tc.schema)
				}
			}
			for n := range props {
				if !slices.Contains(names, n) {
					t.Errorf("schema %s has property %q; %s has no such JSON field", tc.schema, n, typName)
				}
			}
			if ap, ok := s["additionalProperties"]; !ok || ap != false {
				t.Errorf("schema %s: want additionalProperties false (the API refuses unknown fields)", tc.schema)
			}
			var required []string
			for _, r := range asSlice(s["required"]) {
				required = append(required, r.(string))
				if _, ok := props[r.(string)]; !ok {
					t.Errorf("schema %s requires %q, which it does not define", tc.schema, r)
				}
			}
			if tc.response {
				for n := range always {
					if !slices.Contains(required, n) {
						t.Errorf("schema %s: %q is always present in %s's JSON: list it in required", tc.schema, n, typName)
					}
				}
				for _, n := range required {
					if !always[n] {
						t.Errorf("schema %s requires %q, but %s omits it when empty", tc.schema, n, typName)
					}
				}
			}
		})
	}

	// BMC secrets: the password goes in and never comes out.
	bmc := obj(t, obj(t, schemas, "BMC", "schemas"), "properties", "BMC")
	if p := obj(t, bmc, "password", "BMC"); p["writeOnly"] != true {
		t.Error("BMC.password must be writeOnly")
	}
	if p := obj(t, bmc, "password_set", "BMC"); p["readOnly"] != true {
		t.Error("BMC.password_set must be readOnly")
	}
}

func TestOpenAPIEnums(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := obj(t, obj(t, doc, "components", "document"), "schemas", "components")
	enum := func(name string) []string {
		var out []string
		for _, v := range asSlice(obj(t, schemas, name, "schemas")["enum"]) {
			out = append(out, v.(string))
		}
		return out
	}
	strs := func(xs ...any) []string {
		var out []string
		for _, x := range xs {
			out = append(out, reflect.ValueOf(x).String())
		}
		return out
	}
	var states, events []any
	for _, s := range proto.AllStates {
		states = append(states, s)
	}
	for _, e := range proto.OperatorEvents() {
		events = append(events, e)
	}
	for _, tc := range []struct {
		schema string
		want   []string
	}{
		{"ProvisionState", strs(states...)},
		{"OperatorEvent", strs(events...)},
		{"PowerState", strs(proto.PowerUnknown, proto.PowerOn, proto.PowerOff)},
		{"Role", strs(proto.RoleAdmin, proto.RoleOperator, proto.RoleReader, proto.RoleAgent)},
		{"ImageKind", strs(proto.ImageKernel, proto.ImageRamdisk, proto.ImageDisk, proto.ImageFirmware)},
		{"TaskKind", strs(proto.TaskInspect, proto.TaskBurnin, proto.TaskFirmware, proto.TaskBIOS, proto.TaskRAID)},
		{"TaskState", strs(proto.TaskRunning, proto.TaskSucceeded, proto.TaskFailed, proto.TaskAborted)},
		{"StepState", strs(proto.StepPending, proto.StepRunning, proto.StepPassed, proto.StepFailed)},
		{"BootKind", strs(proto.BootDiscovery, proto.BootLocalDisk, proto.BootRamdisk)},
		{"ReportKind", strs(proto.ReportMACSeen, proto.ReportBootEvent, proto.ReportLease, proto.ReportPower, proto.ReportCallback)},
		{"InstanceState", strs(proto.InstanceQueued, proto.InstanceBuilding, proto.InstanceRunning, proto.InstanceRescuing, proto.InstanceRescue, proto.InstanceUnrescuing, proto.InstanceDeleting, proto.InstanceError)},
		{"ErrorCode", strs(proto.CodeInvalid, proto.CodeUnauthorized, proto.CodeForbidden, proto.CodeNotFound,
			proto.CodeConflict, proto.CodeWrongState, proto.CodeTooLarge, proto.CodeNoLeader, proto.CodeUnavailable,
			proto.CodeInternal, proto.CodeNotAllowed, proto.CodeTimeout, proto.CodeUnsupported, proto.CodeUndecodable, proto.CodeRateLimited)},
	} {
		if got := enum(tc.schema); !slices.Equal(got, tc.want) {
			t.Errorf("schema %s: enum %v, want %v", tc.schema, got, tc.want)
		}
	}
	for _, c := range enum("ErrorCode") {
		if proto.Code(c).Status() == 500 && proto.Code(c) != proto.CodeInternal {
			t.Errorf("ErrorCode %q is not a code proto knows", c)
		}
	}
	for _, r := range enum("Role") {
		if !proto.Role(r).Valid() {
			t.Errorf("Role %q is not valid", r)
		}
	}
}

// The document is valid JSON indented with two spaces and ends with a
// newline: re-indenting it changes nothing.
func TestOpenAPIFormatting(t *testing.T) {
	var compact, indented bytes.Buffer
	if err := json.Compact(&compact, OpenAPI()); err != nil {
		t.Fatal(err)
	}
	if err := json.Indent(&indented, compact.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	indented.WriteByte('\n')
	if got, want := string(OpenAPI()), indented.String(); got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("openapi.json is not indented with 2 spaces; line %d is %q, want %q", i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("openapi.json is not indented with 2 spaces (%d lines, want %d)", len(gl), len(wl))
	}
}
