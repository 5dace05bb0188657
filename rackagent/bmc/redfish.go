package bmc

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/cluster/clock"
	"github.com/metalfleet/metalfleet/proto"
)

// The redfish driver: DMTF Redfish (DSP0266 protocol, DSP0268 schema)
// over HTTPS with net/http and encoding/json.
//
// The address is a URL used as given: https://host[:port] finds the one
// ComputerSystem in /redfish/v1/Systems; https://host/redfish/v1/Systems/ID
// names it. http:// is allowed (labs). TLS is verified against the system
// roots, or only against the node's CACert bundle when it has one;
// Insecure skips verification.
//
// Authentication is a session (POST to the service root's Links.Sessions,
// then X-Auth-Token; Close deletes it), or HTTP Basic when the service
// has no session service. A 401 on a session token (it expired, or the
// BMC restarted) logs in again once.
//
// Power is ComputerSystem.Reset with the action's target and its
// allowable ResetTypes (inline or from its ActionInfo); an asynchronous
// reset (202 and a task monitor) is followed until its task ends. The
// boot override is a PATCH of Boot with If-Match when the system has an
// ETag. Redfish names no standard serial console stream (a
// ComputerSystem's SerialConsole lists SSH, Telnet and IPMI access
// points), so Console is not supported.

func init() { Register(proto.DriverRedfish, openRedfish) }

const (
	// redfishRoot is the service root (DSP0266).
	redfishRoot = "/redfish/v1"
	// redfishMaxBody bounds every response body the driver reads.
	redfishMaxBody = 1 << 20
	// redfishCloseTimeout bounds the session DELETE of Close.
	redfishCloseTimeout = 5 * time.Second
	// Task monitor polling: the first wait, the longest, and the longest
	// Retry-After the driver honours.
	taskPollFirst = 100 * time.Millisecond
	taskPollMax   = 2 * time.Second
	taskRetryMax  = 10 * time.Second
)

// resetTypes are the Redfish ResetTypes of the power actions.
var resetTypes = map[PowerAction]string{
	PowerOn:      "On",
	PowerOff:     "ForceOff",
	PowerSoftOff: "GracefulShutdown",
	PowerReset:   "ForceRestart",
	PowerCycle:   "PowerCycle",
}

type redfishDriver struct {
	base       *url.URL // scheme://host:port
	systemPath string   // the ComputerSystem's path; found on first use when empty
	user, pass string
	client     *http.Client
	clk        clock.Clock

	token      string // X-Auth-Token of the session
	sessionURI string // the session, deleted on Close
	basic      bool   // the service has no session service: Basic auth
}

func openRedfish(cfg Config) (Driver, error) {
	const op = "connect"
	form := "want https://host[:port][/redfish/v1/Systems/ID]"
	u, err := url.Parse(cfg.Address)
	if err != nil || cfg.Address == "" {
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address %q is not a URL: %s", cfg.Address, form)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address %q: scheme %q is not http or https: %s", cfg.Address, u.Scheme, form)
	case u.Host == "":
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address %q names no host: %s", cfg.Address, form)
	case u.User != nil:
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address of host %s carries credentials: give them as the username and password", u.Hostname())
	case u.RawQuery != "" || u.Fragment != "":
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address %q has a query or fragment: %s", cfg.Address, form)
	}
	if u.Port() == "" && cfg.Port != 0 {
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(cfg.Port))
	}
	d := &redfishDriver{
		base: &url.URL{Scheme: u.Scheme, Host: u.Host},
		user: cfg.Username,
		pass: cfg.Password,
		clk:  clock.Real,
	}
	switch p := strings.TrimSuffix(u.Path, "/"); {
	case p == "" || p == "/redfish" || p == redfishRoot || p == redfishRoot+"/Systems":
		// found from the Systems collection on first use
	case strings.HasPrefix(p, redfishRoot+"/Systems/") && !strings.Contains(strings.TrimPrefix(p, redfishRoot+"/Systems/"), "/"):
		d.systemPath = p
	default:
		return nil, Errorf(op, proto.BMCErrUnsupported, "redfish address %q: path %q is not a system: %s", cfg.Address, u.Path, form)
	}

	tc := &tls.Config{}
	switch {
	case cfg.Insecure:
		tc.InsecureSkipVerify = true
	case cfg.CACert != "":
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(cfg.CACert)) {
			return nil, Errorf(op, proto.BMCErrUnsupported, "ca_cert holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	d.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil, // a BMC network is reached directly
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		},
		// Follow a redirect only on the same host: the session token
		// travels in a header net/http would forward elsewhere too.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			if !sameHost(req.URL, d.base) {
				return fmt.Errorf("redirected to another host (%s)", req.URL.Host)
			}
			return nil
		},
	}
	return d, nil
}

// rfResponse is a response with its body read (bounded).
type rfResponse struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
}

// statusError is an HTTP error status and the Redfish message with it.
type statusError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *statusError) Error() string {
	s := fmt.Sprintf("%s %s: HTTP %d %s", e.Method, e.Path, e.Status, http.StatusText(e.Status))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// hasStatus reports whether err is an HTTP error with this status.
func hasStatus(err error, status int) bool {
	var se *statusError
	return errors.As(err, &se) && se.Status == status
}

// send makes one request, authenticated when auth is set, and reads the
// response body (at most redfishMaxBody).
func (d *redfishDriver) send(ctx context.Context, op, method, ref string, body any, hdr http.Header, auth bool) (*rfResponse, error) {
	u, err := d.resolve(ref)
	if err != nil {
		return nil, &Error{Op: op, Kind: proto.BMCErrRefused, Err: err}
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, &Error{Op: op, Kind: proto.BMCErrRefused, Err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, &Error{Op: op, Kind: proto.BMCErrRefused, Err: err}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("OData-Version", "4.0")
	req.Header.Set("User-Agent", "metalfleet-rackagent")
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if auth {
		if d.token != "" {
			req.Header.Set("X-Auth-Token", d.token)
		} else {
			req.SetBasicAuth(d.user, d.pass)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, transportError(ctx, op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, redfishMaxBody+1))
	if err != nil {
		return nil, transportError(ctx, op, err)
	}
	if len(b) > redfishMaxBody {
		return nil, Errorf(op, proto.BMCErrRefused, "%s %s: response larger than %d bytes", method, u.Path, redfishMaxBody)
	}
	return &rfResponse{method: method, path: u.Path, status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// call makes an authenticated request: it logs in first when it has to,
// and once more when the BMC refuses a session token (the session
// expired). An HTTP error status is an *Error wrapping a *statusError.
func (d *redfishDriver) call(ctx context.Context, op, method, ref string, body any, hdr http.Header) (*rfResponse, error) {
	if err := d.login(ctx, op); err != nil {
		return nil, err
	}
	resp, err := d.send(ctx, op, method, ref, body, hdr, true)
	if err != nil {
		return nil, err
	}
	if resp.status == http.StatusUnauthorized && d.token != "" {
		d.token, d.sessionURI = "", "" // the BMC forgot it: nothing to delete
		if err := d.login(ctx, op); err != nil {
			return nil, err
		}
		if resp, err = d.send(ctx, op, method, ref, body, hdr, true); err != nil {
			return nil, err
		}
	}
	if resp.status >= 400 {
		return resp, responseError(op, resp)
	}
	return resp, nil
}

// login opens a session unless there is one or the service has none.
func (d *redfishDriver) login(ctx context.Context, op string) error {
	if d.token != "" || d.basic {
		return nil
	}
	sessions := redfishRoot + "/SessionService/Sessions"
	// The service root answers without credentials (DSP0266) and links
	// the session collection; a root that wants them gets the standard
	// URI tried.
	resp, err := d.send(ctx, op, http.MethodGet, redfishRoot+"/", nil, nil, false)
	if err != nil {
		return err
	}
	if resp.status == http.StatusOK {
		var root struct {
			SessionService *json.RawMessage
			Links          struct {
				Sessions struct {
					ID string `json:"@odata.id"`
				}
			}
		}
		if err := json.Unmarshal(resp.body, &root); err != nil {
			return Errorf(op, proto.BMCErrRefused, "the service root %s is not Redfish JSON: %v", redfishRoot+"/", err)
		}
		switch {
		case root.Links.Sessions.ID != "":
			sessions = root.Links.Sessions.ID
		case root.SessionService == nil:
			d.basic = true
			return nil
		}
	}
	resp, err = d.send(ctx, op, http.MethodPost, sessions, map[string]string{"UserName": d.user, "Password": d.pass}, nil, false)
	if err != nil {
		return err
	}
	switch {
	case resp.status == http.StatusNotFound || resp.status == http.StatusMethodNotAllowed || resp.status == http.StatusNotImplemented:
		d.basic = true // no session service after all
		return nil
	case resp.status >= 400:
		return responseError(op, resp)
	}
	token := resp.header.Get("X-Auth-Token")
	if token == "" {
		return Errorf(op, proto.BMCErrRefused, "POST %s: HTTP %d without an X-Auth-Token", sessions, resp.status)
	}
	d.token = token
	d.sessionURI = resp.header.Get("Location")
	if d.sessionURI == "" {
		var s struct {
			ID string `json:"@odata.id"`
		}
		_ = json.Unmarshal(resp.body, &s) // without it the session times out on the BMC
		d.sessionURI = s.ID
	}
	return nil
}

// rfSystem is what the driver reads of a ComputerSystem.
type rfSystem struct {
	ETag         string `json:"@odata.etag"`
	Manufacturer string
	Model        string
	PowerState   *string
	Boot         *struct {
		BootSourceOverrideTarget *string
		BootSourceOverrideMode   *string
		TargetAllowed            []string `json:"BootSourceOverrideTarget@Redfish.AllowableValues"`
	}
	Actions struct {
		Reset *struct {
			Target     string   `json:"target"`
			Allowed    []string `json:"ResetType@Redfish.AllowableValues"`
			ActionInfo string   `json:"@Redfish.ActionInfo"`
		} `json:"#ComputerSystem.Reset"`
	}
	Links struct {
		ManagedBy []struct {
			ID string `json:"@odata.id"`
		}
	}
}

// system returns the ComputerSystem's path, found from the Systems
// collection when the address names none (it must list exactly one).
func (d *redfishDriver) system(ctx context.Context, op string) (string, error) {
	if d.systemPath != "" {
		return d.systemPath, nil
	}
	resp, err := d.call(ctx, op, http.MethodGet, redfishRoot+"/Systems", nil, nil)
	if err != nil {
		return "", err
	}
	var coll struct {
		Members []struct {
			ID string `json:"@odata.id"`
		}
	}
	if err := decode(op, resp, &coll); err != nil {
		return "", err
	}
	if len(coll.Members) != 1 || coll.Members[0].ID == "" {
		return "", Errorf(op, proto.BMCErrRefused, "%s lists %d systems, want exactly one: name the system in the address (%s)",
			redfishRoot+"/Systems", len(coll.Members), d.base.String()+redfishRoot+"/Systems/ID")
	}
	u, err := d.resolve(coll.Members[0].ID)
	if err != nil {
		return "", &Error{Op: op, Kind: proto.BMCErrRefused, Err: err}
	}
	d.systemPath = u.Path
	return d.systemPath, nil
}

// getSystem reads the ComputerSystem and its ETag (the header's, else
// @odata.etag).
func (d *redfishDriver) getSystem(ctx context.Context, op string) (*rfSystem, string, error) {
	path, err := d.system(ctx, op)
	if err != nil {
		return nil, "", err
	}
	resp, err := d.call(ctx, op, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, "", err
	}
	var sys rfSystem
	if err := decode(op, resp, &sys); err != nil {
		return nil, "", err
	}
	etag := resp.header.Get("ETag")
	if etag == "" {
		etag = sys.ETag
	}
	return &sys, etag, nil
}

func (d *redfishDriver) PowerState(ctx context.Context) (proto.PowerState, error) {
	const op = "power status"
	sys, _, err := d.getSystem(ctx, op)
	if err != nil {
		return proto.PowerUnknown, err
	}
	if sys.PowerState == nil {
		return proto.PowerUnknown, Errorf(op, proto.BMCErrRefused, "the system at %s reports no PowerState", d.systemPath)
	}
	switch *sys.PowerState {
	case "On", "PoweringOn", "Paused":
		return proto.PowerOn, nil
	case "Off", "PoweringOff":
		return proto.PowerOff, nil
	}
	return proto.PowerUnknown, Errorf(op, proto.BMCErrRefused, "the system at %s reports PowerState %q", d.systemPath, *sys.PowerState)
}

func (d *redfishDriver) Power(ctx context.Context, a PowerAction) error {
	op := "power " + string(a)
	rt, ok := resetTypes[a]
	if !ok {
		return Errorf(op, proto.BMCErrUnsupported, "unknown power action %q", a)
	}
	sys, _, err := d.getSystem(ctx, op)
	if err != nil {
		return err
	}
	reset := sys.Actions.Reset
	if reset == nil {
		return Errorf(op, proto.BMCErrUnsupported, "the system at %s offers no ComputerSystem.Reset action", d.systemPath)
	}
	target := reset.Target
	if target == "" {
		target = d.systemPath + "/Actions/ComputerSystem.Reset"
	}
	allowed := reset.Allowed
	if allowed == nil && reset.ActionInfo != "" {
		if allowed, err = d.actionInfo(ctx, op, reset.ActionInfo); err != nil {
			return err
		}
	}
	if allowed != nil && !slices.Contains(allowed, rt) {
		return Errorf(op, proto.BMCErrUnsupported, "the system does not allow ResetType %s (it allows %s)", rt, listOrNone(allowed))
	}
	resp, err := d.call(ctx, op, http.MethodPost, target, map[string]string{"ResetType": rt}, nil)
	if err != nil {
		return err
	}
	return d.followTask(ctx, op, resp)
}

// actionInfo reads the ResetType's AllowableValues from an ActionInfo;
// nil when it lists none (or is missing: then the BMC decides).
func (d *redfishDriver) actionInfo(ctx context.Context, op, ref string) ([]string, error) {
	resp, err := d.call(ctx, op, http.MethodGet, ref, nil, nil)
	if hasStatus(err, http.StatusNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var info struct {
		Parameters []struct {
			Name            string
			AllowableValues []string
		}
	}
	if err := decode(op, resp, &info); err != nil {
		return nil, err
	}
	for _, p := range info.Parameters {
		if p.Name == "ResetType" {
			return p.AllowableValues, nil
		}
	}
	return nil, nil
}

// followTask follows an asynchronous operation (202 Accepted) through its
// task monitor until its task ends, within ctx. Any other response is the
// operation's own, and done.
func (d *redfishDriver) followTask(ctx context.Context, op string, resp *rfResponse) error {
	if resp.status != http.StatusAccepted {
		return nil
	}
	monitor := resp.header.Get("Location")
	if monitor == "" {
		var t struct {
			ID      string `json:"@odata.id"`
			Monitor string `json:"TaskMonitor"`
		}
		_ = json.Unmarshal(resp.body, &t)
		if monitor = t.Monitor; monitor == "" {
			monitor = t.ID
		}
	}
	if monitor == "" {
		return nil // accepted, with nothing to follow
	}
	wait := retryAfter(resp.header, taskPollFirst)
	for {
		if err := taskFailed(op, resp); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return &Error{Op: op, Kind: proto.BMCErrTimeout, Err: fmt.Errorf("the BMC's task %s had not ended: %w", monitor, ctx.Err())}
		case <-d.clk.After(wait):
		}
		var err error
		if resp, err = d.call(ctx, op, http.MethodGet, monitor, nil, nil); err != nil {
			return err // the operation's own error, once its task has ended
		}
		if resp.status != http.StatusAccepted && !taskRunning(resp) {
			return taskFailed(op, resp)
		}
		wait = retryAfter(resp.header, min(2*wait, taskPollMax))
	}
}

// rfTask is what the driver reads of a Task.
type rfTask struct {
	TaskState  string
	TaskStatus string
	Messages   []struct {
		MessageID string `json:"MessageId"`
		Message   string
	}
}

func parseTask(resp *rfResponse) (rfTask, bool) {
	var t rfTask
	if len(resp.body) == 0 || json.Unmarshal(resp.body, &t) != nil || t.TaskState == "" {
		return t, false
	}
	return t, true
}

// taskRunning reports whether a 200 answer is a Task still under way (a
// service that answers the Task itself rather than 202).
func taskRunning(resp *rfResponse) bool {
	t, ok := parseTask(resp)
	if !ok {
		return false
	}
	switch t.TaskState {
	case "Completed", "Exception", "Killed", "Cancelled":
		return false
	}
	return true
}

// taskFailed is an error when resp shows a Task that ended badly.
func taskFailed(op string, resp *rfResponse) error {
	t, ok := parseTask(resp)
	if !ok {
		return nil
	}
	failed := t.TaskState == "Exception" || t.TaskState == "Killed" || t.TaskState == "Cancelled" ||
		(t.TaskState == "Completed" && t.TaskStatus == "Critical")
	if !failed {
		return nil
	}
	var msgs []string
	for _, m := range t.Messages {
		if m.Message != "" {
			msgs = append(msgs, m.Message)
		}
	}
	msg := strings.Join(msgs, "; ")
	if msg == "" {
		msg = "no message"
	}
	return Errorf(op, proto.BMCErrRefused, "the BMC's task ended in state %s (%s): %s", t.TaskState, t.TaskStatus, msg)
}

// retryAfter is the wait a Retry-After header of seconds asks for (at
// least 50 ms, at most taskRetryMax), else def.
func retryAfter(h http.Header, def time.Duration) time.Duration {
	s, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After")))
	if err != nil || s < 0 {
		return def
	}
	return min(max(time.Duration(s)*time.Second, 50*time.Millisecond), taskRetryMax)
}

func (d *redfishDriver) SetBootDevice(ctx context.Context, b proto.BootDeviceSpec) error {
	const op = "set boot device"
	if err := b.Check(); err != nil {
		return &Error{Op: op, Kind: proto.BMCErrRefused, Err: err}
	}
	boot := map[string]string{"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
	if b.Device == proto.BootDeviceDisk {
		boot["BootSourceOverrideTarget"] = "Hdd"
	}
	if b.Persistent {
		boot["BootSourceOverrideEnabled"] = "Continuous"
	}
	switch b.Mode {
	case proto.BootModeUEFI:
		boot["BootSourceOverrideMode"] = "UEFI"
	case proto.BootModeLegacy:
		boot["BootSourceOverrideMode"] = "Legacy"
	}
	for attempt := 0; ; attempt++ {
		sys, etag, err := d.getSystem(ctx, op)
		if err != nil {
			return err
		}
		if sys.Boot == nil || sys.Boot.BootSourceOverrideTarget == nil {
			return Errorf(op, proto.BMCErrUnsupported, "the system at %s has no boot override (Boot.BootSourceOverrideTarget)", d.systemPath)
		}
		if t := boot["BootSourceOverrideTarget"]; sys.Boot.TargetAllowed != nil && !slices.Contains(sys.Boot.TargetAllowed, t) {
			return Errorf(op, proto.BMCErrUnsupported, "the system does not allow BootSourceOverrideTarget %s (it allows %s)", t, listOrNone(sys.Boot.TargetAllowed))
		}
		if b.Mode != "" && sys.Boot.BootSourceOverrideMode == nil {
			return Errorf(op, proto.BMCErrUnsupported, "the system at %s has no BootSourceOverrideMode: it cannot choose %s", d.systemPath, b.Mode)
		}
		var hdr http.Header
		if etag != "" {
			hdr = http.Header{"If-Match": {etag}}
		}
		resp, err := d.call(ctx, op, http.MethodPatch, d.systemPath, map[string]any{"Boot": boot}, hdr)
		if hasStatus(err, http.StatusPreconditionFailed) && attempt == 0 {
			continue // the system changed since we read it: read it again
		}
		if err != nil {
			return err
		}
		return d.followTask(ctx, op, resp)
	}
}

func (d *redfishDriver) Identify(ctx context.Context) (proto.BMCInfo, error) {
	const op = "identify"
	sys, _, err := d.getSystem(ctx, op)
	if err != nil {
		return proto.BMCInfo{}, err
	}
	info := proto.BMCInfo{Vendor: sys.Manufacturer, Model: sys.Model, Protocol: "redfish"}
	if len(sys.Links.ManagedBy) == 0 || sys.Links.ManagedBy[0].ID == "" {
		return info, nil // a service without a manager
	}
	resp, err := d.call(ctx, op, http.MethodGet, sys.Links.ManagedBy[0].ID, nil, nil)
	if hasStatus(err, http.StatusNotFound) {
		return info, nil
	}
	if err != nil {
		return proto.BMCInfo{}, err
	}
	var mgr struct {
		Manufacturer    string
		Model           string
		FirmwareVersion string
	}
	if err := decode(op, resp, &mgr); err != nil {
		return proto.BMCInfo{}, err
	}
	info.FirmwareVersion = mgr.FirmwareVersion
	if info.Vendor == "" {
		info.Vendor = mgr.Manufacturer
	}
	switch {
	case info.Model == "":
		info.Model = mgr.Model
	case mgr.Model != "":
		info.Model += " (BMC " + mgr.Model + ")"
	}
	return info, nil
}

func (d *redfishDriver) Console(ctx context.Context) (io.ReadWriteCloser, error) {
	return nil, Errorf("console", proto.BMCErrUnsupported, "Redfish names no standard serial console stream; use the ipmi driver for SOL")
}

// Close deletes the session, if any, and drops idle connections.
func (d *redfishDriver) Close() error {
	defer d.client.CloseIdleConnections()
	if d.token == "" || d.sessionURI == "" {
		d.token = ""
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), redfishCloseTimeout)
	defer cancel()
	resp, err := d.send(ctx, "close session", http.MethodDelete, d.sessionURI, nil, nil, true)
	d.token, d.sessionURI = "", ""
	if err != nil {
		return err
	}
	if resp.status >= 400 && resp.status != http.StatusNotFound && resp.status != http.StatusUnauthorized {
		return responseError("close session", resp)
	}
	return nil
}

// resolve makes a URI the BMC gave (a path, or a URL on the same host)
// a URL on the BMC.
func (d *redfishDriver) resolve(ref string) (*url.URL, error) {
	u, err := url.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("the BMC gave an unusable URI %q: %v", ref, err)
	}
	if u.IsAbs() && !sameHost(u, d.base) {
		return nil, fmt.Errorf("the BMC pointed at another host (%s): not following it", u.Host)
	}
	return d.base.ResolveReference(u), nil
}

// sameHost reports whether a and b are the same scheme, host and port.
func sameHost(a, b *url.URL) bool {
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if strings.EqualFold(u.Scheme, "http") {
			return "80"
		}
		return "443"
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// decode parses a JSON body.
func decode(op string, resp *rfResponse, v any) error {
	if err := json.Unmarshal(resp.body, v); err != nil {
		return Errorf(op, proto.BMCErrRefused, "%s %s: the answer is not Redfish JSON: %v", resp.method, resp.path, err)
	}
	return nil
}

// responseError classifies an HTTP error status: 401 and 403 are
// authentication, the rest a refused command, with the Redfish message.
func responseError(op string, resp *rfResponse) error {
	kind := proto.BMCErrRefused
	if resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden {
		kind = proto.BMCErrAuth
	}
	return &Error{Op: op, Kind: kind, Err: &statusError{Method: resp.method, Path: resp.path, Status: resp.status, Message: redfishMessage(resp.body)}}
}

// redfishMessage is the message of a Redfish error body (DSP0266 "Error
// responses"): each @Message.ExtendedInfo Message with its MessageId,
// else error.message, else the start of the body.
func redfishMessage(body []byte) string {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Info    []struct {
				MessageID string `json:"MessageId"`
				Message   string
			} `json:"@Message.ExtendedInfo"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		s := strings.Join(strings.Fields(string(body)), " ")
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		return s
	}
	var msgs []string
	for _, m := range e.Error.Info {
		switch {
		case m.Message != "" && m.MessageID != "":
			msgs = append(msgs, fmt.Sprintf("%s (%s)", m.Message, m.MessageID))
		case m.Message != "":
			msgs = append(msgs, m.Message)
		case m.MessageID != "":
			msgs = append(msgs, m.MessageID)
		}
	}
	if len(msgs) == 0 && e.Error.Message != "" {
		msgs = append(msgs, e.Error.Message)
	}
	return strings.Join(msgs, "; ")
}

// transportError classifies a failed exchange: the context's deadline is
// a timeout; TLS, DNS and connection failures leave the BMC unreachable.
func transportError(ctx context.Context, op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || ctx.Err() != nil {
		cause := ctx.Err()
		if cause == nil {
			cause = err
		}
		return &Error{Op: op, Kind: proto.BMCErrTimeout, Err: fmt.Errorf("no answer from the BMC in time: %w", cause)}
	}
	var (
		verr  *tls.CertificateVerificationError
		uaerr x509.UnknownAuthorityError
		herr  x509.HostnameError
		cierr x509.CertificateInvalidError
		rherr tls.RecordHeaderError
		dnerr *net.DNSError
	)
	switch {
	case errors.As(err, &verr) || errors.As(err, &uaerr) || errors.As(err, &herr) || errors.As(err, &cierr):
		return &Error{Op: op, Kind: proto.BMCErrUnreachable, Err: fmt.Errorf("TLS: the BMC's certificate is not trusted (give the node a ca_cert bundle that signs it, or set insecure): %w", err)}
	case errors.As(err, &rherr) || strings.Contains(err.Error(), "gave HTTP response to HTTPS client"):
		return &Error{Op: op, Kind: proto.BMCErrUnreachable, Err: fmt.Errorf("TLS handshake failed: the BMC answers plain HTTP on this port (an http:// address?): %w", err)}
	case errors.As(err, &dnerr):
		return &Error{Op: op, Kind: proto.BMCErrUnreachable, Err: fmt.Errorf("cannot resolve the BMC's host name: %w", err)}
	}
	return &Error{Op: op, Kind: proto.BMCErrUnreachable, Err: err}
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}
