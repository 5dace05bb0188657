package redfishsim

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// root is the service root (DSP0266: /redfish/v1/).
const root = "/redfish/v1"

// managerPath is the one manager's URI.
const managerPath = root + "/Managers/BMC"

// maxRequest bounds a request body.
const maxRequest = 1 << 20

// bootTargets are the BootSourceOverrideTarget@Redfish.AllowableValues.
var bootTargets = []string{"None", "Pxe", "Hdd", "Cd", "Usb", "BiosSetup", "UefiShell"}

type obj = map[string]any

func ref(p string) obj { return obj{"@odata.id": p} }

func (sys *system) path() string { return root + "/Systems/" + sys.id }

// route answers one request: the service root and the session login
// without credentials, everything else with a session token or Basic.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch p {
	case "/redfish":
		if allow(w, r, http.MethodGet) {
			writeResource(w, http.StatusOK, obj{"v1": root + "/"})
		}
		return
	case root:
		if allow(w, r, http.MethodGet) {
			writeResource(w, http.StatusOK, s.serviceRoot())
		}
		return
	case root + "/SessionService/Sessions":
		if r.Method == http.MethodPost && !s.opts.NoSessionService {
			s.login(w, r)
			return
		}
	}
	if !strings.HasPrefix(p, root+"/") {
		notFound(w, r)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	segs := strings.Split(strings.TrimPrefix(p, root+"/"), "/")
	switch {
	case segs[0] == "Systems":
		s.routeSystems(w, r, segs[1:])
	case segs[0] == "Managers" && !s.opts.NoManager:
		s.routeManagers(w, r, segs[1:])
	case segs[0] == "SessionService" && !s.opts.NoSessionService:
		s.routeSessions(w, r, segs[1:])
	case segs[0] == "TaskService":
		s.routeTasks(w, r, segs[1:])
	default:
		notFound(w, r)
	}
}

func (s *Server) serviceRoot() obj {
	m := obj{
		"@odata.id":      root + "/",
		"@odata.type":    "#ServiceRoot.v1_16_0.ServiceRoot",
		"Id":             "RootService",
		"Name":           "Root Service",
		"RedfishVersion": "1.18.0",
		"UUID":           "92384634-2938-2342-8820-489239905423",
		"Systems":        ref(root + "/Systems"),
		"TaskService":    ref(root + "/TaskService"),
		"Links":          obj{},
	}
	if !s.opts.NoSessionService {
		m["SessionService"] = ref(root + "/SessionService")
		m["Links"] = obj{"Sessions": ref(root + "/SessionService/Sessions")}
	}
	if !s.opts.NoManager {
		m["Managers"] = ref(root + "/Managers")
	}
	return m
}

// authorize accepts a live session's X-Auth-Token or the account's Basic
// credentials, and answers 401 otherwise.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		if s.sessions[tok] != nil {
			return true
		}
	} else if u, p, ok := r.BasicAuth(); ok && u == s.opts.Username && p == s.opts.Password {
		s.stats.BasicAuth++
		return true
	}
	s.stats.Unauthorized++
	w.Header().Set("WWW-Authenticate", `Basic realm="redfishsim"`)
	writeError(w, http.StatusUnauthorized, "NoValidSession", "There is no valid session established with the implementation.")
	return false
}

// login creates a session (DSP0266 13.3.4): 201 with X-Auth-Token and the
// session's URI in Location.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserName *string
		Password *string
	}
	if !readJSON(w, r, &req) {
		return
	}
	if req.UserName == nil || req.Password == nil {
		missing := "UserName"
		if req.UserName != nil {
			missing = "Password"
		}
		writeError(w, http.StatusBadRequest, "PropertyMissing", fmt.Sprintf("The property %s is a required property and must be included in the request.", missing), missing)
		return
	}
	if *req.UserName != s.opts.Username || *req.Password != s.opts.Password {
		s.mu.Lock()
		s.stats.Unauthorized++
		s.mu.Unlock()
		writeError(w, http.StatusUnauthorized, "ResourceAtUriUnauthorized", "While accessing the resource at /redfish/v1/SessionService/Sessions, the service received an authorization error: invalid user name or password.", root+"/SessionService/Sessions", "invalid credentials")
		return
	}
	sess := &session{id: s.newID(), token: randomToken(), user: *req.UserName}
	s.mu.Lock()
	s.sessions[sess.token] = sess
	s.stats.SessionsCreated++
	s.mu.Unlock()
	loc := root + "/SessionService/Sessions/" + sess.id
	w.Header().Set("X-Auth-Token", sess.token)
	w.Header().Set("Location", loc)
	writeResource(w, http.StatusCreated, sessionBody(sess))
}

func sessionBody(sess *session) obj {
	return obj{
		"@odata.id":   root + "/SessionService/Sessions/" + sess.id,
		"@odata.type": "#Session.v1_7_0.Session",
		"Id":          sess.id,
		"Name":        "User Session",
		"UserName":    sess.user,
	}
}

func (s *Server) routeSessions(w http.ResponseWriter, r *http.Request, segs []string) {
	switch {
	case len(segs) == 0:
		if allow(w, r, http.MethodGet) {
			writeResource(w, http.StatusOK, obj{
				"@odata.id":      root + "/SessionService",
				"@odata.type":    "#SessionService.v1_1_9.SessionService",
				"Id":             "SessionService",
				"Name":           "Session Service",
				"ServiceEnabled": true,
				"SessionTimeout": 1800,
				"Sessions":       ref(root + "/SessionService/Sessions"),
			})
		}
	case len(segs) == 1 && segs[0] == "Sessions":
		if allow(w, r, http.MethodGet, http.MethodPost) {
			s.mu.Lock()
			var members []string
			for _, sess := range s.sessions {
				members = append(members, root+"/SessionService/Sessions/"+sess.id)
			}
			s.mu.Unlock()
			writeResource(w, http.StatusOK, collection(root+"/SessionService/Sessions", "#SessionCollection.SessionCollection", "Session Collection", members))
		}
	case len(segs) == 2 && segs[0] == "Sessions":
		if !allow(w, r, http.MethodGet, http.MethodDelete) {
			return
		}
		s.mu.Lock()
		var found *session
		for _, sess := range s.sessions {
			if sess.id == segs[1] {
				found = sess
			}
		}
		if found != nil && r.Method == http.MethodDelete {
			delete(s.sessions, found.token)
			s.stats.SessionsDeleted++
		}
		s.mu.Unlock()
		switch {
		case found == nil:
			notFound(w, r)
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			writeResource(w, http.StatusOK, sessionBody(found))
		}
	default:
		notFound(w, r)
	}
}

func (s *Server) findSystem(id string) *system {
	for _, sys := range s.systems {
		if sys.id == id {
			return sys
		}
	}
	return nil
}

func (s *Server) routeSystems(w http.ResponseWriter, r *http.Request, segs []string) {
	if len(segs) == 0 {
		if allow(w, r, http.MethodGet) {
			var members []string
			for _, sys := range s.systems {
				members = append(members, sys.path())
			}
			writeResource(w, http.StatusOK, collection(root+"/Systems", "#ComputerSystemCollection.ComputerSystemCollection", "Computer System Collection", members))
		}
		return
	}
	sys := s.findSystem(segs[0])
	if sys == nil {
		notFound(w, r)
		return
	}
	switch rest := strings.Join(segs[1:], "/"); {
	case rest == "":
		if !allow(w, r, http.MethodGet, http.MethodPatch) {
			return
		}
		if r.Method == http.MethodPatch {
			s.patchSystem(w, r, sys)
			return
		}
		writeResource(w, http.StatusOK, s.systemBody(sys))
	case rest == "Actions/ComputerSystem.Reset":
		if allow(w, r, http.MethodPost) {
			s.reset(w, r, sys)
		}
	case rest == "ResetActionInfo" && s.opts.ResetActionInfo:
		if allow(w, r, http.MethodGet) {
			writeResource(w, http.StatusOK, obj{
				"@odata.id":   sys.path() + "/ResetActionInfo",
				"@odata.type": "#ActionInfo.v1_4_0.ActionInfo",
				"Id":          "ResetActionInfo",
				"Name":        "Reset Action Info",
				"Parameters": []obj{{
					"Name":            "ResetType",
					"Required":        true,
					"DataType":        "String",
					"AllowableValues": s.opts.ResetAllowed,
				}},
			})
		}
	default:
		notFound(w, r)
	}
}

// systemBody is a ComputerSystem (DSP0268 ComputerSystem.v1_20_0).
func (s *Server) systemBody(sys *system) obj {
	var power any // null when the backend does not know
	switch sys.backend.PowerState() {
	case proto.PowerOn:
		power = "On"
	case proto.PowerOff:
		power = "Off"
	}
	s.mu.Lock()
	boot := sys.boot
	s.mu.Unlock()
	reset := obj{"target": sys.path() + "/Actions/ComputerSystem.Reset"}
	if s.opts.ResetActionInfo {
		reset["@Redfish.ActionInfo"] = sys.path() + "/ResetActionInfo"
	} else {
		reset["ResetType@Redfish.AllowableValues"] = s.opts.ResetAllowed
	}
	m := obj{
		"@odata.id":    sys.path(),
		"@odata.type":  "#ComputerSystem.v1_20_0.ComputerSystem",
		"Id":           sys.id,
		"Name":         "Simulated System " + sys.id,
		"SystemType":   "Physical",
		"Manufacturer": s.opts.Manufacturer,
		"Model":        s.opts.Model,
		"SerialNumber": "SIM-" + sys.id,
		"PowerState":   power,
		"Status":       obj{"State": "Enabled", "Health": "OK"},
		"Boot": obj{
			"BootSourceOverrideTarget":                         boot.Target,
			"BootSourceOverrideEnabled":                        boot.Enabled,
			"BootSourceOverrideMode":                           boot.Mode,
			"BootSourceOverrideTarget@Redfish.AllowableValues": bootTargets,
		},
		"Actions": obj{"#ComputerSystem.Reset": reset},
		"Links":   obj{},
	}
	if !s.opts.NoManager {
		m["Links"] = obj{"ManagedBy": []obj{ref(managerPath)}}
	}
	return m
}

// patchSystem changes the Boot override (the one writable part), honouring
// If-Match (DSP0266 "ETags"): 412 when it names another version, 428 when
// it is required and missing.
func (s *Server) patchSystem(w http.ResponseWriter, r *http.Request, sys *system) {
	var body map[string]json.RawMessage
	if !readJSON(w, r, &body) {
		return
	}
	sys.opMu.Lock()
	defer sys.opMu.Unlock()
	im := r.Header.Get("If-Match")
	if im == "" && s.opts.RequireIfMatch {
		writeError(w, http.StatusPreconditionRequired, "PreconditionRequired", "A precondition header or annotation is required to change the resource at "+sys.path()+".", sys.path())
		return
	}
	if im != "" && !etagMatches(im, etagOf(s.systemBody(sys))) {
		writeError(w, http.StatusPreconditionFailed, "PreconditionFailed", "The ETag supplied did not match the ETag required to change this resource.")
		return
	}
	s.mu.Lock()
	boot := sys.boot
	s.mu.Unlock()
	for _, k := range sortedKeys(body) {
		if k != "Boot" {
			if _, known := s.systemBody(sys)[k]; known {
				writeError(w, http.StatusBadRequest, "PropertyNotWritable", fmt.Sprintf("The property %s is a read only property and cannot be assigned a value.", k), k)
			} else {
				writeError(w, http.StatusBadRequest, "PropertyUnknown", fmt.Sprintf("The property %s is not in the list of valid properties for the resource.", k), k)
			}
			return
		}
		var b map[string]json.RawMessage
		if err := json.Unmarshal(body[k], &b); err != nil {
			writeError(w, http.StatusBadRequest, "PropertyValueTypeError", "The value for the property Boot is of a different type than the property can accept.", "Boot")
			return
		}
		for _, bk := range sortedKeys(b) {
			var field *string
			var allowed []string
			switch bk {
			case "BootSourceOverrideTarget":
				field, allowed = &boot.Target, bootTargets
			case "BootSourceOverrideEnabled":
				field, allowed = &boot.Enabled, []string{"Disabled", "Once", "Continuous"}
			case "BootSourceOverrideMode":
				field, allowed = &boot.Mode, []string{"UEFI", "Legacy"}
			default:
				writeError(w, http.StatusBadRequest, "PropertyUnknown", fmt.Sprintf("The property Boot/%s is not in the list of valid properties for the resource.", bk), "Boot/"+bk)
				return
			}
			var v string
			if err := json.Unmarshal(b[bk], &v); err != nil {
				writeError(w, http.StatusBadRequest, "PropertyValueTypeError", fmt.Sprintf("The value %s for the property Boot/%s is of a different type than the property can accept.", b[bk], bk), string(b[bk]), "Boot/"+bk)
				return
			}
			if !slices.Contains(allowed, v) {
				writeError(w, http.StatusBadRequest, "PropertyValueNotInList", fmt.Sprintf("The value '%s' for the property Boot/%s is not in the list of acceptable values.", v, bk), v, "Boot/"+bk)
				return
			}
			*field = v
		}
	}
	s.mu.Lock()
	sys.boot = boot
	s.stats.Patches++
	if im != "" {
		s.stats.PatchesIfMatch++
	}
	s.mu.Unlock()
	writeResource(w, http.StatusOK, s.systemBody(sys))
}

// reset performs ComputerSystem.Reset: 204 when done, or 202 with a task
// monitor when the service is asynchronous.
func (s *Server) reset(w http.ResponseWriter, r *http.Request, sys *system) {
	var body map[string]json.RawMessage
	if !readJSON(w, r, &body) {
		return
	}
	raw, ok := body["ResetType"]
	if !ok {
		writeError(w, http.StatusBadRequest, "ActionParameterMissing", "The action ComputerSystem.Reset requires the parameter ResetType to be present in the request body.", "ComputerSystem.Reset", "ResetType")
		return
	}
	for _, k := range sortedKeys(body) {
		if k != "ResetType" {
			writeError(w, http.StatusBadRequest, "ActionParameterUnknown", fmt.Sprintf("The action ComputerSystem.Reset was submitted with the invalid parameter %s.", k), "ComputerSystem.Reset", k)
			return
		}
	}
	var rt string
	if err := json.Unmarshal(raw, &rt); err != nil {
		writeError(w, http.StatusBadRequest, "ActionParameterValueTypeError", fmt.Sprintf("The value %s for the parameter ResetType in the action ComputerSystem.Reset is of a different type than the parameter can accept.", raw), string(raw), "ResetType", "ComputerSystem.Reset")
		return
	}
	if _, known := resetActions[rt]; !known || !slices.Contains(s.opts.ResetAllowed, rt) {
		writeError(w, http.StatusBadRequest, "ActionParameterValueNotInList", fmt.Sprintf("The value '%s' for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values.", rt), rt, "ResetType", "ComputerSystem.Reset")
		return
	}
	if s.opts.AsyncReset {
		t := &task{id: s.newID(), sys: sys, resetType: rt, state: "Running", status: "OK", start: time.Now()}
		s.mu.Lock()
		s.tasks[t.id] = t
		body := t.body()
		s.mu.Unlock()
		w.Header().Set("Location", t.monitor())
		writeResource(w, http.StatusAccepted, body)
		return
	}
	if err := s.act(sys, rt); err != nil {
		writeError(w, http.StatusConflict, "GeneralError", "The reset could not be performed: "+err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// act performs a reset on the system's machine; a Once boot override is
// used up by an action that boots it.
func (s *Server) act(sys *system, rt string) error {
	sys.opMu.Lock()
	defer sys.opMu.Unlock()
	a := resetActions[rt]
	booting := a == ActionRestart || a == ActionCycle || (a == ActionOn && sys.backend.PowerState() != proto.PowerOn)
	s.mu.Lock()
	boot := sys.boot
	s.mu.Unlock()
	var err error
	if ba, ok := sys.backend.(BootAware); ok {
		err = ba.PowerBoot(a, boot)
	} else {
		err = sys.backend.Power(a)
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Resets[rt]++
	if booting && sys.boot.Enabled == "Once" {
		sys.boot.Enabled = "Disabled"
	}
	return nil
}

func (s *Server) routeManagers(w http.ResponseWriter, r *http.Request, segs []string) {
	switch {
	case len(segs) == 0:
		if allow(w, r, http.MethodGet) {
			writeResource(w, http.StatusOK, collection(root+"/Managers", "#ManagerCollection.ManagerCollection", "Manager Collection", []string{managerPath}))
		}
	case len(segs) == 1 && segs[0] == "BMC":
		if allow(w, r, http.MethodGet) {
			var systems []obj
			for _, sys := range s.systems {
				systems = append(systems, ref(sys.path()))
			}
			writeResource(w, http.StatusOK, obj{
				"@odata.id":       managerPath,
				"@odata.type":     "#Manager.v1_19_0.Manager",
				"Id":              "BMC",
				"Name":            "Manager",
				"ManagerType":     "BMC",
				"Manufacturer":    s.opts.Manufacturer,
				"Model":           s.opts.ManagerModel,
				"FirmwareVersion": s.opts.FirmwareVersion,
				"Status":          obj{"State": "Enabled", "Health": "OK"},
				"Links":           obj{"ManagerForServers": systems},
			})
		}
	default:
		notFound(w, r)
	}
}

// writeResource answers a resource with its ETag (a hash of its body),
// also as @odata.etag.
func writeResource(w http.ResponseWriter, status int, body obj) {
	if _, ok := body["@odata.id"]; ok {
		etag := etagOf(body)
		body["@odata.etag"] = etag
		w.Header().Set("ETag", etag)
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// etagOf is a weak ETag of a resource's body (without its @odata.etag).
func etagOf(body obj) string {
	c := make(obj, len(body))
	for k, v := range body {
		if k != "@odata.etag" {
			c[k] = v
		}
	}
	b, _ := json.Marshal(c) // maps marshal with sorted keys
	h := fnv.New64a()
	h.Write(b)
	return fmt.Sprintf(`W/"%016x"`, h.Sum64())
}

// etagMatches reports whether an If-Match header names etag (or is *).
func etagMatches(header, etag string) bool {
	for _, e := range strings.Split(header, ",") {
		if e = strings.TrimSpace(e); e == "*" || e == etag {
			return true
		}
	}
	return false
}

// writeError answers the Redfish error body (DSP0266 "Error responses")
// with one Base registry message.
func writeError(w http.ResponseWriter, status int, messageID, message string, args ...string) {
	if args == nil {
		args = []string{}
	}
	writeJSON(w, status, obj{"error": obj{
		"code":    "Base.1.15.GeneralError",
		"message": "A general error has occurred. See ExtendedInfo for more information.",
		"@Message.ExtendedInfo": []obj{{
			"@odata.type":     "#Message.v1_1_1.Message",
			"MessageId":       "Base.1.15." + messageID,
			"Message":         message,
			"MessageArgs":     args,
			"MessageSeverity": "Critical",
			"Resolution":      "Correct the request and resubmit it.",
		}},
	}})
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("The requested resource at %s was not found.", r.URL.Path), r.URL.Path)
}

// allow answers 405 (with Allow) unless the request's method is one of
// methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	if slices.Contains(methods, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, "OperationNotAllowed", fmt.Sprintf("The HTTP method %s is not allowed on %s.", r.Method, r.URL.Path))
	return false
}

// readJSON decodes a bounded request body, answering 400 when it is not
// JSON.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	if err == nil && len(b) > maxRequest {
		err = fmt.Errorf("larger than %d bytes", maxRequest)
	}
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "MalformedJSON", "The request body submitted was malformed JSON and could not be parsed by the receiving service: "+err.Error())
		return false
	}
	return true
}

func collection(path, typ, name string, members []string) obj {
	sort.Strings(members)
	refs := make([]obj, 0, len(members))
	for _, m := range members {
		refs = append(refs, ref(m))
	}
	return obj{
		"@odata.id":           path,
		"@odata.type":         typ,
		"Name":                name,
		"Members@odata.count": len(refs),
		"Members":             refs,
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
