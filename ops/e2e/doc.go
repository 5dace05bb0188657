// Package e2e holds Metalfleet's end-to-end tests on real (virtual)
// hardware: a QEMU VM network-boots from a real `metalfleet rackagent`,
// runs the discovery ramdisk of build/ramdisk (nodeagent as /init) and is
// discovered by a real `metalfleet coordinator`. The package has no code
// of its own; the tests are in e2e_test.go and their helpers beside it.
//
// TestDiscoveryQEMU boots the VM (SeaBIOS, the NIC's own iPXE ROM) twice:
// first as an unknown machine, which must end up as one enrolled node
// (auto_enroll) whose inventory is exactly the VM's hardware; then, set
// back to discovered, again, which must update that node, not add one.
// It logs each boot's phases (power-on, DHCP, script, kernel, initrd,
// Linux, the ramdisk's DHCP, the callback, the node in the coordinator,
// power-off) from the agent's log, the VM's serial console and the API.
// TestDiscoveryQEMUUEFI does the same under OVMF.
//
// The tests skip unless METALFLEET_E2E=1 (`make e2e` sets it), so that
// `go test ./...` stays fast. Then they need root, ip(8), /dev/net/tun,
// qemu-system-x86_64 and the NIC's iPXE ROM (Debian packages
// qemu-system-x86 and ipxe-qemu; ovmf for UEFI; see ops/apt-packages.txt);
// a missing one skips the test, or fails it when CI is set. A missing
// build/ramdisk is built with ops/ramdisk/build.sh; the test boots copies
// of it, so a rebuild during the run changes nothing under the agent.
//
// Wiring of one run (PID is the test process, N a per-test number):
//
//	namespace mfE-PID-N
//	  lo 127.0.0.1 (up)
//	    coordinator  127.0.0.1:7480 (API), 127.0.0.1:7481 (Raft)
//	  mfbr0 10.99.X.1/24, fe80::1 (bridge)
//	    rackagent: DHCP on mfbr0, TFTP 10.99.X.1:69, HTTP 10.99.X.1:8080
//	    router advertisements from the test (see below)
//	    mftap0 (tap, a port of mfbr0) <-> QEMU virtio-net 52:54:00:e2:e0:01
//
// Everything runs inside the namespace (`ip netns exec`); the test
// reaches the coordinator's API and the agent's HTTP with sockets it
// opens inside it (setns on a locked OS thread). Nothing leaves it: the
// namespace has no uplink. Processes are stopped by their pid, then the
// namespace is deleted, when the test ends; should the test process die
// first, its children die with it (Pdeathsig) and the next run deletes
// the namespace it left.
//
// IPv6: this iPXE (Debian's 2019 build) runs IPv6 autoconfiguration
// beside DHCPv4 and waits 16 s for a router advertisement before it
// fetches the boot script; the rack agent sends none, and disabling IPv6
// in the namespace does not help (the wait is the guest's). The test
// sends a minimal RA every 500 ms on the bridge (as the lab's dnsmasq
// does with enable-ra), which takes those 16 s off every boot.
// METALFLEET_E2E_IPV6=on (IPv6 on, no RAs) or =off (IPv6 disabled in the
// namespace, no RAs) measure a boot without them.
//
// The discovery kernel command line (setting discovery_cmdline) is
// "console=ttyS0,115200 quiet panic=5": the nodeagent's log reaches the
// serial console, and a kernel panic ends the VM (-no-reboot) at once.
//
// Environment:
//
//	METALFLEET_E2E=1       run the tests
//	METALFLEET_BIN=PATH    the metalfleet binary (relative: from the repository's root;
//	                       default: built for the test)
//	METALFLEET_E2E_UEFI=1  run the UEFI (OVMF) variant too
//	METALFLEET_E2E_IPV6    ra (default), on or off; see above
//	CI=true                a missing dependency fails instead of skipping
package e2e
