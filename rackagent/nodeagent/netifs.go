package nodeagent

import (
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// readInterfaces reads /sys/class/net: every interface backed by a device
// (loopback and virtual interfaces such as bridges, bonds, veth and ifb
// have none), with its MAC, driver, speed and carrier, and on a live
// machine its addresses (IPv6 link-local ones left out: they follow from
// the MAC).
func readInterfaces(fs sysfs, live bool, log *slog.Logger) []proto.Interface {
	out := []proto.Interface{}
	for _, name := range fs.list("sys/class/net") {
		n := "sys/class/net/" + name + "/"
		if name == "lo" || !fs.exists(n+"device") {
			continue
		}
		ifc := proto.Interface{
			Name:    name,
			MAC:     strings.ToLower(fs.str(n + "address")),
			Driver:  fs.linkBase(n + "device/driver"),
			Carrier: fs.str(n+"carrier") == "1",
		}
		if sp, ok := fs.int64(n + "speed"); ok && sp > 0 {
			ifc.SpeedMbps = int(sp)
		}
		if live {
			addrs, err := liveAddresses(name)
			if err != nil {
				log.Info("interface addresses", "iface", name, "err", err)
			}
			ifc.Addresses = addrs
		}
		out = append(out, ifc)
	}
	return out
}

func liveAddresses(name string) ([]string, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() && ipn.IP.To4() == nil {
			continue
		}
		out = append(out, ipn.String())
	}
	return out, nil
}

// carrierInterfaces names the device-backed interfaces that have carrier:
// where LLDP can be heard.
func carrierInterfaces(fs sysfs) []string {
	var out []string
	for _, name := range fs.list("sys/class/net") {
		n := "sys/class/net/" + name + "/"
		if name != "lo" && fs.exists(n+"device") && fs.str(n+"carrier") == "1" {
			out = append(out, name)
		}
	}
	return out
}

// readPCI lists the PCI functions in /sys/bus/pci/devices with their
// vendor, device and class ids as hex without the 0x.
func readPCI(fs sysfs) []proto.PCIDevice {
	var out []proto.PCIDevice
	for _, addr := range fs.list("sys/bus/pci/devices") {
		d := "sys/bus/pci/devices/" + addr + "/"
		out = append(out, proto.PCIDevice{
			Address: addr,
			Vendor:  hexID(fs.str(d + "vendor")),
			Device:  hexID(fs.str(d + "device")),
			Class:   hexID(fs.str(d + "class")),
		})
	}
	return out
}

// hexID turns sysfs's "0x8086" into "8086".
func hexID(s string) string {
	s = strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"))
	if _, err := strconv.ParseUint(s, 16, 32); err != nil {
		return ""
	}
	return s
}
