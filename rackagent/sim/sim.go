// Package sim simulates machines network-booting from a rack agent with
// the real protocols: DHCP through a relay address, iPXE's first stage
// over TFTP, the iPXE script, kernel and initrd over HTTP, and the
// ramdisk's inventory callback, with a synthetic inventory. Dev mode and
// benchmarks use it where there is no hardware and no QEMU.
package sim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	ptftp "github.com/pin/tftp/v3"

	"github.com/metalfleet/metalfleet/proto"
)

// ReportFunc posts a ramdisk step's body to the agent's callback: the
// nodeagent's own reporting code in dev mode.
type ReportFunc func(ctx context.Context, callbackURL, mac, token, step string, body any) error

// Machine is one simulated server.
type Machine struct {
	MAC net.HardwareAddr
	// DHCP is the agent's DHCP address; requests come from a relay socket
	// on RelayIP (which must be in the rack's subnet).
	DHCP    *net.UDPAddr
	RelayIP net.IP
	// TFTPPort is the agent's TFTP port (0: skip the first stage).
	TFTPPort int
	// Report posts the inventory.
	Report ReportFunc
	// Log, if set, gets one line per step.
	Log func(format string, args ...any)
}

// Result is what a boot did.
type Result struct {
	IP       string
	Script   string
	Kernel   int64 // bytes fetched
	Initrd   int64
	Reported bool
	Took     time.Duration
}

// Boot runs one network boot: PXE DHCP, first stage over TFTP, iPXE DHCP,
// script, kernel and initrd over HTTP, and for a ramdisk boot the
// inventory callback. A local-disk script ends the boot there.
func (m *Machine) Boot(ctx context.Context) (*Result, error) {
	start := time.Now()
	res := &Result{}
	pxe := []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
	ack, err := m.dora(ctx, pxe)
	if err != nil {
		return nil, fmt.Errorf("PXE DHCP: %w", err)
	}
	res.IP = ack.YourIPAddr.String()
	m.logf("%s: PXE lease %s, first stage %q from %s", m.MAC, res.IP, ack.BootFileNameOption(), ack.ServerIPAddr)
	if m.TFTPPort != 0 && ack.BootFileNameOption() != "" {
		n, err := m.tftp(ack.ServerIPAddr, ack.BootFileNameOption())
		if err != nil {
			return nil, fmt.Errorf("TFTP %s: %w", ack.BootFileNameOption(), err)
		}
		m.logf("%s: first stage %d bytes over TFTP", m.MAC, n)
	}
	ipxe := append(pxe, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	ack, err = m.dora(ctx, ipxe)
	if err != nil {
		return nil, fmt.Errorf("iPXE DHCP: %w", err)
	}
	scriptURL := ack.BootFileNameOption()
	if !strings.HasPrefix(scriptURL, "http") {
		return nil, fmt.Errorf("iPXE was given %q, not a script URL (boot loop)", scriptURL)
	}
	script, err := get(ctx, scriptURL)
	if err != nil {
		return nil, fmt.Errorf("script: %w", err)
	}
	res.Script = string(script)
	kernel, initrd, cmdline := parseScript(res.Script)
	if kernel == "" {
		m.logf("%s: script says boot the local disk", m.MAC)
		res.Took = time.Since(start)
		return res, nil
	}
	if res.Kernel, err = fetch(ctx, kernel); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if res.Initrd, err = fetch(ctx, initrd); err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	m.logf("%s: kernel %d bytes, initrd %d bytes", m.MAC, res.Kernel, res.Initrd)
	cb, mac, token := cmdline["metalfleet.callback"], cmdline["metalfleet.mac"], cmdline["metalfleet.token"]
	if cb == "" {
		return nil, errors.New("kernel command line has no metalfleet.callback")
	}
	if mac == "" {
		mac = m.MAC.String()
	}
	if err := m.Report(ctx, cb, mac, token, "inventory", Inventory(m.MAC)); err != nil {
		return nil, fmt.Errorf("inventory callback: %w", err)
	}
	res.Reported = true
	res.Took = time.Since(start)
	m.logf("%s: inventory reported in %s", m.MAC, res.Took.Round(time.Millisecond))
	return res, nil
}

func (m *Machine) logf(format string, args ...any) {
	if m.Log != nil {
		m.Log(format, args...)
	}
}

func (m *Machine) dora(ctx context.Context, mods []dhcpv4.Modifier) (*dhcpv4.DHCPv4, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: m.RelayIP})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	x := func(p *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
		p.GatewayIPAddr = m.RelayIP
		for try := 0; try < 4; try++ { // clients retransmit
			if _, err := c.WriteTo(p.ToBytes(), m.DHCP); err != nil {
				return nil, err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 1500)
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					break
				}
				if r, err := dhcpv4.FromBytes(buf[:n]); err == nil && r.TransactionID == p.TransactionID {
					return r, nil
				}
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		return nil, fmt.Errorf("no answer to %s", p.MessageType())
	}
	d, err := dhcpv4.NewDiscovery(m.MAC, mods...)
	if err != nil {
		return nil, err
	}
	off, err := x(d)
	if err != nil {
		return nil, err
	}
	req, err := dhcpv4.NewRequestFromOffer(off, mods...)
	if err != nil {
		return nil, err
	}
	ack, err := x(req)
	if err != nil {
		return nil, err
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("got %s (%s), want ACK", ack.MessageType(), ack.Message())
	}
	return ack, nil
}

func (m *Machine) tftp(server net.IP, file string) (int64, error) {
	c, err := ptftp.NewClient(net.JoinHostPort(server.String(), fmt.Sprint(m.TFTPPort)))
	if err != nil {
		return 0, err
	}
	c.SetTimeout(2 * time.Second)
	wt, err := c.Receive(file, "octet")
	if err != nil {
		return 0, err
	}
	return wt.WriteTo(io.Discard)
}

func get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, err
}

func fetch(ctx context.Context, u string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("GET %s: %s %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return io.Copy(io.Discard, resp.Body)
}

// parseScript reads an iPXE script's kernel and initrd URLs and the
// kernel command line's key=value words.
func parseScript(s string) (kernel, initrd string, cmdline map[string]string) {
	cmdline = map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "kernel":
			kernel = f[1]
			for _, w := range f[2:] {
				if k, v, ok := strings.Cut(w, "="); ok {
					cmdline[k] = v
				}
			}
		case "initrd":
			initrd = f[1]
		}
	}
	if u, err := url.Parse(kernel); err != nil || u.Scheme == "" {
		kernel = ""
	}
	return kernel, initrd, cmdline
}

// Inventory is a synthetic but plausible inventory, the same every time
// for a MAC: a machine's identity and sizes derive from it.
func Inventory(mac net.HardwareAddr) proto.Inventory {
	h := sha256.Sum256(mac)
	seed := binary.BigEndian.Uint32(h[:4])
	cpus := []int{8, 16, 32, 64}[seed%4]
	memGiB := int64([]int{32, 64, 128, 256}[(seed>>2)%4])
	inv := proto.Inventory{
		Version: proto.InventoryVersion,
		System: proto.System{Vendor: "Metalfleet Sim", Product: "SimServer 1U", Serial: fmt.Sprintf("SIM-%08X", seed),
			UUID: uuid.NewSHA1(uuid.NameSpaceOID, mac).String()},
		Firmware: proto.Firmware{Vendor: "SimBIOS", Version: "1.0", Date: "01/01/2026"},
		BootMode: "bios", PXEMAC: mac.String(),
		CPUs:   proto.CPUs{Count: cpus, Model: "Simulated CPU @ 2.40GHz", Architecture: "x86_64", Sockets: 1, Cores: cpus / 2, Threads: cpus},
		Memory: proto.Memory{TotalBytes: memGiB << 30, PhysicalBytes: memGiB << 30},
		Disks: []proto.Disk{
			{Name: "sda", SizeBytes: 480 << 30, Model: "SimSSD", Serial: fmt.Sprintf("SSD%08X", seed), Rotational: false},
			{Name: "sdb", SizeBytes: 4 << 40, Model: "SimHDD", Serial: fmt.Sprintf("HDD%08X", seed), Rotational: true},
		},
		Interfaces: []proto.Interface{{Name: "eth0", MAC: mac.String(), Driver: "sim", SpeedMbps: 25000, Carrier: true}},
		Collected:  proto.CollectedInfo{Agent: "sim"},
	}
	return inv
}
