package nodeagent

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metalfleet/metalfleet/proto"
)

// tlv encodes one LLDP TLV.
func tlv(typ int, v ...byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(typ<<9|len(v))), v...)
}

func lldpdu(tlvs ...[]byte) []byte {
	var b []byte
	for _, t := range tlvs {
		b = append(b, t...)
	}
	return append(b, tlv(tlvEnd)...)
}

// ethFrame wraps an LLDPDU in an Ethernet frame to the nearest-bridge
// group, with an 802.1Q tag when vlan is not 0.
func ethFrame(src net.HardwareAddr, vlan uint16, pdu []byte) []byte {
	b := append([]byte{0x01, 0x80, 0xC2, 0x00, 0x00, 0x0E}, src...)
	if vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, vlan)
	}
	b = binary.BigEndian.AppendUint16(b, EtherTypeLLDP)
	return append(b, pdu...)
}

func TestParseLLDPDU(t *testing.T) {
	mac := []byte{0x00, 0x1c, 0x73, 0xaa, 0xbb, 0xcc}
	ttl := tlv(tlvTTL, 0, 120)
	for _, tc := range []struct {
		name    string
		pdu     []byte
		want    *proto.LLDP
		wantErr bool
	}{
		{
			name: "arista: MAC chassis, interface name port, system name",
			pdu:  lldpdu(tlv(tlvChassisID, append([]byte{4}, mac...)...), tlv(tlvPortID, append([]byte{5}, "Ethernet12"...)...), ttl, tlv(4, []byte("to r650-01")...), tlv(tlvSystemName, []byte("leaf-r01a.dc1")...)),
			want: &proto.LLDP{ChassisID: "00:1c:73:aa:bb:cc", PortID: "Ethernet12", SystemName: "leaf-r01a.dc1"},
		},
		{
			name: "port as MAC, chassis as IPv4 network address, no system name",
			pdu:  lldpdu(tlv(tlvChassisID, 5, 1, 10, 0, 0, 7), tlv(tlvPortID, append([]byte{3}, mac...)...), ttl),
			want: &proto.LLDP{ChassisID: "10.0.0.7", PortID: "00:1c:73:aa:bb:cc"},
		},
		{
			name: "locally assigned binary ids show as hex; NUL-padded name",
			pdu:  lldpdu(tlv(tlvChassisID, 7, 0x01, 0xff), tlv(tlvPortID, 7, 'g', 'i', '1', '/', '0', '/', '3'), ttl, tlv(tlvSystemName, 's', 'w', 0, 0)),
			want: &proto.LLDP{ChassisID: "01ff", PortID: "gi1/0/3", SystemName: "sw"},
		},
		{
			name: "no End TLV",
			pdu:  append(tlv(tlvChassisID, 6, 'c'), tlv(tlvPortID, 5, 'p')...),
			want: &proto.LLDP{ChassisID: "c", PortID: "p"},
		},
		{name: "no port id", pdu: lldpdu(tlv(tlvChassisID, 6, 'c'), ttl), wantErr: true},
		{name: "TLV longer than the frame", pdu: append(tlv(tlvChassisID, 6, 'c'), 0x04, 0x20, 5), wantErr: true},
		{name: "empty chassis id", pdu: lldpdu(tlv(tlvChassisID), tlv(tlvPortID, 5, 'p')), wantErr: true},
		{name: "empty", pdu: nil, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLLDPDU(tc.pdu)
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseLLDPDU = %+v, %v; want %+v, error %t", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseLLDPFrame(t *testing.T) {
	src := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	pdu := lldpdu(tlv(tlvChassisID, 6, 's', 'w'), tlv(tlvPortID, 5, 'e', '1'))
	want := &proto.LLDP{ChassisID: "sw", PortID: "e1"}
	for _, vlan := range []uint16{0, 42} {
		got, err := parseLLDPFrame(ethFrame(src, vlan, pdu))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseLLDPFrame(vlan %d) = %+v, %v; want %+v", vlan, got, err, want)
		}
	}
	ip := ethFrame(src, 0, pdu)
	binary.BigEndian.PutUint16(ip[12:], 0x0800)
	if _, err := parseLLDPFrame(ip); err != errNotLLDP {
		t.Errorf("parseLLDPFrame(IPv4 frame) = %v, want errNotLLDP", err)
	}
	if _, err := parseLLDPFrame([]byte{1, 2, 3}); err != errNotLLDP {
		t.Errorf("parseLLDPFrame(short) = %v, want errNotLLDP", err)
	}
}

// TestListenLLDPOnLoopback sends an LLDP frame on lo with a raw socket
// and hears it with ListenLLDP. It needs CAP_NET_RAW.
func TestListenLLDPOnLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for AF_PACKET")
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(fd)
	frame := ethFrame(net.HardwareAddr{0x02, 0, 0, 0, 0, 9}, 0,
		lldpdu(tlv(tlvChassisID, 6, 't', 'o', 'r'), tlv(tlvPortID, 5, 'E', 't', 'h', '7'), tlv(tlvTTL, 0, 120), tlv(tlvSystemName, 't', 'o', 'r', '1')))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Send until heard (the listener may not be bound yet), every
		// 20 ms as a switch would, only faster.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			_ = unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: lo.Index, Protocol: htons(EtherTypeLLDP), Halen: 6})
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	got := ListenLLDP(ctx, []string{"lo", "no-such-iface0"}, 5*time.Second, nil)
	cancel()
	want := map[string]*proto.LLDP{"lo": {ChassisID: "tor", PortID: "Eth7", SystemName: "tor1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListenLLDP(lo) = %+v, want %+v", got, want)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("ListenLLDP took %s; want it back soon after every interface it could listen on was heard", d)
	}
}

func TestListenLLDPWaitsNoLongerThanAsked(t *testing.T) {
	start := time.Now()
	got := ListenLLDP(context.Background(), []string{"lo"}, 200*time.Millisecond, nil)
	if len(got) != 0 {
		t.Errorf("ListenLLDP(lo, silent) = %v, want nothing", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("ListenLLDP(200ms) took %s", d)
	}
	if got := ListenLLDP(context.Background(), []string{"lo"}, 0, nil); len(got) != 0 {
		t.Errorf("ListenLLDP(wait 0) = %v, want nothing", got)
	}
}
