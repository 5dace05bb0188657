// Command nodeagent is the small static program inside every Metalfleet
// task ramdisk. As PID 1 (the ramdisk's /init) it runs
// nodeagent.RunInit: mount, load modules, DHCP, collect the inventory,
// report it to the rack agent on the kernel command line, power off.
// Otherwise it is a tool:
//
//	nodeagent inventory [--root /] [--lldp 2s]       print the inventory JSON
//	nodeagent report --callback URL --mac MAC [--token T] [--step inventory] [--root /]
//	                                                  collect and post it
//	nodeagent modules --dir /lib/modules/VERSION NAME...
//	                                                  print the module files to
//	                                                  load, dependencies first
//	                                                  (the ramdisk build uses it)
//	nodeagent task --callback URL --mac MAC --token T [--rescue-ssh ADDR]
//	                                                  run the task of this machine
//	                                                  (as the ramdisk does): servicing,
//	                                                  deploy, clean or rescue
//	nodeagent mflab COMMAND ...                       the lab's vendor tool (see below)
//	nodeagent version
//
// Run as mflab (the ramdisk's /bin/mflab is a link to nodeagent) it is
// the lab's vendor tool, proto.LabTool: firmware versions, firmware
// images and BIOS settings kept on the disk whose serial is
// MFLAB-DEVICE (nodeagent.MFLab).
//
// Build it static: CGO_ENABLED=0 go build ./cmd/nodeagent.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/rackagent/nodeagent"
)

func main() {
	if os.Getpid() == 1 {
		err := nodeagent.RunInit(context.Background())
		fmt.Fprintf(os.Stderr, "nodeagent: %v; staying up\n", err)
		for {
			time.Sleep(time.Hour) // PID 1 must never exit: the kernel would panic
		}
	}
	if filepath.Base(os.Args[0]) == "mflab" {
		os.Exit(nodeagent.MFLab(os.Args[1:], "/", os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	var (
		ue usageError
		ee exitError
	)
	switch {
	case errors.As(err, &ee):
		os.Exit(int(ee))
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "nodeagent: %v\n\n%s", err, usage)
		os.Exit(2)
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintf(os.Stderr, "nodeagent: %v\n", err)
		os.Exit(1)
	}
}

const usage = `usage:
  nodeagent inventory [--root /] [--lldp 2s]
  nodeagent report --callback URL --mac MAC [--token T] [--step inventory] [--root /] [--lldp 2s]
  nodeagent modules --dir /lib/modules/VERSION NAME...
  nodeagent task --callback URL --mac MAC [--token T] [--root /] [--rescue-ssh ADDR]
  nodeagent mflab [--device PATH] firmware-version|firmware-apply|bios-get|bios-set ...
  nodeagent version
As PID 1 (a ramdisk's /init) it runs the ramdisk; see the kernel command line parameters in
rackagent/nodeagent (metalfleet.callback, metalfleet.mac, BOOTIF, metalfleet.token, ...).
`

type usageError struct{ error }

// exitError is an exit status whose message was already printed.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("no command")
	}
	switch args[0] {
	case "inventory":
		return cmdInventory(ctx, args[1:], stdout, stderr)
	case "report":
		return cmdReport(ctx, args[1:], stderr)
	case "modules":
		return cmdModules(args[1:], stdout, stderr)
	case "task":
		return cmdTask(ctx, args[1:], stderr)
	case "mflab":
		if code := nodeagent.MFLab(args[1:], "/", stdout, stderr); code != 0 {
			return exitError(code)
		}
		return nil
	case "version":
		fmt.Fprintln(stdout, nodeagent.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usagef("unknown command %q", args[0])
}

// collectFlags are the flags of the commands that collect.
type collectFlags struct {
	root string
	lldp time.Duration
	set  map[string]bool
}

func (c *collectFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.root, "root", "/", "the filesystem root to read /sys, /proc and /dev under")
	fs.DurationVar(&c.lldp, "lldp", nodeagent.DefaultLLDPWait, "how long to listen for LLDP (on root / only; 0: not at all)")
}

func (c *collectFlags) collect(ctx context.Context, pxeMAC string) (any, error) {
	o := nodeagent.Options{Root: c.root, PXEMAC: pxeMAC}
	if abs, err := filepath.Abs(c.root); err == nil && abs == "/" {
		o.Live, o.LLDPWait = true, c.lldp
	}
	return nodeagent.CollectWith(ctx, o)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}

func cmdInventory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inventory", stderr)
	var c collectFlags
	c.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("inventory: unexpected arguments %q", fs.Args())
	}
	inv, err := c.collect(ctx, "")
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(inv)
}

func cmdReport(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("report", stderr)
	var c collectFlags
	c.register(fs)
	callback := fs.String("callback", "", "the rack agent's callback URL (http://AGENT:PORT/v1/callback)")
	mac := fs.String("mac", "", "the MAC to report as (the boot interface's)")
	token := fs.String("token", os.Getenv("METALFLEET_TOKEN"), "the task token (default $METALFLEET_TOKEN; none for discovery)")
	step := fs.String("step", nodeagent.StepInventory, "the step to report")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *callback == "" || *mac == "" {
		return usagef("report: --callback and --mac are required")
	}
	inv, err := c.collect(ctx, *mac)
	if err != nil {
		return err
	}
	if err := nodeagent.Report(ctx, *callback, *mac, *token, *step, inv); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "nodeagent: reported %s for %s\n", *step, *mac)
	return nil
}

func cmdModules(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("modules", stderr)
	dir := fs.String("dir", "", "the kernel's module directory, /lib/modules/VERSION")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() == 0 {
		return usagef("modules: want --dir and module names")
	}
	f, err := os.Open(filepath.Join(*dir, "modules.dep"))
	if err != nil {
		return err
	}
	defer f.Close()
	deps, err := nodeagent.ParseModulesDep(f)
	if err != nil {
		return err
	}
	builtin := map[string]bool{}
	if b, err := os.Open(filepath.Join(*dir, "modules.builtin")); err == nil {
		builtin, err = nodeagent.ParseModulesBuiltin(b)
		b.Close()
		if err != nil {
			return err
		}
	}
	files, skipped, err := deps.LoadOrder(fs.Args(), builtin)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintf(stderr, "nodeagent: %s is built into the kernel\n", s)
	}
	for _, f := range files {
		fmt.Fprintln(stdout, f)
	}
	return nil
}

func cmdTask(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("task", stderr)
	callback := fs.String("callback", "", "the rack agent's callback URL (http://AGENT:PORT/v1/callback)")
	mac := fs.String("mac", "", "the MAC to run the task as (the boot interface's)")
	token := fs.String("token", os.Getenv("METALFLEET_TOKEN"), "the task token (default $METALFLEET_TOKEN)")
	root := fs.String("root", "/", "the filesystem root of the machine (/sys, /proc, /dev)")
	rescueSSH := fs.String("rescue-ssh", "", "a rescue task's SSH server address, such as :2222 (default: none; the ramdisk's is :22)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *callback == "" || *mac == "" || *token == "" {
		return usagef("task: --callback, --mac and --token are required")
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	err := nodeagent.RunTask(ctx, nodeagent.TaskEnv{CallbackURL: *callback, MAC: *mac, Token: *token, Log: log,
		Machine: &nodeagent.LinuxMachine{Root: *root, PXEMAC: *mac, Log: log}, RescueSSH: *rescueSSH})
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, "nodeagent: the task is done")
	return nil
}
