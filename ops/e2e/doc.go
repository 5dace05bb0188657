// Package e2e holds Metalfleet's end-to-end tests on real (virtual)
// hardware: a QEMU VM network-boots from a real `metalfleet rackagent`,
// runs the discovery ramdisk of build/ramdisk (nodeagent as /init) and is
// discovered by a real `metalfleet coordinator`. The package has no code
// of its own; the tests are in e2e_test.go and bmc_test.go and their
// helpers beside them.
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
// TestOutOfBandQEMU (bmc_test.go) drives a VM through a virtual BMC
// (vbmc_test.go): OpenIPMI's ipmi_sim on 10.98.X.2:623 (a /32 on the
// namespace's lo), whose chassis_control program (a bash script) hands
// each call to a controller in the test that starts, resets and kills
// QEMU and keeps a one-time boot device; SOL is
// ipmi_sim's, on QEMU's serial socket. Booted from "disk", the VM runs a
// busybox system with a shell on ttyS0 (testdata/os/init); from "pxe", it
// network-boots from the rack agent. With the real coordinator, rack agent
// (--power-sync-interval 2s) and CLI, the test checks: a wrong BMC password
// leaves a node enrolled with a clear last_error; manage verifies the BMC
// (RMCP+ cipher 3, and v1.5 lan) before a node is manageable; power on,
// reboot (a hard reset of the running VM) and off; the serial console (one
// keyboard, a refused second attach, --force, a read-only watcher, the
// console log holding a boot, sessions in the history); power changes made
// at the BMC or by killing QEMU picked up by power sync and not undone; a
// one-time PXE boot device before a reboot (once: the next power-on boots
// the OS); soft-off (the OS's acpid powers off on the power button); a
// BMC that stops answering (ipmi_sim SIGSTOPped) makes the power unknown
// and the BMC unreachable until it answers again. It
// logs the time from `node power on` to the VM's first DHCPDISCOVER at the
// rack agent. TestVirtualBMCQEMU checks the virtual BMC alone with
// ipmitool (power, boot device, reset, soft-off, SOL): when it fails, the
// lab is at fault.
//
// TestTasksQEMU (tasks_test.go, taskslab_test.go) runs servicing tasks on
// one VM behind the virtual BMC, through the CLI (`node task NODE KIND
// --param ... --wait -o json`), with the task ramdisk of build/ramdisk
// (settings tasks.kernel, tasks.ramdisk: the discovery images). The VM's
// SMBIOS vendor is QEMU, so the lab vendor tool (/bin/mflab in the
// ramdisk) matches it; it has two 64 MiB disks for RAID and the lab
// tool's device (serial MFLAB-DEVICE), each a sparse file kept across
// power-ons. In order, each from a manageable node that is powered off:
// an inspect, during which a step report and a plan fetch with a wrong
// task token are refused 401 by the rack agent; a 3 s burn-in whose
// per-component results (cpu, memory, disk, network) are on the task and
// on node.task_results, with its time by phase logged as a Markdown
// table; a long burn-in aborted (`node task abort`) while its cpu step
// runs; a burn-in whose VM is reset (QEMU's system_reset, behind
// Metalfleet's back) during its memory step, which boots the task ramdisk
// again and resumes at that step (cpu not run again, memory's second
// attempt); RAID1 over the two disks (the new inventory shows the array,
// and the disks' files hold the md superblocks); a firmware update of the
// lab device's bios from an image served by the test over HTTP in the
// namespace (versions before and after); BIOS settings read back; a
// setting that cannot be read back as set (a vendor_tools entry whose
// BIOS Set applies nothing) fails the task naming it, with the console
// log of its boot attached;
// and an inspect that finds a disk added while the VM was off. It skips
// (fails under CI) when the ramdisk has no mflab or mdadm.
//
// TestInstancesQEMU (instances_test.go, instimage_test.go) runs an
// instance's life through the CLI on a VM behind the virtual BMC whose
// boot device "default" boots its disks (vmSpec.DiskBoot), in BIOS and
// UEFI (OVMF) labs, one after the other: a disk image the test builds (BIOS:
// an MBR boot sector printing a marker on COM1, raw; UEFI: GRUB as
// EFI/BOOT/BOOTX64.EFI on an mtools FAT ESP in a GPT disk, gzip'd) is
// deployed (`instance create --wait`; BIOS forced with --node, UEFI
// scheduled) to the smaller of two disks, whose bytes the test checks
// from the host, and boots (the marker on the serial console); rescue
// with the instance's rescue image and a password (the serial shell
// through `node console` answers, SSH for user rescue, dd's raw write
// rate of the other disk), unrescue (the marker again, the disk's bytes
// unchanged, boot config local-disk with nothing saved), rescue with the
// flavor's image, unrescue, and delete (the disks' first and last MiB
// zero, wipefs finds nothing). The BIOS lab runs three coordinators and
// a fault in each rescue or unrescue: the rack agent killed as the
// rescue ramdisk's /init runs (started again on its data dir), the VM's
// power cut during an unrescue (ipmi_sim held with SIGSTOP so that it is
// before the agent's reboot), the leader killed between the rescue's
// boot config switch and the reboot (the BMC held likewise). The
// deploy's phases, the rescue and unrescue times and the write rates are
// logged as Markdown rows. TestInstanceImagesQEMU boots the two images
// in QEMU alone. They need grub-efi-amd64-bin and mtools (UEFI image),
// and skip (fail under CI) when the ramdisk has no rescue mode.
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
//	METALFLEET_E2E_INSTANCES  bios or uefi: TestInstancesQEMU runs that lab only
//	METALFLEET_E2E_IMAGE_MIB  the BIOS instance image's size (default 24; 1024 for BENCHMARKS.md)
//	METALFLEET_E2E_IPV6    ra (default), on or off; see above
//	METALFLEET_E2E_RAMDISK=DIR  the kernel and ramdisk of DIR (ops/ramdisk/build.sh OUT=DIR)
//	                       instead of build/ramdisk, which is built when missing
//	CI=true                a missing dependency fails instead of skipping
package e2e
