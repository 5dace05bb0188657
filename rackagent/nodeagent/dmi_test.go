package nodeagent

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// smbiosBuilder writes SMBIOS structures for tests.
type smbiosBuilder struct {
	b      []byte
	handle uint16
}

// add appends a structure: formatted is the area after the 4-byte header
// (offsets in it are the specification's less 4).
func (sb *smbiosBuilder) add(typ byte, formatted []byte, strs ...string) *smbiosBuilder {
	sb.b = append(sb.b, typ, byte(4+len(formatted)))
	sb.b = binary.LittleEndian.AppendUint16(sb.b, sb.handle)
	sb.handle++
	sb.b = append(sb.b, formatted...)
	for _, s := range strs {
		sb.b = append(sb.b, s...)
		sb.b = append(sb.b, 0)
	}
	if len(strs) == 0 {
		sb.b = append(sb.b, 0)
	}
	sb.b = append(sb.b, 0)
	return sb
}

// memoryDevice is a type 17 formatted area (SMBIOS 3.3 layout, 0x5C
// bytes) with the given size word, extended size, type, speed words and
// the device locator as string 1.
func memoryDevice(size uint16, ext uint32, typ byte, speed uint16, extSpeed uint32) []byte {
	f := make([]byte, 0x5C-4)
	put16 := func(off int, v uint16) { binary.LittleEndian.PutUint16(f[off-4:], v) }
	put32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(f[off-4:], v) }
	put16(0x04, 0x1000) // physical memory array handle
	put16(0x0C, size)
	f[0x10-4] = 1 // device locator: string 1
	f[0x12-4] = typ
	put16(0x15, speed)
	put32(0x1C, ext)
	put32(0x54, extSpeed)
	return f
}

func TestParseSMBIOSAndDIMMs(t *testing.T) {
	sb := &smbiosBuilder{}
	sb.add(0, []byte{1, 2, 0, 0xE8, 0, 3}, "SeaBIOS", "1.16.2") // a type 0 with strings
	sb.add(17, memoryDevice(16384, 0, 0x1A, 3200, 0), "A1")     // 16 GiB DDR4-3200
	sb.add(17, memoryDevice(0, 0, 0x02, 0, 0), "A2")            // empty slot
	sb.add(17, memoryDevice(0x8000|512, 0, 0x07, 0, 0), "B1")   // 512 KiB granularity
	sb.add(17, memoryDevice(0x7FFF, 65536, 0x22, 0xFFFF, 8800), "B2")
	sb.add(17, memoryDevice(0xFFFF, 0, 0x1A, 2666, 0), "B3") // unknown size
	sb.add(17, memoryDevice(1024, 0, 0x07, 0, 0)[:0x0D], "") // SMBIOS 2.0: no speed, no strings
	sb.add(127, nil)
	sb.add(17, memoryDevice(1, 0, 0x07, 0, 0), "after the end")
	ss, err := parseSMBIOS(sb.b)
	if err != nil {
		t.Fatalf("parseSMBIOS = %v", err)
	}
	if len(ss) != 8 || ss[0].str(0x04) != "SeaBIOS" || ss[0].str(0x05) != "1.16.2" || ss[0].str(0x09) != "" {
		t.Fatalf("parseSMBIOS = %d structures, first %+v; want 8, the first with its strings", len(ss), ss[0])
	}
	got := dimms(ss)
	want := []proto.DIMM{
		{Locator: "A1", SizeBytes: 16 << 30, Type: "DDR4", SpeedMTs: 3200},
		{Locator: "B1", SizeBytes: 512 << 10, Type: "RAM"},
		{Locator: "B2", SizeBytes: 64 << 30, Type: "DDR5", SpeedMTs: 8800},
		{Locator: "B3", SizeBytes: 0, Type: "DDR4", SpeedMTs: 2666},
		{SizeBytes: 1 << 30},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dimms = %+v\nwant %+v", got, want)
	}
}

func TestParseSMBIOSTruncated(t *testing.T) {
	sb := &smbiosBuilder{}
	sb.add(17, memoryDevice(1024, 0, 0x1A, 0, 0), "A1")
	good := len(sb.b)
	sb.add(17, memoryDevice(2048, 0, 0x1A, 0, 0), "A2")
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"cut in the formatted area", sb.b[:good+10]},
		{"cut in the strings", sb.b[:len(sb.b)-1]},
		{"length below 4", append(append([]byte{}, sb.b[:good]...), 17, 2, 0, 0, 0, 0)},
	} {
		ss, err := parseSMBIOS(tc.b)
		if !errors.Is(err, errSMBIOSTruncated) {
			t.Errorf("%s: parseSMBIOS err = %v, want errSMBIOSTruncated", tc.name, err)
		}
		if len(ss) != 1 || len(dimms(ss)) != 1 {
			t.Errorf("%s: parseSMBIOS kept %d structures, want the 1 before the damage", tc.name, len(ss))
		}
	}
}
