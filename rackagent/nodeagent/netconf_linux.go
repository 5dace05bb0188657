package nodeagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"golang.org/x/sys/unix"
)

// DHCPClassID is the vendor class (option 60) the ramdisk sends, so a
// DHCP server can tell it from firmware.
const DHCPClassID = "metalfleet-nodeagent"

// setLinkUp sets IFF_UP on an interface.
func setLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS %s: %w", name, err)
	}
	return nil
}

// dhcpLease takes an IPv4 lease on the interface with nclient4 (a raw
// socket: the interface needs no address), retrying until ctx ends.
func dhcpLease(ctx context.Context, l Link, log *slog.Logger) (*Lease, error) {
	c, err := nclient4.New(l.Name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var last error
	for {
		lease, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(DHCPClassID)))
		if err == nil {
			return leaseFromACK(l, lease.ACK)
		}
		last = err
		if ctx.Err() == nil {
			log.Info("dhcp: no lease yet; asking again", "iface", l.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// leaseFromACK reads a lease from a DHCPACK.
func leaseFromACK(l Link, ack *dhcpv4.DHCPv4) (*Lease, error) {
	ip := ack.YourIPAddr.To4()
	if ip == nil || ip.IsUnspecified() {
		return nil, errors.New("the ACK has no address")
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ip.DefaultMask()
	}
	lease := &Lease{
		Interface: l.Name,
		MAC:       l.MAC,
		Addr:      net.IPNet{IP: ip, Mask: mask},
		DNS:       ack.DNS(),
		Server:    ack.ServerIdentifier(),
		Duration:  ack.IPAddressLeaseTime(0),
	}
	if rs := ack.Router(); len(rs) > 0 && rs[0].To4() != nil && !rs[0].IsUnspecified() {
		lease.Router = rs[0].To4()
	}
	return lease, nil
}

// configureLease puts the lease's address on its interface, its router
// as the default route, and its DNS servers in /etc/resolv.conf; it
// brings lo up too.
func configureLease(l *Lease) error {
	if err := setLinkUp("lo"); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(l.Interface)
	if err != nil {
		return err
	}
	if err := netlinkDo(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, addrMessage(ifc.Index, l.Addr)); err != nil {
		return fmt.Errorf("adding %s to %s: %w", l.Addr.String(), l.Interface, err)
	}
	if l.Router != nil {
		onlink := !l.Addr.Contains(l.Router)
		if err := netlinkDo(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, routeMessage(ifc.Index, l.Router, onlink)); err != nil {
			return fmt.Errorf("default route via %s: %w", l.Router, err)
		}
	}
	if len(l.DNS) > 0 {
		var b strings.Builder
		for _, d := range l.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		_ = os.MkdirAll("/etc", 0o755)
		if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// rtattr appends a route attribute (struct rtattr, 4-byte aligned).
func rtattr(b []byte, typ uint16, data []byte) []byte {
	n := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for ; n%4 != 0; n++ {
		b = append(b, 0)
	}
	return b
}

// addrMessage is the body of RTM_NEWADDR: struct ifaddrmsg and the
// local, address and broadcast attributes.
func addrMessage(index int, a net.IPNet) []byte {
	ip := a.IP.To4()
	ones, _ := a.Mask.Size()
	b := []byte{unix.AF_INET, byte(ones), 0, unix.RT_SCOPE_UNIVERSE}
	b = binary.NativeEndian.AppendUint32(b, uint32(index))
	b = rtattr(b, unix.IFA_LOCAL, ip)
	b = rtattr(b, unix.IFA_ADDRESS, ip)
	if ones < 31 {
		bc := make(net.IP, 4)
		for i := range bc {
			bc[i] = ip[i] | ^a.Mask[i]
		}
		b = rtattr(b, unix.IFA_BROADCAST, bc)
	}
	return b
}

// routeMessage is the body of RTM_NEWROUTE for a default route via gw
// out of the interface: struct rtmsg, gateway and output interface.
// onlink lets the gateway be outside the interface's subnet.
func routeMessage(index int, gw net.IP, onlink bool) []byte {
	b := []byte{unix.AF_INET, 0, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_DHCP, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST}
	var flags uint32
	if onlink {
		flags = unix.RTNH_F_ONLINK
	}
	b = binary.NativeEndian.AppendUint32(b, flags)
	b = rtattr(b, unix.RTA_GATEWAY, gw.To4())
	b = rtattr(b, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(index)))
	return b
}

var nlSeq atomic.Uint32

// netlinkDo sends one rtnetlink request and waits for its ack.
func netlinkDo(typ uint16, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	seq := nlSeq.Add(1)
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = binary.NativeEndian.AppendUint16(msg, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		done, err := nlAck(buf[:n], seq)
		if done {
			return err
		}
	}
}

// nlAck looks for the NLMSG_ERROR answering seq in a read of netlink
// messages: an error of 0 is the ack.
func nlAck(b []byte, seq uint32) (bool, error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		n := int(binary.NativeEndian.Uint32(b))
		typ := binary.NativeEndian.Uint16(b[4:])
		s := binary.NativeEndian.Uint32(b[8:])
		if n < unix.NLMSG_HDRLEN || n > len(b) {
			return true, errors.New("netlink: malformed answer")
		}
		if typ == unix.NLMSG_ERROR && s == seq && n >= unix.NLMSG_HDRLEN+4 {
			errno := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:]))
			if errno == 0 {
				return true, nil
			}
			return true, unix.Errno(-errno)
		}
		b = b[(n+3)&^3:]
	}
	return false, nil
}
