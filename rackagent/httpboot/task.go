package httpboot

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// The task routes: what a task ramdisk asks of its rack agent besides
// its callbacks. Each needs the node's current task token (the boot
// config's TaskToken, compared in constant time) as a bearer token and
// the MAC (MACHeader or ?mac=). A plan request counts against the
// source address's callback rate; the burn-in's transfers against a rate
// of their own, ten times higher (a fast link makes many short
// transfers, which BurninConcurrency bounds anyway).
//
//	GET  /v1/task             the node's TaskPlan (proto.TaskPlanPath)
//	GET  /v1/burnin/source    ?bytes=N: N bytes to read (network burn-in)
//	POST /v1/burnin/sink      the body is read and dropped; answers its size

// taskCaller authenticates a task ramdisk's request: the source's rate
// (in lim), the MAC, and its current task token. On failure it has
// answered (and logged a refused token with the source address).
func (s *Server) taskCaller(w http.ResponseWriter, r *http.Request, lim *limiter) (mac string, node *proto.BootNode, log *slog.Logger, ok bool) {
	ip := sourceIP(r)
	if !lim.allow(ip, s.now()) {
		w.Header().Set("Retry-After", "1")
		writeError(w, proto.Errorf(proto.CodeRateLimited, "too many requests from %s; slow down", ip))
		return "", nil, nil, false
	}
	mac, err := callbackMAC(r)
	if err != nil {
		writeError(w, err)
		return "", nil, nil, false
	}
	log = s.log.With("mac", mac, "path", r.URL.Path, "remote", r.RemoteAddr)
	token, has := bearer(r)
	if !has {
		log.Warn("task request refused: no task token", "source", ip)
		writeError(w, proto.Errorf(proto.CodeUnauthorized, "want Authorization: Bearer <task token> (the %s value of the ramdisk's command line)", proto.CmdlineToken))
		return "", nil, nil, false
	}
	n, boot, known := s.cfg.Backend.Boot(mac)
	if !known || n == nil || boot.TaskToken == "" || subtle.ConstantTimeCompare([]byte(token), []byte(boot.TaskToken)) != 1 {
		log.Warn("task request refused: wrong task token", "source", ip)
		writeError(w, proto.Errorf(proto.CodeUnauthorized, "the token is not the current task token of %s (a task that ended, or another node's token)", mac))
		return "", nil, nil, false
	}
	return mac, n, log.With("node", n.UUID), true
}

// handlePlan serves GET TaskPlanPath: the node's TaskPlan, its artifacts'
// URLs pointing at this agent's cache.
func (s *Server) handlePlan(w http.ResponseWriter, r *http.Request) {
	mac, n, log, ok := s.taskCaller(w, r, s.limiter)
	if !ok {
		return
	}
	if n.Task == nil {
		log.Warn("task plan asked for, but the node has no task in the boot state")
		writeError(w, proto.Errorf(proto.CodeNotFound, "node %s (%s) has no running task in this rack agent's boot state", n.UUID, mac))
		return
	}
	plan, err := s.rewritePlan(n.UUID, n.Task)
	if err != nil {
		log.Error("cannot serve the task plan", "task", n.Task.ID, "err", err)
		writeError(w, proto.Errorf(proto.CodeInternal, "task %s: %v", n.Task.ID, err))
		return
	}
	log.Info("task plan served", "task", plan.ID, "kind", plan.Kind, "steps", len(plan.Steps))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, plan)
}

// rewritePlan copies p with each artifact's URL replaced by this agent's
// cache URL for it (which fetches it and checks its sha256 before serving
// it, as for a kernel).
func (s *Server) rewritePlan(uuid string, p *proto.TaskPlan) (*proto.TaskPlan, error) {
	c := *p
	if len(p.Artifacts) == 0 {
		return &c, nil
	}
	base, err := checkBaseURL(s.cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	c.Artifacts = maps.Clone(p.Artifacts)
	for name, a := range c.Artifacts {
		sha := strings.ToLower(a.SHA256)
		if !shaRE.MatchString(sha) {
			return nil, fmt.Errorf("artifact %q: sha256 %q is not 64 hex digits", name, a.SHA256)
		}
		// uuid is a uuid: nothing in it needs escaping.
		a.URL, a.SHA256 = base+"/artifacts/"+sha+"?node="+strings.ToLower(uuid), sha
		c.Artifacts[name] = a
	}
	return &c, nil
}

// taskArtifact finds an artifact of the task plan of the node that an
// artifact URL's ?node= names (a uuid or a MAC): the plan's artifacts are
// served only to the URLs rewritePlan gave out.
func (s *Server) taskArtifact(sha, who string) (proto.Artifact, bool) {
	var n *proto.BootNode
	switch {
	case who == "":
		return proto.Artifact{}, false
	case proto.IsUUID(who):
		n, _ = s.cfg.Backend.NodeByUUID(strings.ToLower(who))
	default:
		if mac, err := parseMAC(who); err == nil {
			n, _, _ = s.cfg.Backend.Boot(mac)
		}
	}
	if n == nil || n.Task == nil {
		return proto.Artifact{}, false
	}
	for _, a := range n.Task.Artifacts {
		if strings.EqualFold(a.SHA256, sha) {
			a.SHA256 = strings.ToLower(a.SHA256)
			return a, true
		}
	}
	return proto.Artifact{}, false
}

// lookupArtifact finds the artifact sha of an artifact request: one of a
// boot config's, or one of the task plan of the node ?node= names.
func (s *Server) lookupArtifact(sha string, r *http.Request) (proto.Artifact, bool) {
	if a, ok := s.cfg.Backend.ArtifactBySHA(sha); ok {
		return a, true
	}
	return s.taskArtifact(sha, r.URL.Query().Get("node"))
}

// checkStepReport decodes and checks a task step report (the body of a
// callback of step proto.StepTask) against node n's running task.
//
// A report posted twice is queued twice: the agent keeps no record of
// what it passed on, and the coordinator's FSM applies a step report only
// to the node's running task at its current step, so a replayed or
// out-of-order one changes nothing there (deduplication is its job).
func checkStepReport(n *proto.BootNode, body []byte) (*proto.StepReport, error) {
	var rep proto.StepReport
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&rep); err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "step report: %v", err)
	}
	if err := rep.Validate(); err != nil {
		return nil, prefixErr("step report: ", err)
	}
	if n == nil || n.Task == nil {
		return nil, proto.Errorf(proto.CodeConflict, "step report for task %s: the node has no running task in this rack agent's boot state", rep.Task)
	}
	if rep.Task != n.Task.ID {
		return nil, proto.Errorf(proto.CodeConflict, "step report for task %s: node %s's running task is %s", rep.Task, n.UUID, n.Task.ID)
	}
	return &rep, nil
}
