package httpapi

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Servicing tasks: POST, GET and DELETE /v1/nodes/{id}/tasks[/{task}],
// and what the leader loops need (an agent to power a node off, the
// console log of a failed task).

func (a *API) createTask(c *call) (any, error) {
	var req proto.TaskRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if !req.Kind.Valid() {
		_, err := proto.ParseTaskParams(req.Kind, nil)
		return nil, err
	}
	if _, err := proto.ParseTaskParams(req.Kind, req.Params); err != nil {
		return nil, err
	}
	if req.Timeout < 0 || time.Duration(req.Timeout) > 7*24*time.Hour {
		return nil, proto.Errorf(proto.CodeInvalid, "timeout %s: want up to 168h", time.Duration(req.Timeout))
	}
	if len(req.RequestID) > 64 {
		return nil, proto.Errorf(proto.CodeInvalid, "request_id: at most 64 bytes")
	}
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	// The state is checked before an agent is looked for, so a node in
	// the wrong state is told so (409), not that no agent is heard of;
	// but for a retry of a request already recorded (the FSM answers its
	// task).
	if err := fsm.CanServe(n); err != nil && !hasRequest(a.b.Store().NodeTasks(n.UUID), req.RequestID) {
		return nil, err
	}
	agent, err := a.requireAgent(n.Rack, n.UUID)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if a.b.Store().HasTaskKey() {
		key = nil // the cluster's key stays; no need to send a new one
	}
	t := proto.Task{ID: newTaskID(), Kind: req.Kind, Params: req.Params, Timeout: req.Timeout, By: c.who()}
	v, err := c.apply(fsm.TaskCreate{Ref: id, Task: t, Request: req.RequestID, Agent: agent, Key: key, Now: a.cfg.Now()})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return v, nil
}

// hasRequest reports whether one of tasks was made by request id.
func hasRequest(tasks []*proto.Task, id string) bool {
	for _, t := range tasks {
		if id != "" && t.Request == id {
			return true
		}
	}
	return false
}

// newTaskID makes a task id: "t-" and 10 hex digits.
func newTaskID() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "t-" + hex.EncodeToString(b)
}

func (a *API) nodeOf(c *call) (*proto.Node, error) {
	id := c.r.PathValue("id")
	n, ok := a.b.Store().Node(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", id)
	}
	return n, nil
}

func (a *API) listTasks(c *call) (any, error) {
	n, err := a.nodeOf(c)
	if err != nil {
		return nil, err
	}
	return a.b.Store().NodeTasks(n.UUID), nil
}

func (a *API) getTask(c *call) (any, error) {
	n, err := a.nodeOf(c)
	if err != nil {
		return nil, err
	}
	id := c.r.PathValue("task")
	t, ok := a.b.Store().Task(id)
	if !ok || t.Node != n.UUID {
		return nil, proto.Errorf(proto.CodeNotFound, "node %s has no task %q", cmp.Or(n.Name, n.UUID), id)
	}
	return t, nil
}

func (a *API) abortTask(c *call) (any, error) {
	n, err := a.nodeOf(c)
	if err != nil {
		return nil, err
	}
	// No agent heard of: the task still ends; the node is not powered
	// off, and its history says so.
	agent := a.rackAgent(n.Rack, n.UUID)
	return c.apply(fsm.TaskAbort{Ref: n.UUID, Task: c.r.PathValue("task"), By: c.who(), Agent: agent, Now: a.cfg.Now()})
}

// PickAgent is the rack agent that executes node's intents now ("" if
// none is heard of): the leader loops use it to power off a node whose
// task timed out.
func (a *API) PickAgent(rack, node string) string { return a.rackAgent(rack, node) }

// TaskConsoleLog reads the console log of node from the rack agent that
// holds its console, for a failed task (a log ticket made by "system").
func (a *API) TaskConsoleLog(ctx context.Context, node string) (string, error) {
	n, ok := a.b.Store().Node(node)
	if !ok {
		return "", fmt.Errorf("node %s not found", node)
	}
	if n.BMC.Driver == "" || n.Rack == "" {
		return "", fmt.Errorf("node has no BMC or rack: no console")
	}
	agents := a.mgmtAgents(n.Rack, n.UUID)
	if len(agents) == 0 {
		return "", fmt.Errorf("no rack agent of rack %s told its management address lately", n.Rack)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(b)
	now := a.cfg.Now()
	if _, _, err := a.b.Apply(ctx, fsm.ConsoleTicketMake{Now: now, Ticket: state.ConsoleTicket{Hash: HashSecret(secret), Node: n.UUID,
		User: "system (task console log)", Purpose: apiclient.PurposeLog, Expires: now.Add(ConsoleTicketTTL)}}); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, consoleDialTimeout)
	defer cancel()
	var lastErr error
	for _, ag := range agents {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+ag.MgmtAddr+"/v1/console/"+url.PathEscape(n.UUID)+"/log", nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", apiclient.TicketScheme+" "+secret)
		resp, err := a.fwd.Do(req)
		if err != nil {
			lastErr = err
			if unreached(err) {
				continue
			}
			break
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("rack agent %s: %s: %s", ag.Name, resp.Status, truncate(string(body), 200))
		}
		if err != nil {
			return "", err
		}
		if len(body) > proto.MaxTaskConsoleLog {
			body = body[len(body)-proto.MaxTaskConsoleLog:]
		}
		return string(body), nil
	}
	return "", fmt.Errorf("no rack agent answered: %v", lastErr)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
