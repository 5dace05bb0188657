package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Version is the nodeagent's version, stamped into every inventory. The
// ramdisk build sets it with
// -ldflags "-X github.com/metalfleet/metalfleet/rackagent/nodeagent.Version=...".
var Version = "dev"

// DefaultLLDPWait is how long Collect listens for LLDP frames on a live
// machine. Switches send one every 30 s by default, so a short wait
// catches one only by luck (or when the port just came up); the ramdisk
// takes a longer wait from metalfleet.lldp= and listens while it takes
// its DHCP lease.
const DefaultLLDPWait = 2 * time.Second

// Options tune CollectWith. The zero value reads "/" without any live
// source.
type Options struct {
	// Root is the directory /sys, /proc and /dev are read under; "" is
	// "/".
	Root string
	// Live reads what is not in files: interface addresses, the BMC's
	// LAN address through /dev/ipmi0 and LLDP frames. Collect sets it
	// when Root is "/".
	Live bool
	// LLDPWait is how long to listen for LLDP on every interface with
	// carrier (Live only; 0 does not listen). The listening runs while
	// the rest is read.
	LLDPWait time.Duration
	// LLDP, when not nil, is what was already heard, by interface name;
	// Collect then does not listen itself.
	LLDP map[string]*proto.LLDP
	// PXEMAC is the MAC the machine booted from, when known.
	PXEMAC string
	// Log hears what could not be read (nil: nothing is logged).
	Log *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Collect reads the inventory of the machine whose filesystem is at root
// ("/" on a machine). On "/" it also reads the live sources (addresses,
// BMC, LLDP for DefaultLLDPWait); elsewhere only files.
func Collect(ctx context.Context, root string) (*proto.Inventory, error) {
	o := Options{Root: root}
	if isSlash(root) {
		o.Live = true
		o.LLDPWait = DefaultLLDPWait
	}
	return CollectWith(ctx, o)
}

func isSlash(root string) bool { return root == "" || filepath.Clean(root) == "/" }

// CollectWith reads the inventory as o says. It fails only when the root
// is not a Linux root at all (no /proc/cpuinfo or /proc/meminfo);
// everything else missing is left out of the inventory (and logged).
func CollectWith(ctx context.Context, o Options) (*proto.Inventory, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	root := o.Root
	if root == "" {
		root = "/"
	}
	if fi, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("inventory root: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("inventory root %s is not a directory", root)
	}
	start := now()
	fs := sysfs{root: root}

	// LLDP listens while the files are read.
	var lldpDone <-chan map[string]*proto.LLDP
	if o.LLDP == nil && o.Live && o.LLDPWait > 0 {
		ch := make(chan map[string]*proto.LLDP, 1)
		lldpDone = ch
		ifaces := carrierInterfaces(fs)
		go func() { ch <- ListenLLDP(ctx, ifaces, o.LLDPWait, log) }()
	}

	inv := &proto.Inventory{Version: proto.InventoryVersion, PXEMAC: o.PXEMAC}
	inv.System, inv.Firmware = readDMI(fs)
	inv.BootMode = "bios"
	if fs.exists("sys/firmware/efi") {
		inv.BootMode = "uefi"
	}
	cpus, err := readCPUs(fs, o.Live)
	if err != nil {
		return nil, err
	}
	inv.CPUs = cpus
	mem, err := readMemory(fs, log)
	if err != nil {
		return nil, err
	}
	inv.Memory = mem
	inv.Disks = readDisks(fs, log)
	inv.Interfaces = readInterfaces(fs, o.Live, log)
	inv.PCI = readPCI(fs)
	if o.Live && fs.exists("dev/ipmi0") {
		addr, err := BMCAddress(ctx, fs.path("dev/ipmi0"))
		if err != nil {
			log.Info("no BMC address from /dev/ipmi0", "err", err)
		}
		inv.BMCAddress = addr
	}

	heard := o.LLDP
	if lldpDone != nil {
		select {
		case heard = <-lldpDone:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for i := range inv.Interfaces {
		if l := heard[inv.Interfaces[i].Name]; l != nil {
			c := *l
			inv.Interfaces[i].LLDP = &c
		}
	}

	inv.Collected = proto.CollectedInfo{
		At:         start.UTC().Format(time.RFC3339),
		DurationMS: now().Sub(start).Milliseconds(),
		Agent:      Version,
	}
	return inv, nil
}

// sysfs reads files under a root. Values are trimmed of surrounding
// white space (sysfs ends most with a newline, DMI pads some with
// spaces).
type sysfs struct{ root string }

func (f sysfs) path(p string) string { return filepath.Join(f.root, p) }

func (f sysfs) exists(p string) bool {
	_, err := os.Stat(f.path(p))
	return err == nil
}

// read returns the trimmed contents of p.
func (f sysfs) read(p string) (string, error) {
	b, err := os.ReadFile(f.path(p))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// str returns the trimmed contents of p, or "" when it cannot be read
// (missing, or a sysfs attribute that refuses, like the speed of a link
// that is down).
func (f sysfs) str(p string) string {
	s, _ := f.read(p)
	return s
}

// int64 returns p as a decimal integer, or ok false.
func (f sysfs) int64(p string) (int64, bool) {
	n, err := strconv.ParseInt(f.str(p), 10, 64)
	return n, err == nil
}

// list returns the names in directory p, sorted; none when it is missing.
func (f sysfs) list(p string) []string {
	ents, err := os.ReadDir(f.path(p))
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// linkBase returns the last element of the symlink p's target ("" if p
// is not a symlink): the driver of .../device/driver.
func (f sysfs) linkBase(p string) string {
	t, err := os.Readlink(f.path(p))
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

// resolve returns p with every symlink followed, relative to the root
// ("/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"), or "".
func (f sysfs) resolve(p string) string {
	abs, err := filepath.EvalSymlinks(f.path(p))
	if err != nil {
		return ""
	}
	rootAbs, err := filepath.EvalSymlinks(f.root)
	if err != nil {
		return ""
	}
	rel, err := filepath.Rel(rootAbs, abs)
	if err != nil || strings.HasPrefix(rel, "..") {
		return ""
	}
	return "/" + filepath.ToSlash(rel)
}

var errNotLinux = errors.New("not a Linux root")
