package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Machine is what a servicing task needs of the machine it runs on. The
// ramdisk uses LinuxMachine (root "/"); the simulated racks of dev mode
// give their own (temporary files as disks, a fake mdadm), so the same
// runner drives both.
type Machine interface {
	// Inventory collects the machine's inventory now (disks by name and
	// serial, md arrays with RAID and Members, system vendor and product).
	Inventory(ctx context.Context) (*proto.Inventory, error)
	// OpenDisk opens the block device of a disk of the inventory by name
	// ("vda", "nvme0n1"), for reading, or for reading and writing. Reads
	// and writes are in whole multiples of 4096 bytes, at offsets that
	// are multiples of 4096, from buffers aligned on 4096 bytes, so an
	// implementation may use O_DIRECT.
	OpenDisk(name string, write bool) (DiskDevice, error)
	// MemAvailable is /proc/meminfo's MemAvailable in bytes.
	MemAvailable() (int64, error)
	// Exec runs program with args (no shell), waiting for it to exit or
	// ctx to end. Stdout and stderr come back bounded (at most
	// MaxExecOutput bytes each, the rest dropped). err is set only when
	// the program could not be run (not found, ctx ended); a program
	// that ran and failed has a non-zero exit code.
	Exec(ctx context.Context, program string, args []string) (ExecResult, error)
}

// DiskDevice is an open block device.
type DiskDevice interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Sync flushes what was written to the device.
	Sync() error
}

// ExecResult is what a program printed and how it ended.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// MaxExecOutput bounds what Exec keeps of each of a program's streams.
const MaxExecOutput = 1 << 20

// DefaultMDADM is the mdadm program of the task ramdisk.
const DefaultMDADM = "/sbin/mdadm"

// TaskReportMaxElapsed is how long the ramdisk retries fetching the
// plan and posting a start or result report before it gives up (and
// follows metalfleet.onerror: by default it reboots, fetches the plan
// again and resumes).
const TaskReportMaxElapsed = 10 * time.Minute

// DefaultProgressEvery is how often a running step reports its progress.
const DefaultProgressEvery = 5 * time.Second

// TaskEnv is what RunTask runs with. CallbackURL, MAC, Token and Machine
// are required; the zero value of the rest is safe.
type TaskEnv struct {
	// CallbackURL is metalfleet.callback (BASE + proto.CallbackPrefix):
	// step reports go to CallbackURL/task, the plan and the burn-in
	// routes are under BASE.
	CallbackURL string
	// MAC is the boot MAC, sent in proto.MACHeader.
	MAC string
	// Token is the task token (metalfleet.token; never logged).
	Token   string
	Machine Machine
	// Log (nil: discard).
	Log *slog.Logger
	// HTTP fetches the plan and the firmware images and runs the
	// network burn-in; it also posts the reports unless Reporter is set
	// (nil: a client that bounds each request's wait for an answer).
	HTTP *http.Client
	// Clock times the burn-ins and the progress reports (nil: the real
	// one).
	Clock Clock
	// Reporter posts the step reports (nil: a Reporter with HTTP, Log
	// and Clock).
	Reporter *Reporter
	// TempDir holds downloaded images and settings files passed to the
	// vendor tools ("": os.TempDir()).
	TempDir string
	// MDADM is the mdadm program ("": DefaultMDADM).
	MDADM string
	// WipeFS is the wipefs program ("": DefaultWipeFS).
	WipeFS string
	// RescueShell starts a rescue task's serial console shell and keeps
	// it running (started again when it exits) until ctx ends; it
	// returns once the first shell runs (nil: no console shell, as on a
	// simulated machine). The ramdisk's is ConsoleShell.Start.
	RescueShell func(ctx context.Context) error
	// RescueSSH is the address a rescue task's SSH server listens on
	// when its params let user rescue in (":22" in the ramdisk; "": no
	// SSH server).
	RescueSSH string
	// RescueShellProgram is the shell of SSH sessions ("":
	// DefaultRescueShell).
	RescueShellProgram string
	// ProgressEvery is the least time between two progress reports of a
	// step (0: DefaultProgressEvery).
	ProgressEvery time.Duration
}

// ErrStepFailed is wrapped by RunTask's error when a step failed and
// the failure was reported: the coordinator knows, ends the task and
// powers the node off, so the ramdisk has nothing more to do.
var ErrStepFailed = errors.New("task step failed")

// RunTask runs the servicing task of this machine: it fetches the plan
// (GET BASE+proto.TaskPlanPath with the token and the MAC header,
// retrying temporary failures), runs the steps in order, skipping the
// ones already passed (a ramdisk that rebooted or a coordinator that
// failed over resumes where the task is), and reports each step's start,
// progress and result to CallbackURL/task. It stops after the last step
// (the coordinator then powers the node off) or at the first failed step
// (an error wrapping ErrStepFailed). A rescue task's RunTask returns
// only when ctx ends: its shell and SSH server run until then, whether
// its step passed now or before this boot (see rescue.go). Any other
// error means the
// coordinator may not know where the task is (the plan could not be
// fetched, a report was refused or could not be delivered).
func RunTask(ctx context.Context, env TaskEnv) error {
	r, err := newTaskRunner(env)
	if err != nil {
		return err
	}
	plan, err := r.fetchPlan(ctx)
	if err != nil {
		return err
	}
	if err := r.run(ctx, plan); err != nil || plan.Kind != proto.TaskRescue {
		return err
	}
	return r.stayRescued(ctx)
}

// taskRunner is one RunTask.
type taskRunner struct {
	env      TaskEnv
	base     string // the agent's base URL
	log      *slog.Logger
	clock    Clock
	http     *http.Client
	rep      *Reporter
	progress *Reporter // progress reports: a short retry budget
	plan     *proto.TaskPlan
	params   proto.TaskParams
	// boot names this run (proto.StepReport.Boot): a start the agent
	// gets twice from one boot is a retried report, not a restart.
	boot string

	// versionBefore is the firmware version the download step read
	// (lost when the ramdisk restarts between the steps).
	versionBefore string
	// rescue is what a rescue task started (nil until then).
	rescue *rescueResult
}

// taskHTTPClient bounds the wait for an answer's headers, not a whole
// transfer (an image download or a burn-in transfer may be long).
var taskHTTPClient = &http.Client{Transport: func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = DefaultAttemptTimeout
	return t
}()}

func newTaskRunner(env TaskEnv) (*taskRunner, error) {
	if env.Machine == nil {
		return nil, errors.New("task: no Machine")
	}
	if env.Token == "" {
		return nil, errors.New("task: no token (metalfleet.token)")
	}
	mac, err := proto.NormalizeMAC(env.MAC)
	if err != nil {
		return nil, fmt.Errorf("task: MAC %q: %w", env.MAC, err)
	}
	env.MAC = mac
	base, err := baseURL(env.CallbackURL)
	if err != nil {
		return nil, err
	}
	r := &taskRunner{env: env, base: base, log: env.Log, clock: env.Clock, http: env.HTTP, boot: runID()}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.clock == nil {
		r.clock = realClock{}
	}
	if r.http == nil {
		r.http = taskHTTPClient
	}
	r.rep = env.Reporter
	if r.rep == nil {
		r.rep = &Reporter{Client: env.HTTP, Log: r.log, Clock: r.clock}
	}
	p := *r.rep
	p.MaxElapsed = 20 * time.Second
	r.progress = &p
	if r.env.TempDir == "" {
		r.env.TempDir = os.TempDir()
	}
	if r.env.MDADM == "" {
		r.env.MDADM = DefaultMDADM
	}
	if r.env.WipeFS == "" {
		r.env.WipeFS = DefaultWipeFS
	}
	if r.env.ProgressEvery <= 0 {
		r.env.ProgressEvery = DefaultProgressEvery
	}
	return r, nil
}

// baseURL is the callback URL without proto.CallbackPrefix.
func baseURL(callback string) (string, error) {
	u, err := url.Parse(callback)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("callback URL %q: want http(s)://HOST[:PORT]%s", callback, proto.CallbackPrefix)
	}
	p := strings.TrimRight(u.Path, "/")
	if !strings.HasSuffix(p, proto.CallbackPrefix) {
		return "", fmt.Errorf("callback URL %q: its path does not end in %s", callback, proto.CallbackPrefix)
	}
	u.Path, u.RawPath, u.RawQuery, u.Fragment = strings.TrimSuffix(p, proto.CallbackPrefix), "", "", ""
	return strings.TrimRight(u.String(), "/"), nil
}

// request builds a request to the agent with the token and MAC header.
func (r *taskRunner) request(ctx context.Context, method, target string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "metalfleet-nodeagent/"+Version)
	req.Header.Set(MACHeader, r.env.MAC)
	req.Header.Set("Authorization", "Bearer "+r.env.Token)
	return req, nil
}

// statusError reads a refusal's body into a *StatusError.
func statusError(resp *http.Response) *StatusError {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	se := &StatusError{Status: resp.StatusCode}
	var eb proto.ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		se.Err = eb.Error
	} else {
		se.Body = strings.TrimSpace(string(raw[:min(len(raw), 200)]))
	}
	return se
}

// retry runs attempt until it succeeds, fails for good (a *StatusError
// that is not Temporary), ctx ends or the Reporter's MaxElapsed passes,
// waiting with backoff between attempts like Reporter.Report.
func (r *taskRunner) retry(ctx context.Context, what string, attempt func(ctx context.Context) error) error {
	maxElapsed := cmpOr(r.rep.MaxElapsed, DefaultReportMaxElapsed)
	backoff := cmpOr(r.rep.InitialBackoff, DefaultInitialBackoff)
	maxBackoff := cmpOr(r.rep.MaxBackoff, DefaultMaxBackoff)
	start := r.clock.Now()
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		var se *StatusError
		if errors.As(err, &se) && !se.Temporary() {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (after %d attempts)", what, err, n)
		}
		wait := jitter(backoff)
		elapsed := r.clock.Now().Sub(start)
		if elapsed+wait > maxElapsed {
			return fmt.Errorf("%s: giving up after %d attempts in %s: %w", what, n, elapsed.Round(time.Millisecond), err)
		}
		r.log.Warn("retrying", "what", what, "attempt", n, "wait", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (after %d attempts: %v)", what, ctx.Err(), n, err)
		case <-r.clock.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// maxPlanBytes bounds a plan's body.
const maxPlanBytes = 1 << 20

// fetchPlan GETs the task plan.
func (r *taskRunner) fetchPlan(ctx context.Context) (*proto.TaskPlan, error) {
	target := r.base + proto.TaskPlanPath
	var plan proto.TaskPlan
	err := r.retry(ctx, "GET "+target, func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, DefaultAttemptTimeout)
		defer cancel()
		req, err := r.request(actx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		resp, err := r.http.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return statusError(resp)
		}
		raw, err := io.ReadAll(io.LimitReader(resp.Body, maxPlanBytes+1))
		if err != nil {
			return err
		}
		if len(raw) > maxPlanBytes {
			return &StatusError{Status: http.StatusUnprocessableEntity, Body: fmt.Sprintf("the plan is over %d bytes", maxPlanBytes)}
		}
		plan = proto.TaskPlan{}
		if err := json.Unmarshal(raw, &plan); err != nil {
			return &StatusError{Status: http.StatusUnprocessableEntity, Body: "the plan is not JSON: " + err.Error()}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if plan.ID == "" || len(plan.Steps) == 0 {
		return nil, fmt.Errorf("GET %s: a plan without an id or steps", target)
	}
	return &plan, nil
}

// run runs the plan's steps from the first one not passed.
func (r *taskRunner) run(ctx context.Context, plan *proto.TaskPlan) error {
	r.plan = plan
	log := r.log.With("task", plan.ID, "kind", plan.Kind)
	first := -1
	for i, s := range plan.Steps {
		if s.State == proto.StepFailed {
			return fmt.Errorf("task %s: step %s already failed: %w", plan.ID, s.Name, ErrStepFailed)
		}
		if s.State != proto.StepPassed && first < 0 {
			first = i
		}
	}
	if first < 0 {
		log.Info("every step has passed already")
		r.params, _ = proto.ParseTaskParams(plan.Kind, plan.Params)
		return nil
	}
	log.Info("running the task", "steps", len(plan.Steps), "from", plan.Steps[first].Name)
	params, perr := proto.ParseTaskParams(plan.Kind, plan.Params)
	r.params = params
	for i := first; i < len(plan.Steps); i++ {
		name := plan.Steps[i].Name
		if plan.Steps[i].State == proto.StepPassed {
			continue
		}
		sc := &stepCtx{r: r, index: i, name: name, last: r.clock.Now()}
		if err := sc.post(ctx, r.rep, proto.StepReport{Event: proto.StepEventStart}); err != nil {
			return err
		}
		log.Info("step started", "step", name, "index", i)
		var res stepResult
		switch {
		case perr != nil:
			res.err = fmt.Errorf("params: %w", perr)
		default:
			res = r.runStep(ctx, sc, name)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if res.err != nil {
			// Logged before it is reported: the report ends the task, and
			// with it the console capture the coordinator attaches.
			log.Error("step failed", "step", name, "err", res.err)
		}
		if err := sc.finish(ctx, res); err != nil {
			return err
		}
		if res.err != nil {
			return fmt.Errorf("task %s: step %s: %v: %w", plan.ID, name, res.err, ErrStepFailed)
		}
		log.Info("step passed", "step", name)
	}
	log.Info("task done")
	return nil
}

// stepResult is what a step ends with: err set is a failure (result may
// still hold its figures).
type stepResult struct {
	result any
	inv    *proto.Inventory
	err    error
}

// runStep runs one step by its name and the plan's kind.
func (r *taskRunner) runStep(ctx context.Context, sc *stepCtx, name string) stepResult {
	k := r.plan.Kind
	switch {
	case name == proto.StepNameInventory:
		return r.stepInventory(ctx)
	case k == proto.TaskBurnin && name == proto.StepNameCPU:
		return r.burnCPU(ctx, sc)
	case k == proto.TaskBurnin && name == proto.StepNameMemory:
		return r.burnMemory(ctx, sc)
	case k == proto.TaskBurnin && name == proto.StepNameDisk:
		return r.burnDisks(ctx, sc)
	case k == proto.TaskBurnin && name == proto.StepNameNetwork:
		return r.burnNetwork(ctx, sc)
	case k == proto.TaskRAID && name == proto.StepNameRAID:
		return r.stepRAID(ctx, sc)
	case k == proto.TaskFirmware && name == proto.StepNameDownload:
		return r.firmwareDownload(ctx, sc)
	case k == proto.TaskFirmware && name == proto.StepNameApply:
		return r.firmwareApply(ctx, sc)
	case k == proto.TaskFirmware && name == proto.StepNameVerify:
		return r.firmwareVerify(ctx, sc)
	case k == proto.TaskBIOS && name == proto.StepNameApply:
		return r.biosApply(ctx, sc)
	case k == proto.TaskBIOS && name == proto.StepNameVerify:
		return r.biosVerify(ctx, sc)
	case k == proto.TaskDeploy && name == proto.StepNameWrite:
		return r.deployWrite(ctx, sc)
	case k == proto.TaskClean && name == proto.StepNameErase:
		return r.cleanErase(ctx, sc)
	case k == proto.TaskRescue && name == proto.StepNameRescue:
		return r.rescueStep(ctx, sc)
	}
	return stepResult{err: fmt.Errorf("this nodeagent (%s) does not know step %q of a %s task", Version, name, k)}
}

// stepInventory collects and reports the inventory.
func (r *taskRunner) stepInventory(ctx context.Context) stepResult {
	inv, err := r.env.Machine.Inventory(ctx)
	if err != nil {
		return stepResult{err: fmt.Errorf("collecting the inventory: %w", err)}
	}
	if inv.PXEMAC == "" {
		inv.PXEMAC = r.env.MAC
	}
	if err := inv.Validate(); err != nil {
		return stepResult{err: fmt.Errorf("the inventory collected is not valid: %w", err)}
	}
	arrays := 0
	for _, d := range inv.Disks {
		if d.RAID != "" {
			arrays++
		}
	}
	return stepResult{inv: inv, result: map[string]any{
		"cpus": inv.CPUs.Count, "memory_bytes": inv.Memory.TotalBytes, "disks": len(inv.Disks),
		"raid_arrays": arrays, "interfaces": len(inv.Interfaces),
		"vendor": inv.System.Vendor, "product": inv.System.Product,
	}}
}

// stepCtx is a running step: its progress reports and its log.
type stepCtx struct {
	r     *taskRunner
	index int
	name  string

	mu   sync.Mutex
	log  tailBuffer
	last time.Time // the last progress report
}

// logf adds a line to the step's log (sent with its result).
func (s *stepCtx) logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.log, format+"\n", args...)
}

// logOutput adds a program's output to the step's log.
func (s *stepCtx) logOutput(label string, b []byte) {
	if len(b) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.log, "--- %s ---\n", label)
	s.log.Write(b)
	if b[len(b)-1] != '\n' {
		s.log.Write([]byte{'\n'})
	}
}

// progress reports the step's progress when ProgressEvery has passed
// since the last report. A refusal (the task was aborted, say) is
// returned and ends the step; a report that could not be delivered is
// only logged.
func (s *stepCtx) progress(ctx context.Context, percent int, format string, args ...any) error {
	now := s.r.clock.Now()
	if now.Sub(s.last) < s.r.env.ProgressEvery {
		return nil
	}
	s.last = now
	msg := truncate(fmt.Sprintf(format, args...), proto.MaxStepMessage)
	err := s.post(ctx, s.r.progress, proto.StepReport{Event: proto.StepEventProgress, Percent: max(0, min(percent, 100)), Message: msg})
	var se *StatusError
	if err != nil && errors.As(err, &se) && !se.Temporary() {
		return err
	}
	if err != nil {
		s.r.log.Warn("progress report not delivered", "step", s.name, "err", err)
	}
	return nil
}

// post sends one report of this step.
func (s *stepCtx) post(ctx context.Context, rep *Reporter, body proto.StepReport) error {
	body.Task, body.Step, body.Index, body.Boot = s.r.plan.ID, s.name, s.index, s.r.boot
	if err := body.Validate(); err != nil {
		return fmt.Errorf("step %s: the %s report is not valid: %w", s.name, body.Event, err)
	}
	if err := rep.Report(ctx, s.r.env.CallbackURL, s.r.env.MAC, s.r.env.Token, proto.StepTask, body); err != nil {
		return fmt.Errorf("step %s: reporting %s: %w", s.name, body.Event, err)
	}
	return nil
}

// finish reports the step's result, bounded to the protocol's limits.
func (s *stepCtx) finish(ctx context.Context, res stepResult) error {
	body := proto.StepReport{Event: proto.StepEventResult, Passed: res.err == nil, Inventory: res.inv}
	if res.err != nil {
		body.Error = truncate(res.err.Error(), proto.MaxStepError)
		s.logf("error: %v", res.err)
	}
	if res.result != nil {
		raw, err := json.Marshal(res.result)
		switch {
		case err != nil:
			s.logf("the result could not be encoded: %v", err)
		case len(raw) > proto.MaxStepResult:
			s.logf("the result (%d bytes, over %d) was dropped: %s", len(raw), proto.MaxStepResult, raw[:1024])
			raw, _ = json.Marshal(map[string]any{"status": statusOf(res.err), "truncated": true})
			body.Result = raw
		default:
			body.Result = raw
		}
	}
	s.mu.Lock()
	body.Log = s.log.String()
	s.mu.Unlock()
	body.Task, body.Step, body.Index, body.Boot = s.r.plan.ID, s.name, s.index, s.r.boot
	if err := body.Validate(); err != nil && body.Inventory != nil {
		// An inventory the agent would refuse must not hide the result.
		body.Inventory, body.Passed = nil, false
		body.Error = truncate("the inventory is not valid: "+err.Error(), proto.MaxStepError)
	}
	return s.post(ctx, s.r.rep, body)
}

func statusOf(err error) string {
	if err != nil {
		return "fail"
	}
	return "pass"
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "..."
	cut := n - len(mark)
	for cut > 0 && cut < len(s) && s[cut]&0xc0 == 0x80 {
		cut-- // not inside a UTF-8 sequence
	}
	return s[:cut] + mark
}

// tailBuffer keeps the last proto.MaxStepLog bytes written to it.
type tailBuffer struct {
	b       []byte
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if over := len(t.b) - (proto.MaxStepLog - 64); over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
		t.dropped = true
	}
	return len(p), nil
}

// String is the tail, valid UTF-8, marked when the start was dropped.
func (t *tailBuffer) String() string {
	s := strings.ToValidUTF8(string(t.b), "?")
	if t.dropped {
		s = "[... earlier lines dropped]\n" + s
	}
	if len(s) > proto.MaxStepLog {
		s = s[len(s)-proto.MaxStepLog:]
	}
	return s
}

// runID names this run of the runner (StepReport.Boot) without waiting
// for the kernel's random pool: in a fresh ramdisk crypto/rand blocks
// until it is ready, a second or more. The kernel's boot id (made anew
// at every boot) and the clock and pid tell runs apart.
func runID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	h := sha256.Sum256(fmt.Appendf(b, "|%d|%d", time.Now().UnixNano(), os.Getpid()))
	return hex.EncodeToString(h[:8])
}
