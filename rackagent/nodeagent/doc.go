// Package nodeagent is the library of the small static program inside every
// task ramdisk (cmd/nodeagent).
//
// It does four things:
//
//   - Collect reads a machine's inventory (proto.Inventory) from /sys,
//     /proc and /dev under a filesystem root: "/" on a machine, a fixture
//     tree in tests. Live-only sources (interface addresses, the BMC
//     address over /dev/ipmi0, LLDP frames) are read only when the root is
//     "/".
//   - Report posts one step's JSON result to the rack agent's callback URL,
//     with the MAC header and the task token, retrying with backoff. The
//     simulated machines of dev mode use it too.
//   - RunInit is PID 1 of the ramdisk: it mounts the kernel filesystems,
//     loads the kernel modules the ramdisk build listed, reads the kernel
//     command line (metalfleet.callback, metalfleet.mac, BOOTIF,
//     metalfleet.token, metalfleet.task, ...), takes a DHCP lease on the
//     boot interface, collects and reports the inventory (or, for a task,
//     runs RunTask), then powers off or stays up as the command line says.
//   - RunTask runs a servicing task (inspect, burn-in, firmware, BIOS,
//     RAID): it fetches the plan from the rack agent, runs the steps not
//     yet passed on a Machine (LinuxMachine in the ramdisk, a simulated
//     one in dev mode) and reports each step's start, progress and
//     result. Vendor tools run as programs (ToolArgs, no shell); mdadm
//     does software RAID; MFLab is the lab's own vendor tool
//     (proto.LabTool), firmware and BIOS settings on a disk. It also runs
//     an instance's tasks: deploy (the image, raw, gzip or zstd, streamed
//     to the root disk and read back), clean (wipefs and zeroes) and
//     rescue (a busybox shell on the serial console and, when asked, an
//     SSH server for user rescue; the ramdisk then stays up).
//
// What needs a real machine (mount, finit_module, netlink, ioctl, raw
// sockets, reboot) is kept thin; what decides (parsing the command line,
// choosing interfaces, ordering modules, parsing sysfs, SMBIOS, LLDP and
// IPMI replies, posting with retries) is pure and tested.
package nodeagent
