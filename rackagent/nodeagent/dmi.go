package nodeagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// readDMI reads the machine's identity (SMBIOS types 1 and 0) as the
// kernel exports it in /sys/class/dmi/id. product_serial and product_uuid
// are readable by root only.
func readDMI(fs sysfs) (proto.System, proto.Firmware) {
	const d = "sys/class/dmi/id/"
	return proto.System{
			Vendor:  fs.str(d + "sys_vendor"),
			Product: fs.str(d + "product_name"),
			Serial:  fs.str(d + "product_serial"),
			UUID:    strings.ToLower(fs.str(d + "product_uuid")),
		}, proto.Firmware{
			Vendor:  fs.str(d + "bios_vendor"),
			Version: fs.str(d + "bios_version"),
			Date:    fs.str(d + "bios_date"),
		}
}

// dmiTable is the raw SMBIOS structure table (root only).
const dmiTable = "sys/firmware/dmi/tables/DMI"

// smbiosStruct is one SMBIOS structure: its formatted area (header
// included, so offsets are the specification's) and its strings.
type smbiosStruct struct {
	Type    byte
	Handle  uint16
	Data    []byte
	Strings []string
}

// str returns the structure's string whose number is at offset off (1
// based; 0 means none), or "".
func (s smbiosStruct) str(off int) string {
	if off >= len(s.Data) {
		return ""
	}
	n := int(s.Data[off])
	if n == 0 || n > len(s.Strings) {
		return ""
	}
	return strings.TrimSpace(s.Strings[n-1])
}

func (s smbiosStruct) u8(off int) (byte, bool) {
	if off+1 > len(s.Data) {
		return 0, false
	}
	return s.Data[off], true
}

func (s smbiosStruct) u16(off int) (uint16, bool) {
	if off+2 > len(s.Data) {
		return 0, false
	}
	return binary.LittleEndian.Uint16(s.Data[off:]), true
}

func (s smbiosStruct) u32(off int) (uint32, bool) {
	if off+4 > len(s.Data) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(s.Data[off:]), true
}

var errSMBIOSTruncated = errors.New("smbios: truncated structure")

// parseSMBIOS splits an SMBIOS structure table into its structures (DSP0134
// section 6.1.2: a 4-byte header of type, length and handle, the formatted
// area, then strings each ended by a NUL and the set ended by another
// NUL). It stops at the end-of-table structure (type 127). What it parsed
// before an error is returned with the error.
func parseSMBIOS(b []byte) ([]smbiosStruct, error) {
	var out []smbiosStruct
	for len(b) >= 4 {
		typ, length := b[0], int(b[1])
		if length < 4 || length > len(b) {
			return out, fmt.Errorf("%w: type %d length %d with %d bytes left", errSMBIOSTruncated, typ, length, len(b))
		}
		s := smbiosStruct{Type: typ, Handle: binary.LittleEndian.Uint16(b[2:]), Data: b[:length]}
		rest := b[length:]
		// The string set ends with two NULs (an empty set is just the two).
		end := -1
		for i := 0; i+1 < len(rest); i++ {
			if rest[i] == 0 && rest[i+1] == 0 {
				end = i
				break
			}
		}
		if end < 0 {
			return out, fmt.Errorf("%w: type %d strings not terminated", errSMBIOSTruncated, typ)
		}
		if end > 0 {
			s.Strings = strings.Split(string(rest[:end]), "\x00")
		}
		out = append(out, s)
		b = rest[end+2:]
		if typ == 127 {
			break
		}
	}
	return out, nil
}

// memoryTypes names SMBIOS type 17 Memory Type values (DSP0134 7.18.2).
var memoryTypes = map[byte]string{
	0x01: "Other", 0x02: "Unknown", 0x03: "DRAM", 0x04: "EDRAM", 0x05: "VRAM",
	0x06: "SRAM", 0x07: "RAM", 0x08: "ROM", 0x09: "Flash", 0x0A: "EEPROM",
	0x0B: "FEPROM", 0x0C: "EPROM", 0x0D: "CDRAM", 0x0E: "3DRAM", 0x0F: "SDRAM",
	0x10: "SGRAM", 0x11: "RDRAM", 0x12: "DDR", 0x13: "DDR2", 0x14: "DDR2 FB-DIMM",
	0x18: "DDR3", 0x19: "FBD2", 0x1A: "DDR4", 0x1B: "LPDDR", 0x1C: "LPDDR2",
	0x1D: "LPDDR3", 0x1E: "LPDDR4", 0x1F: "Logical non-volatile device",
	0x20: "HBM", 0x21: "HBM2", 0x22: "DDR5", 0x23: "LPDDR5", 0x24: "HBM3",
}

// dimms returns the installed memory devices (SMBIOS type 17 with a
// non-zero size) in table order.
func dimms(ss []smbiosStruct) []proto.DIMM {
	const mib = 1 << 20
	var out []proto.DIMM
	for _, s := range ss {
		if s.Type != 17 {
			continue
		}
		size, ok := s.u16(0x0C)
		if !ok || size == 0 {
			continue // no module in this slot
		}
		var bytes int64
		switch {
		case size == 0xFFFF: // unknown
		case size == 0x7FFF: // see Extended Size (SMBIOS 2.7+), in MiB
			if ext, ok := s.u32(0x1C); ok {
				bytes = int64(ext&0x7FFFFFFF) * mib
			}
		case size&0x8000 != 0: // granularity: KiB
			bytes = int64(size&0x7FFF) << 10
		default:
			bytes = int64(size) * mib
		}
		d := proto.DIMM{Locator: s.str(0x10), SizeBytes: bytes}
		if t, ok := s.u8(0x12); ok {
			d.Type = memoryTypes[t]
		}
		if sp, ok := s.u16(0x15); ok && sp != 0 {
			if sp == 0xFFFF { // see Extended Speed (SMBIOS 3.3+)
				if ext, ok := s.u32(0x54); ok {
					d.SpeedMTs = int(ext & 0x7FFFFFFF)
				}
			} else {
				d.SpeedMTs = int(sp)
			}
		}
		out = append(out, d)
	}
	return out
}

// readDIMMs reads the memory devices from the SMBIOS table, when it is
// readable (root only).
func readDIMMs(fs sysfs, log *slog.Logger) []proto.DIMM {
	b, err := os.ReadFile(fs.path(dmiTable))
	if err != nil {
		log.Info("no SMBIOS table", "err", err)
		return nil
	}
	ss, err := parseSMBIOS(b)
	if err != nil {
		log.Warn("SMBIOS table", "err", err)
	}
	return dimms(ss)
}
