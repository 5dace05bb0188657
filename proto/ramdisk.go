package proto

import (
	"strings"
	"unicode/utf8"
)

// The ramdisk protocol: what a rack agent's boot script puts on a
// ramdisk's kernel command line and what the ramdisk (nodeagent, or the
// simulator) sends back. rackagent/httpboot, rackagent/nodeagent,
// cmd/nodeagent and rackagent/sim use these names and nothing else.
//
//   - The agent serves GET /boot/<mac>.ipxe; the script boots the ramdisk
//     with the CmdlineCallback, CmdlineMAC, BOOTIF and, for a task,
//     CmdlineToken and CmdlineTask keys on its command line.
//   - The ramdisk POSTs JSON to <metalfleet.callback>/<step>
//     (CallbackPath is the agent's route), naming its MAC in MACHeader
//     or the mac query parameter.
//   - A callback of a task carries "Authorization: Bearer <task token>"
//     (the metalfleet.token value). The one callback without a token is
//     the discovery inventory (StepInventory): the agent accepts it only
//     from the address it leased to that MAC, and only after it served
//     that MAC the discovery script.

// CallbackPath is the rack agent's route for ramdisk callbacks; {step}
// names the step.
const CallbackPath = "/v1/callback/{step}"

// CallbackPrefix is the callback URL's path below the agent's base URL;
// metalfleet.callback is BASE + CallbackPrefix.
const CallbackPrefix = "/v1/callback"

// MACHeader names the MAC a callback is about (or the mac query
// parameter).
const MACHeader = "X-Metalfleet-MAC"

// MACQuery is the query parameter that may name the MAC instead of
// MACHeader.
const MACQuery = "mac"

// StepInventory is the step a discovery ramdisk reports, without a
// token.
const StepInventory = "inventory"

// TaskDiscovery is the task name of a discovery boot.
const TaskDiscovery = "discovery"

// Kernel command-line keys of the ramdisk protocol.
const (
	CmdlineCallback    = "metalfleet.callback"     // the callback URL
	CmdlineMAC         = "metalfleet.mac"          // the boot MAC, aa:bb:cc:dd:ee:ff
	CmdlineToken       = "metalfleet.token"        // the task token (a task's callbacks send it as a bearer token)
	CmdlineTask        = "metalfleet.task"         // the task name; discovery for a discovery boot
	CmdlinePowerOff    = "metalfleet.poweroff"     // power off when done (true/false)
	CmdlinePrint       = "metalfleet.print"        // print the inventory on the console
	CmdlineLLDP        = "metalfleet.lldp"         // how long to listen for LLDP
	CmdlineDHCPTimeout = "metalfleet.dhcp_timeout" // how long to wait for a lease
	CmdlineOnError     = "metalfleet.onerror"      // reboot, poweroff or stay
	CmdlineBOOTIF      = "BOOTIF"                  // PXELINUX's 01-aa-bb-cc-dd-ee-ff
)

// MaxCmdline is the longest operator command line (a setting or a boot
// config's cmdline); the agent adds its own keys after it, and Linux
// keeps 2047 bytes in all.
const MaxCmdline = 1024

// cmdlineUnsafe are the characters iPXE interprets on a script line:
// ${...} expands a setting, quotes and backslashes are removed by its
// word splitting (so the kernel would not see them), and |, &, ; chain
// commands. # is refused so nothing can read as a comment.
const cmdlineUnsafe = "$\"'\\|&;#`<>"

// CheckCmdline checks a kernel command line an operator gives (the
// discovery_cmdline setting, a boot config's cmdline): printable ASCII
// and spaces only (no control character, C0, DEL or C1 U+0080-U+009F,
// no newline, no other non-ASCII), none of the characters iPXE would
// interpret, at most MaxCmdline bytes. The FSM refuses such a setting
// and the agent's renderer refuses to render one, by this same check.
func CheckCmdline(field, s string) error {
	if len(s) > MaxCmdline {
		return Errorf(CodeInvalid, "%s: %d bytes; at most %d", field, len(s), MaxCmdline)
	}
	if !utf8.ValidString(s) {
		return Errorf(CodeInvalid, "%s: not valid UTF-8", field)
	}
	for i, r := range s {
		switch {
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return Errorf(CodeInvalid, "%s: control character %U at byte %d is not allowed", field, r, i)
		case r > 0x7f:
			return Errorf(CodeInvalid, "%s: character %U at byte %d: only printable ASCII is allowed", field, r, i)
		case strings.ContainsRune(cmdlineUnsafe, r):
			return Errorf(CodeInvalid, "%s: character %q at byte %d is not allowed (iPXE would interpret it; none of %s)", field, r, i, cmdlineUnsafe)
		}
	}
	return nil
}
