package proto

import (
	"net/netip"
	"testing"
)

func TestRackAddrs(t *testing.T) {
	r := Rack{Name: "r", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2", DNS: []string{"10.9.0.3"},
		PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}
	a := r.Addrs()
	for ip, want := range map[string][2]bool{ // in pool, own
		"10.9.0.99": {false, false}, "10.9.0.100": {true, false}, "10.9.0.199": {true, false}, "10.9.0.200": {false, false},
		"10.9.0.1": {false, true}, "10.9.0.2": {false, true}, "10.9.0.3": {false, true},
	} {
		x := netip.MustParseAddr(ip)
		if a.InPool(x) != want[0] || a.Own(x) != want[1] {
			t.Errorf("%s: in pool %v own %v, want %v", ip, a.InPool(x), a.Own(x), want)
		}
	}
	empty := (&Rack{Name: "e"}).Addrs()
	if empty.HasPool() || empty.InPool(netip.MustParseAddr("10.9.0.100")) || empty.Own(netip.Addr{}) {
		t.Errorf("a rack without addresses: %+v", empty)
	}
}
