package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// A clean's erase step (proto.StepNameErase) leaves no disk of the node
// with anything a system would find:
//
//   - every Linux software RAID array is stopped (mdadm --stop), so its
//     members can be written;
//   - on every disk (not the lab tool's device): wipefs --all --force on
//     each of its partitions, then on the disk, erases every signature
//     wipefs knows (filesystems, RAID and LVM superblocks, partition
//     tables, both GPT headers); then the first and last MiB are zeroed
//     (with full=true, the whole disk, with progress);
//   - then it checks: the zeroed ranges read back as zeros, and wipefs
//     finds no signature left on the disk or on a partition the kernel
//     still shows.
//
// wipefs is util-linux's, built into the ramdisk (ops/ramdisk/build.sh),
// not a Go reimplementation: it knows every signature blkid knows, and
// a list kept here would fall behind it.

// DefaultWipeFS is the wipefs program of the task ramdisk.
const DefaultWipeFS = "/sbin/wipefs"

// cleanEdge is how much of each end of a disk is zeroed.
const cleanEdge = 1 << 20

// zeroChunk is how much one zeroing call covers between progress
// reports.
const zeroChunk = 1 << 30

// cleanDisk is one disk's part of the erase step's result.
type cleanDisk struct {
	Name   string `json:"name"`
	Serial string `json:"serial"`
	Bytes  int64  `json:"bytes"`
	// Zeroed is how many bytes were zeroed (2 MiB, or the whole disk).
	Zeroed int64 `json:"zeroed_bytes"`
	// SignaturesErased counts what wipefs erased (on the disk and its
	// partitions).
	SignaturesErased int      `json:"signatures_erased"`
	Partitions       []string `json:"partitions,omitempty"`
}

// cleanResult is the erase step's result.
type cleanResult struct {
	Full          bool        `json:"full"`
	ArraysStopped []string    `json:"arrays_stopped"`
	Disks         []cleanDisk `json:"disks"`
}

// partitioner is a Machine that can list a disk's partitions
// (LinuxMachine); without it only the whole disk is wiped.
type partitioner interface {
	Partitions(disk string) []string
}

// Partitions lists the partitions the kernel shows of disk
// (Root/sys/block/DISK/*/partition), in name order.
func (m *LinuxMachine) Partitions(disk string) []string {
	dir := filepath.Join(m.root(), "sys/block", disk)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// zeroRanger is a DiskDevice that zeroes a range itself (the sim's
// sparse disks).
type zeroRanger interface {
	ZeroRange(off, n int64) error
}

// zeroRange zeroes [off, off+n) of dev: the device's own way when it
// has one (a block device's BLKZEROOUT, a sim disk's), else with
// aligned writes of zeros. off and n are multiples of diskAlign.
func zeroRange(dev DiskDevice, off, n int64, zeros []byte) error {
	if z, ok := dev.(zeroRanger); ok {
		return z.ZeroRange(off, n)
	}
	if zeroOut(dev, off, n) == nil {
		return nil
	}
	for end := off + n; off < end; {
		k := min(int64(len(zeros)), end-off)
		if _, err := dev.WriteAt(zeros[:k], off); err != nil {
			return fmt.Errorf("at %d: %w", off, err)
		}
		off += k
	}
	return nil
}

// cleanErase is the erase step.
func (r *taskRunner) cleanErase(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.Clean
	if p == nil {
		return stepResult{err: errors.New("no clean params")}
	}
	res := cleanResult{Full: p.Full, ArraysStopped: []string{}, Disks: []cleanDisk{}}
	inv, err := r.env.Machine.Inventory(ctx)
	if err != nil {
		return stepResult{result: res, err: fmt.Errorf("collecting the inventory: %w", err)}
	}
	for _, d := range inv.Disks {
		if d.RAID == "" {
			continue
		}
		if _, err := r.runTool(ctx, sc, r.env.MDADM, []string{"--stop", "/dev/" + d.Name}, nil); err != nil {
			return stepResult{result: res, err: fmt.Errorf("stopping array %s: %w", d.Name, err)}
		}
		res.ArraysStopped = append(res.ArraysStopped, d.Name)
	}
	var disks []proto.Disk
	var total int64
	for _, d := range inv.Disks {
		if d.RAID != "" || d.Serial == proto.LabDeviceSerial || d.SizeBytes <= 0 {
			continue
		}
		disks = append(disks, d)
		if p.Full {
			total += d.SizeBytes
		} else {
			total += min(d.SizeBytes, 2*cleanEdge)
		}
	}
	sc.logf("erasing %d disks (full=%t), %d arrays stopped", len(disks), p.Full, len(res.ArraysStopped))
	zeros := alignedBuf(deployBlock)
	clear(zeros)
	var done int64
	start := time.Now()
	progress := func(n int64, what string) error {
		done += n
		pct := 0
		if total > 0 {
			pct = int(done * 100 / total)
		}
		return sc.progress(ctx, pct, "%s: %d of %d MiB zeroed, %.1f MB/s", what, done>>20, total>>20, rate(done, time.Since(start)))
	}
	for _, d := range disks {
		cd, err := r.eraseDisk(ctx, sc, d, p.Full, zeros, progress)
		res.Disks = append(res.Disks, cd)
		if err != nil {
			return stepResult{result: res, err: err}
		}
	}
	return stepResult{result: res}
}

// eraseDisk wipes, zeroes and checks one disk.
func (r *taskRunner) eraseDisk(ctx context.Context, sc *stepCtx, d proto.Disk, full bool, zeros []byte, progress func(int64, string) error) (cleanDisk, error) {
	cd := cleanDisk{Name: d.Name, Serial: d.Serial, Bytes: d.SizeBytes}
	if pm, ok := r.env.Machine.(partitioner); ok {
		cd.Partitions = pm.Partitions(d.Name)
	}
	for _, part := range cd.Partitions {
		n, err := r.wipefs(ctx, sc, part)
		cd.SignaturesErased += n
		if err != nil {
			return cd, err
		}
	}
	n, err := r.wipefs(ctx, sc, d.Name)
	cd.SignaturesErased += n
	if err != nil {
		return cd, err
	}

	dev, err := r.env.Machine.OpenDisk(d.Name, true)
	if err != nil {
		return cd, fmt.Errorf("opening %s: %w", d.Name, err)
	}
	defer dev.Close()
	end := d.SizeBytes &^ (diskAlign - 1)
	if end != d.SizeBytes {
		sc.logf("%s: its size is not a multiple of %d: its last %d bytes are left to wipefs", d.Name, diskAlign, d.SizeBytes-end)
	}
	var ranges [][2]int64 // [off, n]
	if full {
		for off := int64(0); off < end; off += zeroChunk {
			ranges = append(ranges, [2]int64{off, min(zeroChunk, end-off)})
		}
	} else {
		head := min(cleanEdge, end)
		ranges = append(ranges, [2]int64{0, head})
		if tail := max(head, (end-cleanEdge)&^(diskAlign-1)); tail < end {
			ranges = append(ranges, [2]int64{tail, end - tail})
		}
	}
	for _, rg := range ranges {
		if err := zeroRange(dev, rg[0], rg[1], zeros); err != nil {
			return cd, fmt.Errorf("zeroing %s: %w", d.Name, err)
		}
		cd.Zeroed += rg[1]
		if err := ctx.Err(); err != nil {
			return cd, err
		}
		if err := progress(rg[1], "erasing "+d.Name); err != nil {
			return cd, err
		}
	}
	if err := dev.Sync(); err != nil {
		return cd, fmt.Errorf("flushing %s: %w", d.Name, err)
	}
	sc.logf("%s: zeroed %d bytes in %d ranges", d.Name, cd.Zeroed, len(ranges))

	// Check: the edges read back as zeros (after the page cache is
	// dropped), and wipefs finds nothing.
	dropCache(dev)
	buf := alignedBuf(cleanEdge)
	for _, rg := range ranges {
		if full && rg[0] != 0 && rg[0]+rg[1] != end {
			continue // a full erase: check its ends only
		}
		for _, off := range []int64{rg[0], max(rg[0], rg[0]+rg[1]-cleanEdge)} {
			k := min(int64(cleanEdge), rg[0]+rg[1]-off)
			if _, err := dev.ReadAt(buf[:k], off); err != nil && !errors.Is(err, io.EOF) {
				return cd, fmt.Errorf("reading back %s at %d: %w", d.Name, off, err)
			}
			if i := firstNonZero(buf[:k]); i >= 0 {
				return cd, fmt.Errorf("%s: byte %d is not zero after zeroing", d.Name, off+int64(i))
			}
		}
	}
	left, err := r.signatures(ctx, sc, d.Name)
	if err != nil {
		return cd, err
	}
	for _, part := range cd.Partitions {
		if pm, ok := r.env.Machine.(partitioner); ok && !containsString(pm.Partitions(d.Name), part) {
			continue // gone with the partition table
		}
		l, err := r.signatures(ctx, sc, part)
		if err != nil {
			return cd, err
		}
		left = append(left, l...)
	}
	if len(left) > 0 {
		return cd, fmt.Errorf("%s: signatures left after erasing: %s", d.Name, strings.Join(left, "; "))
	}
	sc.logf("%s: no signature left (%d erased)", d.Name, cd.SignaturesErased)
	return cd, nil
}

// firstNonZero is the index of b's first byte that is not zero, or -1.
func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// wipefs erases every signature on /dev/NAME and counts them.
func (r *taskRunner) wipefs(ctx context.Context, sc *stepCtx, name string) (int, error) {
	out, err := r.runTool(ctx, sc, r.env.WipeFS, []string{"--all", "--force", "/dev/" + name}, nil)
	if err != nil {
		return 0, fmt.Errorf("erasing the signatures of %s: %w", name, err)
	}
	return strings.Count(string(out.Stdout), "were erased"), nil
}

// signatures lists what wipefs still finds on /dev/NAME.
func (r *taskRunner) signatures(ctx context.Context, sc *stepCtx, name string) ([]string, error) {
	out, err := r.runTool(ctx, sc, r.env.WipeFS, []string{"--noheadings", "--output", "OFFSET,TYPE", "/dev/" + name}, nil)
	if err != nil {
		return nil, fmt.Errorf("checking the signatures of %s: %w", name, err)
	}
	var left []string
	for _, line := range strings.Split(string(out.Stdout), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			left = append(left, name+" "+strings.Join(f, " "))
		}
	}
	return left, nil
}
