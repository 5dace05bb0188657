package proto

import "net/netip"

// RackAddrs is a rack's addresses parsed once: the strings of Rack are
// the wire form, these what code compares. A field the rack leaves empty
// (or, for a rack that never passed Check, gives wrong) is the zero value.
type RackAddrs struct {
	Subnet     netip.Prefix
	Gateway    netip.Addr
	BootServer netip.Addr
	DNS        []netip.Addr
	PoolStart  netip.Addr
	PoolEnd    netip.Addr
}

// Addrs parses the rack's addresses.
func (r *Rack) Addrs() RackAddrs {
	var a RackAddrs
	a.Subnet, _ = netip.ParsePrefix(r.Subnet)
	a.Gateway, _ = netip.ParseAddr(r.Gateway)
	a.BootServer, _ = netip.ParseAddr(r.BootServer)
	for _, d := range r.DNS {
		if x, err := netip.ParseAddr(d); err == nil {
			a.DNS = append(a.DNS, x)
		}
	}
	s, err1 := netip.ParseAddr(r.PoolStart)
	e, err2 := netip.ParseAddr(r.PoolEnd)
	if err1 == nil && err2 == nil {
		a.PoolStart, a.PoolEnd = s, e
	}
	return a
}

// HasPool reports whether the rack has a dynamic pool.
func (a RackAddrs) HasPool() bool { return a.PoolStart.IsValid() }

// InPool reports whether ip is in the rack's dynamic pool.
func (a RackAddrs) InPool(ip netip.Addr) bool {
	return a.HasPool() && !ip.Less(a.PoolStart) && !a.PoolEnd.Less(ip)
}

// Own reports whether ip is one of the rack's own addresses (gateway,
// boot server, DNS).
func (a RackAddrs) Own(ip netip.Addr) bool {
	if ip == a.Gateway || ip == a.BootServer {
		return ip.IsValid()
	}
	for _, d := range a.DNS {
		if d == ip {
			return true
		}
	}
	return false
}
