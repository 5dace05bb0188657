// Package ra sends IPv6 router advertisements on a rack network that has
// no IPv6 router. iPXE runs IPv6 autoconfiguration beside DHCPv4 and does
// not finish configuring a NIC until a router advertisement arrives or
// about 16 s pass (measured in QEMU with Debian's iPXE): one advertisement
// every half second removes that wait from every network boot. The
// advertisement is the smallest that ends it: no prefix, no managed or
// other-configuration flags (so no DHCPv6 either), router lifetime 0 (not
// a default router).
package ra

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultInterval is how often an advertisement goes out: the longest a
// booting iPXE waits for one.
const DefaultInterval = 500 * time.Millisecond

// Packet is the ICMPv6 router advertisement for a sender with hardware
// address hw (the kernel fills in the checksum).
func Packet(hw net.HardwareAddr) []byte {
	// type 134, code 0, checksum 0, cur hop limit 64, flags 0, router
	// lifetime 0, reachable time 0, retrans timer 0; option 1 (source
	// link-layer address, 8 bytes).
	return append([]byte{134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}, hw...)
}

// Run sends advertisements on ifname to all nodes every interval until
// ctx ends. It needs CAP_NET_RAW.
func Run(ctx context.Context, ifname string, interval time.Duration, log *slog.Logger) error {
	if interval <= 0 {
		interval = DefaultInterval
	}
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	if len(ifc.HardwareAddr) != 6 {
		return fmt.Errorf("router advertisements on %s: not an Ethernet interface", ifname)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("router advertisements on %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	// Advertisements must arrive with hop limit 255.
	for _, o := range [][2]int{{unix.IPV6_MULTICAST_HOPS, 255}, {unix.IPV6_MULTICAST_IF, ifc.Index}, {unix.IPV6_MULTICAST_LOOP, 0}} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o[0], o[1]); err != nil {
			return fmt.Errorf("router advertisements on %s: %w", ifname, err)
		}
	}
	if err := unix.BindToDevice(fd, ifname); err != nil {
		return fmt.Errorf("router advertisements on %s: %w", ifname, err)
	}
	dst := unix.SockaddrInet6{ZoneId: uint32(ifc.Index)}
	copy(dst.Addr[:], net.ParseIP("ff02::1").To16())
	pkt := Packet(ifc.HardwareAddr)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failing := false
	for {
		// Without carrier (no machine on the link yet) a send fails; a
		// later one goes out.
		if err := unix.Sendto(fd, pkt, 0, &dst); err != nil && !failing {
			failing = true
			log.Debug("router advertisement not sent", "iface", ifname, "err", err)
		} else if err == nil {
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
