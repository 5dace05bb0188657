//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
	"github.com/metalfleet/metalfleet/proto"
)

// The VM's hardware, as QEMU is told to make it.
var labVM = vmSpec{
	MAC:          "52:54:00:e2:e0:01",
	UUID:         "5e2e0a1c-7d3b-4c9e-8f21-e2e000000001",
	Manufacturer: "Metalfleet",
	Product:      "LabVM",
	Serial:       "E2E-0001",
	MemMiB:       512,
	CPUs:         2,
	Disks:        []vmDisk{{"E2EDISK1", 1 << 30}, {"E2EDISK2", 2 << 30}},
}

// Bounds. LAB.md: about 7 s from power-on to the ramdisk's callback on
// an idle machine; TCG on two shared cores can be many times slower.
const (
	bootTimeout     = 180 * time.Second // power-on to node discovered
	poweroffTimeout = 60 * time.Second  // discovered to the VM's power-off
	totalBudget     = 6 * time.Minute
)

// TestDiscoveryQEMU: a QEMU VM (SeaBIOS, the NIC's iPXE ROM) boots from
// a real rack agent: DHCP, the iPXE script, kernel and initrd over HTTP,
// the discovery ramdisk, whose nodeagent reports the inventory; the
// coordinator enrolls it (auto_enroll) with the VM's exact hardware.
// Booted again as a discovered node, it is the same node, updated.
func TestDiscoveryQEMU(t *testing.T) {
	testDiscovery(t, false)
}

// TestDiscoveryQEMUUEFI is the same with OVMF (UEFI, the ROM's EFI
// iPXE). It runs only with METALFLEET_E2E_UEFI=1.
func TestDiscoveryQEMUUEFI(t *testing.T) {
	if os.Getenv("METALFLEET_E2E") == "1" && os.Getenv("METALFLEET_E2E_UEFI") != "1" {
		t.Skip("set METALFLEET_E2E_UEFI=1 to boot the VM with OVMF too")
	}
	testDiscovery(t, true)
}

func testDiscovery(t *testing.T, uefi bool) {
	need := map[string]string{
		"/dev/net/tun": "tun device",
		// QEMU's default ROM for virtio-net-pci (BIOS and EFI iPXE).
		"/usr/lib/ipxe/qemu/efi-virtio.rom": "package ipxe-qemu",
	}
	if uefi {
		need[ovmfCode], need[ovmfVars] = "package ovmf", "package ovmf"
	}
	e2eNeed(t, need)
	ipv6 := os.Getenv("METALFLEET_E2E_IPV6")
	if ipv6 == "" {
		ipv6 = "ra"
	}
	if ipv6 != "ra" && ipv6 != "on" && ipv6 != "off" {
		t.Fatalf("METALFLEET_E2E_IPV6=%q: want ra, on or off", ipv6)
	}
	testStart := time.Now()
	deadline := testStart.Add(totalBudget)
	if d, ok := t.Deadline(); ok && d.Add(-20*time.Second).Before(deadline) {
		deadline = d.Add(-20 * time.Second)
	}
	spec := labVM
	spec.UEFI = uefi

	lap := netlab.Laps(t)
	bin := binary(t)
	lap("metalfleet binary")
	images := ramdisk(t, t.TempDir())
	lap("discovery kernel and ramdisk")
	t.Logf("ramdisk BUILD-INFO: %s", strings.ReplaceAll(images.Info, "\n", " "))
	l := newLab(t, ipv6)
	l.bin, l.images = bin, images
	var (
		vms      []*vm
		nodeUUID string // once discovered
	)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		lines := readAgentLog(l.file("agent.log"))
		for i, v := range vms {
			if i == len(vms)-1 { // the boot that failed: how far it got
				b := &bootRecord{PowerOn: v.PowerOn}
				if !v.Stopped() {
					b.PoweredOff = v.Exited
				}
				b.fill(v, lines, spec.MAC, nodeUUID)
				b.logPhases(t, fmt.Sprintf("boot %d (failed)", i+1))
			}
			t.Logf("--- VM console, boot %d (%s), last lines ---\n%s", i+1, v.Serial, consoleText(v.Serial, 60))
			t.Logf("--- QEMU output, boot %d ---\n%s", i+1, netlab.Tail(v.LogPath, 20))
		}
		t.Logf("--- rack agent log (%s), last lines ---\n%s", l.file("agent.log"), netlab.Tail(l.file("agent.log"), 60))
		t.Logf("--- coordinator log (%s), last lines ---\n%s", l.file("coordinator.log"), netlab.Tail(l.file("coordinator.log"), 40))
	})
	lap("namespace " + l.NS + ", bridge " + bridgeName + ", tap " + tapName)
	l.startFleet()
	lap("coordinator up; rack, token, images, settings")
	l.startAgent()
	lap("rack agent up and synced")
	t.Logf("IPv6 on the rack network: %s", map[string]string{
		"ra":  "on, with router advertisements from the rack agent",
		"on":  "on, no router advertisements (METALFLEET_E2E_IPV6=on)",
		"off": "disabled in the namespace (METALFLEET_E2E_IPV6=off)"}[ipv6])

	// --- Boot 1: an unknown machine is discovered and enrolled. ---
	v1 := l.bootVM(spec, 1)
	vms = append(vms, v1)
	b1 := &bootRecord{PowerOn: v1.PowerOn}
	var sighted time.Time
	var node proto.Node
	waitUntil(t, earliest(deadline, v1.PowerOn.Add(bootTimeout)), "the VM to be discovered", v1, func() bool {
		if sighted.IsZero() {
			var sg []proto.Sighting
			if _, err := l.call("GET", "/v1/sightings?rack=r1", nil, &sg); err == nil &&
				slices.ContainsFunc(sg, func(s proto.Sighting) bool { return s.MAC == spec.MAC }) {
				sighted = time.Now()
			}
		}
		nodes, err := l.nodesWithMAC(spec.MAC)
		if err != nil || len(nodes) == 0 || len(nodes[0].Inventory) == 0 {
			return false
		}
		node = nodes[0]
		return true
	})
	b1.Discovered = time.Now()
	waitExit(t, earliest(deadline, time.Now().Add(poweroffTimeout)), v1, "the ramdisk to power the VM off")
	b1.PoweredOff = v1.Exited
	b1.fill(v1, readAgentLog(l.file("agent.log")), spec.MAC, "")
	b1.logPhases(t, "boot 1 (unknown machine)")
	if !sighted.IsZero() {
		t.Logf("boot 1: the coordinator listed the MAC among unknown-MAC sightings %.2fs after power-on", sighted.Sub(v1.PowerOn).Seconds())
	}
	t.Logf("boot 1: VM console:\n%s", consoleText(v1.Serial, 40))

	// What the agent saw: our DHCP gave the lease; the VM fetched the
	// script, kernel and initrd from the agent.
	pool := func(ip string) bool {
		a, err := netip.ParseAddr(ip)
		return err == nil && !a.Less(netip.MustParseAddr(l.prefix()+".100")) && !netip.MustParseAddr(l.prefix()+".200").Less(a)
	}
	checkBoot(t, "boot 1", b1)
	if !pool(b1.LeaseIP) {
		t.Errorf("boot 1: the firmware's lease %q is not in the rack's pool %s.100-.200", b1.LeaseIP, l.prefix())
	}
	if b1.ScriptKind != string(proto.BootDiscovery) {
		t.Errorf("boot 1: the agent served a %q script, want discovery", b1.ScriptKind)
	}

	// The coordinator's node: enrolled, with the VM's hardware.
	if nodes, _ := l.nodesWithMAC(spec.MAC); len(nodes) != 1 {
		t.Fatalf("after boot 1: %d nodes with MAC %s, want 1", len(nodes), spec.MAC)
	}
	if node.ProvisionState != proto.StateEnrolled || !node.Enrolled {
		t.Errorf("discovered node %s: provision_state %q enrolled %v, want enrolled (auto_enroll is on)", node.UUID, node.ProvisionState, node.Enrolled)
	}
	if node.Rack != "r1" {
		t.Errorf("discovered node %s: rack %q, want r1", node.UUID, node.Rack)
	}
	if node.IP == "" || pool(node.IP) || !strings.HasPrefix(node.IP, l.prefix()+".") {
		t.Errorf("discovered node %s: reserved ip %q, want one in %s.0/24 outside the pool", node.UUID, node.IP, l.prefix())
	}
	nodeUUID = node.UUID
	inv1 := checkInventory(t, node, spec)
	t.Logf("boot 1: node %s %s ip %s: %s", node.UUID, node.ProvisionState, node.IP, summary(inv1))

	// --- Boot 2: the same machine again, as a discovered node. ---
	// Enrolled, it would boot its local disk; set back to discovered it
	// boots the discovery image again.
	idx := l.mustCall("PUT", "/v1/nodes/"+node.UUID+"/enrolled", proto.EnrolledRequest{Enrolled: false}, nil)
	l.wait(30*time.Second, fmt.Sprintf("the agent to sync the boot state past index %d", idx), l.agent, func() bool { return l.agentIndex() >= idx })
	v2 := l.bootVM(spec, 2)
	vms = append(vms, v2)
	b2 := &bootRecord{PowerOn: v2.PowerOn}
	var (
		node2  proto.Node
		events []string // the node's last_boot as the coordinator showed it, polled
	)
	waitUntil(t, earliest(deadline, v2.PowerOn.Add(bootTimeout)), "the VM's second inventory", v2, func() bool {
		var n proto.Node
		if _, err := l.call("GET", "/v1/nodes/"+node.UUID, nil, &n); err != nil {
			return false
		}
		node2 = n
		if lb := n.LastBoot; lb != nil && lb.Time.After(v2.PowerOn) {
			if ev := fmt.Sprintf("%s@%.2fs", lb.Event, lb.Time.Sub(v2.PowerOn).Seconds()); !slices.Contains(events, ev) {
				events = append(events, ev)
			}
		}
		return n.LastBoot != nil && n.LastBoot.Event == "inventory" && n.LastBoot.Time.After(v2.PowerOn)
	})
	b2.Discovered = time.Now()
	waitExit(t, earliest(deadline, time.Now().Add(poweroffTimeout)), v2, "the ramdisk to power the VM off again")
	b2.PoweredOff = v2.Exited
	b2.fill(v2, readAgentLog(l.file("agent.log")), spec.MAC, node.UUID)
	b2.logPhases(t, "boot 2 (known, discovered node)")
	t.Logf("boot 2: the node's last_boot in the coordinator, as polled every 100 ms: %s", strings.Join(events, ", "))
	checkBoot(t, "boot 2", b2)
	if b2.LeaseIP != node.IP || b2.RamdiskIP != node.IP {
		t.Errorf("boot 2: leases %q (firmware) and %q (ramdisk), want the node's reservation %s", b2.LeaseIP, b2.RamdiskIP, node.IP)
	}

	// Updated, not duplicated.
	var all []proto.Node
	l.mustCall("GET", "/v1/nodes", nil, &all)
	var same []string
	for _, n := range all {
		var inv proto.Inventory
		_ = json.Unmarshal(n.Inventory, &inv)
		if slices.Contains(n.MACs, spec.MAC) || strings.EqualFold(inv.System.UUID, spec.UUID) {
			same = append(same, n.UUID)
		}
	}
	if len(same) != 1 || same[0] != node.UUID {
		t.Errorf("after boot 2: nodes with MAC %s or system uuid %s: %v, want only %s", spec.MAC, spec.UUID, same, node.UUID)
	}
	if len(all) != 1 {
		t.Errorf("after boot 2: %d nodes in the fleet, want 1", len(all))
	}
	if node2.ProvisionState != proto.StateDiscovered || node2.Enrolled {
		t.Errorf("after boot 2: node %s is %q (enrolled %v), want discovered: rediscovery must not enroll it again", node.UUID, node2.ProvisionState, node2.Enrolled)
	}
	inv2 := checkInventory(t, node2, spec)
	if inv2.Collected.At == inv1.Collected.At || !node2.UpdatedAt.After(node.UpdatedAt) {
		t.Errorf("after boot 2: node %s not updated: inventory collected at %s (was %s), updated_at %s (was %s)",
			node.UUID, inv2.Collected.At, inv1.Collected.At, node2.UpdatedAt, node.UpdatedAt)
	}
	t.Logf("boot 2: node %s updated in place: %s, inventory collected %s", node.UUID, node2.ProvisionState, inv2.Collected.At)
	t.Logf("power-on to node discovered: boot 1 %.2fs, boot 2 %.2fs; whole test %.1fs",
		b1.Discovered.Sub(b1.PowerOn).Seconds(), b2.Discovered.Sub(b2.PowerOn).Seconds(), time.Since(testStart).Seconds())
}

// fill adds the agent's log and the console's times to b.
func (b *bootRecord) fill(v *vm, lines []agentLine, mac, node string) {
	b.scan(lines, mac, node)
	v.console.stop()
	b.ConsoleCfg = v.console.at(markCfgStart)
	b.ConsoleCfgOK = v.console.at(markCfgDone)
	b.Fetched = v.console.at(v.initrdDone)
	b.Init = v.console.at(markInit)
}

// checkBoot: every step of a network boot from the agent happened.
func checkBoot(t *testing.T, name string, b *bootRecord) {
	t.Helper()
	for _, c := range []struct {
		what string
		at   time.Time
	}{
		{"a DHCP lease from the agent (firmware)", b.Lease},
		{"the iPXE script from the agent", b.Script},
		{"the kernel from the agent", b.Kernel},
		{"the initrd from the agent", b.Initrd},
		{"a DHCP lease from the agent (ramdisk)", b.RamdiskLease},
		{"the inventory callback at the agent", b.Callback},
	} {
		if c.at.IsZero() {
			t.Errorf("%s: the agent's log shows no %s", name, c.what)
		}
	}
	if len(b.Drops) > 0 {
		t.Logf("%s: DHCP requests the agent did not answer: %s", name, strings.Join(b.Drops, "; "))
	}
}

// checkInventory: the node's inventory is the VM's hardware.
func checkInventory(t *testing.T, n proto.Node, s vmSpec) proto.Inventory {
	t.Helper()
	var inv proto.Inventory
	if err := json.Unmarshal(n.Inventory, &inv); err != nil {
		t.Fatalf("node %s: inventory: %v\n%s", n.UUID, err, n.Inventory)
	}
	bad := func(format string, a ...any) {
		t.Helper()
		t.Errorf("node %s inventory: "+format, append([]any{n.UUID}, a...)...)
	}
	if !slices.ContainsFunc(inv.Interfaces, func(i proto.Interface) bool { return strings.EqualFold(i.MAC, s.MAC) }) {
		bad("no interface with MAC %s: %+v", s.MAC, inv.Interfaces)
	}
	if !strings.EqualFold(inv.PXEMAC, s.MAC) {
		bad("pxe_mac %q, want %s", inv.PXEMAC, s.MAC)
	}
	// MemTotal is the RAM less what the kernel keeps for itself.
	if lo, hi := int64(s.MemMiB)*(400<<20)/512, int64(s.MemMiB)<<20; inv.Memory.TotalBytes < lo || inv.Memory.TotalBytes > hi {
		bad("memory total_bytes %d (%d MiB), want %d-%d MiB for -m %d", inv.Memory.TotalBytes, inv.Memory.TotalBytes>>20, lo>>20, hi>>20, s.MemMiB)
	}
	if inv.CPUs.Count != s.CPUs {
		bad("cpus.count %d, want %d", inv.CPUs.Count, s.CPUs)
	}
	for _, d := range s.Disks {
		if !slices.ContainsFunc(inv.Disks, func(g proto.Disk) bool { return g.Serial == d.Serial && g.SizeBytes == d.Size }) {
			bad("no disk with serial %s and %d bytes: %+v", d.Serial, d.Size, inv.Disks)
		}
	}
	if len(inv.Disks) != len(s.Disks) {
		bad("%d disks, want %d: %+v", len(inv.Disks), len(s.Disks), inv.Disks)
	}
	if inv.System.Serial != s.Serial || !strings.EqualFold(inv.System.UUID, s.UUID) {
		bad("system serial %q uuid %q, want %q %q", inv.System.Serial, inv.System.UUID, s.Serial, s.UUID)
	}
	if inv.System.Vendor != s.Manufacturer || inv.System.Product != s.Product {
		bad("system vendor %q product %q, want %q %q", inv.System.Vendor, inv.System.Product, s.Manufacturer, s.Product)
	}
	if want := map[bool]string{false: "bios", true: "uefi"}[s.UEFI]; inv.BootMode != want {
		bad("boot_mode %q, want %q", inv.BootMode, want)
	}
	return inv
}

func summary(inv proto.Inventory) string {
	var disks []string
	for _, d := range inv.Disks {
		disks = append(disks, fmt.Sprintf("%s %s %dMiB", d.Name, d.Serial, d.SizeBytes>>20))
	}
	var ifs []string
	for _, i := range inv.Interfaces {
		ifs = append(ifs, i.Name+" "+i.MAC)
	}
	return fmt.Sprintf("%s %s serial %s uuid %s, %s, %d cpus (%s), memory %d MiB, disks [%s], interfaces [%s], nodeagent %s in %dms",
		inv.System.Vendor, inv.System.Product, inv.System.Serial, inv.System.UUID, inv.BootMode, inv.CPUs.Count, inv.CPUs.Model,
		inv.Memory.TotalBytes>>20, strings.Join(disks, ", "), strings.Join(ifs, ", "), inv.Collected.Agent, inv.Collected.DurationMS)
}

// waitUntil polls cond every 100 ms until it holds; it fails the test at
// the deadline, or if the VM powers off first.
func waitUntil(t *testing.T, deadline time.Time, what string, v *vm, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var stopped time.Time
	for !cond() {
		if !v.Running() {
			// The VM may power off right after its report, before the
			// report lands: give the report a second to arrive.
			if stopped.IsZero() {
				stopped = time.Now()
			} else if time.Since(stopped) > time.Second {
				t.Fatalf("waiting for %s: the VM (%s) stopped after %.1fs: %v", what, v.Name, v.Exited.Sub(v.PowerOn).Seconds(), v.Err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up after %.1fs from power-on", what, time.Since(v.PowerOn).Seconds())
		}
		<-tick.C
	}
}

// waitExit waits for QEMU to exit by itself (the guest powered off).
func waitExit(t *testing.T, deadline time.Time, v *vm, what string) {
	t.Helper()
	select {
	case <-v.Done:
		if v.Err != nil {
			t.Errorf("QEMU %s exited with %v", v.Name, v.Err)
		}
	case <-time.After(time.Until(deadline)):
		t.Fatalf("waiting for %s: the VM still runs %.1fs after power-on", what, time.Since(v.PowerOn).Seconds())
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
