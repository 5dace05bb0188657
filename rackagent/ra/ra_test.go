package ra

import (
	"bytes"
	"net"
	"testing"
)

func TestPacket(t *testing.T) {
	hw := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	p := Packet(hw)
	want := []byte{134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 1, 2, 3}
	if !bytes.Equal(p, want) {
		t.Fatalf("Packet = % x, want % x", p, want)
	}
	// Router lifetime (bytes 6-7) 0: never a default router; flags
	// (byte 5) 0: no DHCPv6.
	if p[5] != 0 || p[6] != 0 || p[7] != 0 {
		t.Fatalf("flags/lifetime not zero: % x", p[4:8])
	}
}
