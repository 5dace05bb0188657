package proto

import (
	"crypto/x509"
	"encoding/hex"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// Validation shared by the API (to refuse bad input before it reaches the
// Raft log) and the FSM (which checks again, so the log can never hold an
// object the API would refuse).

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// IsUUID reports whether s has the form of a UUID.
func IsUUID(s string) bool { return uuidRE.MatchString(s) }

// CheckName checks an object name: 1 to 63 letters, digits, '.', '_' or
// '-', starting with a letter or digit, and not of the form of a UUID or a
// MAC (so a reference by name is never ambiguous).
func CheckName(field, name string) error {
	if !nameRE.MatchString(name) {
		return Errorf(CodeInvalid, "%s %q: want 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", field, name)
	}
	if IsUUID(name) {
		return Errorf(CodeInvalid, "%s %q: a name may not have the form of a UUID", field, name)
	}
	if _, err := net.ParseMAC(name); err == nil {
		return Errorf(CodeInvalid, "%s %q: a name may not have the form of a MAC address", field, name)
	}
	return nil
}

// NormalizeMAC parses an Ethernet MAC and returns it in lower-case,
// colon-separated form.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", Errorf(CodeInvalid, "macs: %q is not an Ethernet MAC address", s)
	}
	return hw.String(), nil
}

// NormalizeMACs normalizes every MAC and refuses duplicates and an empty list.
func NormalizeMACs(macs []string) ([]string, error) {
	if len(macs) == 0 {
		return nil, Errorf(CodeInvalid, "macs: at least one MAC address is required")
	}
	out := make([]string, 0, len(macs))
	seen := map[string]bool{}
	for _, m := range macs {
		n, err := NormalizeMAC(m)
		if err != nil {
			return nil, err
		}
		if seen[n] {
			return nil, Errorf(CodeInvalid, "macs: %s is listed twice", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}

// Check validates a BMC's fields.
func (b *BMC) Check() error {
	switch b.Driver {
	case "", DriverIPMI, DriverRedfish, DriverFake:
	default:
		return Errorf(CodeInvalid, "bmc.driver %q: want ipmi, redfish or fake", b.Driver)
	}
	if b.Port < 0 || b.Port > 65535 {
		return Errorf(CodeInvalid, "bmc.port %d: want 0-65535", b.Port)
	}
	if len(b.Address) > 512 {
		return Errorf(CodeTooLarge, "bmc.address: %d bytes, at most 512", len(b.Address))
	}
	if b.Driver == DriverRedfish && b.Address != "" {
		if err := checkRedfishURL(b.Address); err != nil {
			return err
		}
	} else if b.Address != "" && strings.ContainsAny(b.Address, " /\t\n") {
		return Errorf(CodeInvalid, "bmc.address %q: want a host name or IP address", b.Address)
	}
	switch b.Interface {
	case "", IPMILanplus, IPMILan:
	default:
		return Errorf(CodeInvalid, "bmc.interface %q: want lanplus or lan", b.Interface)
	}
	if b.Interface != "" && b.Driver != DriverIPMI && b.Driver != "" {
		return Errorf(CodeInvalid, "bmc.interface is for the ipmi driver, not %s", b.Driver)
	}
	if len(b.Username) > 64 {
		return Errorf(CodeInvalid, "bmc.username: %d bytes, at most 64", len(b.Username))
	}
	if len(b.Password) > 128 {
		return Errorf(CodeInvalid, "bmc.password: %d bytes, at most 128", len(b.Password))
	}
	if b.CACert != "" {
		// Sent to the rack's agents in every boot state with the node:
		// a BMC's CA bundle is a certificate or two.
		if len(b.CACert) > 16<<10 {
			return Errorf(CodeTooLarge, "bmc.ca_cert: %d bytes, at most 16384", len(b.CACert))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(b.CACert)) {
			return Errorf(CodeInvalid, "bmc.ca_cert: no PEM certificate in it")
		}
	}
	return nil
}

// checkRedfishURL checks a redfish BMC address:
// http(s)://host[:port][/redfish/v1/Systems/ID].
func checkRedfishURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Errorf(CodeInvalid, "bmc.address %q: a redfish BMC's address is a URL: https://host[:port][/redfish/v1/Systems/ID]", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Errorf(CodeInvalid, "bmc.address %q: no user, query or fragment in the URL (credentials go in bmc.username and bmc.password)", s)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if p != "" && !strings.HasPrefix(p, "/redfish/v1/Systems/") {
		return Errorf(CodeInvalid, "bmc.address %q: the path, if any, names a system: /redfish/v1/Systems/ID", s)
	}
	return nil
}

// Check validates a rack's fields.
func (r *Rack) Check() error {
	if err := CheckName("name", r.Name); err != nil {
		return err
	}
	var prefix netip.Prefix
	if r.Subnet != "" {
		p, err := netip.ParsePrefix(r.Subnet)
		if err != nil || !p.Addr().Is4() {
			return Errorf(CodeInvalid, "subnet %q: want an IPv4 CIDR such as 10.0.0.0/24", r.Subnet)
		}
		prefix = p.Masked()
		r.Subnet = prefix.String()
	}
	inSubnet := func(field, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return a, Errorf(CodeInvalid, "%s %q: want an IPv4 address", field, s)
		}
		if prefix.IsValid() && !prefix.Contains(a) {
			return a, Errorf(CodeInvalid, "%s %s is outside subnet %s", field, s, r.Subnet)
		}
		return a, nil
	}
	if r.Gateway != "" {
		if _, err := inSubnet("gateway", r.Gateway); err != nil {
			return err
		}
	}
	if (r.PoolStart == "") != (r.PoolEnd == "") {
		return Errorf(CodeInvalid, "pool_start and pool_end go together")
	}
	if r.PoolStart != "" {
		if !prefix.IsValid() {
			return Errorf(CodeInvalid, "a pool needs a subnet")
		}
		a, err := inSubnet("pool_start", r.PoolStart)
		if err != nil {
			return err
		}
		b, err := inSubnet("pool_end", r.PoolEnd)
		if err != nil {
			return err
		}
		if b.Less(a) {
			return Errorf(CodeInvalid, "pool_end %s is before pool_start %s", r.PoolEnd, r.PoolStart)
		}
		if a == prefix.Addr() {
			return Errorf(CodeInvalid, "pool_start %s is the subnet's network address", a)
		}
		if bc := broadcast(prefix); prefix.Bits() < 31 && !bc.Less(a) && !b.Less(bc) {
			return Errorf(CodeInvalid, "the pool %s-%s holds the subnet's broadcast address %s", a, b, bc)
		}
		for _, own := range append([]string{r.Gateway, r.BootServer}, r.DNS...) {
			if o, err := netip.ParseAddr(own); err == nil && !o.Less(a) && !b.Less(o) {
				return Errorf(CodeInvalid, "the pool %s-%s holds %s, an address of the rack's own (gateway, boot server or DNS)", a, b, o)
			}
		}
	}
	if r.BootServer != "" {
		if a, err := netip.ParseAddr(r.BootServer); err != nil || !a.Is4() {
			return Errorf(CodeInvalid, "boot_server %q: want an IPv4 address", r.BootServer)
		}
	}
	for _, d := range r.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return Errorf(CodeInvalid, "dns %q: want an IP address", d)
		}
	}
	if r.LeaseTime < 0 {
		return Errorf(CodeInvalid, "lease_time must not be negative")
	}
	return nil
}

// Check validates a flavor's own fields (references are the FSM's).
func (f *Flavor) Check() error {
	if err := CheckName("name", f.Name); err != nil {
		return err
	}
	if f.CPUs < 0 || f.MemoryMB < 0 || f.DiskGB < 0 {
		return Errorf(CodeInvalid, "cpus, memory_mb and disk_gb must not be negative")
	}
	for _, t := range f.RequiredTraits {
		if t == "" || strings.ContainsAny(t, " \t\n,") {
			return Errorf(CodeInvalid, "required_traits: %q is not a trait name", t)
		}
	}
	return nil
}

// Check validates an image's own fields.
func (im *Image) Check() error {
	if err := CheckName("name", im.Name); err != nil {
		return err
	}
	switch im.Kind {
	case ImageKernel, ImageRamdisk, ImageDisk, ImageFirmware:
	default:
		return Errorf(CodeInvalid, "kind %q: want kernel, ramdisk, disk or firmware", im.Kind)
	}
	u, err := url.Parse(im.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") || (u.Scheme != "file" && u.Host == "") || (u.Scheme == "file" && u.Path == "") {
		return Errorf(CodeInvalid, "url %q: want an http://, https:// or file:// URL", im.URL)
	}
	if b, err := hex.DecodeString(im.SHA256); err != nil || len(b) != 32 {
		return Errorf(CodeInvalid, "sha256 %q: want 64 hex digits", im.SHA256)
	}
	im.SHA256 = strings.ToLower(im.SHA256)
	if im.Size < 0 {
		return Errorf(CodeInvalid, "size must not be negative")
	}
	return nil
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
