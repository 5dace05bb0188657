package nodeagent

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// labFile is a file standing in for the lab device.
func labFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mflab.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// mflabRun runs the tool on dev and returns its exit code and output.
func mflabRun(t *testing.T, dev string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := MFLab(append([]string{"--device", dev}, args...), "/", &out, &errb)
	return code, out.String(), errb.String()
}

func writeTemp(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMFLabFirmware(t *testing.T) {
	dev := labFile(t, 16<<20)
	if code, out, errs := mflabRun(t, dev, "firmware-version", "bios"); code != 0 || out != "1.0.0\n" {
		t.Fatalf("firmware-version on a fresh device = %d %q %q, want the factory 1.0.0", code, out, errs)
	}
	img := writeTemp(t, "bios.img", labImage("bios", "2.0.1", strings.Repeat("B", 100000)))
	if code, out, errs := mflabRun(t, dev, "firmware-apply", "bios", img); code != 0 || out != "bios: 1.0.0 -> 2.0.1\n" {
		t.Fatalf("firmware-apply = %d %q %q", code, out, errs)
	}
	nic := writeTemp(t, "nic.img", labImage("nic:52:54:00:aa:bb:01", "9.9", "N"))
	if code, _, errs := mflabRun(t, dev, "firmware-apply", "nic:52:54:00:aa:bb:01", nic); code != 0 {
		t.Fatalf("firmware-apply nic = %d %q", code, errs)
	}
	for comp, want := range map[string]string{"bios": "2.0.1\n", "nic:52:54:00:aa:bb:01": "9.9\n", "bmc": "1.0.0\n"} {
		if code, out, _ := mflabRun(t, dev, "firmware-version", comp); code != 0 || out != want {
			t.Errorf("firmware-version %s = %d %q, want %q", comp, code, out, want)
		}
	}
	for _, tc := range []struct {
		args    []string
		code    int
		wantErr string
	}{
		{[]string{"firmware-apply", "bmc", img}, 1, `the image is for component "bios", not "bmc"`},
		{[]string{"firmware-apply", "bios", writeTemp(t, "bad", []byte("MZ\x90\x00 a PE file\n"))}, 1, "not a lab firmware image"},
		{[]string{"firmware-apply", "bios", writeTemp(t, "v", labImage("bios", "bad/version", "x"))}, 1, `bad version "bad/version"`},
		{[]string{"firmware-apply", "bios", writeTemp(t, "big", labImage("bios", "3", strings.Repeat("x", LabSlotSize+1)))}, 1, "a slot holds"},
		{[]string{"firmware-apply", "bios", "/nonexistent/image"}, 1, "no such file"},
		{[]string{"firmware-version"}, 2, "takes 1 arguments"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"firmware-version", "BAD COMPONENT"}, 1, "component"},
	} {
		code, _, errs := mflabRun(t, dev, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.wantErr) {
			t.Errorf("mflab %q = %d %q, want %d and %q", tc.args, code, errs, tc.code, tc.wantErr)
		}
	}
	// A refused image changed nothing.
	if _, out, _ := mflabRun(t, dev, "firmware-version", "bios"); out != "2.0.1\n" {
		t.Errorf("bios after refused images = %q, want 2.0.1", out)
	}
	// A corrupt slot is found.
	f, _ := os.OpenFile(dev, os.O_RDWR, 0)
	f.WriteAt([]byte("corruption"), labSlotsStart+10)
	f.Close()
	if code, _, errs := mflabRun(t, dev, "firmware-version", "bios"); code != 1 || !strings.Contains(errs, "corrupt") {
		t.Errorf("firmware-version of a corrupt slot = %d %q, want a failure", code, errs)
	}
}

func TestMFLabBIOS(t *testing.T) {
	dev := labFile(t, 8<<20)
	code, out, _ := mflabRun(t, dev, "bios-get")
	var got map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got["BootMode"] != "UEFI" || len(got) != len(LabDefaultBIOS) {
		t.Fatalf("bios-get on a fresh device = %d %q, want the defaults", code, out)
	}
	set := writeTemp(t, "s.json", []byte(`{"BootMode":"Legacy","Custom.Knob":"7"}`))
	if code, _, errs := mflabRun(t, dev, "bios-set", set); code != 0 {
		t.Fatalf("bios-set = %d %q", code, errs)
	}
	_, out, _ = mflabRun(t, dev, "bios-get")
	got = nil
	json.Unmarshal([]byte(out), &got)
	if got["BootMode"] != "Legacy" || got["Custom.Knob"] != "7" || got["SRIOV"] != "Disabled" {
		t.Errorf("bios-get after set = %v, want the two merged into the defaults", got)
	}
	for _, bad := range []string{`{"BootMode":1}`, `[1,2]`, `not json`} {
		if code, _, errs := mflabRun(t, dev, "bios-set", writeTemp(t, "b.json", []byte(bad))); code != 1 || errs == "" {
			t.Errorf("bios-set %s = %d %q, want a refusal", bad, code, errs)
		}
	}
	// Many writes alternate the header copies; a torn copy A leaves B.
	for i := 0; i < 5; i++ {
		mflabRun(t, dev, "bios-set", writeTemp(t, "n.json", []byte(`{"N":"`+string(rune('0'+i))+`"}`)))
	}
	d, err := OpenLabDevice(dev)
	if err != nil {
		t.Fatal(err)
	}
	which, gen := d.which, d.gen
	d.Close()
	f, _ := os.OpenFile(dev, os.O_RDWR, 0)
	f.WriteAt([]byte("torn"), int64(which)*labHeaderSize+100)
	f.Close()
	d, err = OpenLabDevice(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.gen != gen-1 || d.BIOS()["N"] != "3" || d.BIOS()["BootMode"] != "Legacy" {
		t.Errorf("after tearing the newest header: generation %d (want %d), N=%q (want 3)", d.gen, gen-1, d.BIOS()["N"])
	}
}

func TestMFLabDevice(t *testing.T) {
	if _, err := OpenLabDevice(labFile(t, 1<<20)); err == nil || !strings.Contains(err.Error(), "needs at least") {
		t.Errorf("OpenLabDevice(1 MiB) = %v, want too small", err)
	}
	root := t.TempDir()
	for p, v := range map[string]string{
		"sys/block/vda/serial":   "DISK1\n",
		"sys/block/vdb/serial":   proto.LabDeviceSerial + "\n",
		"sys/block/loop0/size":   "0\n",
		"dev/placeholder-for-fs": "",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(v), 0o644)
	}
	if got, err := FindLabDevice(root); err != nil || got != filepath.Join(root, "dev/vdb") {
		t.Errorf("FindLabDevice = %q, %v; want %s/dev/vdb", got, err, root)
	}
	os.Remove(filepath.Join(root, "sys/block/vdb/serial"))
	if _, err := FindLabDevice(root); err == nil || !strings.Contains(err.Error(), proto.LabDeviceSerial) {
		t.Errorf("FindLabDevice(none) = %v, want an error naming the serial", err)
	}
	var errb bytes.Buffer
	if code := MFLab([]string{"bios-get"}, root, &bytes.Buffer{}, &errb); code != 1 || !strings.Contains(errb.String(), "no disk with serial") {
		t.Errorf("mflab without a device = %d %q", code, errb.String())
	}
}
