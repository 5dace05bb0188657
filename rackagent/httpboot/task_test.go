package httpboot

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

const testTaskID = "t-0001"

// taskNode is ramdiskNode running a firmware task whose image is fw.
func taskNode(fw proto.Artifact) proto.BootNode {
	n := ramdiskNode()
	n.Boot.Task = string(proto.TaskFirmware)
	n.Task = &proto.TaskPlan{ID: testTaskID, Kind: proto.TaskFirmware,
		Params: map[string]string{"component": "bios", "image": "bios-2.1"},
		Steps: []proto.PlanStep{{Name: proto.StepNameDownload, State: proto.StepPassed},
			{Name: proto.StepNameApply, State: proto.StepPending}, {Name: proto.StepNameVerify, State: proto.StepPending}},
		Vendor:    &proto.LabTool,
		Artifacts: map[string]proto.Artifact{"bios-2.1": fw}}
	return n
}

// taskHarness is a harness whose logs also go to a buffer.
func taskHarness(t *testing.T, opts ...func(*Config)) (*harness, *testkit.SyncBuffer) {
	logs := &testkit.SyncBuffer{}
	opts = append([]func(*Config){func(c *Config) {
		c.CallbackBurst = 1000 // not about the rate limit
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}}, opts...)
	return newHarness(t, 1<<20, opts...), logs
}

func auth(tok, mac string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok, MACHeader: mac}
}

// errCode reads an error body's code ("" if it is not one).
func errCode(t *testing.T, body string) proto.Code {
	t.Helper()
	var eb proto.ErrorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == nil || eb.Error.Message == "" {
		t.Errorf("error body %q is not {\"error\":{\"code\",\"message\"}}", body)
		return ""
	}
	return eb.Error.Code
}

func TestTaskPlan(t *testing.T) {
	h, logs := taskHarness(t)
	img := content(7, 50_000)
	// The image is known only to the task plan, not to any boot config.
	fw := proto.Artifact{Name: "bios-2.1", URL: h.up.put("/bios-2.1.bin", img), SHA256: strings.ToUpper(sum(img)), Size: int64(len(img))}
	h.backend.addNode(taskNode(fw))
	noTask := proto.BootNode{UUID: "11111111-2222-4333-8444-777777777777", MACs: []string{"aa:bb:cc:00:00:07"},
		Boot: proto.BootConfig{Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(), Task: "inspect", TaskToken: "tt-other"}}
	h.backend.addNode(noTask)

	status, body, hdr := h.do("GET", proto.TaskPlanPath, auth(testToken, "aa:bb:cc:00:00:02"), nil)
	if status != 200 {
		t.Fatalf("GET plan = %d %s", status, body)
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", hdr.Get("Cache-Control"))
	}
	var plan proto.TaskPlan
	if err := json.Unmarshal([]byte(body), &plan); err != nil {
		t.Fatal(err)
	}
	want := taskNode(fw).Task
	if plan.ID != want.ID || plan.Kind != want.Kind || len(plan.Steps) != 3 || plan.Steps[0].State != proto.StepPassed ||
		plan.Params["image"] != "bios-2.1" || plan.Vendor == nil || plan.Vendor.Name != proto.LabTool.Name {
		t.Errorf("plan = %+v, want %+v", plan, want)
	}
	got := plan.Artifacts["bios-2.1"]
	wantURL := testBase + "/artifacts/" + sum(img) + "?node=" + testNodeID
	if got.URL != wantURL || got.SHA256 != sum(img) || got.Size != int64(len(img)) {
		t.Errorf("artifact = %+v, want URL %s, the lower-case sha256 and the size", got, wantURL)
	}
	// The boot state's plan is not changed by the rewrite.
	if n, _ := h.backend.NodeByUUID(testNodeID); n.Task.Artifacts["bios-2.1"].URL != fw.URL {
		t.Errorf("the boot state's artifact URL became %q", n.Task.Artifacts["bios-2.1"].URL)
	}

	// The rewritten URL serves the image through the cache, verified.
	u, _ := url.Parse(got.URL)
	status, body, _ = h.do("GET", u.RequestURI(), nil, nil)
	if status != 200 || body != string(img) {
		t.Errorf("GET %s = %d, %d bytes; want 200 and the image's %d", u.RequestURI(), status, len(body), len(img))
	}
	if n := h.up.hitCount("/bios-2.1.bin"); n != 1 {
		t.Errorf("upstream fetched %d times, want 1", n)
	}
	// Without the node, or for another node, the plan's image is unknown.
	for _, q := range []string{"", "?node=aa:bb:cc:00:00:07", "?node=" + noTask.UUID} {
		if status, _, _ := h.do("GET", "/artifacts/"+sum(img)+q, nil, nil); status != 404 {
			t.Errorf("GET the image with %q = %d, want 404", q, status)
		}
	}
	// By MAC it is found too.
	if status, _, _ := h.do("GET", "/artifacts/"+sum(img)+"?node=aa-bb-cc-00-00-02", nil, nil); status != 200 {
		t.Errorf("GET the image with the node's MAC = %d, want 200", status)
	}

	for _, tt := range []struct {
		name   string
		hdr    map[string]string
		query  string
		status int
		code   proto.Code
	}{
		{"wrong token", auth(testToken+"x", "aa:bb:cc:00:00:02"), "", 401, proto.CodeUnauthorized},
		{"another node's token", auth("tt-other", "aa:bb:cc:00:00:02"), "", 401, proto.CodeUnauthorized},
		{"no token", map[string]string{MACHeader: "aa:bb:cc:00:00:02"}, "", 401, proto.CodeUnauthorized},
		{"unknown MAC", auth(testToken, "aa:bb:cc:00:00:09"), "", 401, proto.CodeUnauthorized},
		{"no MAC", map[string]string{"Authorization": "Bearer " + testToken}, "", 400, proto.CodeInvalid},
		{"the node has no task", auth("tt-other", "aa:bb:cc:00:00:07"), "", 404, proto.CodeNotFound},
		{"mac query", map[string]string{"Authorization": "Bearer " + testToken}, "?mac=aabbcc000002", 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := h.do("GET", proto.TaskPlanPath+tt.query, tt.hdr, nil)
			if status != tt.status {
				t.Fatalf("GET plan = %d %s, want %d", status, body, tt.status)
			}
			if tt.status != 200 {
				if c := errCode(t, body); c != tt.code {
					t.Errorf("code = %q, want %q (%s)", c, tt.code, body)
				}
				if strings.Contains(body, testToken) || strings.Contains(body, "tt-other") {
					t.Errorf("error body %q shows a token", body)
				}
			}
		})
	}
	if !strings.Contains(logs.String(), "wrong task token") || !strings.Contains(logs.String(), "source=127.0.0.1") {
		t.Errorf("no log line of the refused token naming its source:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), testToken) {
		t.Error("a log line shows the token")
	}
	if reps := h.reporter.take(); len(reps) > 1 {
		// The image fetch by uuid is one boot event; plan requests report nothing.
		t.Errorf("reports = %+v, want at most the image's boot event", reps)
	}
}

// TestTaskPlanBadImage: an image whose bytes do not match its sha256 is
// never served.
func TestTaskPlanBadImage(t *testing.T) {
	h, _ := taskHarness(t)
	img := content(8, 10_000)
	fw := proto.Artifact{Name: "bad", URL: h.up.put("/bad.bin", img), SHA256: sum(append([]byte("x"), img...))}
	h.backend.addNode(taskNode(fw))
	status, body, _ := h.do("GET", "/artifacts/"+fw.SHA256+"?node="+testNodeID, nil, nil)
	if status != http.StatusBadGateway || strings.Contains(body, string(img[:100])) {
		t.Errorf("GET a mismatching image = %d %.100q, want 502 without its bytes", status, body)
	}
	if files := dirFiles(t, h.dir); len(files) != 0 {
		t.Errorf("cache holds %v after a mismatch, want nothing", files)
	}
	// A plan whose artifact's sha256 is not one is refused, not served broken.
	n := taskNode(proto.Artifact{Name: "x", URL: "http://images/x", SHA256: "nothex"})
	n.MACs, n.UUID, n.Boot.TaskToken = []string{"aa:bb:cc:00:00:0a"}, "11111111-2222-4333-8444-aaaaaaaaaaaa", "tt-a"
	h.backend.addNode(n)
	if status, body, _ := h.do("GET", proto.TaskPlanPath, auth("tt-a", "aa:bb:cc:00:00:0a"), nil); status != 500 || !strings.Contains(body, "sha256") {
		t.Errorf("GET a plan with a bad sha256 = %d %s, want 500 naming the sha256", status, body)
	}
}

func TestTaskPlanRateLimited(t *testing.T) {
	h, _ := taskHarness(t, func(c *Config) { c.CallbackBurst = 2 })
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	for i, want := range []int{200, 401, 429} {
		tok := testToken
		if i == 1 {
			tok = "wrong" // a refusal costs a token too
		}
		status, body, hdr := h.do("GET", proto.TaskPlanPath, auth(tok, "aa:bb:cc:00:00:02"), nil)
		if status != want {
			t.Fatalf("request %d = %d %s, want %d", i, status, body, want)
		}
		if status == 429 && hdr.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	// The burn-in's transfers have a rate of their own, ten times the
	// callbacks'.
	ok, limited := 0, 0
	for range 25 {
		switch status, body, _ := h.do("GET", proto.BurninSourcePath+"?bytes=1", auth(testToken, "aa:bb:cc:00:00:02"), nil); status {
		case 200:
			ok++
		case 429:
			limited++
		default:
			t.Fatalf("burn-in source = %d %s", status, body)
		}
	}
	if ok != 20 || limited != 5 {
		t.Errorf("25 burn-in transfers at once: %d done, %d limited; want 20, 5", ok, limited)
	}
}

func stepReport(task string, mut func(*proto.StepReport)) string {
	r := proto.StepReport{Task: task, Step: proto.StepNameApply, Index: 1, Event: proto.StepEventProgress, Percent: 40, Message: "writing"}
	if mut != nil {
		mut(&r)
	}
	b, _ := json.Marshal(r)
	return string(b)
}

func TestStepReportCallback(t *testing.T) {
	h, logs := taskHarness(t)
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	noTask := proto.BootNode{UUID: "11111111-2222-4333-8444-777777777777", MACs: []string{"aa:bb:cc:00:00:07"},
		Boot: proto.BootConfig{Kind: proto.BootRamdisk, Kernel: testKernel(), Initrd: testInitrd(), Task: "inspect", TaskToken: "tt-other"}}
	h.backend.addNode(noTask)
	path := "/v1/callback/" + proto.StepTask
	good := stepReport(testTaskID, nil)

	for _, tt := range []struct {
		name   string
		hdr    map[string]string
		body   string
		status int
		code   proto.Code
		says   string // the error message names this
	}{
		{"good", auth(testToken, "aa:bb:cc:00:00:02"), good, 202, "", ""},
		{"wrong token", auth("tt-other", "aa:bb:cc:00:00:02"), good, 401, proto.CodeUnauthorized, "token"},
		{"another task", auth(testToken, "aa:bb:cc:00:00:02"), stepReport("t-0002", nil), 409, proto.CodeConflict, "t-0002"},
		{"node without a task", auth("tt-other", "aa:bb:cc:00:00:07"), good, 409, proto.CodeConflict, "no running task"},
		{"not JSON", auth(testToken, "aa:bb:cc:00:00:02"), `{"task":`, 400, proto.CodeInvalid, "JSON"},
		{"wrong type", auth(testToken, "aa:bb:cc:00:00:02"), `{"task":"t-0001","index":"one"}`, 400, proto.CodeInvalid, "index"},
		{"percent out of range", auth(testToken, "aa:bb:cc:00:00:02"), stepReport(testTaskID, func(r *proto.StepReport) { r.Percent = 101 }),
			400, proto.CodeInvalid, "percent"},
		{"bad event", auth(testToken, "aa:bb:cc:00:00:02"), stepReport(testTaskID, func(r *proto.StepReport) { r.Event = "done" }),
			400, proto.CodeInvalid, "event"},
		{"failed without an error", auth(testToken, "aa:bb:cc:00:00:02"),
			stepReport(testTaskID, func(r *proto.StepReport) { r.Event = proto.StepEventResult; r.Passed = false }), 400, proto.CodeInvalid, "error"},
		{"log too long", auth(testToken, "aa:bb:cc:00:00:02"),
			stepReport(testTaskID, func(r *proto.StepReport) { r.Log = strings.Repeat("l", proto.MaxStepLog+1) }), 413, proto.CodeTooLarge, "log"},
		{"over the callback limit", auth(testToken, "aa:bb:cc:00:00:02"),
			stepReport(testTaskID, func(r *proto.StepReport) { r.Log = strings.Repeat("l", MaxCallbackBytes) }), 413, proto.CodeTooLarge, "bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := h.do("POST", path, tt.hdr, strings.NewReader(tt.body))
			if status != tt.status {
				t.Fatalf("POST = %d %s, want %d", status, body, tt.status)
			}
			reps := h.reporter.take()
			if tt.status != 202 {
				if c := errCode(t, body); c != tt.code {
					t.Errorf("code = %q, want %q (%s)", c, tt.code, body)
				}
				if !strings.Contains(body, tt.says) {
					t.Errorf("error %s does not name %q", body, tt.says)
				}
				if len(reps) != 0 {
					t.Errorf("a refused report was queued: %+v", reps)
				}
				return
			}
			if len(reps) != 1 || reps[0].Kind != proto.ReportCallback || reps[0].Step != proto.StepTask || reps[0].Node != testNodeID ||
				reps[0].MAC != "aa:bb:cc:00:00:02" || string(reps[0].Data) != tt.body {
				t.Errorf("reports = %+v, want the step report as a callback report", reps)
			}
		})
	}
	if !strings.Contains(logs.String(), "t-0002") {
		t.Errorf("the refused step report is not logged:\n%s", logs.String())
	}

	// A replay is queued again: the coordinator's FSM, not the agent,
	// drops a report that changes nothing.
	for range 2 {
		if status, body, _ := h.do("POST", path, auth(testToken, "aa:bb:cc:00:00:02"), strings.NewReader(good)); status != 202 {
			t.Fatalf("POST = %d %s", status, body)
		}
	}
	if reps := h.reporter.take(); len(reps) != 2 || string(reps[0].Data) != string(reps[1].Data) {
		t.Errorf("a report posted twice gave %d reports, want 2 alike", len(reps))
	}
}

// TestStepReportDurable: a step report is answered 202 only once queued;
// 503 when the queue refused it.
func TestStepReportDurable(t *testing.T) {
	rep := &durableReporter{}
	h, _ := taskHarness(t, func(c *Config) { c.Reporter = rep })
	h.backend.addNode(taskNode(proto.Artifact{Name: "a", URL: "http://images/a", SHA256: kernelSHA}))
	path := "/v1/callback/" + proto.StepTask
	rep.mu.Lock()
	rep.fail = errors.New("outbox full")
	rep.mu.Unlock()
	status, body, hdr := h.do("POST", path, auth(testToken, "aa:bb:cc:00:00:02"), strings.NewReader(stepReport(testTaskID, nil)))
	if status != 503 || hdr.Get("Retry-After") == "" {
		t.Errorf("POST with the queue failing = %d %s (Retry-After %q), want 503 with Retry-After", status, body, hdr.Get("Retry-After"))
	}
	rep.mu.Lock()
	rep.fail = nil
	rep.mu.Unlock()
	if status, body, _ := h.do("POST", path, auth(testToken, "aa:bb:cc:00:00:02"), strings.NewReader(stepReport(testTaskID, nil))); status != 202 {
		t.Errorf("POST = %d %s, want 202", status, body)
	}
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if n := len(rep.queued); n != 1 {
		t.Errorf("%d reports queued, want 1", n)
	}
}
