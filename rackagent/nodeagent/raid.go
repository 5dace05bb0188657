package nodeagent

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// RAIDDevice is the array a raid task creates with Linux software RAID.
// Without udev in the ramdisk, mdadm makes the /dev/md/metalfleet0 link
// to the /dev/mdN node itself.
const RAIDDevice = "/dev/md/metalfleet0"

// raidMember is one disk of an array in a raid step's result.
type raidMember struct {
	Serial string `json:"serial"`
	Name   string `json:"name"`
}

// stepRAID creates the array the params ask for, or deletes every array,
// with the vendor tool's RAID commands when the plan has them (hardware
// RAID), else with mdadm.
//
// mdadm creates level 0, 1 or 10 with 1.2 metadata and --run (no
// question when a disk holds an old array or a filesystem). Arrays with
// redundancy are not created --assume-clean: the kernel resyncs them in
// the background, so a later check finds no mismatch; the step does not
// wait for the resync.
func (r *taskRunner) stepRAID(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.RAID
	if p == nil {
		return stepResult{err: fmt.Errorf("no raid params")}
	}
	inv, err := r.env.Machine.Inventory(ctx)
	if err != nil {
		return stepResult{err: fmt.Errorf("collecting the inventory: %w", err)}
	}
	var hw *proto.ToolCommands
	if v := r.plan.Vendor; v != nil && v.RAID != nil && v.RAID.Program != "" {
		hw = v.RAID
	}
	if p.Delete {
		return r.raidDelete(ctx, sc, inv, hw)
	}
	members, err := raidMembers(inv, p.Disks)
	if err != nil {
		return stepResult{err: err}
	}
	paths := make([]string, len(members))
	for i, m := range members {
		paths[i] = "/dev/" + m.Name
	}
	res := map[string]any{"level": p.Level, "members": members}
	if hw != nil {
		res["tool"] = r.plan.Vendor.Name
		vars := map[string]string{"level": strconv.Itoa(p.Level), "disks": strings.Join(paths, ",")}
		if _, err := r.runTool(ctx, sc, hw.Program, hw.Create, vars); err != nil {
			return stepResult{result: res, err: fmt.Errorf("creating the array: %w", err)}
		}
		return stepResult{result: res}
	}
	res["tool"], res["device"] = "mdadm", RAIDDevice
	args := []string{"--create", RAIDDevice, "--run", "--metadata=1.2",
		"--level=" + strconv.Itoa(p.Level), "--raid-devices=" + strconv.Itoa(len(paths))}
	if _, err := r.runTool(ctx, sc, r.env.MDADM, append(args, paths...), nil); err != nil {
		return stepResult{result: res, err: fmt.Errorf("creating the array: %w", err)}
	}
	if _, err := r.runTool(ctx, sc, r.env.MDADM, []string{"--detail", RAIDDevice}, nil); err != nil {
		sc.logf("(mdadm --detail failed: %v)", err)
	}
	return stepResult{result: res}
}

// raidMembers maps the asked serials to disks of the inventory, in the
// asked order.
func raidMembers(inv *proto.Inventory, serials []string) ([]raidMember, error) {
	var out []raidMember
	for _, s := range serials {
		var found *proto.Disk
		for i := range inv.Disks {
			if d := &inv.Disks[i]; d.Serial == s && d.RAID == "" {
				found = d
				break
			}
		}
		switch {
		case found == nil:
			var have []string
			for _, d := range inv.Disks {
				if d.Serial != "" && d.RAID == "" && d.Serial != proto.LabDeviceSerial {
					have = append(have, d.Serial)
				}
			}
			return nil, fmt.Errorf("param disks: no disk with serial %q on this machine (serials here: %s)", s, orNone(strings.Join(have, ", ")))
		case s == proto.LabDeviceSerial:
			return nil, fmt.Errorf("param disks: serial %q is the lab tool's device, not a disk for an array", s)
		}
		out = append(out, raidMember{Serial: s, Name: found.Name})
	}
	return out, nil
}

// raidDelete stops every array and wipes the md superblocks of their
// members and of every other disk that has one (an array not assembled
// in this ramdisk still has its superblocks).
func (r *taskRunner) raidDelete(ctx context.Context, sc *stepCtx, inv *proto.Inventory, hw *proto.ToolCommands) stepResult {
	if hw != nil {
		res := map[string]any{"deleted": true, "tool": r.plan.Vendor.Name}
		if _, err := r.runTool(ctx, sc, hw.Program, hw.Delete, nil); err != nil {
			return stepResult{result: res, err: fmt.Errorf("deleting the arrays: %w", err)}
		}
		return stepResult{result: res}
	}
	var arrays []string
	wipe := []string{}
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			wipe = append(wipe, name)
		}
	}
	for _, d := range inv.Disks {
		if d.RAID != "" {
			arrays = append(arrays, d.Name)
			for _, m := range d.Members {
				add(m)
			}
		}
	}
	for _, a := range arrays {
		if _, err := r.runTool(ctx, sc, r.env.MDADM, []string{"--stop", "/dev/" + a}, nil); err != nil {
			return stepResult{err: fmt.Errorf("stopping array %s: %w", a, err)}
		}
	}
	// Every other disk: wipe it only if mdadm finds a superblock on it.
	for _, d := range inv.Disks {
		if d.RAID != "" || d.Serial == proto.LabDeviceSerial || seen[d.Name] {
			continue
		}
		res, err := r.env.Machine.Exec(ctx, r.env.MDADM, []string{"--examine", "/dev/" + d.Name})
		if err == nil && res.ExitCode == 0 {
			sc.logf("%s holds an md superblock", d.Name)
			add(d.Name)
		}
	}
	var zeroed []string
	for _, m := range wipe {
		if _, err := r.runTool(ctx, sc, r.env.MDADM, []string{"--zero-superblock", "/dev/" + m}, nil); err != nil {
			return stepResult{result: map[string]any{"stopped": arrays, "zeroed": zeroed},
				err: fmt.Errorf("wiping the md superblock of %s: %w", m, err)}
		}
		zeroed = append(zeroed, m)
	}
	return stepResult{result: map[string]any{"tool": "mdadm", "stopped": nonNil(arrays), "zeroed": nonNil(zeroed)}}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
