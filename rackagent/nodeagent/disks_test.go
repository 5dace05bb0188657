package nodeagent

import "testing"

func TestSkipDisk(t *testing.T) {
	for name, want := range map[string]bool{
		"sda": false, "vda": false, "nvme0n1": false, "xvda": false, "mmcblk0": false,
		"loop0": true, "ram0": true, "sr0": true, "zram0": true, "dm-0": true, "md127": false, "nbd0": true, "fd0": true,
	} {
		if got := skipDisk(name); got != want {
			t.Errorf("skipDisk(%q) = %t, want %t", name, got, want)
		}
	}
}

func TestVPDSerial(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{append([]byte{0, 0x80, 0, 12}, "  S6KKNE0T12"...), "S6KKNE0T12"},
		{append([]byte{0, 0x80, 0, 20}, "WJC0ABCD\x00"...), "WJC0ABCD"}, // length past the end
		{[]byte{0, 0x83, 0, 4, 'a', 'b', 'c', 'd'}, ""},                 // another page
		{[]byte{0, 0x80}, ""},
		{append([]byte{0, 0x80, 0x01, 0x00}, "LONG"...), "LONG"}, // a 256-byte length, cut short

	} {
		if got := vpdSerial(tc.in); got != tc.want {
			t.Errorf("vpdSerial(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDerivePath(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda":                        "pci-0000:00:04.0",
		"/sys/devices/pci0000:c0/0000:c0:01.1/0000:c3:00.0/nvme/nvme0/nvme0n1":          "pci-0000:c3:00.0-nvme-1",
		"/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda": "",
		"/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1":                      "",
		"/sys/devices/virtual/block/loop0":                                              "",
		"":                                                                              "",
	} {
		if got := derivePath(in); got != want {
			t.Errorf("derivePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHexID(t *testing.T) {
	for in, want := range map[string]string{"0x8086": "8086", "0x060000": "060000", "0X1AF4": "1af4", "": "", "0xzz": ""} {
		if got := hexID(in); got != want {
			t.Errorf("hexID(%q) = %q, want %q", in, got, want)
		}
	}
}
