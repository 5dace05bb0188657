package dhcp

import (
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Pure helpers that read what kind of network-boot client sent a packet.

// ClientKind is what is asking.
type ClientKind int

const (
	// NotNetboot: an ordinary DHCP client (an installed OS).
	NotNetboot ClientKind = iota
	// PXE: a firmware PXE client (option 60 "PXEClient...").
	PXE
	// HTTPBoot: a UEFI HTTP boot client (option 60 "HTTPClient...").
	HTTPBoot
	// IPXE: iPXE itself (option 77 user class "iPXE"), which can fetch
	// its script over HTTP directly.
	IPXE
	// Ramdisk: a Metalfleet ramdisk's nodeagent (option 60
	// RamdiskClassID), booted from this rack: it needs an address like
	// the firmware before it, but no boot file.
	Ramdisk
)

// RamdiskClassID is the vendor class (option 60) a Metalfleet ramdisk's
// nodeagent sends (nodeagent.DHCPClassID).
const RamdiskClassID = "metalfleet-nodeagent"

func (k ClientKind) String() string {
	return [...]string{"dhcp", "pxe", "httpboot", "ipxe", "ramdisk"}[k]
}

// Kind classifies a request.
func Kind(m *dhcpv4.DHCPv4) ClientKind {
	for _, uc := range m.UserClass() {
		if uc == "iPXE" {
			return IPXE
		}
	}
	vc := m.ClassIdentifier()
	switch {
	case strings.HasPrefix(vc, "HTTPClient"):
		return HTTPBoot
	case strings.HasPrefix(vc, "PXEClient"):
		return PXE
	case vc == RamdiskClassID:
		return Ramdisk
	}
	return NotNetboot
}

// Arch returns the client's architecture (option 93), INTEL_X86PC if it
// sent none.
func Arch(m *dhcpv4.DHCPv4) iana.Arch {
	if a := m.ClientArch(); len(a) > 0 {
		return a[0]
	}
	return iana.INTEL_X86PC
}

// ArchName is a short name for reports and logs.
func ArchName(a iana.Arch) string {
	switch a {
	case iana.INTEL_X86PC:
		return "bios"
	case iana.EFI_IA32:
		return "efi-ia32"
	case iana.EFI_X86_64, iana.EFI_BC:
		return "efi-x86_64"
	case iana.EFI_X86_64_HTTP, iana.EFI_BC_HTTP:
		return "efi-x86_64-http"
	case iana.EFI_ARM64:
		return "efi-arm64"
	case iana.EFI_ARM64_HTTP:
		return "efi-arm64-http"
	}
	return a.String()
}

// Files names the first-stage files an agent serves.
type Files struct {
	BIOS string // over TFTP to BIOS PXE ROMs; default undionly.kpxe
	EFI  string // over TFTP to UEFI PXE; default ipxe.efi (snponly.efi is the alternative)
}

func (f Files) bios() string {
	if f.BIOS == "" {
		return "undionly.kpxe"
	}
	return f.BIOS
}

func (f Files) efi() string {
	if f.EFI == "" {
		return "ipxe.efi"
	}
	return f.EFI
}

// Bootfile picks what a netboot client loads next, and whether it comes
// over TFTP (else it is an HTTP URL). iPXE gets its script's URL so it
// does not chain-load itself again (the boot loop); UEFI HTTP clients get
// the iPXE binary over HTTP; PXE ROMs get iPXE over TFTP for their arch.
func Bootfile(kind ClientKind, arch iana.Arch, files Files, httpBase, mac string) (name string, tftp bool) {
	switch kind {
	case IPXE:
		return httpBase + "/boot/" + mac + ".ipxe", false
	case HTTPBoot:
		return httpBase + "/tftp/" + files.efi(), false
	case PXE:
		if arch == iana.INTEL_X86PC {
			return files.bios(), true
		}
		return files.efi(), true
	}
	return "", false
}

// ipxeNoPXEDHCP is option 175 (iPXE's encapsulated options) holding
// sub-option 176 (no-pxedhcp) = 1: iPXE then does not wait about 3 s for
// ProxyDHCP offers that will never come.
var ipxeNoPXEDHCP = []byte{176, 1, 1}

// pxeVendorOptions is option 43 for PXE ROMs: PXE_DISCOVERY_CONTROL (6) =
// 8, "use the boot file name from this offer, skip boot server discovery".
var pxeVendorOptions = []byte{6, 1, 8, 255}
