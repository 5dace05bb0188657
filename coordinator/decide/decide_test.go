package decide

import (
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

var (
	kernel  = &proto.Image{Name: "k", Kind: proto.ImageKernel, URL: "http://x/k", SHA256: "aa", Size: 1}
	ramdisk = &proto.Image{Name: "r", Kind: proto.ImageRamdisk, URL: "http://x/r", SHA256: "bb", Size: 2}
	images  = map[string]*proto.Image{"k": kernel, "r": ramdisk}
)

func TestDiscoveryBoot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		s      proto.Settings
		images map[string]*proto.Image
		active bool
		reason string
	}{
		{"active", proto.Settings{DiscoveryEnabled: true, DiscoveryKernel: "k", DiscoveryRamdisk: "r"}, images, true, ""},
		{"disabled", proto.Settings{DiscoveryKernel: "k", DiscoveryRamdisk: "r"}, images, false, "discovery.enabled is false"},
		{"no kernel", proto.Settings{DiscoveryEnabled: true, DiscoveryRamdisk: "r"}, images, false, "discovery.kernel is not set"},
		{"nothing set", proto.Settings{DiscoveryEnabled: true}, images, false, "discovery.kernel is not set; discovery.ramdisk is not set"},
		{"image gone", proto.Settings{DiscoveryEnabled: true, DiscoveryKernel: "k", DiscoveryRamdisk: "gone"}, images, false, `discovery.ramdisk: image "gone" does not exist`},
		{"wrong kind", proto.Settings{DiscoveryEnabled: true, DiscoveryKernel: "r", DiscoveryRamdisk: "r"}, images, false, `discovery.kernel: image "r" is a ramdisk image, not a kernel`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := DiscoveryBoot(tc.s, tc.images)
			if d.Active != tc.active || d.Reason != tc.reason {
				t.Errorf("DiscoveryBoot(%+v) = active %v reason %q, want %v %q", tc.s, d.Active, d.Reason, tc.active, tc.reason)
			}
			if d.Boot.Kind != proto.BootDiscovery || d.Boot.Task != proto.TaskDiscovery {
				t.Errorf("DiscoveryBoot: boot %+v, want kind discovery, task discovery", d.Boot)
			}
			if tc.active && (d.Boot.Kernel == nil || d.Boot.Kernel.URL != kernel.URL || d.Boot.Initrd == nil || d.Boot.Initrd.SHA256 != ramdisk.SHA256) {
				t.Errorf("DiscoveryBoot: artifacts %+v %+v, want the k and r images", d.Boot.Kernel, d.Boot.Initrd)
			}
		})
	}
}

func TestNodeBoot(t *testing.T) {
	on := DiscoveryBoot(proto.Settings{DiscoveryEnabled: true, DiscoveryKernel: "k", DiscoveryRamdisk: "r", DiscoveryCmdline: "console=ttyS0"}, images)
	off := DiscoveryBoot(proto.Settings{DiscoveryKernel: "k", DiscoveryRamdisk: "r"}, images)
	for _, tc := range []struct {
		name     string
		enrolled bool
		d        Discovery
		want     proto.BootKind
	}{
		{"discovered, discovery active", false, on, proto.BootDiscovery},
		{"discovered, discovery off", false, off, proto.BootLocalDisk},
		{"enrolled, discovery active", true, on, proto.BootLocalDisk},
		{"enrolled, discovery off", true, off, proto.BootLocalDisk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NodeBoot(&proto.Node{Enrolled: tc.enrolled}, tc.d)
			if got.Kind != tc.want {
				t.Errorf("NodeBoot(enrolled=%v) = %s, want %s", tc.enrolled, got.Kind, tc.want)
			}
			if got.Kind == proto.BootDiscovery && got.Cmdline != "console=ttyS0" {
				t.Errorf("NodeBoot: cmdline %q, want the setting's", got.Cmdline)
			}
		})
	}
}

func TestRackBootState(t *testing.T) {
	rack := &proto.Rack{Name: "r1"}
	nodes := []*proto.Node{{UUID: "u1", Name: "n1", MACs: []string{"aa:bb:cc:dd:ee:01"}, IP: "10.0.0.5"}, {UUID: "u2", Enrolled: true}}
	leases := []*proto.Lease{{MAC: "aa:bb:cc:dd:ee:09", IP: "10.0.0.100", Agent: "a1"}}
	s := proto.Settings{DiscoveryEnabled: true, DiscoveryKernel: "k", DiscoveryRamdisk: "r"}
	st := RackBootState(RackInput{Rack: rack, Nodes: nodes, Leases: leases, Settings: s, Images: images})
	if st.Rack.Name != "r1" || !st.DiscoveryEnabled || len(st.Nodes) != 2 || len(st.Leases) != 1 {
		t.Fatalf("RackBootState = %+v, want rack r1, discovery on, 2 nodes, 1 lease", st)
	}
	if st.Nodes[0].Boot.Kind != proto.BootDiscovery || st.Nodes[1].Boot.Kind != proto.BootLocalDisk {
		t.Errorf("boots %s, %s; want discovery, local-disk", st.Nodes[0].Boot.Kind, st.Nodes[1].Boot.Kind)
	}
	// The answer owns its slices: changing it leaves the state alone.
	st.Nodes[0].MACs[0] = "changed"
	if nodes[0].MACs[0] != "aa:bb:cc:dd:ee:01" {
		t.Error("RackBootState shares a node's MACs with the state")
	}
	if empty := RackBootState(RackInput{Rack: rack}); empty.Nodes == nil || empty.Leases == nil {
		t.Errorf("RackBootState of an empty rack: nodes %v leases %v, want empty lists (JSON [])", empty.Nodes, empty.Leases)
	}
}
