// Package dhcptest drives a DHCP server from tests the way a relay agent
// would: packets built with the library's client helpers, sent from a
// loopback socket with giaddr set, answers read back on it.
package dhcptest

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// PXE makes a request look like a BIOS PXE ROM's.
var PXE = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
}

// Exchange sends m through a relay socket on 127.0.0.1 (giaddr
// 127.0.0.1) to server and returns the answer with m's transaction id.
func Exchange(server net.Addr, m *dhcpv4.DHCPv4, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return exchange(c, server, m, timeout)
}

func exchange(c *net.UDPConn, server net.Addr, m *dhcpv4.DHCPv4, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	m.GatewayIPAddr = net.IPv4(127, 0, 0, 1)
	if _, err := c.WriteTo(m.ToBytes(), server); err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return nil, fmt.Errorf("no answer to %s: %w", m.MessageType(), err)
		}
		if r, err := dhcpv4.FromBytes(buf[:n]); err == nil && r.TransactionID == m.TransactionID {
			return r, nil
		}
	}
}

// DORA runs DISCOVER, OFFER, REQUEST, ACK for mac as a PXE client and
// returns the ACK's address.
func DORA(server net.Addr, mac net.HardwareAddr, timeout time.Duration) (string, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", err
	}
	defer c.Close()
	d, err := dhcpv4.NewDiscovery(mac, PXE...)
	if err != nil {
		return "", err
	}
	off, err := exchange(c, server, d, timeout)
	if err != nil {
		return "", err
	}
	req, err := dhcpv4.NewRequestFromOffer(off, PXE...)
	if err != nil {
		return "", err
	}
	ack, err := exchange(c, server, req, timeout)
	if err != nil {
		return "", err
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		return "", fmt.Errorf("%s: got %s (%s), want ACK", mac, ack.MessageType(), ack.Message())
	}
	return ack.YourIPAddr.String(), nil
}

// MustDORA is DORA that fails the test on error.
func MustDORA(t testing.TB, server net.Addr, mac net.HardwareAddr) string {
	t.Helper()
	ip, err := DORA(server, mac, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}
