package httpboot

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/metalfleet/metalfleet/proto"
)

// ScriptParams is everything RenderScript needs for one MAC.
type ScriptParams struct {
	// MAC is the booting interface, in any form net.ParseMAC accepts.
	MAC string
	// NodeUUID is the known node's uuid; empty for an unknown MAC.
	NodeUUID string
	// Boot is what the MAC should boot.
	Boot proto.BootConfig
	// BaseURL is the agent's HTTP boot address, http://ADVERTISE:PORT.
	BaseURL string
}

// maxCmdline is the longest x86 Linux command line (COMMAND_LINE_SIZE
// less the NUL); a longer one is cut, which could cut the task token.
const maxCmdline = 2047

var shaRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// RenderScript renders the iPXE script for p. It is pure: the same
// parameters always give the same script. It refuses a configuration it
// cannot render safely: a ramdisk kind without kernel or initrd, and any
// value with control characters (a newline in a command line would be a
// second script line).
func RenderScript(p ScriptParams) (string, error) {
	mac, err := parseMAC(p.MAC)
	if err != nil {
		return "", err
	}
	switch p.Boot.Kind {
	case proto.BootLocalDisk:
		// exit returns to the firmware, which goes on to the next boot
		// device: the local disk.
		return "#!ipxe\nexit\n", nil
	case proto.BootRamdisk, proto.BootDiscovery:
	case "":
		return "", fmt.Errorf("boot config for %s has no kind", mac)
	default:
		return "", fmt.Errorf("boot config for %s: unknown kind %q", mac, p.Boot.Kind)
	}

	base, err := checkBaseURL(p.BaseURL)
	if err != nil {
		return "", err
	}
	who := mac
	if p.NodeUUID != "" {
		if !proto.IsUUID(p.NodeUUID) {
			return "", fmt.Errorf("node uuid %q is not a uuid", p.NodeUUID)
		}
		who = strings.ToLower(p.NodeUUID)
	}
	kernel, err := artifactURL(base, who, "kernel", p.Boot.Kind, p.Boot.Kernel)
	if err != nil {
		return "", err
	}
	initrd, err := artifactURL(base, who, "initrd", p.Boot.Kind, p.Boot.Initrd)
	if err != nil {
		return "", err
	}
	// The same check the coordinator's FSM makes on the settings, so a
	// command line it accepted is one this renders.
	if err := proto.CheckCmdline("cmdline", p.Boot.Cmdline); err != nil {
		return "", err
	}
	// The token and task are single command-line words.
	if err := checkWord("task token", p.Boot.TaskToken); err != nil {
		return "", err
	}
	if err := checkWord("task", p.Boot.Task); err != nil {
		return "", err
	}

	var args []string
	if c := strings.TrimSpace(p.Boot.Cmdline); c != "" {
		args = append(args, c)
	}
	args = append(args,
		// iPXE names the initrd after its URL's last path segment (the
		// sha256). Under UEFI, Linux's EFI stub loads only the initrds
		// the command line names from iPXE's file system (this iPXE has
		// no LINUX_EFI_INITRD_MEDIA_GUID): without this the kernel boots
		// with no initrd and panics. BIOS boots ignore it.
		"initrd="+strings.ToLower(p.Boot.Initrd.SHA256),
		proto.CmdlineBOOTIF+"=01-"+strings.ReplaceAll(mac, ":", "-"),
		proto.CmdlineCallback+"="+base+proto.CallbackPrefix,
		proto.CmdlineMAC+"="+mac,
	)
	if p.Boot.TaskToken != "" {
		args = append(args, proto.CmdlineToken+"="+p.Boot.TaskToken)
	}
	if p.Boot.Task != "" {
		args = append(args, proto.CmdlineTask+"="+p.Boot.Task)
	}

	cmdline := strings.Join(args, " ")
	if len(cmdline) > maxCmdline {
		return "", fmt.Errorf("the kernel command line would be %d bytes; Linux keeps only %d", len(cmdline), maxCmdline)
	}

	// A download or boot that fails (the agent restarting, a cut
	// transfer) network-boots the machine again after a pause rather
	// than fall through to "no bootable device" and sit there until a
	// task's timeout: the next boot asks DHCP anew (the rack's other
	// agent answers if this one is gone).
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("kernel " + kernel + " " + cmdline + " || goto failed\n")
	b.WriteString("initrd " + initrd + " || goto failed\n")
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\n")
	b.WriteString("echo metalfleet: the boot files could not be fetched or booted, network-booting again in 10 s\n")
	b.WriteString("sleep 10\n")
	b.WriteString("reboot\n")
	return b.String(), nil
}

func artifactURL(base, who, role string, kind proto.BootKind, a *proto.Artifact) (string, error) {
	if a == nil {
		return "", fmt.Errorf("%s boot config has no %s", kind, role)
	}
	if !shaRE.MatchString(strings.ToLower(a.SHA256)) {
		return "", fmt.Errorf("%s boot config: %s sha256 %q is not 64 hex digits", kind, role, a.SHA256)
	}
	// who is a normalized MAC or a uuid: nothing in it needs escaping.
	return base + "/artifacts/" + strings.ToLower(a.SHA256) + "?node=" + who, nil
}

func checkBaseURL(s string) (string, error) {
	if err := checkWord("base URL", s); err != nil {
		return "", err
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("base URL %q: want http://HOST:PORT", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("base URL %q: want http://HOST:PORT without user, query or fragment", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// checkText refuses invalid UTF-8 and control characters (newlines
// included): the value goes on one line of the script.
func checkText(field, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", field)
	}
	for i, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s has control character %U at byte %d; refusing to put it in a script", field, r, i)
		}
	}
	return nil
}

// checkWord is checkText that also refuses spaces.
func checkWord(field, s string) error {
	if err := checkText(field, s); err != nil {
		return err
	}
	if strings.ContainsFunc(s, unicode.IsSpace) {
		return errors.New(field + " contains a space")
	}
	return nil
}
