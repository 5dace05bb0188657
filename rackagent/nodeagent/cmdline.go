package nodeagent

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// What a ramdisk does when its task fails (metalfleet.onerror=).
const (
	OnErrorReboot   = "reboot"   // wait a little, then reboot (the default: the rack agent decides again)
	OnErrorPowerOff = "poweroff" // power off
	OnErrorStay     = "stay"     // stay up, for a look at the console
)

// BootParams are the nodeagent's parameters on the kernel command line,
// as rackagent/httpboot renders them (BOOTIF, metalfleet.callback,
// metalfleet.mac, metalfleet.token, metalfleet.task) plus the ones an
// operator can add to a boot config's command line.
type BootParams struct {
	// Callback is the rack agent's callback URL; empty: nothing is
	// reported.
	Callback string
	// MAC is metalfleet.mac, else the MAC of BOOTIF; it names the boot
	// interface and the machine in callbacks.
	MAC string
	// Token authenticates callbacks of a task (never logged).
	Token string
	// Task names the task; empty for discovery.
	Task string
	// PowerOff: power off when done (metalfleet.poweroff=; true by
	// default for discovery and inspection, false for other tasks).
	PowerOff bool
	// Print prints the inventory on the console (metalfleet.print=true).
	Print bool
	// LLDPWait is how long to listen for LLDP (metalfleet.lldp=35s;
	// default 0: switches send every 30 s, so only a long wait is
	// worth its time).
	LLDPWait time.Duration
	// DHCPTimeout bounds the wait for a lease (metalfleet.dhcp_timeout=;
	// default 60 s).
	DHCPTimeout time.Duration
	// OnError is what to do when the task fails: OnErrorReboot (the
	// default), OnErrorPowerOff or OnErrorStay.
	OnError string
}

// DefaultDHCPTimeout is how long the ramdisk waits for a lease.
const DefaultDHCPTimeout = 60 * time.Second

// String describes p without its token.
func (p BootParams) String() string {
	tok := "none"
	if p.Token != "" {
		tok = "set"
	}
	return fmt.Sprintf("callback=%q mac=%s task=%q token=%s poweroff=%t print=%t lldp=%s dhcp_timeout=%s onerror=%s",
		p.Callback, orNone(p.MAC), p.Task, tok, p.PowerOff, p.Print, p.LLDPWait, p.DHCPTimeout, p.OnError)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// SplitCmdline splits a kernel command line into its words as the kernel
// does: at white space outside double quotes, the quotes removed
// (param="a b" is one word, param=a b).
func SplitCmdline(s string) []string {
	var (
		words  []string
		cur    strings.Builder
		quoted bool
		inWord bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// ParseCmdline reads the nodeagent's parameters from a kernel command
// line (the last of a repeated parameter wins). It returns every
// parameter it could read even when some are bad; the error joins the
// problems.
func ParseCmdline(cmdline string) (BootParams, error) {
	kv := map[string]string{}
	for _, w := range SplitCmdline(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		kv[k] = v
	}
	var errs []error
	p := BootParams{
		Task:        kv[proto.CmdlineTask],
		Token:       kv[proto.CmdlineToken],
		DHCPTimeout: DefaultDHCPTimeout,
		OnError:     OnErrorReboot,
	}
	if cb := kv[proto.CmdlineCallback]; cb != "" {
		u, err := url.Parse(cb)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s=%q: want an http(s) URL", proto.CmdlineCallback, cb))
		} else {
			p.Callback = cb
		}
	}
	if s, ok := kv[proto.CmdlineBOOTIF]; ok {
		mac, err := parseBOOTIF(s)
		if err != nil {
			errs = append(errs, err)
		}
		p.MAC = mac
	}
	if s, ok := kv[proto.CmdlineMAC]; ok {
		mac, err := proto.NormalizeMAC(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: not a MAC", proto.CmdlineMAC, s))
		} else {
			p.MAC = mac
		}
	}
	switch p.Task {
	case "", proto.TaskDiscovery, "inspect":
		p.PowerOff = true
	}
	if s, ok := kv[proto.CmdlinePowerOff]; ok {
		b, err := parseBool(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", proto.CmdlinePowerOff, s, err))
		} else {
			p.PowerOff = b
		}
	}
	if s, ok := kv[proto.CmdlinePrint]; ok {
		b, err := parseBool(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", proto.CmdlinePrint, s, err))
		}
		p.Print = b
	}
	if s, ok := kv[proto.CmdlineLLDP]; ok {
		d, err := parseSeconds(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", proto.CmdlineLLDP, s, err))
		}
		p.LLDPWait = d
	}
	if s, ok := kv[proto.CmdlineDHCPTimeout]; ok {
		d, err := parseSeconds(s)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive duration", proto.CmdlineDHCPTimeout, s))
		} else {
			p.DHCPTimeout = d
		}
	}
	if s, ok := kv[proto.CmdlineOnError]; ok {
		switch s {
		case OnErrorReboot, OnErrorPowerOff, OnErrorStay:
			p.OnError = s
		default:
			errs = append(errs, fmt.Errorf("%s=%q: want reboot, poweroff or stay", proto.CmdlineOnError, s))
		}
	}
	return p, errors.Join(errs...)
}

// parseBOOTIF reads PXELINUX's BOOTIF=01-aa-bb-cc-dd-ee-ff (01 is the
// ARP hardware type, Ethernet); the bare MAC is accepted too.
func parseBOOTIF(s string) (string, error) {
	raw := s
	if len(raw) == 20 && strings.HasPrefix(raw, "01-") {
		raw = raw[3:]
	}
	mac, err := proto.NormalizeMAC(strings.ReplaceAll(raw, "-", ":"))
	if err != nil {
		return "", fmt.Errorf("%s=%q: want 01-aa-bb-cc-dd-ee-ff", proto.CmdlineBOOTIF, s)
	}
	return mac, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on", "":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, errors.New("want true or false")
}

// parseSeconds reads a Go duration ("35s") or a number of seconds ("35").
func parseSeconds(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil && n >= 0 {
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration such as 35s")
	}
	return d, nil
}
