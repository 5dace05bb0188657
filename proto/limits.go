package proto

import (
	"encoding/json"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what a rack agent or a ramdisk may send. The coordinator's API
// checks them before anything reaches the Raft log; a value over a limit
// is refused with CodeInvalid (400) or CodeTooLarge (413) and a message
// naming the field and the limit. The bounds are generous for real
// servers: they exist so that a buggy or hostile sender cannot make the
// replicated state grow without bound.
const (
	// MaxReportIDLen bounds AgentReport.ID (printable ASCII, no spaces).
	MaxReportIDLen = 64
	// MaxAgentNameLen bounds an agent's name and its incarnation id.
	MaxAgentNameLen = 128
	// MaxEventLen bounds AgentReport.Event ("dhcp", "artifact:NAME", ...).
	MaxEventLen = 80
	// MaxStepLen bounds AgentReport.Step, a ramdisk step's name.
	MaxStepLen = 32
	// MaxArchLen bounds AgentReport.Arch (a client architecture's name).
	MaxArchLen = 64
	// MaxInterfaceLen bounds an interface name: Linux's IFNAMSIZ-1 is 15;
	// a relay's circuit id may name more.
	MaxInterfaceLen = 64
	// MaxNodeRefLen bounds AgentReport.Node (a uuid, 36 bytes).
	MaxNodeRefLen = 64
	// MaxReportCount bounds AgentReport.Count, sightings folded together.
	MaxReportCount = 1 << 20
	// MaxReportBytes bounds one report's JSON, an inventory included.
	MaxReportBytes = 256 << 10
	// MaxCallbackBytes bounds a callback's data (an inventory).
	MaxCallbackBytes = 192 << 10
	// MaxReportBatch bounds the reports in one POST /v1/agent/reports.
	MaxReportBatch = 1000
	// MaxHostPortLen bounds a host:port (the agent management address).
	MaxHostPortLen = 261 // a 253-byte DNS name, ':' and 5 digits, and brackets

	// Inventory bounds.

	// MaxInvInterfaces bounds Inventory.Interfaces.
	MaxInvInterfaces = 256
	// MaxInvAddresses bounds the addresses of one interface.
	MaxInvAddresses = 64
	// MaxInvDisks bounds Inventory.Disks.
	MaxInvDisks = 1024
	// MaxInvDIMMs bounds Memory.DIMMs.
	MaxInvDIMMs = 512
	// MaxInvPCI bounds Inventory.PCI.
	MaxInvPCI = 4096
	// MaxInvCPUFlags bounds CPUs.Flags.
	MaxInvCPUFlags = 1024
	// MaxInvCPUs bounds CPUs.Count, Sockets, Cores and Threads.
	MaxInvCPUs = 1 << 16
	// MaxInvString bounds every string of an inventory.
	MaxInvString = 256
)

var (
	// agentNameRE: an agent's name or incarnation, name-like (host names,
	// uuids, "rack1-a").
	agentNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@-]*$`)
	// shortNameRE: events, steps ("artifact:ipxe.efi", "inventory").
	shortNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+/-]*$`)
)

// tooLong is the error of a string over its limit; it never quotes the
// value (which may be a megabyte).
func tooLong(field string, n, limit int) error {
	return Errorf(CodeTooLarge, "%s: %d bytes, at most %d", field, n, limit)
}

// checkPrintable checks s is at most limit bytes of printable ASCII
// (spaces allowed when spaces is true).
func checkPrintable(field, s string, limit int, spaces bool) error {
	if len(s) > limit {
		return tooLong(field, len(s), limit)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e {
			if c == ' ' && spaces {
				continue
			}
			return Errorf(CodeInvalid, "%s: byte %d (0x%02x) is not printable ASCII%s", field, i, c, map[bool]string{true: "", false: " without spaces"}[spaces])
		}
	}
	return nil
}

// checkRE checks s against a name pattern and a length limit.
func checkRE(field, s string, limit int, re *regexp.Regexp, want string) error {
	if len(s) > limit {
		return tooLong(field, len(s), limit)
	}
	if !re.MatchString(s) {
		return Errorf(CodeInvalid, "%s %q: want %s", field, s, want)
	}
	return nil
}

// CheckReportID checks a report's id: 1 to MaxReportIDLen printable
// ASCII bytes without spaces. (A report whose id fails it cannot be named
// in an ack.)
func CheckReportID(id string) error {
	if id == "" {
		return Errorf(CodeInvalid, "id is required")
	}
	return checkPrintable("id", id, MaxReportIDLen, false)
}

// CheckAgentName checks an agent's name (or incarnation id): 1 to
// MaxAgentNameLen letters, digits, '.', '_', ':', '@' or '-'.
func CheckAgentName(field, s string) error {
	if s == "" {
		return Errorf(CodeInvalid, "%s is required", field)
	}
	return checkRE(field, s, MaxAgentNameLen, agentNameRE, "letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit")
}

// CheckHostPort checks a host:port: a host name or IP address and a port
// 1-65535, at most MaxHostPortLen bytes.
func CheckHostPort(field, s string) error {
	if len(s) > MaxHostPortLen {
		return tooLong(field, len(s), MaxHostPortLen)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return Errorf(CodeInvalid, "%s %q: want host:port", field, s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return Errorf(CodeInvalid, "%s %q: port: want 1-65535", field, s)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		if len(host) > 253 || !hostRE.MatchString(host) {
			return Errorf(CodeInvalid, "%s %q: host: want a host name or IP address", field, s)
		}
	}
	return nil
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// CheckReportKind checks a report kind is one this protocol knows.
func CheckReportKind(k ReportKind) error {
	switch k {
	case ReportMACSeen, ReportBootEvent, ReportLease, ReportPower, ReportCallback, ReportBMC, ReportConsole:
		return nil
	}
	if len(k) > MaxStepLen {
		return tooLong("kind", len(k), MaxStepLen)
	}
	return Errorf(CodeInvalid, "kind %q: want mac_seen, boot_event, lease, power, callback, bmc or console", k)
}

// Validate checks a report's fields against the limits above, and the
// fields every report must have: id, kind, rack, agent, incarnation, seq
// (> 0) and time. Errors name the field (without the report's index: the
// caller adds it).
func (r *AgentReport) Validate() error {
	if err := CheckReportID(r.ID); err != nil {
		return err
	}
	if err := CheckReportKind(r.Kind); err != nil {
		return err
	}
	if r.Rack == "" {
		return Errorf(CodeInvalid, "rack is required")
	}
	if len(r.Rack) > 63 {
		return tooLong("rack", len(r.Rack), 63)
	}
	if err := CheckAgentName("agent", r.Agent); err != nil {
		return err
	}
	if err := CheckAgentName("incarnation", r.Incarnation); err != nil {
		return err
	}
	if r.Seq == 0 {
		return Errorf(CodeInvalid, "seq is required (> 0)")
	}
	if r.Time.IsZero() {
		return Errorf(CodeInvalid, "time is required")
	}
	if r.MAC != "" {
		if len(r.MAC) > 32 {
			return tooLong("mac", len(r.MAC), 32)
		}
		if _, err := NormalizeMAC(r.MAC); err != nil {
			return Errorf(CodeInvalid, "mac %q: want an Ethernet MAC address", r.MAC)
		}
	}
	if r.Node != "" {
		if err := checkPrintable("node", r.Node, MaxNodeRefLen, false); err != nil {
			return err
		}
	}
	if err := checkPrintable("arch", r.Arch, MaxArchLen, true); err != nil {
		return err
	}
	if r.Giaddr != "" {
		if len(r.Giaddr) > 45 {
			return tooLong("giaddr", len(r.Giaddr), 45)
		}
		if _, err := netip.ParseAddr(r.Giaddr); err != nil {
			return Errorf(CodeInvalid, "giaddr %q: want an IP address", r.Giaddr)
		}
	}
	if err := checkPrintable("interface", r.Interface, MaxInterfaceLen, false); err != nil {
		return err
	}
	if r.Count < 0 || r.Count > MaxReportCount {
		return Errorf(CodeInvalid, "count %d: want 0-%d", r.Count, MaxReportCount)
	}
	if r.Event != "" {
		if err := checkRE("event", r.Event, MaxEventLen, shortNameRE, "a short name such as dhcp, script or artifact:NAME"); err != nil {
			return err
		}
	}
	switch r.LeaseEvent {
	case "", "bound", "released", "declined", "expired":
	default:
		if len(r.LeaseEvent) > MaxStepLen {
			return tooLong("lease_event", len(r.LeaseEvent), MaxStepLen)
		}
		return Errorf(CodeInvalid, "lease_event %q: want bound, released, declined or expired", r.LeaseEvent)
	}
	if r.Lease != nil {
		if err := r.Lease.validate(); err != nil {
			return err
		}
	}
	if r.PowerState != "" && !r.PowerState.Valid() {
		if len(r.PowerState) > MaxStepLen {
			return tooLong("power_state", len(r.PowerState), MaxStepLen)
		}
		return Errorf(CodeInvalid, "power_state %q: want on, off or unknown", r.PowerState)
	}
	if err := r.validateBMC(); err != nil {
		return err
	}
	if r.Step != "" {
		if err := checkRE("step", r.Step, MaxStepLen, shortNameRE, "a step name such as inventory"); err != nil {
			return err
		}
	}
	if r.Kind == ReportCallback && r.Step == "" {
		return Errorf(CodeInvalid, "step is required in a callback report")
	}
	if len(r.Data) > MaxCallbackBytes {
		return tooLong("data", len(r.Data), MaxCallbackBytes)
	}
	if len(r.Data) > 0 && !json.Valid(r.Data) {
		return Errorf(CodeInvalid, "data: not valid JSON")
	}
	if r.Kind == ReportCallback && r.Step == StepTask {
		var sr StepReport
		if err := json.Unmarshal(r.Data, &sr); err != nil {
			return Errorf(CodeInvalid, "data: not a step report: %v", err)
		}
		if err := sr.Validate(); err != nil {
			return prefixed("data.", err)
		}
	}
	if r.Kind == ReportCallback && r.Step == StepInventory {
		var inv Inventory
		if err := json.Unmarshal(r.Data, &inv); err != nil {
			return Errorf(CodeInvalid, "data: not an inventory: %v", err)
		}
		if err := inv.Validate(); err != nil {
			return prefixed("data.", err)
		}
	}
	return nil
}

func (l *Lease) validate() error {
	if l.MAC != "" {
		if _, err := NormalizeMAC(l.MAC); err != nil || len(l.MAC) > 32 {
			return Errorf(CodeInvalid, "lease.mac: want an Ethernet MAC address")
		}
	}
	if l.IP != "" {
		if len(l.IP) > 45 {
			return tooLong("lease.ip", len(l.IP), 45)
		}
		if _, err := netip.ParseAddr(l.IP); err != nil {
			return Errorf(CodeInvalid, "lease.ip %q: want an IP address", l.IP)
		}
	}
	if l.Agent != "" {
		if err := CheckAgentName("lease.agent", l.Agent); err != nil {
			return err
		}
	}
	return nil
}

// prefixed puts prefix before the message of a proto error.
func prefixed(prefix string, err error) error {
	if pe, ok := err.(*Error); ok {
		return &Error{Code: pe.Code, Message: prefix + pe.Message}
	}
	return err
}

// Validate checks an inventory against the limits above: how many
// interfaces, addresses, disks, DIMMs, PCI functions and CPU flags it
// lists, the CPU counts, each string's length (MaxInvString; valid UTF-8)
// and each interface's MAC. It does not judge the values otherwise: a
// ramdisk reports what it finds.
func (inv *Inventory) Validate() error {
	count := func(field string, n, limit int) error {
		if n > limit {
			return Errorf(CodeTooLarge, "%s: %d entries, at most %d", field, n, limit)
		}
		return nil
	}
	for _, c := range []struct {
		field    string
		n, limit int
	}{
		{"interfaces", len(inv.Interfaces), MaxInvInterfaces},
		{"disks", len(inv.Disks), MaxInvDisks},
		{"memory.dimms", len(inv.Memory.DIMMs), MaxInvDIMMs},
		{"pci", len(inv.PCI), MaxInvPCI},
		{"cpus.flags", len(inv.CPUs.Flags), MaxInvCPUFlags},
	} {
		if err := count(c.field, c.n, c.limit); err != nil {
			return err
		}
	}
	for _, c := range []struct {
		field string
		n     int
	}{{"cpus.count", inv.CPUs.Count}, {"cpus.sockets", inv.CPUs.Sockets}, {"cpus.cores", inv.CPUs.Cores}, {"cpus.threads", inv.CPUs.Threads}} {
		if c.n < 0 || c.n > MaxInvCPUs {
			return Errorf(CodeInvalid, "%s %d: want 0-%d", c.field, c.n, MaxInvCPUs)
		}
	}
	if inv.Memory.TotalBytes < 0 || inv.Memory.PhysicalBytes < 0 {
		return Errorf(CodeInvalid, "memory: sizes must not be negative")
	}
	var err error
	str := func(field, s string) {
		if err != nil {
			return
		}
		switch {
		case len(s) > MaxInvString:
			err = tooLong(field, len(s), MaxInvString)
		case !utf8.ValidString(s):
			err = Errorf(CodeInvalid, "%s: not valid UTF-8", field)
		case strings.ContainsRune(s, 0):
			err = Errorf(CodeInvalid, "%s: holds a NUL byte", field)
		}
	}
	idx := func(field string, i int, sub string) string { return field + "[" + strconv.Itoa(i) + "]." + sub }
	str("system.vendor", inv.System.Vendor)
	str("system.product", inv.System.Product)
	str("system.serial", inv.System.Serial)
	str("system.uuid", inv.System.UUID)
	str("firmware.vendor", inv.Firmware.Vendor)
	str("firmware.version", inv.Firmware.Version)
	str("firmware.date", inv.Firmware.Date)
	str("boot_mode", inv.BootMode)
	str("pxe_mac", inv.PXEMAC)
	str("cpus.model", inv.CPUs.Model)
	str("cpus.architecture", inv.CPUs.Architecture)
	str("bmc_address", inv.BMCAddress)
	str("collected.at", inv.Collected.At)
	str("collected.agent", inv.Collected.Agent)
	for i, f := range inv.CPUs.Flags {
		str("cpus.flags["+strconv.Itoa(i)+"]", f)
	}
	for i, d := range inv.Memory.DIMMs {
		str(idx("memory.dimms", i, "locator"), d.Locator)
		str(idx("memory.dimms", i, "type"), d.Type)
	}
	for i, d := range inv.Disks {
		str(idx("disks", i, "name"), d.Name)
		str(idx("disks", i, "model"), d.Model)
		str(idx("disks", i, "serial"), d.Serial)
		str(idx("disks", i, "wwn"), d.WWN)
		str(idx("disks", i, "by_path"), d.ByPath)
		str(idx("disks", i, "raid"), d.RAID)
		if e := count(idx("disks", i, "members"), len(d.Members), MaxInvDisks); e != nil && err == nil {
			err = e
		}
		for j, m := range d.Members {
			str(idx("disks", i, "members["+strconv.Itoa(j)+"]"), m)
		}
	}
	for i, p := range inv.PCI {
		str(idx("pci", i, "address"), p.Address)
		str(idx("pci", i, "vendor"), p.Vendor)
		str(idx("pci", i, "device"), p.Device)
		str(idx("pci", i, "class"), p.Class)
	}
	for i, ifc := range inv.Interfaces {
		if err != nil {
			break
		}
		if len(ifc.Name) > MaxInterfaceLen {
			return tooLong(idx("interfaces", i, "name"), len(ifc.Name), MaxInterfaceLen)
		}
		str(idx("interfaces", i, "name"), ifc.Name)
		str(idx("interfaces", i, "mac"), ifc.MAC)
		str(idx("interfaces", i, "driver"), ifc.Driver)
		if ifc.MAC != "" && err == nil {
			if _, e := NormalizeMAC(ifc.MAC); e != nil {
				return Errorf(CodeInvalid, "%s %q: want an Ethernet MAC address", idx("interfaces", i, "mac"), ifc.MAC)
			}
		}
		if e := count(idx("interfaces", i, "addresses"), len(ifc.Addresses), MaxInvAddresses); e != nil {
			return e
		}
		for j, a := range ifc.Addresses {
			str(idx("interfaces", i, "addresses["+strconv.Itoa(j)+"]"), a)
		}
		if ifc.LLDP != nil {
			str(idx("interfaces", i, "lldp.chassis_id"), ifc.LLDP.ChassisID)
			str(idx("interfaces", i, "lldp.port_id"), ifc.LLDP.PortID)
			str(idx("interfaces", i, "lldp.system_name"), ifc.LLDP.SystemName)
		}
	}
	return err
}

// MaxBMCErrorLen bounds a reported BMC error; MaxBMCInfoLen each field of
// a BMC's identity.
const (
	MaxBMCErrorLen = 1024
	MaxBMCInfoLen  = 128
)

// validateBMC checks the fields of power, bmc and console reports.
func (r *AgentReport) validateBMC() error {
	if len(r.Error) > MaxBMCErrorLen {
		return tooLong("error", len(r.Error), MaxBMCErrorLen)
	}
	if !utf8.ValidString(r.Error) || strings.ContainsFunc(r.Error, unicode.IsControl) {
		return Errorf(CodeInvalid, "error: want UTF-8 text without control characters")
	}
	if r.ErrorKind != "" && r.Error == "" {
		return Errorf(CodeInvalid, "error is required with error_kind %.32q", r.ErrorKind)
	}
	switch r.ErrorKind {
	case "", BMCErrUnreachable, BMCErrAuth, BMCErrRefused, BMCErrTimeout, BMCErrUnsupported, BMCErrExpired:
	default:
		return Errorf(CodeInvalid, "error_kind %.32q: want unreachable, auth, refused, timeout, unsupported or expired", r.ErrorKind)
	}
	if r.Kind == ReportBMC {
		switch r.Action {
		case ActionVerify, ActionPower, ActionBootDevice:
		default:
			return Errorf(CodeInvalid, "action %.32q: want verify, power or boot-device", r.Action)
		}
		if r.Generation == 0 {
			return Errorf(CodeInvalid, "generation is required in a bmc report")
		}
	}
	if i := r.BMCInfo; i != nil {
		for _, f := range []struct{ name, v string }{{"bmc_info.vendor", i.Vendor}, {"bmc_info.model", i.Model},
			{"bmc_info.firmware_version", i.FirmwareVersion}, {"bmc_info.protocol", i.Protocol}} {
			if err := checkPrintable(f.name, f.v, MaxBMCInfoLen, true); err != nil {
				return err
			}
		}
	}
	if err := checkPrintable("user", r.User, MaxBMCInfoLen, true); err != nil {
		return err
	}
	switch r.Mode {
	case "", ConsoleInteractive, ConsoleReadOnly:
	default:
		return Errorf(CodeInvalid, "mode %.32q: want interactive or read-only", r.Mode)
	}
	if r.Kind == ReportConsole && (r.User == "" || r.Mode == "") {
		return Errorf(CodeInvalid, "user and mode are required in a console report")
	}
	return nil
}

// Console modes: one client holds the keyboard, others watch.
const (
	ConsoleInteractive = "interactive"
	ConsoleReadOnly    = "read-only"
)
