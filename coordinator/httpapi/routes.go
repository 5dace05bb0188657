package httpapi

import (
	"cmp"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

func (a *API) routes() []Route {
	const (
		R = proto.RoleReader
		O = proto.RoleOperator
		A = proto.RoleAdmin
		G = proto.RoleAgent
	)
	return []Route{
		{"GET", "/v1/health", "", kindLocal, a.health},
		{"GET", "/v1/openapi.json", "", kindLocal, a.openapi},
		{"GET", "/v1/status", R, kindLocal, a.status},

		{"GET", "/v1/nodes", R, kindRead, a.listNodes},
		{"POST", "/v1/nodes", O, kindWrite, a.createNode},
		{"GET", "/v1/nodes/{id}", R, kindRead, a.getNode},
		{"PATCH", "/v1/nodes/{id}", O, kindWrite, a.patchNode},
		{"DELETE", "/v1/nodes/{id}", O, kindWrite, a.deleteNode},
		{"PUT", "/v1/nodes/{id}/enrolled", O, kindWrite, a.setEnrolled},
		{"PUT", "/v1/nodes/{id}/maintenance", O, kindWrite, a.setMaintenance},
		{"POST", "/v1/nodes/{id}/provision", O, kindWrite, a.provision},
		{"PUT", "/v1/nodes/{id}/power", O, kindWrite, a.setPower},
		{"PUT", "/v1/nodes/{id}/boot-device", O, kindWrite, a.setBootDevice},
		{"GET", "/v1/nodes/{id}/history", R, kindRead, a.nodeHistory},
		{"POST", "/v1/nodes/{id}/tasks", O, kindWrite, a.createTask},
		{"GET", "/v1/nodes/{id}/tasks", R, kindRead, a.listTasks},
		{"GET", "/v1/nodes/{id}/tasks/{task}", R, kindRead, a.getTask},
		{"DELETE", "/v1/nodes/{id}/tasks/{task}", O, kindWrite, a.abortTask},

		{"GET", "/v1/racks", R, kindRead, a.listRacks},
		{"POST", "/v1/racks", O, kindWrite, a.putRack(true)},
		{"GET", "/v1/racks/{name}", R, kindRead, a.getRack},
		{"PUT", "/v1/racks/{name}", O, kindWrite, a.putRack(false)},
		{"DELETE", "/v1/racks/{name}", O, kindWrite, a.deleteRack},

		{"GET", "/v1/flavors", R, kindRead, a.listFlavors},
		{"POST", "/v1/flavors", O, kindWrite, a.putFlavor(true)},
		{"GET", "/v1/flavors/{name}", R, kindRead, a.getFlavor},
		{"PUT", "/v1/flavors/{name}", O, kindWrite, a.putFlavor(false)},
		{"DELETE", "/v1/flavors/{name}", O, kindWrite, a.deleteFlavor},

		{"GET", "/v1/images", R, kindRead, a.listImages},
		{"POST", "/v1/images", O, kindWrite, a.putImage(true)},
		{"GET", "/v1/images/{name}", R, kindRead, a.getImage},
		{"PUT", "/v1/images/{name}", O, kindWrite, a.putImage(false)},
		{"DELETE", "/v1/images/{name}", O, kindWrite, a.deleteImage},

		{"GET", "/v1/instances", R, kindRead, a.listInstances},
		{"POST", "/v1/instances", O, kindWrite, a.createInstance},
		{"GET", "/v1/instances/{id}", R, kindRead, a.getInstance},
		{"PATCH", "/v1/instances/{id}", O, kindWrite, a.patchInstance},
		{"DELETE", "/v1/instances/{id}", O, kindWrite, a.deleteInstance},
		{"POST", "/v1/instances/{id}/rescue", O, kindWrite, a.rescueInstance},
		{"POST", "/v1/instances/{id}/unrescue", O, kindWrite, a.unrescueInstance},

		{"GET", "/v1/settings", R, kindRead, a.getSettings},
		{"PATCH", "/v1/settings", O, kindWrite, a.patchSettings},

		{"GET", "/v1/tokens", A, kindRead, a.listTokens},
		{"POST", "/v1/tokens", A, kindWrite, a.createToken},
		{"DELETE", "/v1/tokens/{id}", A, kindWrite, a.revokeToken},

		{"GET", "/v1/sightings", R, kindRead, a.sightings},
		{"GET", "/v1/agents", R, kindRead, a.agents},
		{"GET", "/v1/agent/bootstate", G, kindReadOwnWait, a.bootState},
		{"POST", "/v1/agent/reports", G, kindWrite, a.agentReports},
		{"POST", "/v1/agent/console-ticket", G, kindWrite, a.redeemConsoleTicket},
		{"GET", "/v1/nodes/{id}/console", O, kindLocal, a.console},
		{"GET", "/v1/nodes/{id}/console/log", O, kindLocal, a.consoleLog},

		{"POST", "/v1/cluster/join", A, kindWrite, a.join},
		{"DELETE", "/v1/cluster/peers/{id}", A, kindWrite, a.removePeer},
	}
}

func newUUID() string { return uuid.NewString() }

// --- cluster ---

func (a *API) health(c *call) (any, error) {
	return proto.Health{Status: "ok", Leader: a.b.IsLeader()}, nil
}

func (a *API) status(c *call) (any, error) {
	st := a.b.Status()
	c.index = st.AppliedIndex
	return st, nil
}

func (a *API) join(c *call) (any, error) {
	var req proto.JoinRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if req.ID == "" || req.RaftAddr == "" || req.HTTPAddr == "" {
		return nil, proto.Errorf(proto.CodeInvalid, "join needs id, raft_addr and http_addr")
	}
	if err := a.b.Join(c.r.Context(), req); err != nil {
		return nil, err
	}
	return a.b.Status(), nil
}

func (a *API) removePeer(c *call) (any, error) {
	id := c.r.PathValue("id")
	if err := a.b.RemovePeer(c.r.Context(), id); err != nil {
		return nil, err
	}
	c.status = http.StatusNoContent
	return nil, nil
}

// --- nodes ---

func (a *API) listNodes(c *call) (any, error) {
	q := c.r.URL.Query()
	f := state.NodeFilter{Rack: q.Get("rack"), Instance: q.Get("instance")}
	if s := q.Get("provision_state"); s != "" {
		f.ProvisionState = proto.ProvisionState(s)
		if !f.ProvisionState.Valid() {
			return nil, proto.Errorf(proto.CodeInvalid, "provision_state %q is not a state", s)
		}
	}
	var err error
	if f.Enrolled, err = boolParam(q.Get("enrolled"), "enrolled"); err != nil {
		return nil, err
	}
	if f.Maintenance, err = boolParam(q.Get("maintenance"), "maintenance"); err != nil {
		return nil, err
	}
	limit, after, err := c.pageParams()
	if err != nil {
		return nil, err
	}
	nodes, next := a.b.Store().NodesPage(f, after, limit)
	for i, n := range nodes {
		nodes[i] = n.Redacted()
	}
	c.setNext(next)
	return nodes, nil
}

func boolParam(s, name string) (*bool, error) {
	if s == "" {
		return nil, nil
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "%s %q: want true or false", name, s)
	}
	return &v, nil
}

func (a *API) getNode(c *call) (any, error) {
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	return n.Redacted(), nil
}

// nodeResult turns an FSM result into an API answer without secrets.
func nodeResult(v any, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if n, ok := v.(*proto.Node); ok {
		return n.Redacted(), nil
	}
	return v, nil
}

func (a *API) createNode(c *call) (any, error) {
	var req proto.NodeCreate
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if req.Name != "" {
		if err := proto.CheckName("name", req.Name); err != nil {
			return nil, err
		}
	}
	macs, err := proto.NormalizeMACs(req.MACs)
	if err != nil {
		return nil, err
	}
	if err := req.BMC.Check(); err != nil {
		return nil, err
	}
	if req.BMC.PasswordSet {
		return nil, proto.Errorf(proto.CodeInvalid, "bmc.password_set is read-only")
	}
	now := a.cfg.Now()
	n := proto.Node{
		UUID: a.cfg.NewID(), Name: req.Name, MACs: macs, Rack: req.Rack, IP: req.IP, BMC: req.BMC,
		Properties: req.Properties, ProvisionState: proto.StateEnrolled, PowerState: proto.PowerUnknown,
		CreatedAt: now, UpdatedAt: now,
	}
	if req.Enrolled != nil && !*req.Enrolled {
		n.ProvisionState = proto.StateDiscovered
	}
	c.status = http.StatusCreated
	return nodeResult(c.apply(fsm.NodeCreate{Node: n}))
}

func (a *API) patchNode(c *call) (any, error) {
	var p proto.NodePatch
	if err := c.decode(&p); err != nil {
		return nil, err
	}
	if p.Name != nil && *p.Name != "" {
		if err := proto.CheckName("name", *p.Name); err != nil {
			return nil, err
		}
	}
	if p.MACs != nil {
		macs, err := proto.NormalizeMACs(*p.MACs)
		if err != nil {
			return nil, err
		}
		p.MACs = &macs
	}
	upd := fsm.NodeUpdate{Ref: c.r.PathValue("id"), Patch: p, Now: a.cfg.Now(), By: c.who()}
	if n, ok := a.b.Store().Node(upd.Ref); ok && (p.BMC != nil || p.Rack != nil) {
		rack := n.Rack
		if p.Rack != nil {
			rack = *p.Rack
		}
		upd.Agent = a.rackAgent(rack, n.UUID) // none: the BMC stays unverified until manage
	}
	return nodeResult(c.apply(upd))
}

func (a *API) deleteNode(c *call) (any, error) {
	_, err := c.apply(fsm.NodeDelete{Ref: c.r.PathValue("id")})
	c.status = http.StatusNoContent
	return nil, err
}

func (a *API) setEnrolled(c *call) (any, error) {
	var req proto.EnrolledRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	return nodeResult(c.apply(fsm.NodeSetEnrolled{Ref: c.r.PathValue("id"), Enrolled: req.Enrolled, Now: a.cfg.Now()}))
}

func (a *API) setMaintenance(c *call) (any, error) {
	var req proto.MaintenanceRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	return nodeResult(c.apply(fsm.NodeSetMaintenance{Ref: c.r.PathValue("id"), Maintenance: req.Maintenance, Reason: req.Reason, Now: a.cfg.Now()}))
}

func (a *API) provision(c *call) (any, error) {
	var req proto.ProvisionRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	t, ok := proto.LookupTransition(req.Target)
	if !ok || t.Actor != proto.ActorOperator {
		evs := proto.OperatorEvents()
		names := make([]string, len(evs))
		for i, e := range evs {
			names[i] = string(e)
		}
		return nil, proto.Errorf(proto.CodeInvalid, "target %q: want one of %s", req.Target, strings.Join(names, ", "))
	}
	if t.Hardware {
		if req.Target == "service" {
			return nil, proto.Errorf(proto.CodeInvalid, "target service: start a task instead: POST /v1/nodes/{id}/tasks {\"kind\": \"inspect|burnin|firmware|bios|raid\"} (metalfleet node task NODE KIND)")
		}
		return nil, proto.Errorf(proto.CodeUnsupported, "target %s needs a rack agent to drive the hardware; this coordinator does not drive hardware yet", req.Target)
	}
	if _, err := waitParam(c); err != nil {
		return nil, err // ?wait= is for manage; a bad one is refused for any target
	}
	if req.Target == "manage" {
		// manage verifies the BMC first: the node becomes manageable when
		// its rack agent has connected with the node's credentials.
		n, ok := a.b.Store().Node(c.r.PathValue("id"))
		if !ok {
			return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", c.r.PathValue("id"))
		}
		if _, err := proto.CheckTransition(cmp.Or(n.Name, n.UUID), n.ProvisionState, "manage"); err != nil {
			return nil, err
		}
		return a.makeIntent(c, proto.Intent{Action: proto.ActionVerify, OnSuccess: "manage"})
	}
	return nodeResult(c.apply(fsm.NodeProvision{Ref: c.r.PathValue("id"), Event: req.Target, Actor: proto.ActorOperator, Now: a.cfg.Now()}))
}

// --- racks, flavors, images ---

// pathName checks that a body's name agrees with the path's.
func pathName(c *call, create bool, name *string) error {
	if create {
		return nil
	}
	p := c.r.PathValue("name")
	if *name != "" && *name != p {
		return proto.Errorf(proto.CodeInvalid, "name %q in the body differs from %q in the path; renaming is not supported", *name, p)
	}
	*name = p
	return nil
}

func (a *API) listRacks(c *call) (any, error) {
	return page(c, a.b.Store().Racks(), func(r *proto.Rack) string { return r.Name })
}

func (a *API) getRack(c *call) (any, error) {
	return found(a.b.Store().Rack(c.r.PathValue("name")))("rack", c.r.PathValue("name"))
}

func (a *API) putRack(create bool) handler {
	return func(c *call) (any, error) {
		var r proto.Rack
		if err := c.decode(&r); err != nil {
			return nil, err
		}
		if err := pathName(c, create, &r.Name); err != nil {
			return nil, err
		}
		if err := r.Check(); err != nil {
			return nil, err
		}
		r.Meta = proto.Meta{}
		if create {
			c.status = http.StatusCreated
		}
		return c.apply(fsm.RackPut{Rack: r, Create: create})
	}
}

func (a *API) deleteRack(c *call) (any, error) {
	_, err := c.apply(fsm.RackDelete{Name: c.r.PathValue("name")})
	c.status = http.StatusNoContent
	return nil, err
}

func (a *API) listFlavors(c *call) (any, error) {
	return page(c, a.b.Store().Flavors(), func(f *proto.Flavor) string { return f.Name })
}

func (a *API) getFlavor(c *call) (any, error) {
	return found(a.b.Store().Flavor(c.r.PathValue("name")))("flavor", c.r.PathValue("name"))
}

func (a *API) putFlavor(create bool) handler {
	return func(c *call) (any, error) {
		var f proto.Flavor
		if err := c.decode(&f); err != nil {
			return nil, err
		}
		if err := pathName(c, create, &f.Name); err != nil {
			return nil, err
		}
		if err := f.Check(); err != nil {
			return nil, err
		}
		f.Meta = proto.Meta{}
		if create {
			c.status = http.StatusCreated
		}
		return c.apply(fsm.FlavorPut{Flavor: f, Create: create})
	}
}

func (a *API) deleteFlavor(c *call) (any, error) {
	_, err := c.apply(fsm.FlavorDelete{Name: c.r.PathValue("name")})
	c.status = http.StatusNoContent
	return nil, err
}

func (a *API) listImages(c *call) (any, error) {
	return page(c, a.b.Store().Images(), func(im *proto.Image) string { return im.Name })
}

func (a *API) getImage(c *call) (any, error) {
	return found(a.b.Store().Image(c.r.PathValue("name")))("image", c.r.PathValue("name"))
}

func (a *API) putImage(create bool) handler {
	return func(c *call) (any, error) {
		var im proto.Image
		if err := c.decode(&im); err != nil {
			return nil, err
		}
		if err := pathName(c, create, &im.Name); err != nil {
			return nil, err
		}
		if err := im.Check(); err != nil {
			return nil, err
		}
		im.Meta = proto.Meta{}
		if create {
			c.status = http.StatusCreated
		}
		return c.apply(fsm.ImagePut{Image: im, Create: create})
	}
}

func (a *API) deleteImage(c *call) (any, error) {
	_, err := c.apply(fsm.ImageDelete{Name: c.r.PathValue("name")})
	c.status = http.StatusNoContent
	return nil, err
}

// found turns a store lookup into an answer or a 404.
func found[T any](v T, ok bool) func(kind, name string) (any, error) {
	return func(kind, name string) (any, error) {
		if !ok {
			return nil, proto.Errorf(proto.CodeNotFound, "%s %q not found", kind, name)
		}
		return v, nil
	}
}

// --- instances, settings ---

func (a *API) listInstances(c *call) (any, error) {
	node := c.r.URL.Query().Get("node")
	if node != "" {
		if _, ok := a.b.Store().Node(node); !ok {
			return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", node)
		}
	}
	// Store.Instances answers in (name, uuid) order, the page key's.
	return page(c, a.b.Store().Instances(node), func(i *proto.Instance) string { return i.Name + "\x00" + i.UUID })
}

func (a *API) getInstance(c *call) (any, error) {
	return found(a.b.Store().Instance(c.r.PathValue("id")))("instance", c.r.PathValue("id"))
}

func (a *API) getSettings(c *call) (any, error) { return a.settingsView(a.b.Store().Settings()), nil }

func (a *API) patchSettings(c *call) (any, error) {
	var p proto.SettingsPatch
	if err := c.decode(&p); err != nil {
		return nil, err
	}
	v, err := c.apply(fsm.SettingsUpdate{Patch: p})
	if err != nil {
		return nil, err
	}
	switch s := v.(type) {
	case proto.Settings:
		return a.settingsView(s), nil
	case *proto.Settings:
		return a.settingsView(*s), nil
	}
	return v, nil
}

// settingsView adds to the settings whether discovery is active, and why
// not (decide.DiscoveryBoot: the same decision the boot state makes).
func (a *API) settingsView(s proto.Settings) proto.SettingsView {
	images := map[string]*proto.Image{}
	for _, im := range a.b.Store().Images() {
		images[im.Name] = im
	}
	d := decide.DiscoveryBoot(s, images)
	ready, why := decide.TasksReady(s, images)
	return proto.SettingsView{Settings: s, DiscoveryActive: d.Active, DiscoveryInactiveReason: d.Reason,
		TasksReady: ready, TasksNotReadyReason: why}
}

// --- tokens ---

func (a *API) listTokens(c *call) (any, error) {
	return page(c, a.b.Store().Tokens(), func(t *proto.Token) string { return t.ID })
}

// NewSecret returns a fresh token secret: "mf_" and 32 random bytes.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "mf_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func newTokenID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "tok-" + hex.EncodeToString(b)
}

func (a *API) createToken(c *call) (any, error) {
	var req proto.TokenCreate
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if !req.Role.Valid() {
		return nil, proto.Errorf(proto.CodeInvalid, "role %q: want admin, operator, reader or agent", req.Role)
	}
	secret := NewSecret()
	t := proto.Token{ID: newTokenID(), Description: req.Description, Role: req.Role, Rack: req.Rack, CreatedAt: a.cfg.Now()}
	v, err := c.apply(fsm.TokenCreate{Token: t, SecretHash: HashSecret(secret)})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return proto.TokenCreated{Token: *v.(*proto.Token), Secret: secret}, nil
}

func (a *API) revokeToken(c *call) (any, error) {
	_, err := c.apply(fsm.TokenRevoke{ID: c.r.PathValue("id")})
	c.status = http.StatusNoContent
	return nil, err
}
