package httpapi_test

// Tests of instances through the API: POST /v1/instances (validation,
// no fit, forcing a node, no agent, concurrent creates), the lookups,
// PATCH, DELETE, rescue, and the leader's admission of queued instances.
// The rack agent is a coordtest.StandInAgent.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/proto"
)

// instanceCatalog makes the task images, a disk image "disk", a rescue
// image "rsc", the flavors "small" (no needs, no rescue image) and "big"
// (64 cpus).
func (e *apiEnv) instanceCatalog() {
	e.t.Helper()
	e.taskImages()
	for _, im := range []proto.Image{
		{Name: "disk", Kind: proto.ImageDisk, URL: "http://images.test/disk.raw", SHA256: taskSHA},
		{Name: "rsc", Kind: proto.ImageRamdisk, URL: "http://images.test/rescue", SHA256: taskSHA},
	} {
		e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, im, nil)
	}
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "small"}, nil)
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "big", CPUs: 64}, nil)
}

// availableNode makes node name (MAC mac(i)) available in rack bmc-r
// with a fake BMC, through manage (the stand-in agent verifies) and
// provide.
func (e *apiEnv) availableNode(name string, i int) *proto.Node {
	e.t.Helper()
	e.createNode(proto.NodeCreate{Name: name, MACs: []string{mac(i)}})
	e.manageViaAgent(name)
	var n proto.Node
	e.ok(200, "POST", "/v1/nodes/"+name+"/provision", asAdmin, proto.ProvisionRequest{Target: "provide"}, &n)
	if n.ProvisionState != proto.StateAvailable {
		e.t.Fatalf("node %s is %s after provide, want available", name, n.ProvisionState)
	}
	return &n
}

// lonelyNode is availableNode moved to rack lonely, whose agent nobody
// has heard of: instances scheduled onto it stay queued.
func (e *apiEnv) lonelyNode(name string, i int) *proto.Node {
	e.t.Helper()
	e.availableNode(name, i)
	if _, ok := e.srv.Store().Rack("lonely"); !ok {
		e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "lonely", Subnet: "10.78.0.0/24"}, nil)
	}
	var n proto.Node
	e.ok(200, "PATCH", "/v1/nodes/"+name, asAdmin, `{"rack":"lonely"}`, &n)
	if n.ProvisionState != proto.StateAvailable {
		e.t.Fatalf("node %s is %s after a rack change, want available", name, n.ProvisionState)
	}
	return &n
}

// filesHolding lists the files under dir whose bytes contain s.
func filesHolding(t *testing.T, dir, s string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(s)) {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *apiEnv) instance(ref string) *proto.Instance {
	e.t.Helper()
	in, ok := e.srv.Store().Instance(ref)
	if !ok {
		e.t.Fatalf("instance %s not found", ref)
	}
	return in
}

// stepReporter posts ramdisk step reports as the rack's agent does.
type stepReporter struct {
	e    *apiEnv
	auth string
	seq  uint64
}

func (e *apiEnv) stepReporter() *stepReporter {
	return &stepReporter{e: e, auth: bearer(e.createToken(proto.RoleAgent, bmcRack).Secret)}
}

// result reports step name (index 0) of node n's task started and ended.
func (s *stepReporter) result(n *proto.Node, task, name string, passed bool, errText string) {
	s.e.t.Helper()
	for _, sr := range []proto.StepReport{
		{Task: task, Step: name, Index: 0, Event: proto.StepEventStart, Boot: "b1"},
		{Task: task, Step: name, Index: 0, Event: proto.StepEventResult, Passed: passed, Error: errText},
	} {
		s.seq++
		data, _ := json.Marshal(sr)
		rep := proto.AgentReport{ID: fmt.Sprintf("step-%d", s.seq), Kind: proto.ReportCallback, Step: proto.StepTask, Rack: bmcRack,
			Agent: "agent-m", Incarnation: "inc-steps", Seq: s.seq, Time: time.Now().UTC(), MAC: n.MACs[0], Node: n.UUID, Data: data}
		var ack proto.ReportAck
		s.e.ok(200, "POST", "/v1/agent/reports?rack="+bmcRack, s.auth, proto.ReportBatch{Reports: []proto.AgentReport{rep}}, &ack)
		if len(ack.Rejected) != 0 {
			s.e.t.Fatalf("step report %s %s rejected: %v", name, sr.Event, ack.Rejected)
		}
	}
}

// TestAPIInstanceCreateRefusals: validation, no fit (naming the
// filters' counts), forcing as an operator, a forced node in every wrong
// state (never queued), a forced create with no agent heard of.
func TestAPIInstanceCreateRefusals(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	e.lonelyNode("free", 1) // instances on it stay queued
	operator := bearer(e.createToken(proto.RoleOperator, "").Secret)

	e.runErrCases([]errCase{
		{name: "no flavor", method: "POST", path: "/v1/instances", body: `{"name":"web1","image":"disk"}`,
			status: 400, code: proto.CodeInvalid, msg: "flavor and image are required"},
		{name: "no image", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"small"}`,
			status: 400, code: proto.CodeInvalid, msg: "flavor and image are required"},
		{name: "unknown flavor", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"huge","image":"disk"}`,
			status: 400, code: proto.CodeInvalid, msg: `flavor "huge" does not exist`},
		{name: "bad name", method: "POST", path: "/v1/instances", body: `{"name":"web 1!","flavor":"small","image":"disk"}`,
			status: 400, code: proto.CodeInvalid, msg: "name"},
		{name: "unknown image", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"small","image":"nosuch"}`,
			status: 400, code: proto.CodeInvalid, msg: `image: image "nosuch" does not exist`},
		{name: "rescue image of the wrong kind", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"small","image":"disk","rescue_image":"disk"}`,
			status: 400, code: proto.CodeInvalid, msg: `rescue_image: image "disk" is a disk image`},
		{name: "unknown field", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavour":"small"}`,
			status: 400, code: proto.CodeUndecodable, msg: `unknown field "flavour"`},
		{name: "no node fits", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"big","image":"disk"}`,
			status: 409, code: proto.CodeConflict, msg: "no node fits flavor big: 1 considered; cpus removed 1"},
		{name: "forcing as an operator", method: "POST", path: "/v1/instances", auth: operator, body: `{"name":"web1","flavor":"small","image":"disk","node":"free"}`,
			status: 403, code: proto.CodeForbidden, msg: "admin"},
		{name: "forcing an unknown node", method: "POST", path: "/v1/instances", body: `{"name":"web1","flavor":"small","image":"disk","node":"nosuch"}`,
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
	})
	// An operator may create scheduled instances.
	var in proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", operator, proto.InstanceRequest{Name: "op1", Flavor: "small", Image: "disk"}, &in)
	if in.Node == "" || in.Forced {
		t.Fatalf("operator's create = %+v, want scheduled onto node free", in)
	}
	// Now nothing is free: the bound filter says so.
	wantError(t, "no node left", e.call("POST", "/v1/instances", asAdmin, `{"name":"web1","flavor":"small","image":"disk"}`),
		409, proto.CodeConflict, "no node fits flavor small: 1 considered; bound removed 1")

	// A forced node in every wrong state: 409 naming it, nothing recorded.
	paths := map[proto.ProvisionState][]proto.Event{
		proto.StateServicing:  {"service"},
		proto.StateDeploying:  {"provide", "deploy"},
		proto.StateActive:     {"provide", "deploy", "deploy-done"},
		proto.StateCleaning:   {"provide", "deploy", "deploy-done", "undeploy"},
		proto.StateRescuing:   {"provide", "deploy", "deploy-done", "rescue"},
		proto.StateRescue:     {"provide", "deploy", "deploy-done", "rescue", "rescue-done"},
		proto.StateUnrescuing: {"provide", "deploy", "deploy-done", "rescue", "rescue-done", "unrescue"},
		proto.StateFailed:     {"provide", "deploy", "fail"},
	}
	for i, st := range proto.AllStates {
		if st == proto.StateAvailable {
			continue
		}
		name := "w-" + string(st)
		enrolled := st != proto.StateDiscovered
		e.createNode(proto.NodeCreate{Name: name, MACs: []string{mac(100 + i)}, Enrolled: &enrolled})
		if st != proto.StateDiscovered && st != proto.StateEnrolled {
			e.manageViaAgent(name)
		}
		for _, ev := range paths[st] {
			actor := proto.ActorSystem
			if ev == "provide" || ev == "service" {
				actor = proto.ActorOperator
			}
			applyCommand(t, e, fsm.NodeProvision{Ref: name, Event: ev, Actor: actor, Now: time.Now().UTC()})
		}
		if n, _ := e.srv.Store().Node(name); n.ProvisionState != st {
			t.Fatalf("setup: node %s is %s, want %s", name, n.ProvisionState, st)
		}
		e.runErrCases([]errCase{{name: "forced onto a " + string(st) + " node", method: "POST", path: "/v1/instances",
			body:   proto.InstanceRequest{Name: "forced-" + string(st), Flavor: "small", Image: "disk", Node: name},
			status: 409, code: proto.CodeWrongState, msg: "node " + name + " is " + string(st) + ", not available"}})
	}
	// Maintenance and bound, too.
	e.availableNode("maint", 200)
	e.ok(200, "PUT", "/v1/nodes/maint/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true, Reason: "fans"}, nil)
	e.runErrCases([]errCase{
		{name: "forced onto a node in maintenance", method: "POST", path: "/v1/instances", body: `{"name":"f1","flavor":"small","image":"disk","node":"maint"}`,
			status: 409, code: proto.CodeWrongState, msg: "node maint is in maintenance: fans"},
		{name: "forced onto a bound node", method: "POST", path: "/v1/instances", body: `{"name":"f1","flavor":"small","image":"disk","node":"free"}`,
			status: 409, code: proto.CodeWrongState, msg: "node free already holds instance " + in.UUID},
	})
	if all := e.srv.Store().Instances(""); len(all) != 1 {
		t.Fatalf("refused creates recorded instances: %d, want only op1", len(all))
	}

	// A forced create whose rack has no agent heard of: 503, nothing
	// recorded (the node was made available in bmc-r, then moved).
	e.lonelyNode("lone", 201)
	e.runErrCases([]errCase{{name: "forced, no agent", method: "POST", path: "/v1/instances", body: `{"name":"f2","flavor":"small","image":"disk","node":"lone"}`,
		status: 503, code: proto.CodeUnavailable, msg: "no rack agent of rack lonely"}})
	if n, _ := e.srv.Store().Node("lone"); n.InstanceUUID != "" || n.ProvisionState != proto.StateAvailable {
		t.Fatalf("node lone after a refused create: %s instance %q", n.ProvisionState, n.InstanceUUID)
	}
}

// createConcurrently posts n creates at once and returns the statuses
// and the created instances.
func (e *apiEnv) createConcurrently(names []string) ([]int, []proto.Instance) {
	e.t.Helper()
	statuses := make([]int, len(names))
	insts := make([]proto.Instance, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(proto.InstanceRequest{Name: name, Flavor: "small", Image: "disk"})
			req, err := http.NewRequest("POST", e.base+"/v1/instances", bytes.NewReader(body))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("Authorization", bearer(e.admin))
			req.Header.Set("Content-Type", "application/json")
			<-start
			resp, err := e.client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			statuses[i] = resp.StatusCode
			if resp.StatusCode == http.StatusCreated {
				errs[i] = json.NewDecoder(resp.Body).Decode(&insts[i])
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			e.t.Fatalf("create %s: %v", names[i], err)
		}
	}
	return statuses, insts
}

// TestAPIInstanceConcurrentCreates: creates racing for one free node:
// one wins, the others are 409s; racing for two: both win, on two
// different nodes (a create that lost its node is scheduled again). The
// nodes are in a rack without a known agent, so the instances stay
// queued.
func TestAPIInstanceConcurrentCreates(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	n1 := e.lonelyNode("n1", 1)
	for round := 0; round < 3; round++ {
		names := []string{fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round), fmt.Sprintf("c%d", round)}
		statuses, insts := e.createConcurrently(names)
		won := 0
		for i, st := range statuses {
			switch st {
			case http.StatusCreated:
				won++
				if n, _ := e.srv.Store().Node("n1"); insts[i].Node != n1.UUID || n.InstanceUUID != insts[i].UUID {
					t.Fatalf("round %d: winner %s on %s, node n1 holds %q", round, names[i], insts[i].Node, n.InstanceUUID)
				}
			case http.StatusConflict:
			default:
				t.Fatalf("round %d: create %s answered %d, want 201 or 409", round, names[i], st)
			}
		}
		all := e.srv.Store().Instances("")
		if won != 1 || len(all) != 1 || all[0].State != proto.InstanceQueued {
			t.Fatalf("round %d: %d creates won (%v), instances %+v, want exactly one, queued", round, won, statuses, all)
		}
		e.ok(http.StatusAccepted, "DELETE", "/v1/instances/"+all[0].Name, asAdmin, nil, nil)
	}

	e.lonelyNode("n2", 2)
	statuses, insts := e.createConcurrently([]string{"x", "y"})
	if statuses[0] != http.StatusCreated || statuses[1] != http.StatusCreated {
		t.Fatalf("two creates for two free nodes: %v, want both 201 (the loser of a node is scheduled again)", statuses)
	}
	if insts[0].Node == insts[1].Node || insts[0].Node == "" {
		t.Fatalf("two creates got nodes %q and %q, want two different nodes", insts[0].Node, insts[1].Node)
	}
}

// TestAPIInstanceLife: a forced create deploys (the stand-in agent
// answers, the write step passes, the disk boots), the lookups find it,
// PATCH sets and clears its rescue image, a rescue without one is a 409
// saying so, with one it starts; a queued instance's delete is at once.
func TestAPIInstanceLife(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	n := e.availableNode("n1", 1)
	agent := e.standIn("agent-m")
	steps := e.stepReporter()

	var in proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "web1", Flavor: "small", Image: "disk", Node: "n1", RequestID: "req-1"}, &in)
	if in.State != proto.InstanceBuilding || !in.Forced || in.Node != n.UUID || in.Task == "" {
		t.Fatalf("forced create = %+v, want building on n1 with a deploy task", in)
	}
	// The same request again (its answer lost to a failover): the same
	// instance, although its node is now taken.
	var again proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "web1", Flavor: "small", Image: "disk", Node: "n1", RequestID: "req-1"}, &again)
	if again.UUID != in.UUID || again.Task != in.Task {
		t.Fatalf("a retried create = %+v, want the first (%s)", again, in.UUID)
	}
	if got := agent.Answer(""); got != 2 {
		t.Fatalf("the agent answered %d intents, want 2 (boot device pxe, reboot)", got)
	}
	steps.result(n, in.Task, proto.StepNameWrite, true, "")
	if got := e.instance("web1"); got.State != proto.InstanceBuilding {
		t.Fatalf("instance %s after the write, want building until the disk boots", got.State)
	}
	if got := agent.Answer(""); got != 2 {
		t.Fatalf("the agent answered %d intents, want 2 (boot device disk, reboot)", got)
	}
	var got proto.Instance
	e.ok(200, "GET", "/v1/instances/web1", asAdmin, nil, &got)
	if got.State != proto.InstanceRunning {
		t.Fatalf("instance %s after the reboot into the disk, want running", got.State)
	}
	var node proto.Node
	e.ok(200, "GET", "/v1/nodes/n1", asAdmin, nil, &node)
	if node.ProvisionState != proto.StateActive || node.InstanceUUID != in.UUID || node.Boot == nil || node.Boot.Kind != proto.BootLocalDisk {
		t.Fatalf("node %s instance %q boot %+v, want active with web1, local disk", node.ProvisionState, node.InstanceUUID, node.Boot)
	}

	// Lookups by name and uuid, both ways.
	for _, ref := range []string{"web1", in.UUID} {
		var nodes []proto.Node
		e.ok(200, "GET", "/v1/nodes?instance="+ref, asAdmin, nil, &nodes)
		if len(nodes) != 1 || nodes[0].UUID != n.UUID {
			t.Errorf("GET /v1/nodes?instance=%s: %d nodes, want n1", ref, len(nodes))
		}
	}
	for _, ref := range []string{"n1", n.UUID} {
		var insts []proto.Instance
		e.ok(200, "GET", "/v1/instances?node="+ref, asAdmin, nil, &insts)
		if len(insts) != 1 || insts[0].UUID != in.UUID {
			t.Errorf("GET /v1/instances?node=%s: %+v, want web1", ref, insts)
		}
	}

	// Rescue without any rescue image: 409 saying so.
	e.runErrCases([]errCase{
		{name: "rescue without a rescue image", method: "POST", path: "/v1/instances/web1/rescue", body: `{}`,
			status: 409, code: proto.CodeWrongState, msg: "instance web1 has no rescue image"},
		{name: "rescue image of the wrong kind", method: "PATCH", path: "/v1/instances/web1", body: `{"rescue_image":"disk"}`,
			status: 400, code: proto.CodeInvalid, msg: `rescue_image: image "disk" is a disk image`},
		{name: "ssh key of two lines", method: "POST", path: "/v1/instances/web1/rescue", body: `{"ssh_key":"ssh-ed25519 A\nssh-ed25519 B"}`,
			status: 400, code: proto.CodeInvalid, msg: "ssh_key: one authorized_keys line"},
		{name: "unrescue of a running instance's unknown twin", method: "POST", path: "/v1/instances/nosuch/unrescue",
			status: 404, code: proto.CodeNotFound, msg: `instance "nosuch" not found`},
	})
	// PATCH sets and clears the rescue image.
	e.ok(200, "PATCH", "/v1/instances/web1", asAdmin, `{"rescue_image":"rsc"}`, &got)
	if got.RescueImage != "rsc" {
		t.Fatalf("PATCH rescue_image = %q, want rsc", got.RescueImage)
	}
	e.ok(200, "PATCH", "/v1/instances/"+in.UUID, asAdmin, `{"rescue_image":""}`, &got)
	if got.RescueImage != "" {
		t.Fatalf("PATCH rescue_image \"\" = %q, want cleared", got.RescueImage)
	}
	e.ok(200, "PATCH", "/v1/instances/web1", asAdmin, `{"rescue_image":"rsc"}`, &got)
	const password = "api-Pa55word"
	e.ok(http.StatusAccepted, "POST", "/v1/instances/web1/rescue", asAdmin, proto.RescueRequest{Password: password}, &got)
	if got.State != proto.InstanceRescuing || got.Task == "" {
		t.Fatalf("rescue = %+v, want rescuing with a task", got)
	}
	var tk proto.Task
	r := e.ok(200, "GET", "/v1/nodes/n1/tasks/"+got.Task, asAdmin, nil, &tk)
	if tk.Kind != proto.TaskRescue || tk.Params["image"] != "rsc" || tk.Params["password_sha256"] == "" || strings.Contains(string(r.Body), password) {
		t.Fatalf("rescue task %s params %v, want a rescue into rsc with the password's hash only", tk.Kind, tk.Params)
	}
	// Nowhere on disk either: not in the Raft log, nor in a snapshot.
	if files := filesHolding(t, e.srv.Cfg.DataDir, password); len(files) > 0 {
		t.Errorf("the rescue password is on disk in clear, in %v", files)
	}
	agent.Answer("")
	steps.result(n, got.Task, proto.StepNameRescue, true, "")
	if st := e.instance("web1").State; st != proto.InstanceRescue {
		t.Fatalf("instance %s after the rescue ramdisk reported in, want rescue", st)
	}
	e.ok(http.StatusAccepted, "POST", "/v1/instances/web1/unrescue", asAdmin, nil, &got)
	if got.State != proto.InstanceUnrescuing {
		t.Fatalf("unrescue = %s, want unrescuing", got.State)
	}
	agent.Answer("")
	if st := e.instance("web1").State; st != proto.InstanceRunning {
		t.Fatalf("instance %s after unrescue and the reboot, want running", st)
	}

	// Delete web1: cleaning, then available, the instance gone.
	e.ok(http.StatusAccepted, "DELETE", "/v1/instances/web1", asAdmin, nil, &got)
	if got.State != proto.InstanceDeleting || got.Task == "" {
		t.Fatalf("delete = %+v, want deleting with a clean task", got)
	}
	agent.Answer("")
	steps.result(n, got.Task, proto.StepNameErase, true, "")
	if _, ok := e.srv.Store().Instance("web1"); ok {
		t.Fatal("web1 is still there after its node was cleaned")
	}
	e.ok(200, "GET", "/v1/nodes/n1", asAdmin, nil, &node)
	if node.ProvisionState != proto.StateAvailable || node.InstanceUUID != "" {
		t.Fatalf("node after the clean: %s instance %q, want available, free", node.ProvisionState, node.InstanceUUID)
	}
}

// TestAPIInstanceQueuedDelete: an instance queued (admission full) is
// deleted at once with 202, and its node is free.
func TestAPIInstanceQueuedDelete(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	e.availableNode("n1", 1)
	e.availableNode("n2", 2)
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"deploy_max":1}`, nil)
	var a, b proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "a", Flavor: "small", Image: "disk", Node: "n1"}, &a)
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "b", Flavor: "small", Image: "disk"}, &b)
	if b.State != proto.InstanceQueued || b.Node == "" {
		t.Fatalf("create b = %+v, want queued and bound", b)
	}
	// The leader does not start it: a's deploy fills deploy_max.
	var got proto.Instance
	e.ok(http.StatusAccepted, "DELETE", "/v1/instances/b", asAdmin, nil, &got)
	if got.Name != "b" {
		t.Fatalf("DELETE answered %+v, want instance b", got)
	}
	e.runErrCases([]errCase{{name: "gone", method: "GET", path: "/v1/instances/b", status: 404, code: proto.CodeNotFound, msg: `instance "b" not found`}})
	if n, _ := e.srv.Store().Node(b.Node); n.InstanceUUID != "" || n.ProvisionState != proto.StateAvailable {
		t.Fatalf("node of b after the delete: %s instance %q, want available, free", n.ProvisionState, n.InstanceUUID)
	}
}

// TestAPIInstanceAdmission: the leader starts queued instances in their
// creation order, at most deploy_max at once; each ended deploy lets the
// next one go.
func TestAPIInstanceAdmission(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	nodes := map[string]*proto.Node{}
	for i, name := range []string{"n1", "n2", "n3"} {
		nodes[name] = e.availableNode(name, i+1)
	}
	steps := e.stepReporter()
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"deploy_max":1}`, nil)
	// Names in the reverse of creation order: the order is creation's.
	order := []string{"zz", "mm", "aa"}
	for _, name := range order {
		e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: name, Flavor: "small", Image: "disk"}, nil)
	}
	states := func() map[string]proto.InstanceState {
		out := map[string]proto.InstanceState{}
		for _, in := range e.srv.Store().Instances("") {
			out[in.Name] = in.State
		}
		return out
	}
	for i, name := range order {
		coordtest.WaitFor(t, 10*time.Second, name+" building", func() bool { return states()[name] == proto.InstanceBuilding })
		st := states()
		building := 0
		for _, s := range st {
			if s == proto.InstanceBuilding {
				building++
			}
		}
		if building != 1 {
			t.Fatalf("%d instances building (%v), want at most deploy_max=1", building, st)
		}
		for _, later := range order[i+1:] {
			if st[later] != proto.InstanceQueued {
				t.Fatalf("instance %s is %s while %s deploys, want queued (creation order)", later, st[later], name)
			}
		}
		// Its deploy ends (the write fails): the next may start.
		in := e.instance(name)
		var n *proto.Node
		for _, x := range nodes {
			if x.UUID == in.Node {
				n = x
			}
		}
		steps.result(n, in.Task, proto.StepNameWrite, false, "test: write refused")
		if got := e.instance(name); got.State != proto.InstanceError {
			t.Fatalf("instance %s after a failed write: %s, want error", name, got.State)
		}
	}
}

// TestAPIInstanceAdmissionMaintenance: a queued instance whose node went
// into maintenance after the bind waits (it does not take a deploy slot
// and does not block those behind it), and starts once the node is out.
func TestAPIInstanceAdmissionMaintenance(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	nodes := map[string]*proto.Node{}
	for i, name := range []string{"n1", "n2", "n3"} {
		nodes[name] = e.availableNode(name, i+1)
	}
	e.standIn("agent-m")
	steps := e.stepReporter()
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"deploy_max":1}`, nil)
	var x, a, b proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "x", Flavor: "small", Image: "disk", Node: "n3"}, &x)
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "a", Flavor: "small", Image: "disk"}, &a)
	if a.State != proto.InstanceQueued || a.Node != nodes["n1"].UUID {
		t.Fatalf("create a = %s on %s, want queued on n1", a.State, a.Node)
	}
	e.ok(200, "PUT", "/v1/nodes/n1/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true, Reason: "PSU swap"}, nil)
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "b", Flavor: "small", Image: "disk"}, &b)
	if b.State != proto.InstanceQueued || b.Node != nodes["n2"].UUID {
		t.Fatalf("create b = %s on %s, want queued on n2", b.State, b.Node)
	}
	// x's deploy ends: b starts, a waits out the maintenance.
	steps.result(nodes["n3"], x.Task, proto.StepNameWrite, false, "test: write refused")
	coordtest.WaitFor(t, 10*time.Second, "b building", func() bool { return e.instance("b").State == proto.InstanceBuilding })
	if st := e.instance("a").State; st != proto.InstanceQueued {
		t.Fatalf("a (node in maintenance) is %s, want queued", st)
	}
	// b's deploy ends and n1 leaves maintenance: a starts.
	steps.result(nodes["n2"], e.instance("b").Task, proto.StepNameWrite, false, "test: write refused")
	e.ok(200, "PUT", "/v1/nodes/n1/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: false}, nil)
	coordtest.WaitFor(t, 10*time.Second, "a building", func() bool { return e.instance("a").State == proto.InstanceBuilding })
}

// TestAPIInstanceAdmissionPerRack: deploy_max_per_rack bounds each
// rack's deploys; a full rack does not hold back another rack's.
func TestAPIInstanceAdmissionPerRack(t *testing.T) {
	e := startAPI(t)
	e.instanceCatalog()
	e.availableNode("a1", 1)
	e.availableNode("a2", 2)
	e.availableNode("b1", 3)
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "r2", Subnet: "10.79.0.0/24"}, nil)
	var b1 proto.Node
	e.ok(200, "PATCH", "/v1/nodes/b1", asAdmin, `{"rack":"r2"}`, &b1)
	coordtest.NewStandInAgent(t, e.base[len("http://"):], e.createToken(proto.RoleAgent, "r2").Secret, "r2", "agent-r2").Poll()
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"deploy_max_per_rack":1}`, nil)
	// Flavors pin the racks (bmc-r twice, then r2).
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "in-a", Rack: bmcRack}, nil)
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "in-b", Rack: "r2"}, nil)
	for _, c := range []struct{ name, flavor string }{{"first", "in-a"}, {"second", "in-a"}, {"third", "in-b"}} {
		e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: c.name, Flavor: c.flavor, Image: "disk"}, nil)
	}
	coordtest.WaitFor(t, 10*time.Second, "first and third building", func() bool {
		return e.instance("first").State == proto.InstanceBuilding && e.instance("third").State == proto.InstanceBuilding
	})
	if st := e.instance("second").State; st != proto.InstanceQueued {
		t.Fatalf("second (rack %s already deploying one, at most 1) is %s, want queued", bmcRack, st)
	}
	if in := e.instance("third"); in.Node != b1.UUID {
		t.Fatalf("third is on %s, want b1 (rack r2)", in.Node)
	}
}

// TestAPIInstanceCreateNoTaskImages: without the task images no deploy
// can boot: a scheduled create is a 409 saying so (as a forced one is),
// not an instance queued for ever with no reason; a node property that
// names them is enough for that node.
func TestAPIInstanceCreateNoTaskImages(t *testing.T) {
	e := startAPI(t)
	e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, proto.Image{Name: "disk", Kind: proto.ImageDisk, URL: "http://images.test/disk.raw", SHA256: taskSHA}, nil)
	e.ok(http.StatusCreated, "POST", "/v1/flavors", asAdmin, proto.Flavor{Name: "small"}, nil)
	e.availableNode("n1", 1)
	e.runErrCases([]errCase{
		{name: "scheduled", method: "POST", path: "/v1/instances", body: `{"name":"q","flavor":"small","image":"disk"}`,
			status: 409, code: proto.CodeWrongState, msg: "instance q could not deploy on node n1: cannot boot a task: tasks.kernel is not set; tasks.ramdisk is not set"},
		{name: "forced", method: "POST", path: "/v1/instances", body: `{"name":"q","flavor":"small","image":"disk","node":"n1"}`,
			status: 409, code: proto.CodeWrongState, msg: "tasks.kernel is not set"},
	})
	if all := e.srv.Store().Instances(""); len(all) != 0 {
		t.Fatalf("refused creates recorded %d instances", len(all))
	}
	for _, im := range []proto.Image{
		{Name: "k", Kind: proto.ImageKernel, URL: "http://images.test/k", SHA256: taskSHA},
		{Name: "r", Kind: proto.ImageRamdisk, URL: "http://images.test/r", SHA256: taskSHA},
	} {
		e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, im, nil)
	}
	e.ok(200, "PATCH", "/v1/nodes/n1", asAdmin, `{"properties":{"tasks.kernel":"k","tasks.ramdisk":"r"}}`, nil)
	var in proto.Instance
	e.ok(http.StatusCreated, "POST", "/v1/instances", asAdmin, proto.InstanceRequest{Name: "q", Flavor: "small", Image: "disk"}, &in)
	coordtest.WaitFor(t, 10*time.Second, "q building", func() bool { return e.instance("q").State == proto.InstanceBuilding })
}
