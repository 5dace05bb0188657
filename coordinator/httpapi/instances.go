package httpapi

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/fsm"
	"github.com/metalfleet/metalfleet/proto"
)

// Instances: create (scheduled, or forced onto a node by an
// administrator), patch, delete, rescue, unrescue. The scheduler runs on
// the leader's store (decide.Schedule); the one Raft command that binds
// the node checks it again, and a create that lost its node to another
// is scheduled again (a few times).

const scheduleTries = 4

func (a *API) createInstance(c *call) (any, error) {
	var req proto.InstanceRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if err := proto.CheckName("name", req.Name); err != nil {
		return nil, err
	}
	if req.Flavor == "" || req.Image == "" {
		return nil, proto.Errorf(proto.CodeInvalid, "flavor and image are required")
	}
	if len(req.RequestID) > 64 {
		return nil, proto.Errorf(proto.CodeInvalid, "request_id: at most 64 bytes")
	}
	st := a.b.Store()
	if req.RequestID != "" {
		// A retry of a create already recorded (its answer lost to a
		// failover): the same instance, before the node it bound, now
		// taken, could refuse it.
		if old, ok := st.Instance(req.Name); ok && old.Request == req.RequestID {
			c.status = http.StatusCreated
			return old, nil
		}
	}
	f, ok := st.Flavor(req.Flavor)
	if !ok {
		return nil, proto.Errorf(proto.CodeInvalid, "flavor %q does not exist", req.Flavor)
	}
	in := proto.Instance{UUID: newUUID(), Name: req.Name, Flavor: req.Flavor, Image: req.Image, RescueImage: req.RescueImage}
	cmd := fsm.InstanceCreate{Request: req.RequestID, By: c.who()}
	if req.Node != "" {
		if !allowed(c.token, proto.RoleAdmin) {
			return nil, proto.Errorf(proto.CodeForbidden, "forcing an instance onto a node (node) needs an admin token")
		}
		n, ok := st.Node(req.Node)
		if !ok {
			return nil, proto.Errorf(proto.CodeNotFound, "node %q not found", req.Node)
		}
		// A forced create is never queued: a node in the wrong state is
		// a 409 now.
		if err := decide.CheckForce(n); err != nil {
			return nil, err
		}
		agent, err := a.requireAgent(n.Rack, n.UUID)
		if err != nil {
			return nil, err
		}
		in.Node, cmd.Forced, cmd.Agent, cmd.Key = n.UUID, true, agent, a.taskKey()
		cmd.Instance, cmd.Now = in, a.cfg.Now()
		v, err := c.apply(cmd)
		if err != nil {
			return nil, err
		}
		c.status = http.StatusCreated
		return v, nil
	}
	var tried []string
	for i := 0; i < scheduleTries; i++ {
		var n *proto.Node
		var nf *proto.NoFit
		st.ReadNodes(func(all []*proto.Node) {
			load := rackLoad(all)
			if len(tried) > 0 {
				all = slices.DeleteFunc(slices.Clone(all), func(n *proto.Node) bool { return slices.Contains(tried, n.UUID) })
			}
			if n, nf = a.sched.Schedule(all, f, load); n != nil {
				n = n.Clone()
			}
		})
		if n == nil {
			return nil, decide.NoFitError(f, nf)
		}
		// A deploy that could never boot is a 409 now, as for a forced
		// create, not an instance queued for ever without a reason.
		images := map[string]*proto.Image{}
		for _, im := range st.Images() {
			images[im.Name] = im
		}
		if _, err := decide.TaskBoot(st.Settings(), images, n, proto.TaskDeploy); err != nil {
			return nil, proto.Errorf(proto.CodeWrongState, "instance %s could not deploy on node %s: %v", req.Name, cmp.Or(n.Name, n.UUID), err)
		}
		in.Node = n.UUID
		cmd.Instance, cmd.Now = in, a.cfg.Now()
		v, err := c.apply(cmd)
		var pe *proto.Error
		// The bind's only wrong_state is decide.CheckForce's for this
		// node, which names it by name when it has one (not its uuid).
		if errors.As(err, &pe) && pe.Code == proto.CodeWrongState {
			tried = append(tried, n.UUID) // taken meanwhile: schedule again
			continue
		}
		if err != nil {
			return nil, err
		}
		c.status = http.StatusCreated
		return v, nil
	}
	return nil, proto.Errorf(proto.CodeConflict, "no node could be bound for instance %s: the %d nodes chosen were taken meanwhile; retry", req.Name, len(tried))
}

// rackLoad counts the nodes holding an instance per rack, for the
// scheduler's spread (read with the nodes, copying none).
func rackLoad(nodes []*proto.Node) map[string]int {
	load := map[string]int{}
	for _, n := range nodes {
		if n.InstanceUUID != "" {
			load[n.Rack]++
		}
	}
	return load
}

// taskKey is a fresh random key for a command that may be the first to
// need the cluster's task key (nil when it is set).
func (a *API) taskKey() []byte {
	if a.b.Store().HasTaskKey() {
		return nil
	}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

func (a *API) instanceNodeAgent(id string) (*proto.Instance, string, error) {
	in, ok := a.b.Store().Instance(id)
	if !ok {
		return nil, "", proto.Errorf(proto.CodeNotFound, "instance %q not found", id)
	}
	n, ok := a.b.Store().Node(in.Node)
	if !ok {
		return in, "", nil
	}
	agent, err := a.requireAgent(n.Rack, n.UUID)
	return in, agent, err
}

func (a *API) deleteInstance(c *call) (any, error) {
	id := c.r.PathValue("id")
	in, ok := a.b.Store().Instance(id)
	if !ok {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", id)
	}
	cmd := fsm.InstanceDelete{Ref: in.UUID, By: c.who(), Now: a.cfg.Now(), Key: a.taskKey()}
	if n, ok := a.b.Store().Node(in.Node); ok {
		// The agent goes with every delete it is known for: the leader may
		// start a queued instance's deploy between this read and the
		// command, which then needs it to clean the node.
		cmd.Agent = a.rackAgent(n.Rack, n.UUID)
		if cmd.Agent == "" && in.State != proto.InstanceQueued && n.ProvisionState != proto.StateAvailable {
			if _, err := a.requireAgent(n.Rack, n.UUID); err != nil {
				return nil, err
			}
		}
	}
	v, err := c.apply(cmd)
	if err != nil {
		return nil, err
	}
	c.status = http.StatusAccepted
	if v == nil {
		return in, nil // a queued instance: deleted at once
	}
	return v, nil
}

func (a *API) patchInstance(c *call) (any, error) {
	var p proto.InstancePatch
	if err := c.decode(&p); err != nil {
		return nil, err
	}
	return c.apply(fsm.InstancePatch{Ref: c.r.PathValue("id"), Patch: p, Now: a.cfg.Now()})
}

func (a *API) rescueInstance(c *call) (any, error) {
	var req proto.RescueRequest
	if err := c.decode(&req); err != nil {
		return nil, err
	}
	if len(req.Password) > 256 || len(req.SSHKey) > 8<<10 {
		return nil, proto.Errorf(proto.CodeInvalid, "password: at most 256 bytes; ssh_key: at most 8 KiB")
	}
	req.SSHKey = strings.TrimSpace(req.SSHKey)
	if strings.ContainsAny(req.SSHKey, "\r\n") {
		return nil, proto.Errorf(proto.CodeInvalid, "ssh_key: one authorized_keys line")
	}
	in, agent, err := a.instanceNodeAgent(c.r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	cmd := fsm.InstanceRescue{Ref: in.UUID, TaskID: newTaskID(), Salt: hex.EncodeToString(salt), Agent: agent,
		Key: a.taskKey(), By: c.who(), Now: a.cfg.Now()}
	if req.Password != "" {
		// Hashed here: the command goes into the Raft log, on disk.
		cmd.PasswordSHA256 = fsm.RescuePasswordHash(cmd.Salt, req.Password)
		req.Password = ""
	}
	cmd.Request = req
	c.status = http.StatusAccepted
	return c.apply(cmd)
}

func (a *API) unrescueInstance(c *call) (any, error) {
	in, agent, err := a.instanceNodeAgent(c.r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	c.status = http.StatusAccepted
	return c.apply(fsm.InstanceUnrescue{Ref: in.UUID, Agent: agent, By: c.who(), Now: a.cfg.Now()})
}

// PickInstanceAgent is the agent for instance ref's node ("" if none).
func (a *API) PickInstanceAgent(nodeUUID string) string {
	n, ok := a.b.Store().Node(nodeUUID)
	if !ok {
		return ""
	}
	return a.rackAgent(n.Rack, n.UUID)
}
