package httpapi_test

// Tests of servicing tasks through the API: POST, GET and DELETE
// /v1/nodes/{id}/tasks[/{task}], the task token in the rack boot state,
// and step reports through /v1/agent/reports. The rack agent is a
// coordtest.StandInAgent (the real agent's part is tested in rackagent).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/proto"
)

const taskSHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// taskImages makes the task kernel and ramdisk images and points the
// tasks settings at them.
func (e *apiEnv) taskImages() {
	e.t.Helper()
	for _, im := range []proto.Image{
		{Name: "task-kernel", Kind: proto.ImageKernel, URL: "http://images.test/vmlinuz", SHA256: taskSHA},
		{Name: "task-ramdisk", Kind: proto.ImageRamdisk, URL: "http://images.test/initrd", SHA256: taskSHA},
	} {
		e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, im, nil)
	}
	var sv proto.SettingsView
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"tasks_kernel":"task-kernel","tasks_ramdisk":"task-ramdisk"}`, &sv)
	if !sv.TasksReady || sv.TasksNotReadyReason != "" || sv.TasksKernel != "task-kernel" {
		e.t.Fatalf("settings after setting the task images: %+v, want tasks ready", sv)
	}
}

// bootNode reads the rack's boot state with auth and returns node uuid's
// entry.
func (e *apiEnv) bootNode(auth, uuid string) proto.BootNode {
	e.t.Helper()
	var st proto.RackBootState
	e.ok(200, "GET", "/v1/agent/bootstate?rack="+bmcRack, auth, nil, &st)
	for _, n := range st.Nodes {
		if n.UUID == uuid {
			return n
		}
	}
	e.t.Fatalf("node %s is not in rack %s's boot state", uuid, bmcRack)
	return proto.BootNode{}
}

func TestAPITaskRequests(t *testing.T) {
	e := startAPI(t)
	var sv proto.SettingsView
	e.ok(200, "GET", "/v1/settings", asAdmin, nil, &sv)
	if sv.TasksReady || sv.TasksNotReadyReason != "tasks.kernel is not set; tasks.ramdisk is not set" {
		t.Errorf("settings without task images: ready %v reason %q, want not ready naming both settings", sv.TasksReady, sv.TasksNotReadyReason)
	}
	e.taskImages()
	e.createNode(proto.NodeCreate{Name: "t1", MACs: []string{mac(1)}})
	e.createNode(proto.NodeCreate{Name: "lone", MACs: []string{mac(2)}})

	e.runErrCases([]errCase{
		{name: "unknown kind", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"defrag"}`,
			status: 400, code: proto.CodeInvalid, msg: `kind "defrag": want one of inspect, burnin, firmware, bios, raid`},
		{name: "no kind", method: "POST", path: "/v1/nodes/t1/tasks", body: `{}`,
			status: 400, code: proto.CodeInvalid, msg: "want one of inspect, burnin"},
		{name: "bad param", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"burnin","params":{"duration":"forever"}}`,
			status: 400, code: proto.CodeInvalid, msg: `param duration="forever"`},
		{name: "param of another kind", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect","params":{"level":"1"}}`,
			status: 400, code: proto.CodeInvalid, msg: `param "level" is not a inspect param`},
		{name: "raid without disks", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"raid","params":{"level":"1"}}`,
			status: 400, code: proto.CodeInvalid, msg: "param disks: RAID 1 needs at least 2 disks"},
		{name: "unknown field", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect","paramz":{}}`,
			status: 400, code: proto.CodeUndecodable, msg: `unknown field "paramz"`},
		{name: "bad timeout", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect","timeout":"soon"}`,
			status: 400, code: proto.CodeInvalid, msg: `"soon"`},
		{name: "timeout too long", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect","timeout":"200h"}`,
			status: 400, code: proto.CodeInvalid, msg: "timeout 200h0m0s: want up to 168h"},
		{name: "unknown node", method: "POST", path: "/v1/nodes/nosuch/tasks", body: `{"kind":"inspect"}`,
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "wrong state", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect"}`,
			status: 409, code: proto.CodeWrongState, msg: "cannot service node t1: it is enrolled; service is allowed from manageable"},
		{name: "reader may not", method: "POST", path: "/v1/nodes/t1/tasks", auth: bearer(e.createToken(proto.RoleReader, "").Secret), body: `{"kind":"inspect"}`,
			status: 403, code: proto.CodeForbidden, msg: "operator"},
		{name: "list of an unknown node", method: "GET", path: "/v1/nodes/nosuch/tasks",
			status: 404, code: proto.CodeNotFound, msg: `node "nosuch" not found`},
		{name: "unknown task", method: "GET", path: "/v1/nodes/t1/tasks/t-nope",
			status: 404, code: proto.CodeNotFound, msg: `node t1 has no task "t-nope"`},
		{name: "abort of an unknown task", method: "DELETE", path: "/v1/nodes/t1/tasks/t-nope",
			status: 404, code: proto.CodeNotFound, msg: `node t1 has no task "t-nope"`},
	})

	// A manageable node whose rack has no agent heard of: 503 naming the
	// rack (the node was made manageable in bmc-r, then moved).
	e.manageViaAgent("lone")
	e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: "lonely", Subnet: "10.78.0.0/24"}, nil)
	var lone proto.Node
	e.ok(200, "PATCH", "/v1/nodes/lone", asAdmin, `{"rack":"lonely"}`, &lone)
	if lone.ProvisionState != proto.StateManageable {
		t.Fatalf("node lone is %s after a rack change, want manageable", lone.ProvisionState)
	}
	e.runErrCases([]errCase{{name: "no agent", method: "POST", path: "/v1/nodes/lone/tasks", body: `{"kind":"inspect"}`,
		status: 503, code: proto.CodeUnavailable, msg: "no rack agent of rack lonely"}})
	// A node in the wrong state is a 409, not a 503, with a request id
	// too (the CLI always sends one).
	e.createNode(proto.NodeCreate{Name: "lone2", MACs: []string{mac(3)}})
	e.ok(200, "PATCH", "/v1/nodes/lone2", asAdmin, `{"rack":"lonely","bmc":{"driver":"fake","address":"b2"}}`, nil)
	e.runErrCases([]errCase{{name: "wrong state with a request id, no agent", method: "POST", path: "/v1/nodes/lone2/tasks",
		body:   `{"kind":"inspect","request_id":"9b1e6c1e-req"}`,
		status: 409, code: proto.CodeWrongState, msg: "cannot service node lone2: it is enrolled"}})
	if ts := e.srv.Store().NodeTasks(lone.UUID); len(ts) != 0 {
		t.Fatalf("refused requests recorded tasks: %v", ts)
	}

	// Maintenance is a 409 naming it.
	n := e.manageViaAgent("t1")
	e.ok(200, "PUT", "/v1/nodes/t1/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: true, Reason: "fans"}, nil)
	e.runErrCases([]errCase{{name: "maintenance", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect"}`,
		status: 409, code: proto.CodeWrongState, msg: "in maintenance (fans)"}})
	e.ok(200, "PUT", "/v1/nodes/t1/maintenance", asAdmin, proto.MaintenanceRequest{Maintenance: false}, nil)
	// bios on a node without an inventory: no vendor tool can match.
	e.runErrCases([]errCase{{name: "bios without a vendor tool", method: "POST", path: "/v1/nodes/t1/tasks",
		body:   `{"kind":"bios","params":{"settings":"{\"BootMode\":\"UEFI\"}"}}`,
		status: 409, code: proto.CodeWrongState, msg: "run an inspect task first"}})
	if got, _ := e.srv.Store().Node(n.UUID); got.ProvisionState != proto.StateManageable || got.Task != "" {
		t.Fatalf("refused requests moved node t1: %s task %q", got.ProvisionState, got.Task)
	}
}

// TestAPITaskLifecycle: a task started through the API, seen in the
// lists and the rack's boot state (token for the rack's agent only), run
// by step reports through /v1/agent/reports, and a second one aborted.
func TestAPITaskLifecycle(t *testing.T) {
	e := startAPI(t)
	e.taskImages()
	e.createNode(proto.NodeCreate{Name: "t1", MACs: []string{mac(1)}})
	n := e.manageViaAgent("t1")
	agent := e.standIn("agent-m")

	var tk proto.Task
	r := e.ok(http.StatusCreated, "POST", "/v1/nodes/t1/tasks", asAdmin,
		proto.TaskRequest{Kind: proto.TaskBurnin, Params: map[string]string{"duration": "5s", "network": "false"}, RequestID: "req-1"}, &tk)
	if !strings.HasPrefix(tk.ID, "t-") || tk.State != proto.TaskRunning || tk.Node != n.UUID || len(tk.Steps) != 3 ||
		tk.Steps[0].Name != "cpu" || tk.Steps[0].State != proto.StepPending || tk.By == "" || time.Duration(tk.Timeout) != 30*time.Minute+5*time.Second {
		t.Fatalf("POST tasks = %s, want a running 3-step burn-in on t1 by the admin, timeout 30m5s", r.Body)
	}
	if strings.Contains(string(r.Body), "token") {
		t.Errorf("the task as answered mentions a token: %s", r.Body)
	}
	// A retry with the same request id (the node is servicing now) is the
	// same task, not a 409.
	var again proto.Task
	e.ok(http.StatusCreated, "POST", "/v1/nodes/t1/tasks", asAdmin,
		proto.TaskRequest{Kind: proto.TaskBurnin, Params: map[string]string{"duration": "5s", "network": "false"}, RequestID: "req-1"}, &again)
	if again.ID != tk.ID {
		t.Fatalf("a retried request made task %s, want %s", again.ID, tk.ID)
	}
	// Another request is a 409: the node is servicing.
	e.runErrCases([]errCase{{name: "a second task", method: "POST", path: "/v1/nodes/t1/tasks", body: `{"kind":"inspect"}`,
		status: 409, code: proto.CodeWrongState, msg: "it is servicing"}})

	var node proto.Node
	e.ok(200, "GET", "/v1/nodes/t1", asAdmin, nil, &node)
	if node.ProvisionState != proto.StateServicing || node.Task != tk.ID || node.Boot == nil || node.Boot.Kind != proto.BootRamdisk ||
		node.SavedBoot == nil || node.SavedBoot.Task != tk.ID {
		t.Fatalf("node after POST: %s task %q boot %+v saved %+v", node.ProvisionState, node.Task, node.Boot, node.SavedBoot)
	}
	// GET list and one.
	var list []proto.Task
	e.ok(200, "GET", "/v1/nodes/t1/tasks", asAdmin, nil, &list)
	if len(list) != 1 || list[0].ID != tk.ID {
		t.Fatalf("GET tasks = %+v, want [%s]", list, tk.ID)
	}
	var one proto.Task
	reader := bearer(e.createToken(proto.RoleReader, "").Secret)
	e.ok(200, "GET", "/v1/nodes/"+n.UUID+"/tasks/"+tk.ID, reader, nil, &one)
	if one.ID != tk.ID || one.Kind != proto.TaskBurnin || len(one.Steps) != 3 {
		t.Fatalf("GET task = %+v", one)
	}

	// The rack boot state: an admin sees the token redacted, the rack's
	// agent sees it, and both see the plan.
	adm := e.bootNode(asAdmin, n.UUID)
	if adm.Boot.TaskToken != "(redacted)" || adm.Task == nil || adm.Task.ID != tk.ID {
		t.Fatalf("admin's boot state: token %q plan %+v, want the token redacted and the plan", adm.Boot.TaskToken, adm.Task)
	}
	agentAuth := bearer(e.createToken(proto.RoleAgent, bmcRack).Secret)
	ag := e.bootNode(agentAuth, n.UUID)
	if len(ag.Boot.TaskToken) != 64 || ag.Task == nil || ag.Task.ID != tk.ID || len(ag.Task.Steps) != 3 || ag.Boot.Task != "burnin" ||
		ag.Boot.Kernel == nil || ag.Boot.Kernel.Name != "task-kernel" {
		t.Fatalf("agent's boot state: boot %+v plan %+v, want the task ramdisk with a token and the plan", ag.Boot, ag.Task)
	}
	if stored, _ := e.srv.Store().Task(tk.ID); stored.TokenHash != decide.TokenHash(ag.Boot.TaskToken) {
		t.Fatalf("the agent's token does not hash to the task's token hash")
	}
	// The agent is asked for PXE and a power cycle, and answers.
	if got := agent.Answer(""); got != 2 {
		t.Fatalf("the agent answered %d intents, want 2 (boot device, power)", got)
	}

	// Step reports through the agent's reports route.
	seq := uint64(0)
	post := func(sr proto.StepReport) proto.ReportAck {
		t.Helper()
		seq++
		data, _ := json.Marshal(sr)
		rep := proto.AgentReport{ID: fmt.Sprintf("step-%d", seq), Kind: proto.ReportCallback, Step: proto.StepTask, Rack: bmcRack,
			Agent: "agent-m", Incarnation: "inc-1", Seq: seq, Time: time.Now().UTC(), MAC: mac(1), Node: n.UUID, Data: data}
		var ack proto.ReportAck
		e.ok(200, "POST", "/v1/agent/reports?rack="+bmcRack, agentAuth, proto.ReportBatch{Reports: []proto.AgentReport{rep}}, &ack)
		return ack
	}
	for i, name := range []string{"cpu", "memory", "disk"} {
		for _, ev := range []string{proto.StepEventStart, proto.StepEventResult} {
			ack := post(proto.StepReport{Task: tk.ID, Step: name, Index: i, Event: ev, Passed: true, Result: json.RawMessage(`{"status":"pass"}`)})
			if len(ack.Rejected) != 0 {
				t.Fatalf("step %s %s rejected: %v", name, ev, ack.Rejected)
			}
		}
		if i == 0 {
			// A bad step report is refused by the API, naming the field.
			ack := post(proto.StepReport{Task: tk.ID, Step: "memory", Index: 1, Event: "finish"})
			if why := ack.Rejected[fmt.Sprintf("step-%d", seq)]; !strings.Contains(why, `data.event "finish"`) {
				t.Fatalf("a bad event: rejected %v, want data.event named", ack.Rejected)
			}
		}
	}
	e.ok(200, "GET", "/v1/nodes/t1/tasks/"+tk.ID, asAdmin, nil, &one)
	e.ok(200, "GET", "/v1/nodes/t1", asAdmin, nil, &node)
	if one.State != proto.TaskSucceeded || node.ProvisionState != proto.StateManageable || node.Boot != nil || node.Task != "" ||
		node.TaskResults[proto.TaskBurnin] == nil || !strings.Contains(string(node.TaskResults[proto.TaskBurnin].Results["disk"]), `"pass"`) {
		t.Fatalf("after the last step: task %s, node %s boot %+v task %q results %+v", one.State, node.ProvisionState, node.Boot, node.Task, node.TaskResults)
	}
	if bn := e.bootNode(agentAuth, n.UUID); bn.Boot.TaskToken != "" || bn.Task != nil {
		t.Fatalf("boot state after the task: token %q plan %+v, want neither", bn.Boot.TaskToken, bn.Task)
	}
	if got := agent.Answer(""); got != 1 {
		t.Fatalf("the agent answered %d intents after the task, want 1 (power off)", got)
	}
	e.runErrCases([]errCase{{name: "abort of an ended task", method: "DELETE", path: "/v1/nodes/t1/tasks/" + tk.ID,
		status: 409, code: proto.CodeWrongState, msg: "already ended (succeeded)"}})

	// A second task, aborted.
	var tk2, aborted proto.Task
	e.ok(http.StatusCreated, "POST", "/v1/nodes/t1/tasks", asAdmin, proto.TaskRequest{Kind: proto.TaskInspect}, &tk2)
	e.ok(200, "DELETE", "/v1/nodes/t1/tasks/"+tk2.ID, asAdmin, nil, &aborted)
	if aborted.ID != tk2.ID || aborted.State != proto.TaskAborted || !strings.Contains(aborted.Error, "aborted by") {
		t.Fatalf("DELETE task = %+v, want it aborted saying by whom", aborted)
	}
	e.ok(200, "GET", "/v1/nodes/t1", asAdmin, nil, &node)
	if node.ProvisionState != proto.StateManageable || node.Boot != nil || !strings.Contains(node.LastError, "aborted") {
		t.Fatalf("node after the abort: %s boot %+v last_error %q", node.ProvisionState, node.Boot, node.LastError)
	}
	e.ok(200, "GET", "/v1/nodes/t1/tasks", asAdmin, nil, &list)
	if len(list) != 2 || list[0].ID != tk2.ID || list[1].ID != tk.ID {
		t.Fatalf("GET tasks = %d tasks, want the aborted one then the first", len(list))
	}
}
