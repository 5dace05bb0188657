package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Vendor tools, as the ramdisk runs them (proto.VendorTool is the
// contract). To add a hardware model's tools:
//
//  1. Build them into the task ramdisk: ops/ramdisk/build.sh
//     TOOLS="/opt/vendor/bin/fwupd-cli /opt/vendor/bin/biosctl" copies
//     each program to the same path with the shared libraries ldd names.
//  2. Add a proto.VendorTool to the vendor_tools setting, matched on the
//     inventory's system vendor and product, with the program and the
//     argument words of each command ({component}, {file}, {level},
//     {disks} are replaced inside words; nothing goes through a shell).
//  3. Make each command keep the contract: exit status 0 on success,
//     anything else with the cause on stderr; firmware Version prints
//     the version on its first line; BIOS Get prints one JSON object of
//     settings (strings, numbers or booleans); BIOS Set reads such an
//     object from {file}; RAID Create takes {level} (0, 1, 10) and
//     {disks} (comma-separated /dev paths), RAID Delete removes every
//     array.
//
// The step's log gets each command line, its stdout and stderr (each
// cut at MaxExecOutput) and its exit status; a command is killed after
// DefaultToolTimeout.

// DefaultToolTimeout bounds one vendor tool command (a firmware write
// can take many minutes).
const DefaultToolTimeout = 30 * time.Minute

// ToolArgs substitutes the placeholders {component}, {file}, {level} and
// {disks} in each word of a vendor tool command. Each word stays one
// argument whatever the values hold: nothing goes through a shell.
func ToolArgs(words []string, vars map[string]string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		for _, k := range []string{"component", "file", "level", "disks"} {
			if v, ok := vars[k]; ok {
				w = strings.ReplaceAll(w, "{"+k+"}", v)
			}
		}
		out[i] = w
	}
	return out
}

// runTool runs a vendor tool command, putting the command line and its
// output into the step's log. A program that could not run, or exited
// with a status other than 0, is an error naming it with its stderr.
func (r *taskRunner) runTool(ctx context.Context, sc *stepCtx, program string, words []string, vars map[string]string) (ExecResult, error) {
	if len(words) == 0 {
		return ExecResult{}, errors.New("the vendor tool has no such command configured")
	}
	args := ToolArgs(words, vars)
	cmdline := program + " " + strings.Join(args, " ")
	sc.logf("$ %s", cmdline)
	ctx, cancel := context.WithTimeout(ctx, DefaultToolTimeout)
	defer cancel()
	start := r.clock.Now()
	res, err := r.env.Machine.Exec(ctx, program, args)
	sc.logOutput("stdout", res.Stdout)
	sc.logOutput("stderr", res.Stderr)
	if err != nil {
		return res, fmt.Errorf("%s: %w", cmdline, err)
	}
	sc.logf("exit status %d after %s", res.ExitCode, r.clock.Now().Sub(start).Round(time.Millisecond))
	if res.ExitCode != 0 {
		msg := strings.TrimSpace(string(res.Stderr))
		if msg == "" {
			msg = "no message on stderr"
		}
		return res, fmt.Errorf("%s: exit status %d: %s", cmdline, res.ExitCode, truncate(msg, 1024))
	}
	return res, nil
}

// toolFor returns the vendor tool's commands for a capability (pick
// chooses them), or an error naming the machine's hardware model when
// the plan has none: a model without a tool fails, never skips.
func (r *taskRunner) toolFor(ctx context.Context, what string, pick func(*proto.VendorTool) *proto.ToolCommands) (*proto.ToolCommands, error) {
	if v := r.plan.Vendor; v != nil {
		if c := pick(v); c != nil && c.Program != "" {
			return c, nil
		}
	}
	model := "an unknown hardware model"
	if inv, err := r.env.Machine.Inventory(ctx); err == nil {
		model = fmt.Sprintf("hardware model %q %q", inv.System.Vendor, inv.System.Product)
	}
	tool := "no vendor tool matches it"
	if r.plan.Vendor != nil {
		tool = fmt.Sprintf("its vendor tool %q has no %s commands", r.plan.Vendor.Name, what)
	}
	return nil, fmt.Errorf("no %s tool for %s: %s (add one to the vendor_tools setting)", what, model, tool)
}
