package nodeagent

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"unicode"

	"github.com/metalfleet/metalfleet/proto"
)

// EtherTypeLLDP is the EtherType of LLDP frames (IEEE 802.1AB).
const EtherTypeLLDP = 0x88CC

// LLDP TLV types (IEEE 802.1AB-2016 8.4).
const (
	tlvEnd        = 0
	tlvChassisID  = 1
	tlvPortID     = 2
	tlvTTL        = 3
	tlvSystemName = 5
)

// lldpGroups are the destination MACs LLDP agents send to: nearest
// bridge (what switches use), nearest non-TPMR bridge, nearest customer
// bridge.
var lldpGroups = [][6]byte{
	{0x01, 0x80, 0xC2, 0x00, 0x00, 0x0E},
	{0x01, 0x80, 0xC2, 0x00, 0x00, 0x03},
	{0x01, 0x80, 0xC2, 0x00, 0x00, 0x00},
}

var errNotLLDP = errors.New("not an LLDP frame")

// parseLLDPFrame parses an Ethernet frame (destination, source, an
// optional 802.1Q tag, EtherType) carrying an LLDPDU.
func parseLLDPFrame(frame []byte) (*proto.LLDP, error) {
	if len(frame) < 14 {
		return nil, errNotLLDP
	}
	et, off := binary.BigEndian.Uint16(frame[12:]), 14
	if et == 0x8100 && len(frame) >= 18 {
		et, off = binary.BigEndian.Uint16(frame[16:]), 18
	}
	if et != EtherTypeLLDP {
		return nil, errNotLLDP
	}
	return parseLLDPDU(frame[off:])
}

// parseLLDPDU reads the chassis id, port id and system name of an
// LLDPDU: TLVs with a 7-bit type and a 9-bit length, ended by an End TLV
// (or the end of the frame). It wants the mandatory chassis and port ids.
func parseLLDPDU(b []byte) (*proto.LLDP, error) {
	var l proto.LLDP
	var haveChassis, havePort bool
	for len(b) >= 2 {
		h := binary.BigEndian.Uint16(b)
		typ, n := int(h>>9), int(h&0x1FF)
		b = b[2:]
		if n > len(b) {
			return nil, fmt.Errorf("lldp: TLV type %d length %d with %d bytes left", typ, n, len(b))
		}
		v := b[:n]
		b = b[n:]
		switch typ {
		case tlvEnd:
			b = nil
		case tlvChassisID:
			if n < 2 {
				return nil, fmt.Errorf("lldp: chassis id TLV of %d bytes", n)
			}
			l.ChassisID, haveChassis = lldpID(v[0], v[1:], 4, 5), true
		case tlvPortID:
			if n < 2 {
				return nil, fmt.Errorf("lldp: port id TLV of %d bytes", n)
			}
			l.PortID, havePort = lldpID(v[0], v[1:], 3, 4), true
		case tlvSystemName:
			l.SystemName = printable(v)
		}
	}
	if !haveChassis || !havePort {
		return nil, errors.New("lldp: no chassis id or port id")
	}
	return &l, nil
}

// lldpID formats a chassis or port id by its subtype: a MAC address as
// aa:bb:.., a network address (IANA family 1 = IPv4, 2 = IPv6) as an IP,
// anything else as text when printable and hex otherwise.
func lldpID(subtype byte, v []byte, macSubtype, netSubtype byte) string {
	switch {
	case subtype == macSubtype && len(v) == 6:
		return net.HardwareAddr(v).String()
	case subtype == netSubtype && len(v) == 5 && v[0] == 1,
		subtype == netSubtype && len(v) == 17 && v[0] == 2:
		return net.IP(v[1:]).String()
	}
	if s := printable(v); s != "" {
		return s
	}
	return hex.EncodeToString(v)
}

// printable returns v as text if it is printable ASCII (NULs at the end
// dropped), else "".
func printable(v []byte) string {
	s := strings.TrimRight(string(v), "\x00")
	for _, r := range s {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return ""
		}
	}
	return strings.TrimSpace(s)
}
