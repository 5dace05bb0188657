package proto

import (
	"slices"
	"time"
)

// Instances (DESIGN.md, "Instances, scheduling, rescue"): a workload placed
// on one node by the scheduler (coordinator/decide) or forced onto a named
// node, deployed by the task ramdisk (task kind deploy), cleaned on delete
// (clean), and rescued into a rescue ramdisk (rescue). Deploy, clean and
// rescue are node tasks like the servicing ones (a one-time token, steps,
// resume after failover); they are started by the instance's life, never
// by POST /v1/nodes/{id}/tasks.

// Instance task kinds (not operator-creatable).
const (
	TaskDeploy TaskKind = "deploy"
	TaskClean  TaskKind = "clean"
	TaskRescue TaskKind = "rescue"
)

// Steps of the instance tasks.
const (
	StepNameWrite  = "write"  // deploy: stream the image to the root disk and read it back
	StepNameErase  = "erase"  // clean: zero the first and last MiB (or all) and erase signatures
	StepNameRescue = "rescue" // rescue: the rescue ramdisk reports in
)

// Busy reports whether s is a state the instance leaves by itself (each
// has a timeout).
func (s InstanceState) Busy() bool {
	switch s {
	case InstanceBuilding, InstanceRescuing, InstanceUnrescuing, InstanceDeleting:
		return true
	}
	return false
}

// Valid reports whether s is a known instance state.
func (s InstanceState) Valid() bool {
	return slices.Contains([]InstanceState{InstanceQueued, InstanceBuilding, InstanceRunning, InstanceRescuing,
		InstanceRescue, InstanceUnrescuing, InstanceDeleting, InstanceError}, s)
}

// Instance state timeouts: a busy instance that has not moved on by then
// goes to error and its node is powered off. While the instance's task
// (deploy, clean, rescue) runs, the task's own progress timeout applies
// instead (a full erase of a large disk takes hours but reports progress).
var InstanceTimeouts = map[InstanceState]time.Duration{
	InstanceBuilding:   time.Hour,
	InstanceRescuing:   30 * time.Minute,
	InstanceUnrescuing: 30 * time.Minute,
	InstanceDeleting:   2 * time.Hour,
}

// RootDeviceHint picks a node's root disk: every field given must match.
type RootDeviceHint struct {
	Name   string `json:"name,omitempty"` // vda, sda, nvme0n1 (without /dev/)
	Serial string `json:"serial,omitempty"`
	WWN    string `json:"wwn,omitempty"`
	// MinSizeGB: at least this big.
	MinSizeGB int64 `json:"min_size_gb,omitempty"`
}

// InstanceRequest is the body of POST /v1/instances.
type InstanceRequest struct {
	Name        string `json:"name"`
	Flavor      string `json:"flavor"`
	Image       string `json:"image"`
	RescueImage string `json:"rescue_image,omitempty"`
	// Node forces the instance onto a node (uuid or name; admin role).
	Node string `json:"node,omitempty"`
	// RequestID makes a retried create return the instance it made.
	RequestID string `json:"request_id,omitempty"`
}

// InstancePatch is the body of PATCH /v1/instances/{id}: a nil field is
// left as it is; an empty rescue_image clears it.
type InstancePatch struct {
	RescueImage *string `json:"rescue_image,omitempty"`
}

// RescueRequest is the body of POST /v1/instances/{id}/rescue.
type RescueRequest struct {
	// Image is the rescue image (a ramdisk image); else the instance's,
	// else its flavor's.
	Image string `json:"image,omitempty"`
	// Password and SSHKey let user rescue in over SSH; with neither, only
	// the serial console shell is offered. The password is never stored:
	// the rescue task keeps a salted SHA-256 of it (RescueAuth).
	Password string `json:"password,omitempty"`
	SSHKey   string `json:"ssh_key,omitempty"`
}

// RescueAuth is how the rescue ramdisk lets user rescue in over SSH, from
// the rescue task's params (password_salt, password_sha256: hex of
// SHA-256(salt + password); ssh_key: an authorized_keys line). The plan
// reaches only the rack's agents and the token holder.
type RescueAuth struct {
	PasswordSalt   string `json:"password_salt,omitempty"`
	PasswordSHA256 string `json:"password_sha256,omitempty"`
	SSHKey         string `json:"ssh_key,omitempty"`
}

// NoFit says why no node fits an instance: how many nodes each filter
// removed, in filter order.
type NoFit struct {
	Considered int           `json:"considered"`
	Removed    []FilterCount `json:"removed"`
}

// FilterCount is one scheduler filter and the nodes it removed.
type FilterCount struct {
	Filter  string `json:"filter"`
	Removed int    `json:"removed"`
}

// Traits filled from a node's inventory (operators add their own).
const (
	TraitX86_64   = "CPU_X86_64"
	TraitAArch64  = "CPU_AARCH64"
	TraitBootUEFI = "BOOT_UEFI"
	TraitBootBIOS = "BOOT_BIOS"
)

// Settings keys for admission (Settings.DeployMax, DeployMaxPerRack).
const (
	DefaultDeployMax        = 50
	DefaultDeployMaxPerRack = 10
)
