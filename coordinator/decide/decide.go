// Package decide holds the coordinator's decisions as pure functions of a
// state view: what a node boots, whether discovery is active (and why
// not), and what a rack agent is told. No I/O, no clock: the callers read
// the state, call decide, and act on the answer. It imports proto and the
// standard library only (the guard test keeps it so).
package decide

import (
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

// RackBootState is what a rack's agents are told: the rack, the discovery
// boot and whether unknown MACs get it, every node of the rack with what
// it boots, and every lease recorded for the rack (the asking agent's own
// included: an agent that lost its data directory learns from them what
// it may not offer). Index is left to the caller.
func RackBootState(r *proto.Rack, nodes []*proto.Node, leases []*proto.Lease, s proto.Settings, images map[string]*proto.Image) proto.RackBootState {
	d := DiscoveryBoot(s, images)
	out := proto.RackBootState{Rack: *r, Discovery: d.Boot, DiscoveryEnabled: d.Active}
	out.Nodes = make([]proto.BootNode, 0, len(nodes))
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, proto.BootNode{
			UUID: n.UUID, Name: n.Name, MACs: append([]string(nil), n.MACs...), IP: n.IP,
			Boot: NodeBoot(n, d), BMC: NodeBMC(n),
		})
	}
	out.Leases = make([]proto.Lease, 0, len(leases))
	for _, l := range leases {
		out.Leases = append(out.Leases, *l)
	}
	return out
}
