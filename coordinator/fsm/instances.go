package fsm

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/decide"
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Instances: workloads placed on nodes. An instance is bound to its node
// when it is created (one command that re-checks the node is free, so two
// creates never get one node); its deploy starts at once when forced,
// else when admission lets it (the leader proposes InstanceStart). Deploy,
// clean and rescue are node tasks (tasks.go's machinery: token, steps,
// resume); their ends move the instance on here. After a deploy or an
// unrescue, the node boots its disk (boot config local-disk, boot device
// disk, a reboot): the instance is running when that reboot is done with
// the boot device set, or when the node is seen taking the local-boot path.

func init() {
	handlers[TypeInstanceStart] = decode(applyInstanceStart)
	handlers[TypeInstanceRescue] = decode(applyInstanceRescue)
	handlers[TypeInstanceUnrescue] = decode(applyInstanceUnrescue)
	handlers[TypeInstancePatch] = decode(applyInstancePatch)
	handlers[TypeInstanceTimeout] = decode(applyInstanceTimeout)
}

// InstanceStart starts the deploy of queued instance Ref (admission: the
// leader proposes it when decide.Admit lets the instance go), through
// Agent. Apply checks the limits again.
type InstanceStart struct {
	Ref   string    `json:"ref"`
	Agent string    `json:"agent"`
	Key   []byte    `json:"key,omitempty"`
	Now   time.Time `json:"now"`
}

func (InstanceStart) Type() Type { return TypeInstanceStart }

// InstanceRescue boots running instance Ref's node into a rescue image.
type InstanceRescue struct {
	Ref     string `json:"ref"`
	TaskID  string `json:"task_id"`
	Request proto.RescueRequest
	// Salt salts the password's hash (the proposer's random bytes).
	Salt string `json:"salt,omitempty"`
	// PasswordSHA256 is the hex of SHA-256(Salt + password), made by the
	// proposer, which leaves Request.Password empty: the Raft log (on
	// every server's disk) never holds the password. A password in
	// Request (an older proposer) is hashed here.
	PasswordSHA256 string    `json:"password_sha256,omitempty"`
	Agent          string    `json:"agent"`
	Key            []byte    `json:"key,omitempty"`
	By             string    `json:"by,omitempty"`
	Now            time.Time `json:"now"`
}

func (InstanceRescue) Type() Type { return TypeInstanceRescue }

// InstanceUnrescue restores the boot config a rescue replaced and boots
// the node's disk.
type InstanceUnrescue struct {
	Ref   string    `json:"ref"`
	Agent string    `json:"agent"`
	By    string    `json:"by,omitempty"`
	Now   time.Time `json:"now"`
}

func (InstanceUnrescue) Type() Type { return TypeInstanceUnrescue }

// InstancePatch changes an instance's rescue image.
type InstancePatch struct {
	Ref   string              `json:"ref"`
	Patch proto.InstancePatch `json:"patch"`
	Now   time.Time           `json:"now"`
}

func (InstancePatch) Type() Type { return TypeInstancePatch }

// InstanceTimeout moves busy instance Ref, still in State since before
// Now minus its timeout, to error and powers its node off.
type InstanceTimeout struct {
	Ref   string              `json:"ref"`
	State proto.InstanceState `json:"state"`
	Agent string              `json:"agent,omitempty"`
	Now   time.Time           `json:"now"`
}

func (InstanceTimeout) Type() Type { return TypeInstanceTimeout }

func applyInstanceCreate(tx *state.Tx, c *InstanceCreate) (any, error) {
	in := c.Instance
	if !proto.IsUUID(in.UUID) {
		return nil, proto.Errorf(proto.CodeInternal, "instance create without a uuid")
	}
	if err := proto.CheckName("name", in.Name); err != nil {
		return nil, err
	}
	if old := tx.Instance(in.Name); old != nil {
		if c.Request != "" && old.Request == c.Request {
			return cloneInstance(old), nil // a retry of a create already recorded
		}
		return nil, proto.Errorf(proto.CodeConflict, "instance %q exists", in.Name)
	}
	if tx.Instance(in.UUID) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %s exists", in.UUID)
	}
	f := tx.Flavor(in.Flavor)
	if f == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "flavor %q does not exist", in.Flavor)
	}
	if err := checkImage(tx, "image", in.Image, proto.ImageDisk); err != nil {
		return nil, err
	}
	if in.RescueImage != "" {
		if err := checkImage(tx, "rescue_image", in.RescueImage, proto.ImageRamdisk); err != nil {
			return nil, err
		}
	}
	if in.Node == "" {
		return nil, proto.Errorf(proto.CodeInternal, "instance create without a node: the scheduler chose none")
	}
	n, err := findNode(tx, in.Node)
	if err != nil {
		return nil, err
	}
	// The node is checked again here, in the one command that binds it:
	// a concurrent create that bound it first wins.
	if err := decide.CheckForce(n); err != nil {
		return nil, err
	}
	if !c.Forced {
		if fit, nf := decide.Schedule([]*proto.Node{n}, f, nil); fit == nil {
			return nil, decide.NoFitError(f, nf)
		}
	}
	in.Node, in.Forced, in.Request = n.UUID, c.Forced, c.Request
	in.State, in.StateSince, in.LastError, in.Task, in.BootGen = proto.InstanceQueued, c.Now, "", "", 0
	in.CreatedAt, in.UpdatedAt = c.Now, c.Now
	n = n.Clone()
	n.InstanceUUID, n.UpdatedAt = in.UUID, c.Now
	if c.Forced {
		// A forced create is never queued: its deploy starts now.
		if err := startDeploy(tx, n, &in, f, c.Agent, c.Key, c.Now); err != nil {
			return nil, err
		}
	}
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: c.Now, Kind: "instance", User: c.By,
		Message: fmt.Sprintf("instance %s (%s) bound%s", in.Name, in.UUID, ifStr(c.Forced, " (forced by an administrator)"))})
	tx.PutNode(n)
	tx.PutInstance(&in)
	return cloneInstance(&in), nil
}

func cloneInstance(in *proto.Instance) *proto.Instance {
	c := *in
	return &c
}

func checkImage(tx *state.Tx, field, name string, kind proto.ImageKind) error {
	im := tx.Image(name)
	if im == nil {
		return proto.Errorf(proto.CodeInvalid, "%s: image %q does not exist", field, name)
	}
	if im.Kind != kind {
		return proto.Errorf(proto.CodeInvalid, "%s: image %q is a %s image, want a %s image", field, name, im.Kind, kind)
	}
	return nil
}

// deployLimits counts the deploys running (instances building) in all
// and per rack.
func deployLimits(tx *state.Tx) (total int, perRack map[string]int) {
	perRack = map[string]int{}
	tx.EachInstance(func(in *proto.Instance) {
		if in.State == proto.InstanceBuilding {
			total++
			if n := tx.Node(in.Node); n != nil {
				perRack[n.Rack]++
			}
		}
	})
	return total, perRack
}

func applyInstanceStart(tx *state.Tx, c *InstanceStart) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	if in.State != proto.InstanceQueued {
		return nil, nil // started already (a repeated proposal)
	}
	n := tx.Node(in.Node)
	f := tx.Flavor(in.Flavor)
	if n == nil || f == nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %s: its node or flavor is gone", in.Name)
	}
	if n.Maintenance {
		// Operators are at work on it (the scheduler and a forced create
		// refuse such a node too): it waits, queued (the leader skips it).
		return nil, nil
	}
	total, perRack := deployLimits(tx)
	s := tx.Settings()
	if ids := decide.Admit([]*proto.Instance{in}, map[string]string{in.UUID: n.Rack}, total, perRack, s.DeployMax, s.DeployMaxPerRack); len(ids) == 0 {
		return nil, nil // no room now: it stays queued
	}
	next, node := cloneInstance(in), n.Clone()
	if err := startDeploy(tx, node, next, f, c.Agent, c.Key, c.Now); err != nil {
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code == proto.CodeInternal {
			return nil, err
		}
		// The deploy cannot start (the node lost its BMC, the task
		// images are gone, ...): say so on the instance rather than keep
		// it queued, retried after every change. It never touched the
		// node, so a delete removes it at once.
		next = cloneInstance(in)
		setInstanceState(next, proto.InstanceError, c.Now)
		next.LastError = "the deploy could not start: " + pe.Message
		tx.PutInstance(next)
		return cloneInstance(next), nil
	}
	tx.PutNode(node)
	tx.PutInstance(next)
	return cloneInstance(next), nil
}

// startDeploy moves in (queued) to building and n (available) to
// deploying with a deploy task. n and in are the caller's copies.
func startDeploy(tx *state.Tx, n *proto.Node, in *proto.Instance, f *proto.Flavor, agent string, key []byte, now time.Time) error {
	if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, "deploy"); err != nil {
		return err
	}
	params := map[string]string{"image": in.Image}
	if hint := cmp.Or(n.RootDevice, f.RootDevice); hint != nil {
		raw, _ := json.Marshal(hint)
		params["root_device"] = string(raw)
	}
	if f.DiskGB > 0 {
		params["min_bytes"] = fmt.Sprint(f.DiskGB << 30)
	}
	t := &proto.Task{ID: instanceTaskID(in, "deploy", now), Kind: proto.TaskDeploy, Params: params, By: "instance " + in.Name}
	if err := startInstanceTask(tx, n, t, agent, key, now); err != nil {
		return err
	}
	n.ProvisionState = proto.StateDeploying
	setInstanceState(in, proto.InstanceBuilding, now)
	in.Task = t.ID
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "instance", User: "system",
		Message: fmt.Sprintf("instance %s: deploy of image %s started (task %s)", in.Name, in.Image, t.ID)})
	return nil
}

// instanceTaskID names an instance's task: deterministic, so every
// server applying the command makes the same id.
func instanceTaskID(in *proto.Instance, what string, now time.Time) string {
	h := sha256.Sum256([]byte(in.UUID + "\x00" + what + "\x00" + now.UTC().Format(time.RFC3339Nano)))
	return "t-" + hex.EncodeToString(h[:5])
}

// startInstanceTask starts t (deploy, clean or rescue) on n: the task
// ramdisk (or the rescue image) with a token, PXE once, a reboot.
func startInstanceTask(tx *state.Tx, n *proto.Node, t *proto.Task, agent string, key []byte, now time.Time) error {
	if err := CanDriveBMC(n); err != nil {
		return err
	}
	params, err := proto.ParseTaskParams(t.Kind, t.Params)
	if err != nil {
		return err
	}
	boot, err := decide.TaskBoot(tx.Settings(), tx.Images(), n, t.Kind)
	if err != nil {
		return err
	}
	if t.Kind == proto.TaskRescue {
		// The rescue image is the initrd; its own kernel if it names one.
		if boot, err = decide.RescueBoot(boot, tx.Images(), t.Params["image"]); err != nil {
			return err
		}
	}
	if n.Task != "" {
		// A running task of the node (a deploy or rescue interrupted by a
		// delete) ends here: its token stops working with it.
		if old := tx.Task(n.Task); old != nil && !old.State.Ended() {
			o := old.Clone()
			o.State, o.EndedAt, o.Error = proto.TaskAborted, now, fmt.Sprintf("task %s (%s) aborted: %s", o.ID, o.Kind, t.By)
			tx.PutTask(o)
		}
		n.Task = ""
	}
	saved := n.SavedBoot
	if err := startTask(tx, n, t, params, boot, agent, key, now); err != nil {
		return err
	}
	if saved != nil {
		n.SavedBoot = saved // the boot config before the first of these tasks
	}
	tx.PutTask(t)
	return nil
}

func setInstanceState(in *proto.Instance, s proto.InstanceState, now time.Time) {
	in.State, in.StateSince, in.UpdatedAt = s, now, now
}

// applyInstanceTaskStep moves the instance of an instance task on after
// a step report that ended its step (next is the task after the report).
// It returns true when it handled the task's end.
func instanceTaskEnded(tx *state.Tx, n *proto.Node, next *proto.Task, verdict decide.TaskVerdict, agent string, now time.Time) bool {
	switch next.Kind {
	case proto.TaskDeploy, proto.TaskClean, proto.TaskRescue:
	default:
		return false
	}
	in := tx.Instance(n.InstanceUUID)
	if in == nil || in.Task != next.ID {
		// The instance moved on (deleted, or another task): nothing to
		// do but end the task.
		if n.Task == next.ID {
			n.Task = ""
		}
		tx.PutNode(n)
		return true
	}
	in = cloneInstance(in)
	if verdict == decide.TaskStepFailed {
		instanceFailed(tx, n, in, next.Error, agent, now)
		return true
	}
	switch next.Kind {
	case proto.TaskDeploy:
		// The image is on the disk: boot it.
		n.Task, n.SavedBoot = "", nil
		bootDisk(tx, n, in, &proto.BootConfig{Kind: proto.BootLocalDisk}, agent, now)
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "instance", User: "system",
			Message: fmt.Sprintf("instance %s: image written (%s); booting the disk", in.Name, compactResult(next))})
	case proto.TaskClean:
		n.Task, n.SavedBoot, n.Boot, n.InstanceUUID = "", nil, nil, ""
		n.ProvisionState, n.LastError, n.UpdatedAt = proto.StateAvailable, "", now
		addIntent(tx, n, proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOff, Agent: agent, By: "system", At: now})
		tx.DeleteInstance(in.UUID)
		tx.PutNode(n)
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "instance", User: "system",
			Message: fmt.Sprintf("instance %s deleted; node cleaned and available", in.Name)})
		return true
	case proto.TaskRescue:
		// The rescue ramdisk reported in. The task keeps the node (its
		// token stays valid, so a rebooted rescue ramdisk reports again)
		// and its boot config stays the rescue image until unrescue.
		n.ProvisionState, n.UpdatedAt = proto.StateRescue, now
		setInstanceState(in, proto.InstanceRescue, now)
		tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "instance", User: "system",
			Message: fmt.Sprintf("instance %s: rescue ramdisk reported in (%s)", in.Name, compactResult(next))})
	}
	tx.PutNode(n)
	tx.PutInstance(in)
	return true
}

func compactResult(t *proto.Task) string {
	for i := len(t.Steps) - 1; i >= 0; i-- {
		if r := t.Steps[i].Result; len(r) > 0 {
			if len(r) > 200 {
				return string(r[:200]) + "..."
			}
			return string(r)
		}
	}
	return "no result"
}

// bootDisk makes n boot its disk: boot config boot (local disk), boot
// device disk (persistent), a reboot; in waits for it (BootGen).
func bootDisk(tx *state.Tx, n *proto.Node, in *proto.Instance, boot *proto.BootConfig, agent string, now time.Time) {
	n.Boot = boot
	n.UpdatedAt = now
	addIntent(tx, n, proto.Intent{Action: proto.ActionBootDevice, Boot: &proto.BootDeviceSpec{Device: proto.BootDeviceDisk, Persistent: true},
		Agent: agent, By: "instance " + in.Name, At: now})
	addIntent(tx, n, proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetReboot, Agent: agent, By: "instance " + in.Name, At: now})
	in.BootGen, in.Task, in.UpdatedAt = n.BMCGeneration, "", now
}

// diskBooted moves an instance waiting for its node to boot its disk to
// running, and the node to active. Called on a boot event and on an
// intent's result; it does nothing unless the node waits for that.
func diskBooted(tx *state.Tx, n *proto.Node, how string, at time.Time) {
	if n.InstanceUUID == "" || n.Task != "" || n.Boot == nil || n.Boot.Kind != proto.BootLocalDisk {
		return
	}
	if n.ProvisionState != proto.StateDeploying && n.ProvisionState != proto.StateUnrescuing {
		return
	}
	in := tx.Instance(n.InstanceUUID)
	if in == nil || in.BootGen == 0 || (in.State != proto.InstanceBuilding && in.State != proto.InstanceUnrescuing) {
		return
	}
	if how == "" {
		// Through the BMC: the reboot after the switch is done, after the
		// boot device was set to disk (or the BMC refused: then the
		// firmware's order boots the disk, through the agent's exit
		// script if it network-boots first).
		var reboot, dev *proto.Intent
		for i := range n.Intents {
			x := &n.Intents[i]
			switch {
			case x.Action == proto.ActionPower && x.Generation == in.BootGen:
				reboot = x
			case x.Action == proto.ActionBootDevice && x.Generation == in.BootGen-1:
				dev = x
			}
		}
		if reboot != nil && reboot.Done && reboot.Error != "" && in.LastError == "" {
			// Said on the instance: it waits for the node to take the
			// local-boot path (an operator powering it on), else its
			// timeout.
			c := cloneInstance(in)
			c.LastError, c.UpdatedAt = "the reboot into the disk failed: "+reboot.Error+"; power the node on (it is running once it boots its disk), or it goes to error at its timeout", at
			tx.PutInstance(c)
			return
		}
		if reboot == nil || !reboot.Done || reboot.Error != "" || dev == nil || !dev.Done {
			return
		}
		how = "the reboot into the disk is done, boot device disk"
		if dev.Error != "" {
			how = "the reboot into the disk is done (the BMC did not set boot device disk: " + dev.Error + "; the firmware's boot order goes on to the disk)"
		}
	} else if at.Before(diskSwitchAt(n, in)) {
		return // a boot seen before the switch (a late report of the ramdisk's)
	}
	in = cloneInstance(in)
	setInstanceState(in, proto.InstanceRunning, at)
	in.LastError = ""
	n.ProvisionState, n.LastError, n.UpdatedAt = proto.StateActive, "", at
	tx.PutInstance(in)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: at, Kind: "instance", User: "system",
		Message: fmt.Sprintf("instance %s running: %s", in.Name, how)})
}

// diskSwitchAt is when n was switched to boot its disk for in: the time
// of the switch's intents (a building instance's StateSince is the
// deploy's start, long before); in.StateSince when later intents
// replaced both.
func diskSwitchAt(n *proto.Node, in *proto.Instance) time.Time {
	for _, x := range n.Intents {
		if x.Action == proto.ActionBootDevice && x.Generation == in.BootGen-1 || x.Action == proto.ActionPower && x.Generation == in.BootGen {
			return x.At
		}
	}
	return in.StateSince
}

// instanceFailed moves in to error with why and n to failed: the task
// ends, the node's boot config is what it was before the task (never a
// ramdisk left to boot) and the node is powered off. n and in are the
// caller's copies; both are stored.
func instanceFailed(tx *state.Tx, n *proto.Node, in *proto.Instance, why string, agent string, now time.Time) {
	if n.Task != "" {
		if t := tx.Task(n.Task); t != nil && !t.State.Ended() {
			c := t.Clone()
			c.State, c.EndedAt, c.Error = proto.TaskFailed, now, why
			tx.PutTask(c)
		}
		n.Task = ""
	}
	if n.SavedBoot != nil {
		n.Boot, n.SavedBoot = n.SavedBoot.Boot.Clone(), nil
	}
	if n.ProvisionState.Busy() {
		n.ProvisionState = proto.StateFailed
	}
	n.LastError, n.UpdatedAt = "instance "+in.Name+": "+why, now
	if agent != "" && CanDriveBMC(n) == nil {
		addIntent(tx, n, proto.Intent{Action: proto.ActionPower, Power: proto.PowerTargetOff, Agent: agent, By: "system", At: now})
	}
	setInstanceState(in, proto.InstanceError, now)
	in.LastError, in.Task = why, ""
	tx.PutNode(n)
	tx.PutInstance(in)
	tx.AppendHistory(n.UUID, proto.HistoryEvent{Time: now, Kind: "instance", User: "system",
		Message: fmt.Sprintf("instance %s in error: %s", in.Name, why)})
}

// InstanceDelete deletes instance Ref: a queued one at once; one with a
// node through cleaning (the node is available when it ends).
func applyInstanceDelete(tx *state.Tx, c *InstanceDelete) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	n := tx.Node(in.Node)
	// Queued, or in error before its deploy started (its node still
	// available): nothing ran on the node, so nothing to clean.
	if in.State == proto.InstanceQueued || n == nil || n.InstanceUUID != in.UUID || n.ProvisionState == proto.StateAvailable {
		if n != nil && n.InstanceUUID == in.UUID {
			n = n.Clone()
			n.InstanceUUID, n.UpdatedAt = "", c.Now
			tx.PutNode(n)
		}
		tx.DeleteInstance(in.UUID)
		return nil, nil
	}
	if in.State == proto.InstanceDeleting {
		return cloneInstance(in), nil // a repeated delete
	}
	if c.Agent == "" {
		return nil, proto.Errorf(proto.CodeInternal, "a delete without a rack agent to clean the node")
	}
	if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, "undeploy"); err != nil {
		return nil, err
	}
	f := tx.Flavor(in.Flavor)
	params := map[string]string{}
	if f != nil && f.FullErase {
		params["full"] = "true"
	}
	next, node := cloneInstance(in), n.Clone()
	// A clean ends with no boot config of the instance's, and one that
	// fails leaves none either (never a rescue ramdisk to boot).
	node.SavedBoot, node.Boot = nil, nil
	t := &proto.Task{ID: instanceTaskID(in, "clean", c.Now), Kind: proto.TaskClean, Params: params, By: cmp.Or(c.By, "instance delete")}
	if err := startInstanceTask(tx, node, t, c.Agent, c.Key, c.Now); err != nil {
		return nil, err
	}
	node.ProvisionState = proto.StateCleaning
	setInstanceState(next, proto.InstanceDeleting, c.Now)
	next.Task, next.BootGen = t.ID, 0
	tx.PutNode(node)
	tx.PutInstance(next)
	tx.AppendHistory(node.UUID, proto.HistoryEvent{Time: c.Now, Kind: "instance", User: c.By,
		Message: fmt.Sprintf("instance %s: delete; cleaning the node (task %s)", in.Name, t.ID)})
	return cloneInstance(next), nil
}

func applyInstanceRescue(tx *state.Tx, c *InstanceRescue) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	if in.State == proto.InstanceRescuing || in.State == proto.InstanceRescue {
		return cloneInstance(in), nil // a retry
	}
	if in.State != proto.InstanceRunning {
		return nil, proto.Errorf(proto.CodeWrongState, "cannot rescue instance %s: it is %s; rescue is for a running instance", in.Name, in.State)
	}
	n := tx.Node(in.Node)
	if n == nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %s has no node", in.Name)
	}
	if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, "rescue"); err != nil {
		return nil, err
	}
	image, err := RescueImage(tx, in, c.Request.Image)
	if err != nil {
		return nil, err
	}
	params := map[string]string{"image": image}
	sum := c.PasswordSHA256
	if sum == "" && c.Request.Password != "" {
		sum = RescuePasswordHash(c.Salt, c.Request.Password)
	}
	if sum != "" {
		params["password_salt"], params["password_sha256"] = c.Salt, sum
	}
	if c.Request.SSHKey != "" {
		params["ssh_key"] = c.Request.SSHKey
	}
	next, node := cloneInstance(in), n.Clone()
	// The boot config the rescue replaces is recorded (SavedBoot by
	// startTask), in this same command.
	t := &proto.Task{ID: cmp.Or(c.TaskID, instanceTaskID(in, "rescue", c.Now)), Kind: proto.TaskRescue, Params: params, By: cmp.Or(c.By, "instance rescue")}
	if err := startInstanceTask(tx, node, t, c.Agent, c.Key, c.Now); err != nil {
		return nil, err
	}
	node.ProvisionState = proto.StateRescuing
	setInstanceState(next, proto.InstanceRescuing, c.Now)
	next.Task, next.BootGen = t.ID, 0
	tx.PutNode(node)
	tx.PutInstance(next)
	tx.AppendHistory(node.UUID, proto.HistoryEvent{Time: c.Now, Kind: "instance", User: c.By,
		Message: fmt.Sprintf("instance %s: rescue into image %s (task %s)%s", in.Name, image, t.ID,
			ifStr(c.Request.Password != "" || c.Request.SSHKey != "", "; SSH for user rescue"))})
	return cloneInstance(next), nil
}

// RescuePasswordHash is the hex of SHA-256(salt + password), what a
// rescue task keeps of a rescue password (proto.RescueAuth).
func RescuePasswordHash(salt, password string) string {
	h := sha256.Sum256([]byte(salt + password))
	return hex.EncodeToString(h[:])
}

// RescueImage is the rescue image of in: the request's, else the
// instance's, else its flavor's; none is a 409 saying so.
func RescueImage(tx *state.Tx, in *proto.Instance, asked string) (string, error) {
	name := asked
	if name == "" {
		name = in.RescueImage
	}
	if name == "" {
		if f := tx.Flavor(in.Flavor); f != nil {
			name = f.RescueImage
		}
	}
	if name == "" {
		return "", proto.Errorf(proto.CodeWrongState, "instance %s has no rescue image: give one (--image), or set the instance's (metalfleet instance set %s --rescue-image R) or its flavor %s's", in.Name, in.Name, in.Flavor)
	}
	if err := checkImage(tx, "rescue image", name, proto.ImageRamdisk); err != nil {
		return "", err
	}
	return name, nil
}

func applyInstanceUnrescue(tx *state.Tx, c *InstanceUnrescue) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	if in.State == proto.InstanceUnrescuing || in.State == proto.InstanceRunning {
		return cloneInstance(in), nil // a retry
	}
	if in.State != proto.InstanceRescue && in.State != proto.InstanceRescuing {
		return nil, proto.Errorf(proto.CodeWrongState, "cannot unrescue instance %s: it is %s; unrescue is for an instance in rescue", in.Name, in.State)
	}
	n := tx.Node(in.Node)
	if n == nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %s has no node", in.Name)
	}
	if _, err := proto.CheckTransition(nodeRef(n), n.ProvisionState, "unrescue"); err != nil {
		return nil, err
	}
	if c.Agent == "" {
		return nil, proto.Errorf(proto.CodeInternal, "an unrescue without a rack agent to reboot the node")
	}
	next, node := cloneInstance(in), n.Clone()
	if node.Task != "" {
		if t := tx.Task(node.Task); t != nil {
			tc := t.Clone()
			if !tc.State.Ended() {
				tc.State, tc.EndedAt, tc.Error = proto.TaskAborted, c.Now, "unrescued before the rescue ramdisk reported in"
			}
			tx.PutTask(tc)
		}
		node.Task = ""
	}
	// The recorded boot config comes back (the instance's local disk).
	restored := &proto.BootConfig{Kind: proto.BootLocalDisk}
	if node.SavedBoot != nil && node.SavedBoot.Boot != nil {
		restored = node.SavedBoot.Boot.Clone()
	}
	node.SavedBoot = nil
	node.ProvisionState = proto.StateUnrescuing
	setInstanceState(next, proto.InstanceUnrescuing, c.Now)
	bootDisk(tx, node, next, restored, c.Agent, c.Now)
	tx.PutNode(node)
	tx.PutInstance(next)
	tx.AppendHistory(node.UUID, proto.HistoryEvent{Time: c.Now, Kind: "instance", User: c.By,
		Message: fmt.Sprintf("instance %s: unrescue; boot config restored, booting the disk", in.Name)})
	return cloneInstance(next), nil
}

func applyInstancePatch(tx *state.Tx, c *InstancePatch) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	next := cloneInstance(in)
	if p := c.Patch.RescueImage; p != nil {
		if *p != "" {
			if err := checkImage(tx, "rescue_image", *p, proto.ImageRamdisk); err != nil {
				return nil, err
			}
		}
		next.RescueImage = *p
	}
	next.UpdatedAt = c.Now
	tx.PutInstance(next)
	return cloneInstance(next), nil
}

func applyInstanceTimeout(tx *state.Tx, c *InstanceTimeout) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil || in.State != c.State || !decide.InstanceTimedOut(in, c.Now) {
		return nil, nil
	}
	if t := tx.Task(in.Task); t != nil && !t.State.Ended() {
		return nil, nil // a running task times out by its own progress (TaskTimeout)
	}
	n := tx.Node(in.Node)
	if n == nil {
		return nil, nil
	}
	why := fmt.Sprintf("%s for %s, longer than its timeout (%s)", in.State, c.Now.Sub(in.StateSince).Round(time.Second), proto.InstanceTimeouts[in.State])
	next := cloneInstance(in)
	instanceFailed(tx, n.Clone(), next, why, c.Agent, c.Now)
	return cloneInstance(next), nil
}
