package nodeagent

import (
	"log/slog"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// skipDisk says whether a /sys/block entry is not a disk of the machine:
// RAM disks, loop devices, CD-ROMs, compressed RAM, device-mapper
// volumes, network block devices, floppies. Linux software RAID arrays
// (md*) are kept: readDisks lists them with their level and members.
func skipDisk(name string) bool {
	for _, p := range []string{"ram", "loop", "sr", "zram", "dm-", "nbd", "fd", "drbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// readDisks reads /sys/block: the size (always in 512-byte sectors),
// model, serial and WWN from the device, rotational from the queue, and
// the udev by-path name from /dev/disk/by-path (or derived from the sysfs
// path for virtio and NVMe disks, when no udev made the links).
func readDisks(fs sysfs, log *slog.Logger) []proto.Disk {
	byPath := byPathLinks(fs)
	disks := []proto.Disk{}
	for _, name := range fs.list("sys/block") {
		if skipDisk(name) {
			continue
		}
		b := "sys/block/" + name + "/"
		sectors, ok := fs.int64(b + "size")
		if !ok || sectors == 0 {
			log.Info("skipping a block device without size (no medium)", "disk", name)
			continue
		}
		d := proto.Disk{
			Name:       name,
			SizeBytes:  sectors * 512,
			Model:      fs.str(b + "device/model"),
			Serial:     diskSerial(fs, b),
			WWN:        diskWWN(fs, b),
			Rotational: fs.str(b+"queue/rotational") == "1",
			ByPath:     byPath[name],
		}
		if strings.HasPrefix(name, "md") {
			// A software RAID array: its level and member devices; an
			// array without a level is not running.
			if d.RAID = fs.str(b + "md/level"); d.RAID == "" {
				continue
			}
			d.Members = fs.list(b + "slaves")
		} else if d.ByPath == "" {
			d.ByPath = derivePath(fs.resolve(b))
		}
		disks = append(disks, d)
	}
	return disks
}

// diskSerial: virtio-blk has it beside the disk, NVMe on the controller,
// SCSI and SATA in the Unit Serial Number VPD page (0x80).
func diskSerial(fs sysfs, b string) string {
	for _, p := range []string{"serial", "device/serial"} {
		if s := fs.str(b + p); s != "" {
			return s
		}
	}
	if raw, err := os.ReadFile(fs.path(b + "device/vpd_pg80")); err == nil {
		return vpdSerial(raw)
	}
	return ""
}

// vpdSerial parses a Unit Serial Number VPD page (SPC-4 7.8.16): a 4-byte
// header ending in the big-endian page length, then the serial in ASCII.
func vpdSerial(raw []byte) string {
	if len(raw) < 4 || raw[1] != 0x80 {
		return ""
	}
	n := int(raw[2])<<8 | int(raw[3])
	if 4+n > len(raw) {
		n = len(raw) - 4
	}
	return strings.TrimSpace(strings.Trim(string(raw[4:4+n]), "\x00"))
}

// diskWWN returns the disk's world wide name as lsblk shows it: "0x..."
// for an NAA identifier, "eui.../nvme.../naa..." as the kernel has it
// otherwise. Vendor-specific t10 identifiers are not WWNs.
func diskWWN(fs sysfs, b string) string {
	w := fs.str(b + "wwid")
	if w == "" {
		w = fs.str(b + "device/wwid")
	}
	switch {
	case strings.HasPrefix(w, "naa."):
		return "0x" + strings.ToLower(w[4:])
	case strings.HasPrefix(w, "t10."):
		return ""
	}
	return w
}

// byPathLinks maps disk names to their /dev/disk/by-path link names
// (the first in sorted order when a disk has several; partitions are
// left out).
func byPathLinks(fs sysfs) map[string]string {
	m := map[string]string{}
	for _, link := range fs.list("dev/disk/by-path") {
		if strings.Contains(link, "-part") {
			continue
		}
		if target := fs.linkBase("dev/disk/by-path/" + link); target != "" && m[target] == "" {
			m[target] = link
		}
	}
	return m
}

var (
	pciAddrRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	nvmeNSRE  = regexp.MustCompile(`^nvme\d+n(\d+)$`)
)

// derivePath names a disk as udev's path_id would, for the two layouts
// simple enough to derive from the sysfs path alone:
//
//	.../0000:00:04.0/virtio2/block/vda      -> pci-0000:00:04.0
//	.../0000:3b:00.0/nvme/nvme0/nvme0n1     -> pci-0000:3b:00.0-nvme-1
//
// Other buses (SATA, SAS, USB) are left to /dev/disk/by-path.
func derivePath(sysPath string) string {
	if sysPath == "" {
		return ""
	}
	parts := strings.Split(sysPath, "/")
	pci := ""
	for i, p := range parts {
		if !pciAddrRE.MatchString(p) {
			continue
		}
		pci = p
		rest := parts[i+1:]
		if len(rest) == 3 && strings.HasPrefix(rest[0], "virtio") && rest[1] == "block" {
			return "pci-" + pci
		}
	}
	if pci == "" {
		return ""
	}
	if m := nvmeNSRE.FindStringSubmatch(path.Base(sysPath)); m != nil && strings.Contains(sysPath, "/nvme/") {
		if _, err := strconv.Atoi(m[1]); err == nil {
			return "pci-" + pci + "-nvme-" + m[1]
		}
	}
	return ""
}
