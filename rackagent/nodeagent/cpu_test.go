package nodeagent

import (
	"reflect"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"0", 1, false}, {"0-3", 4, false}, {"0-3,8-11\n", 8, false}, {"0,2,4", 3, false}, {"", 0, false},
		{"x", 0, true}, {"3-1", 0, true}, {"0-", 0, true},
	} {
		got, err := parseCPUList(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("parseCPUList(%q) = %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseCPUInfoARM(t *testing.T) {
	text := "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n" +
		"processor\t: 1\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
	got := parseCPUInfo(text)
	want := []cpuInfoProc{
		{Flags: []string{"fp", "asimd", "evtstrm", "aes"}, Implementer: "0x41", Part: "0xd0c"},
		{Flags: []string{"fp", "asimd", "evtstrm", "aes"}, Implementer: "0x41", Part: "0xd0c"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseCPUInfo(arm) = %+v, want %+v", got, want)
	}
	if a := readArch(sysfs{root: t.TempDir()}, false, got); a != "aarch64" {
		t.Errorf("readArch(arm cpuinfo) = %q, want aarch64", a)
	}
}

func TestUnameArch(t *testing.T) {
	for in, want := range map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"} {
		if got := unameArch(in); got != want {
			t.Errorf("unameArch(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMemTotal(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"MemTotal:       24684084 kB\nMemFree: 1 kB\n", 24684084 << 10, false},
		{"MemFree: 1 kB\n", 0, true},
		{"MemTotal: x kB\n", 0, true},
		{"MemTotal: 12 MB\n", 0, true},
	} {
		got, err := memTotal(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("memTotal(%q) = %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
