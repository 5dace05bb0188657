// Package decide holds the coordinator's decisions as pure functions of a
// state view: what a node boots, whether discovery is active (and why
// not), and what a rack agent is told. No I/O, no clock: the callers read
// the state, call decide, and act on the answer. It imports proto and the
// standard library only (the guard test keeps it so).
package decide

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// Discovery is the discovery boot the settings and images make, and
// whether it is active: enabled, with a kernel and a ramdisk image set
// that exist and are of the right kinds. Reason says why it is not
// active ("" when it is), naming the setting.
type Discovery struct {
	Boot   proto.BootConfig
	Active bool
	Reason string
}

// DiscoveryBoot decides the discovery boot config from the settings and
// the images (by name).
func DiscoveryBoot(s proto.Settings, images map[string]*proto.Image) Discovery {
	d := Discovery{Boot: proto.BootConfig{
		Kind: proto.BootDiscovery, Cmdline: s.DiscoveryCmdline, Task: proto.TaskDiscovery,
	}}
	var reasons []string
	for _, ref := range []struct {
		setting, name string
		kind          proto.ImageKind
		out           **proto.Artifact
	}{
		{"discovery.kernel", s.DiscoveryKernel, proto.ImageKernel, &d.Boot.Kernel},
		{"discovery.ramdisk", s.DiscoveryRamdisk, proto.ImageRamdisk, &d.Boot.Initrd},
	} {
		im := images[ref.name]
		switch {
		case ref.name == "":
			reasons = append(reasons, ref.setting+" is not set")
		case im == nil:
			reasons = append(reasons, fmt.Sprintf("%s: image %q does not exist", ref.setting, ref.name))
		case im.Kind != ref.kind:
			reasons = append(reasons, fmt.Sprintf("%s: image %q is a %s image, not a %s", ref.setting, ref.name, im.Kind, ref.kind))
		default:
			*ref.out = Artifact(im)
		}
	}
	switch {
	case !s.DiscoveryEnabled:
		d.Reason = "discovery.enabled is false"
	case len(reasons) > 0:
		d.Reason = strings.Join(reasons, "; ")
	default:
		d.Active = true
	}
	return d
}

// Artifact is what an agent fetches for an image; nil for no image.
func Artifact(im *proto.Image) *proto.Artifact {
	if im == nil {
		return nil
	}
	return &proto.Artifact{Name: im.Name, URL: im.URL, SHA256: im.SHA256, Size: im.Size}
}

// NodeBoot is what node n boots in its present state. Discovered nodes
// boot the discovery image while discovery is active; every other node
// its local disk until a task (later: inspection, deploy, rescue) gives
// it a ramdisk.
func NodeBoot(n *proto.Node, d Discovery) proto.BootConfig {
	if n.Boot != nil {
		return *n.Boot.Clone()
	}
	if !n.Enrolled && d.Active {
		return d.Boot
	}
	return proto.BootConfig{Kind: proto.BootLocalDisk}
}

// NodeBMC is what a rack agent needs of n's BMC: its fields with the
// credentials, and the intents not yet answered; nil for a node without a
// BMC driver and address.
func NodeBMC(n *proto.Node) *proto.BootBMC {
	if n.BMC.Driver == "" || n.BMC.Address == "" {
		return nil
	}
	b := &proto.BootBMC{BMC: n.BMC, Maintenance: n.Maintenance}
	b.PasswordSet = false
	for _, in := range n.Intents {
		if !in.Done {
			if in.Boot != nil {
				bd := *in.Boot
				in.Boot = &bd
			}
			b.Intents = append(b.Intents, in)
		}
	}
	return b
}

// RackInput is what a rack's boot state is made of (state.RackView).
type RackInput struct {
	Rack     *proto.Rack
	Nodes    []*proto.Node
	Leases   []*proto.Lease
	Settings proto.Settings
	Images   map[string]*proto.Image
	// Tasks are the tasks by id; TaskKey derives their tokens.
	Tasks   map[string]*proto.Task
	TaskKey []byte
}

// RackBootState is what a rack's agents are told: the rack, the discovery
// boot and whether unknown MACs get it, every node of the rack with what
// it boots (a node with a running task: the task ramdisk with its token,
// and the task's plan), and every lease recorded for the rack (the asking
// agent's own included: an agent that lost its data directory learns from
// them what it may not offer). Index is left to the caller.
func RackBootState(in RackInput) proto.RackBootState {
	d := DiscoveryBoot(in.Settings, in.Images)
	out := proto.RackBootState{Rack: *in.Rack, Discovery: d.Boot, DiscoveryEnabled: d.Active}
	out.Nodes = make([]proto.BootNode, 0, len(in.Nodes))
	for _, n := range in.Nodes {
		bn := proto.BootNode{
			UUID: n.UUID, Name: n.Name, MACs: append([]string(nil), n.MACs...), IP: n.IP,
			Boot: NodeBoot(n, d), BMC: NodeBMC(n),
		}
		// A node in rescue keeps its rescue task's token and plan: a
		// rebooted rescue ramdisk reports in again.
		if t := in.Tasks[n.Task]; t != nil && (!t.State.Ended() || t.Kind == proto.TaskRescue && n.ProvisionState == proto.StateRescue) && bn.Boot.Kind == proto.BootRamdisk {
			bn.Boot.TaskToken = TaskToken(in.TaskKey, n.UUID, t.ID)
			var inv *proto.Inventory
			if len(n.Inventory) > 0 {
				inv = new(proto.Inventory)
				if json.Unmarshal(n.Inventory, inv) != nil {
					inv = nil
				}
			}
			vendor := proto.FindVendorTool(VendorTools(in.Settings), inv, t.Kind)
			if vendor != nil && vendor.Name != t.Vendor {
				vendor = nil // the tool chosen at creation is gone or renamed
			}
			bn.Task = Plan(t, vendor, in.Images)
		}
		out.Nodes = append(out.Nodes, bn)
	}
	out.Leases = make([]proto.Lease, 0, len(in.Leases))
	for _, l := range in.Leases {
		out.Leases = append(out.Leases, *l)
	}
	return out
}
