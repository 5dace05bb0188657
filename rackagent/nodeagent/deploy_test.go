package nodeagent

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/metalfleet/metalfleet/proto"
)

func TestChooseRootDisk(t *testing.T) {
	inv := &proto.Inventory{Disks: []proto.Disk{
		{Name: "sda", SizeBytes: 480 << 30, Serial: "SSD1", WWN: "0x5000c500aabbccdd"},
		{Name: "sdb", SizeBytes: 240 << 30, Serial: "SSD2"},
		{Name: "sdc", SizeBytes: 4 << 40, Serial: "HDD1"},
		{Name: "nvme0n1", SizeBytes: 240 << 30, Serial: "NVM1", WWN: "eui.0025388b71b2c1e4"},
		{Name: "vdz", SizeBytes: 1 << 30, Serial: proto.LabDeviceSerial},
		{Name: "sdd", SizeBytes: 100 << 30, Serial: "M1"},
		{Name: "sde", SizeBytes: 100 << 30, Serial: "M2"},
		{Name: "md127", SizeBytes: 100 << 30, RAID: "raid1", Members: []string{"sdd", "sde"}},
	}}
	for _, tc := range []struct {
		name    string
		hint    *proto.RootDeviceHint
		need    int64
		want    string
		wantErr []string
		inv     *proto.Inventory // else inv
	}{
		{name: "smallest that fits, ties by name", need: 10 << 30, want: "nvme0n1"},
		{name: "smallest of the big enough", need: 300 << 30, want: "sda"},
		{name: "never the lab device, an array or its members", need: 1, want: "nvme0n1"},
		{name: "nothing big enough", need: 8 << 40, wantErr: []string{"no disk of at least", "sdc", "[lab device]", "[md array]", "[member of md127]"}},
		{name: "serial", hint: &proto.RootDeviceHint{Serial: "HDD1"}, need: 1, want: "sdc"},
		{name: "name with /dev/", hint: &proto.RootDeviceHint{Name: "/dev/sdb"}, want: "sdb"},
		{name: "wwn without 0x, upper case", hint: &proto.RootDeviceHint{WWN: "5000C500AABBCCDD"}, want: "sda"},
		{name: "min size GiB", hint: &proto.RootDeviceHint{MinSizeGB: 300}, want: "sda"},
		{name: "every field must match", hint: &proto.RootDeviceHint{Serial: "SSD1", Name: "sdb"},
			wantErr: []string{"no disk matches the root-device hint {name=sdb serial=SSD1}", "sda (515396075520 bytes, serial SSD1"}},
		{name: "the hint's disk is too small", hint: &proto.RootDeviceHint{Serial: "SSD2"}, need: 300 << 30,
			wantErr: []string{"matching the root-device hint {serial=SSD2} are smaller than the 322122547200 bytes needed", "sdb"}},
		{name: "a hint naming an array member", hint: &proto.RootDeviceHint{Serial: "M1"}, wantErr: []string{"no disk matches", "sdd (107374182400 bytes, serial M1) [member of md127]"}},
		{name: "a hint naming the lab device", hint: &proto.RootDeviceHint{Serial: proto.LabDeviceSerial}, wantErr: []string{"no disk matches"}},
		{name: "min size past 2^33 GiB matches nothing (no overflow)", hint: &proto.RootDeviceHint{MinSizeGB: 1 << 40}, wantErr: []string{"no disk matches"}},
		{name: "never a disk whose partition is an array member", need: 1, want: "nvme0n1", inv: &proto.Inventory{Disks: []proto.Disk{
			{Name: "sdf", SizeBytes: 10 << 30, Serial: "P1"},
			{Name: "nvme1n1", SizeBytes: 12 << 30, Serial: "P2"},
			{Name: "nvme0n1", SizeBytes: 240 << 30, Serial: "NVM1"},
			{Name: "md0", SizeBytes: 9 << 30, RAID: "raid1", Members: []string{"sdf1", "nvme1n1p2"}},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := inv
			if tc.inv != nil {
				in = tc.inv
			}
			d, err := chooseRootDisk(in, tc.hint, tc.need)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("chooseRootDisk = %s, want an error", d.Name)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil || d.Name != tc.want {
				t.Errorf("chooseRootDisk = %s, %v, want %s", d.Name, err, tc.want)
			}
		})
	}
}

func TestDetectFormat(t *testing.T) {
	for _, tc := range []struct {
		head, want, err string
	}{
		{"\x1f\x8b\x08\x00", FormatGzip, ""},
		{"\x28\xb5\x2f\xfd", FormatZstd, ""},
		{"\x50\x2a\x4d\x18", FormatZstd, ""},
		{"\xeb\x63\x90\x00", FormatRaw, ""},
		{"\x00\x00\x00\x00", FormatRaw, ""},
		{"QFI\xfb\x00\x00\x00\x03", "", "qcow2: not supported"},
		{"\xfd7zXZ\x00", "", "xz"},
		{"BZh9", "", "bzip2"},
	} {
		got, err := detectFormat([]byte(tc.head))
		if got != tc.want || (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("detectFormat(%q) = %q, %v, want %q, %q", tc.head, got, err, tc.want, tc.err)
		}
	}
}

// testImage is random bytes: several blocks and a tail that ends inside
// a 4 KiB block.
func testImage(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func gzipOf(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdOf(t *testing.T, b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(b, nil)
}

// deployPlan is a deploy plan of the artifact served as name by an
// artifact server of its own (the test agent answers one request at a
// time: an image streamed from it would hold up the progress reports).
func deployPlan(a *testAgent, name string, served []byte, sum string, params map[string]string) proto.TaskPlan {
	if params == nil {
		params = map[string]string{}
	}
	params["image"] = name
	plan := planOf(proto.TaskDeploy, params)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+taskToken || r.Header.Get(proto.MACHeader) != taskMAC {
			a.t.Errorf("artifact request without the token or MAC: %v", r.Header)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.Write(served)
	}))
	a.t.Cleanup(srv.Close)
	plan.Artifacts = map[string]proto.Artifact{name: {Name: name, URL: srv.URL + "/artifacts/" + name, SHA256: sum, Size: int64(len(served))}}
	return plan
}

// fillDisk fills a test machine's disk with b.
func fillDisk(t *testing.T, m *testMachine, name string, b byte) {
	t.Helper()
	p := filepath.Join(m.dir, name)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Repeat([]byte{b}, int(st.Size())), 0o600); err != nil {
		t.Fatal(err)
	}
}

func setDeployBlock(t *testing.T, n int) {
	old := deployBlock
	deployBlock = n
	t.Cleanup(func() { deployBlock = old })
}

// TestRunTaskDeploy: raw, gzip and zstd images are written to the
// smallest disk (or the hinted one) and read back; the bytes after the
// image's end are the disk's own.
func TestRunTaskDeploy(t *testing.T) {
	setDeployBlock(t, 64<<10)
	img := testImage(t, 1<<20+3*4096+123)
	for _, tc := range []struct {
		format string
		served []byte
		params map[string]string
		disk   string
	}{
		{FormatRaw, img, nil, "vda"},
		{FormatGzip, gzipOf(t, img), nil, "vda"},
		{FormatZstd, zstdOf(t, img), nil, "vda"},
		{FormatZstd, zstdOf(t, img), map[string]string{"root_device": `{"serial":"S2"}`, "min_bytes": "2MiB"}, "vdb"},
	} {
		t.Run(tc.format+"-"+tc.disk, func(t *testing.T) {
			a := newTestAgent(t, proto.TaskPlan{})
			a.plan = deployPlan(a, "img", tc.served, sha(tc.served), tc.params)
			m := newTestMachine(t)
			fillDisk(t, m, "vda", 0xaa)
			fillDisk(t, m, "vdb", 0xaa)
			if err := runTestTask(t, a, m); err != nil {
				t.Fatalf("RunTask = %v", err)
			}
			r := a.results()["write"]
			if !r.Passed {
				t.Fatalf("write: %+v, want passed", r)
			}
			res := decode[deployResult](t, r.Result)
			want := deployResult{Image: "img", Disk: tc.disk, Serial: map[string]string{"vda": "S1", "vdb": "S2"}[tc.disk],
				Format: tc.format, Bytes: int64(len(img)), SHA256: sha(img)}
			got := res
			got.WriteMBPerSec, got.VerifyMBPerSec = 0, 0
			if got != want || res.WriteMBPerSec <= 0 || res.VerifyMBPerSec <= 0 {
				t.Errorf("result = %+v, want %+v with rates", res, want)
			}
			disk, _ := os.ReadFile(filepath.Join(m.dir, tc.disk))
			if !bytes.Equal(disk[:len(img)], img) {
				t.Error("the disk does not hold the image")
			}
			if rest := disk[len(img) : len(disk)-1<<20]; !bytes.Equal(rest, bytes.Repeat([]byte{0xaa}, len(rest))) {
				t.Error("the bytes after the image changed")
			}
			if firstNonZero(disk[len(disk)-1<<20:]) >= 0 {
				t.Error("the disk's last MiB (an old backup GPT header's place) was not zeroed")
			}
			other := map[string]string{"vda": "vdb", "vdb": "vda"}[tc.disk]
			if o, _ := os.ReadFile(filepath.Join(m.dir, other)); !bytes.Equal(o, bytes.Repeat([]byte{0xaa}, len(o))) {
				t.Errorf("disk %s was written", other)
			}
			if lab, _ := os.ReadFile(m.labDev); !bytes.Equal(lab, make([]byte, len(lab))) {
				t.Error("the lab device was written")
			}
			if a.progressCount() == 0 {
				t.Error("no progress report")
			}
		})
	}
}

// lossyMachine drops the writes to one range of vda (a disk that lies).
type lossyMachine struct {
	*testMachine
	from, to int64
}

type lossyDisk struct {
	DiskDevice
	from, to int64
}

func (m *lossyMachine) OpenDisk(name string, write bool) (DiskDevice, error) {
	d, err := m.testMachine.OpenDisk(name, write)
	if err != nil || name != "vda" {
		return d, err
	}
	return &lossyDisk{d, m.from, m.to}, nil
}

func (d *lossyDisk) WriteAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if end <= d.from || off >= d.to {
		return d.DiskDevice.WriteAt(p, off)
	}
	// Write only what lies outside [from, to).
	if off < d.from {
		if _, err := d.DiskDevice.WriteAt(p[:d.from-off], off); err != nil {
			return 0, err
		}
	}
	if end > d.to {
		if _, err := d.DiskDevice.WriteAt(p[d.to-off:], d.to); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func TestRunTaskDeployReadBackMismatch(t *testing.T) {
	setDeployBlock(t, 64<<10)
	img := testImage(t, 1<<20)
	a := newTestAgent(t, proto.TaskPlan{})
	a.plan = deployPlan(a, "img", img, sha(img), nil)
	m := &lossyMachine{testMachine: newTestMachine(t), from: 200 << 10, to: 204 << 10}
	if err := runTestTask(t, a, m); err == nil {
		t.Fatal("RunTask passed on a disk that dropped a write")
	}
	r := a.results()["write"]
	for _, w := range []string{"read back from vda: sha256", "1 of 16 blocks of 65536 bytes differ, at bytes 196608-262144"} {
		if r.Passed || !strings.Contains(r.Error, w) {
			t.Errorf("write: passed %t error %q, want it to say %q", r.Passed, r.Error, w)
		}
	}
}

func TestRunTaskDeployRefusals(t *testing.T) {
	setDeployBlock(t, 64<<10)
	qcow := append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 8192)...)
	big := testImage(t, 4<<20)
	for _, tc := range []struct {
		name     string
		served   []byte
		sum      string
		params   map[string]string
		want     []string
		attempts int
	}{
		{name: "qcow2", served: qcow, want: []string{`image "img": the image is qcow2: not supported`, "qemu-img convert"}, attempts: 1},
		{name: "qcow2 in gzip", served: gzipOf(t, qcow), want: []string{"a gzip image whose content is qcow2"}, attempts: 1},
		{name: "raw too big for any disk", served: big, want: []string{"no disk of at least 4194304 bytes", "vda (3145728 bytes, serial S1)"}, attempts: 1},
		{name: "gzip bigger than its disk", served: gzipOf(t, big), want: []string{`image "img" is bigger than disk vda (3145728 bytes)`}, attempts: 1},
		{name: "min_bytes", served: qcow[8:], params: map[string]string{"min_bytes": "1GiB"}, want: []string{"no disk of at least 1073741824 bytes"}, attempts: 1},
		{name: "hint matches nothing", served: qcow[8:], params: map[string]string{"root_device": `{"wwn":"0x5000"}`}, want: []string{"no disk matches the root-device hint {wwn=0x5000}: disks here: vda"}, attempts: 1},
		{name: "a bad copy every time", served: gzipOf(t, qcow[8:]), sum: strings.Repeat("0", 64), want: []string{"sha256 mismatch", "attempt 4"}, attempts: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sum := tc.sum
			if sum == "" {
				sum = sha(tc.served)
			}
			a := newTestAgent(t, proto.TaskPlan{})
			a.plan = deployPlan(a, "img", tc.served, sum, tc.params)
			m := newTestMachine(t)
			if err := runTestTask(t, a, m); err == nil {
				t.Fatal("RunTask passed")
			}
			r := a.results()["write"]
			for _, w := range tc.want {
				if r.Passed || !strings.Contains(r.Error, w) {
					t.Errorf("write: passed %t error %q, want it to say %q", r.Passed, r.Error, w)
				}
			}
			if got := strings.Count(r.Log, "fetching the image again"); got != tc.attempts-1 {
				t.Errorf("fetched again %d times, want %d (log %s)", got, tc.attempts-1, r.Log)
			}
		})
	}
}
