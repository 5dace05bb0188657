package nodeagent

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// mflab is the lab's vendor tool (proto.LabTool): the task ramdisk has
// it as /bin/mflab, nodeagent under another name. It keeps "firmware"
// and "BIOS settings" on a small disk whose serial is
// proto.LabDeviceSerial, so a QEMU VM with such a disk exercises the
// whole vendor tool contract for real: versions read before and after,
// an image written and checked, settings set and read back, surviving
// reboots.
//
// The device's layout (all integers little-endian):
//
//	0       header copy A (64 KiB)
//	64 KiB  header copy B (64 KiB)
//	1 MiB   firmware slots, LabSlotSize bytes each
//
// A header is "MFLAB\x00v1" (8 bytes), a generation (uint64), the
// length of the state (uint32), the SHA-256 of the state (32 bytes) and
// the state, JSON: {"firmware": {COMPONENT: {"version", "sha256",
// "size", "slot"}}, "bios": {NAME: VALUE}}. A write goes to the copy not
// holding the newest generation, after the payload is on the device and
// synced, so a torn write leaves the other copy in force. A device with
// no valid copy is factory-fresh: every component at LabFactoryVersion,
// the BIOS at LabDefaultBIOS.
//
// A firmware image is one header line, "MFLAB-FIRMWARE <component>
// <version>\n", then the payload (at most LabSlotSize bytes), which is
// written to the component's slot and read back.

// The lab device's layout.
const (
	labMagic      = "MFLAB\x00v1"
	labHeaderSize = 64 << 10
	labSlotsStart = 1 << 20
	// LabSlotSize is the most payload a lab firmware image holds; the
	// device needs 1 MiB plus one slot per component ever applied (64
	// MiB holds 15).
	LabSlotSize = 4 << 20
	// LabFactoryVersion is every component's version on a fresh device.
	LabFactoryVersion = "1.0.0"
	// LabImageMagic starts a lab firmware image's header line.
	LabImageMagic = "MFLAB-FIRMWARE"
)

// LabDefaultBIOS are the settings of a fresh lab device.
var LabDefaultBIOS = map[string]string{
	"BootMode":       "UEFI",
	"HyperThreading": "Enabled",
	"PowerProfile":   "Balanced",
	"SRIOV":          "Disabled",
	"SecureBoot":     "Disabled",
}

// labSlot is one component's firmware.
type labSlot struct {
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	Slot    int    `json:"slot"`
}

// labState is what the header holds.
type labState struct {
	Firmware map[string]labSlot `json:"firmware"`
	BIOS     map[string]string  `json:"bios"`
}

// LabDevice is an open lab device (a block device, or a file standing
// in for one).
type LabDevice struct {
	f     *os.File
	size  int64
	gen   uint64 // the generation of the copy in force (0: fresh)
	which int    // the copy in force (0 or 1)
	state labState
}

// FindLabDevice returns /dev/NAME of the block device under root whose
// serial is proto.LabDeviceSerial.
func FindLabDevice(root string) (string, error) {
	fs := sysfs{root: root}
	for _, name := range fs.list("sys/block") {
		if diskSerial(fs, "sys/block/"+name+"/") == proto.LabDeviceSerial {
			return fs.path("dev/" + name), nil
		}
	}
	return "", fmt.Errorf("no disk with serial %s (the lab device) under %s", proto.LabDeviceSerial, fs.path("sys/block"))
}

// OpenLabDevice opens and reads the lab device at path.
func OpenLabDevice(path string) (*LabDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	if size < labSlotsStart+LabSlotSize {
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes; a lab device needs at least %d", path, size, labSlotsStart+LabSlotSize)
	}
	d := &LabDevice{f: f, size: size}
	d.state = labState{Firmware: map[string]labSlot{}, BIOS: maps.Clone(LabDefaultBIOS)}
	for i := 0; i < 2; i++ {
		st, gen, ok := d.readHeader(i)
		if ok && gen > d.gen {
			d.state, d.gen, d.which = st, gen, i
		}
	}
	if d.state.Firmware == nil {
		d.state.Firmware = map[string]labSlot{}
	}
	if d.state.BIOS == nil {
		d.state.BIOS = map[string]string{}
	}
	return d, nil
}

// Close closes the device.
func (d *LabDevice) Close() error { return d.f.Close() }

// readHeader reads copy i; ok is false when it is not a valid header.
func (d *LabDevice) readHeader(i int) (labState, uint64, bool) {
	var st labState
	b := make([]byte, labHeaderSize)
	if _, err := d.f.ReadAt(b, int64(i)*labHeaderSize); err != nil {
		return st, 0, false
	}
	if string(b[:8]) != labMagic {
		return st, 0, false
	}
	gen := binary.LittleEndian.Uint64(b[8:])
	n := int(binary.LittleEndian.Uint32(b[16:]))
	if n > labHeaderSize-52 {
		return st, 0, false
	}
	body := b[52 : 52+n]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], b[20:52]) {
		return st, 0, false
	}
	if json.Unmarshal(body, &st) != nil {
		return st, 0, false
	}
	return st, gen, true
}

// writeHeader writes the state to the copy not in force, and syncs.
func (d *LabDevice) writeHeader() error {
	body, err := json.Marshal(d.state)
	if err != nil {
		return err
	}
	if len(body) > labHeaderSize-52 {
		return fmt.Errorf("the lab device's state is %d bytes; at most %d", len(body), labHeaderSize-52)
	}
	b := make([]byte, labHeaderSize)
	copy(b, labMagic)
	binary.LittleEndian.PutUint64(b[8:], d.gen+1)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(body)))
	sum := sha256.Sum256(body)
	copy(b[20:], sum[:])
	copy(b[52:], body)
	next := 1 - d.which
	if d.gen == 0 {
		next = 0
	}
	if _, err := d.f.WriteAt(b, int64(next)*labHeaderSize); err != nil {
		return err
	}
	if err := d.f.Sync(); err != nil {
		return err
	}
	d.gen, d.which = d.gen+1, next
	return nil
}

// FirmwareVersion returns a component's version, after checking its
// slot still holds the image applied.
func (d *LabDevice) FirmwareVersion(component string) (string, error) {
	s, ok := d.state.Firmware[component]
	if !ok {
		return LabFactoryVersion, nil
	}
	sum, err := d.slotSHA256(s.Slot, s.Size)
	if err != nil {
		return "", err
	}
	if sum != s.SHA256 {
		return "", fmt.Errorf("%s: the firmware in slot %d is corrupt (sha256 %s, want %s)", component, s.Slot, sum, s.SHA256)
	}
	return s.Version, nil
}

func (d *LabDevice) slotOffset(slot int) int64 { return labSlotsStart + int64(slot)*LabSlotSize }

func (d *LabDevice) slotSHA256(slot int, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d.f, d.slotOffset(slot), size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

var (
	labComponentRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*(:[A-Za-z0-9._:-]+)?$`)
	labVersionRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
)

// ParseLabImage reads a lab firmware image's header line and returns
// its component, version and payload.
func ParseLabImage(image []byte) (component, version string, payload []byte, err error) {
	line, rest, ok := bytes.Cut(image, []byte("\n"))
	if !ok || len(line) > 256 {
		return "", "", nil, fmt.Errorf("not a lab firmware image: no header line %q", LabImageMagic+" <component> <version>")
	}
	f := strings.Fields(string(line))
	if len(f) != 3 || f[0] != LabImageMagic {
		return "", "", nil, fmt.Errorf("not a lab firmware image: the header line is %q, want %q", truncate(string(line), 80), LabImageMagic+" <component> <version>")
	}
	if !labComponentRE.MatchString(f[1]) {
		return "", "", nil, fmt.Errorf("lab firmware image: bad component %q", f[1])
	}
	if !labVersionRE.MatchString(f[2]) {
		return "", "", nil, fmt.Errorf("lab firmware image: bad version %q", f[2])
	}
	return f[1], f[2], rest, nil
}

// ApplyFirmware writes an image (see ParseLabImage) to component's slot,
// reads it back, then records its version in the header. It returns the
// version.
func (d *LabDevice) ApplyFirmware(component string, image []byte) (string, error) {
	comp, version, payload, err := ParseLabImage(image)
	if err != nil {
		return "", err
	}
	if comp != component {
		return "", fmt.Errorf("the image is for component %q, not %q", comp, component)
	}
	if len(payload) > LabSlotSize {
		return "", fmt.Errorf("the image's payload is %d bytes; a slot holds %d", len(payload), LabSlotSize)
	}
	s, ok := d.state.Firmware[component]
	if !ok {
		used := map[int]bool{}
		for _, o := range d.state.Firmware {
			used[o.Slot] = true
		}
		for used[s.Slot] {
			s.Slot++
		}
		if d.slotOffset(s.Slot)+LabSlotSize > d.size {
			return "", fmt.Errorf("the lab device (%d bytes) has no free slot for %s", d.size, component)
		}
	}
	if _, err := d.f.WriteAt(payload, d.slotOffset(s.Slot)); err != nil {
		return "", fmt.Errorf("writing slot %d: %w", s.Slot, err)
	}
	if err := d.f.Sync(); err != nil {
		return "", err
	}
	sum := sha256.Sum256(payload)
	s.Version, s.SHA256, s.Size = version, hex.EncodeToString(sum[:]), int64(len(payload))
	if got, err := d.slotSHA256(s.Slot, s.Size); err != nil || got != s.SHA256 {
		return "", fmt.Errorf("reading slot %d back: sha256 %s, want %s (%v)", s.Slot, got, s.SHA256, err)
	}
	d.state.Firmware[component] = s
	if err := d.writeHeader(); err != nil {
		return "", fmt.Errorf("writing the header: %w", err)
	}
	return version, nil
}

// BIOS returns the settings.
func (d *LabDevice) BIOS() map[string]string { return maps.Clone(d.state.BIOS) }

// SetBIOS merges settings into the BIOS settings.
func (d *LabDevice) SetBIOS(settings map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		if k == "" || len(k) > 128 || len(settings[k]) > 1024 {
			return fmt.Errorf("setting %q: names are 1-128 bytes, values at most 1024", truncate(k, 40))
		}
	}
	merged := maps.Clone(d.state.BIOS)
	maps.Copy(merged, settings)
	if len(merged) > 512 {
		return fmt.Errorf("%d settings; the lab device holds 512", len(merged))
	}
	old := d.state.BIOS
	d.state.BIOS = merged
	if err := d.writeHeader(); err != nil {
		d.state.BIOS = old
		return err
	}
	return nil
}

// MFLabUsage is mflab's help.
const MFLabUsage = `usage: mflab [--device PATH] COMMAND
  firmware-version COMPONENT      print the component's firmware version
  firmware-apply COMPONENT FILE   write a lab firmware image ("MFLAB-FIRMWARE <component> <version>" line, then the payload)
  bios-get                        print the BIOS settings (a JSON object of strings)
  bios-set FILE                   merge the JSON object of strings in FILE into the BIOS settings
The device is the disk whose serial is MFLAB-DEVICE (found in /sys/block), or --device PATH,
or $METALFLEET_MFLAB_DEVICE.
`

// MFLab runs the mflab tool (proto.LabTool) with args (without the
// program name); root is where /sys and /dev are ("/"). It returns the
// exit status: 0 done, 1 failed, 2 bad usage; errors go to stderr.
func MFLab(args []string, root string, stdout, stderr io.Writer) int {
	err := mflab(args, root, stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errMFLabUsage):
		fmt.Fprintf(stderr, "mflab: %v\n%s", err, MFLabUsage)
		return 2
	}
	fmt.Fprintf(stderr, "mflab: %v\n", err)
	return 1
}

var errMFLabUsage = errors.New("bad usage")

func mflab(args []string, root string, stdout io.Writer) error {
	device := os.Getenv("METALFLEET_MFLAB_DEVICE")
	if len(args) >= 2 && args[0] == "--device" {
		device, args = args[1], args[2:]
	}
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errMFLabUsage)
	}
	want := map[string]int{"firmware-version": 1, "firmware-apply": 2, "bios-get": 0, "bios-set": 1, "help": 0}
	n, ok := want[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown command %q", errMFLabUsage, args[0])
	}
	if len(args)-1 != n {
		return fmt.Errorf("%w: %s takes %d arguments, got %d", errMFLabUsage, args[0], n, len(args)-1)
	}
	if args[0] == "help" {
		fmt.Fprint(stdout, MFLabUsage)
		return nil
	}
	if device == "" {
		var err error
		if device, err = FindLabDevice(root); err != nil {
			return err
		}
	}
	d, err := OpenLabDevice(device)
	if err != nil {
		return err
	}
	defer d.Close()
	switch args[0] {
	case "firmware-version":
		if !labComponentRE.MatchString(args[1]) {
			return fmt.Errorf("component %q: want a name such as bios, bmc or nic:<mac>", args[1])
		}
		v, err := d.FirmwareVersion(args[1])
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, v)
	case "firmware-apply":
		f, err := os.Open(args[2])
		if err != nil {
			return err
		}
		image, err := io.ReadAll(io.LimitReader(bufio.NewReader(f), LabSlotSize+4096))
		f.Close()
		if err != nil {
			return err
		}
		before, err := d.FirmwareVersion(args[1])
		if err != nil {
			before = "corrupt"
		}
		v, err := d.ApplyFirmware(args[1], image)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s -> %s\n", args[1], before, v)
	case "bios-get":
		b, _ := json.Marshal(d.BIOS())
		fmt.Fprintf(stdout, "%s\n", b)
	case "bios-set":
		raw, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return fmt.Errorf("%s: not a JSON object: %v", args[1], err)
		}
		s := make(map[string]string, len(m))
		for k, v := range m {
			str, ok := v.(string)
			if !ok {
				return fmt.Errorf("%s: setting %q: want a string value, got %v", args[1], truncate(k, 40), v)
			}
			s[k] = str
		}
		if err := d.SetBIOS(s); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d settings set\n", len(s))
	}
	return nil
}
