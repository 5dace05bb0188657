package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// --- flavors ---

func newFlavorCmd(g *globals) *cobra.Command {
	return group(g, "flavor", "Manage flavors (what an instance needs from a node)",
		listCmd(g, "List flavors", (*apiclient.Client).Flavors,
			[]string{"NAME", "CPUS", "MEMORY_MB", "DISK_GB", "TRAITS", "RACK", "RESCUE_IMAGE"},
			func(f *proto.Flavor) []string {
				return []string{f.Name, strconv.Itoa(f.CPUs), i64(f.MemoryMB), i64(f.DiskGB),
					strings.Join(f.RequiredTraits, ","), f.Rack, f.RescueImage}
			}),
		showCmd(g, "NAME", "Show a flavor", (*apiclient.Client).Flavor, (*globals).showFlavor),
		newFlavorCreateCmd(g),
		newFlavorSetCmd(g),
		deleteCmd(g, "flavor", "NAME", "Delete a flavor no instance uses", (*apiclient.Client).DeleteFlavor),
	)
}

func (g *globals) showFlavor(f *proto.Flavor) error {
	if g.json() {
		return g.printJSON(f)
	}
	return g.printKV(cells([]kv{
		{"name", f.Name},
		{"cpus", strconv.Itoa(f.CPUs)},
		{"memory_mb", i64(f.MemoryMB)},
		{"disk_gb", i64(f.DiskGB)},
		{"required_traits", strings.Join(f.RequiredTraits, ", ")},
		{"rack", f.Rack},
		{"rescue_image", f.RescueImage},
	}))
}

// flavorFlags are the fields of flavor create and flavor set.
type flavorFlags struct {
	cpus           int
	memoryMB       int64
	diskGB         int64
	traits         []string
	rack, rescueIm string
}

func (ff *flavorFlags) register(f *pflag.FlagSet) {
	f.IntVar(&ff.cpus, "cpus", 0, "CPUs a node needs")
	f.Int64Var(&ff.memoryMB, "memory-mb", 0, "memory a node needs, in MiB")
	f.Int64Var(&ff.diskGB, "disk-gb", 0, "disk a node needs, in GB")
	f.StringSliceVar(&ff.traits, "trait", nil, "required trait (repeatable, or comma-separated)")
	f.StringVar(&ff.rack, "rack", "", "only nodes in this rack")
	f.StringVar(&ff.rescueIm, "rescue-image", "", "image to boot to rescue an instance")
}

// apply sets the fields of fl whose flags were given and reports whether
// any was.
func (ff *flavorFlags) apply(cmd *cobra.Command, fl *proto.Flavor) bool {
	c := cmd.Flags().Changed
	if c("cpus") {
		fl.CPUs = ff.cpus
	}
	if c("memory-mb") {
		fl.MemoryMB = ff.memoryMB
	}
	if c("disk-gb") {
		fl.DiskGB = ff.diskGB
	}
	if c("trait") {
		fl.RequiredTraits = ff.traits
	}
	if c("rack") {
		fl.Rack = ff.rack
	}
	if c("rescue-image") {
		fl.RescueImage = ff.rescueIm
	}
	return c("cpus") || c("memory-mb") || c("disk-gb") || c("trait") || c("rack") || c("rescue-image")
}

func newFlavorCreateCmd(g *globals) *cobra.Command {
	var ff flavorFlags
	var name string
	cmd := &cobra.Command{
		Use:   "create [NAME] [flags]",
		Short: "Create a flavor (name as argument or --name)",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 1 {
				if name != "" && name != a[0] {
					return fmt.Errorf("flavor create: name %q and --name %q differ", a[0], name)
				}
				name = a[0]
			}
			if name == "" {
				return fmt.Errorf("flavor create: a flavor needs a name (argument or --name)")
			}
			fl := proto.Flavor{Name: name}
			ff.apply(cmd, &fl)
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.CreateFlavor(cmd.Context(), fl)
			if err != nil {
				return err
			}
			return g.showFlavor(out)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "flavor name")
	ff.register(cmd.Flags())
	return cmd
}

func newFlavorSetCmd(g *globals) *cobra.Command {
	var ff flavorFlags
	cmd := &cobra.Command{
		Use:   "set NAME [flags]",
		Short: "Change a flavor's fields: only the flags given are changed",
		Long: `Change a flavor's fields: the flavor is read, the flags given replace its
fields (--trait replaces the list; --rack "" clears the rack), and the
whole flavor is written back. Renaming is not supported.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			fl, err := c.Flavor(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if !ff.apply(cmd, fl) {
				return fmt.Errorf("flavor set: nothing to change; give at least one of --cpus, --memory-mb, --disk-gb, --trait, --rack, --rescue-image")
			}
			out, err := c.UpdateFlavor(cmd.Context(), *fl)
			if err != nil {
				return err
			}
			return g.showFlavor(out)
		},
	}
	ff.register(cmd.Flags())
	return cmd
}

// --- images ---

func newImageCmd(g *globals) *cobra.Command {
	return group(g, "image", "Manage images (kernels, ramdisks and disk images)",
		listCmd(g, "List images", (*apiclient.Client).Images,
			[]string{"NAME", "KIND", "SIZE", "SHA256", "URL"},
			func(im *proto.Image) []string {
				sum := im.SHA256
				if len(sum) > 12 {
					sum = sum[:12] + "..."
				}
				size := ""
				if im.Size > 0 {
					size = i64(im.Size)
				}
				return []string{im.Name, string(im.Kind), size, sum, im.URL}
			}),
		showCmd(g, "NAME", "Show an image", (*apiclient.Client).Image, (*globals).showImage),
		newImageCreateCmd(g),
		deleteCmd(g, "image", "NAME", "Delete an image nothing refers to", (*apiclient.Client).DeleteImage),
	)
}

func (g *globals) showImage(im *proto.Image) error {
	if g.json() {
		return g.printJSON(im)
	}
	size := ""
	if im.Size > 0 {
		size = i64(im.Size)
	}
	return g.printKV(cells([]kv{
		{"name", im.Name},
		{"kind", string(im.Kind)},
		{"url", im.URL},
		{"sha256", im.SHA256},
		{"size", size},
	}))
}

func newImageCreateCmd(g *globals) *cobra.Command {
	var im proto.Image
	var kind string
	cmd := &cobra.Command{
		Use:   "create NAME --kind kernel|ramdisk|disk --url URL --sha256 HEX [--size N]",
		Short: "Register an image that rack agents fetch from URL and verify",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			im.Name, im.Kind = a[0], proto.ImageKind(kind)
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.CreateImage(cmd.Context(), im)
			if err != nil {
				return err
			}
			return g.showImage(out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "kernel, ramdisk or disk")
	f.StringVar(&im.URL, "url", "", "http://, https:// or file:// URL")
	f.StringVar(&im.SHA256, "sha256", "", "SHA-256 of the image, 64 hex digits")
	f.Int64Var(&im.Size, "size", 0, "size in bytes (optional)")
	for _, n := range []string{"kind", "url", "sha256"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// --- racks ---

func newRackCmd(g *globals) *cobra.Command {
	return group(g, "rack", "Manage racks (network segments served by rack agents)",
		listCmd(g, "List racks", (*apiclient.Client).Racks,
			[]string{"NAME", "SUBNET", "GATEWAY", "POOL", "BOOT_SERVER", "DNS", "LEASE_TIME"},
			func(r *proto.Rack) []string {
				return []string{r.Name, r.Subnet, r.Gateway, pool(r), r.BootServer, strings.Join(r.DNS, ","), lease(r.LeaseTime)}
			}),
		showCmd(g, "NAME", "Show a rack", (*apiclient.Client).Rack, (*globals).showRack),
		newRackCreateCmd(g),
		deleteCmd(g, "rack", "NAME", "Delete a rack nothing uses (no node, flavor or agent token)", (*apiclient.Client).DeleteRack),
	)
}

func (g *globals) showRack(r *proto.Rack) error {
	if g.json() {
		return g.printJSON(r)
	}
	return g.printKV(cells([]kv{
		{"name", r.Name},
		{"subnet", r.Subnet},
		{"gateway", r.Gateway},
		{"pool", pool(r)},
		{"boot_server", r.BootServer},
		{"dns", strings.Join(r.DNS, ", ")},
		{"lease_time", lease(r.LeaseTime)},
		{"answer_non_pxe", yesNo(r.AnswerNonPXE)},
	}))
}

func pool(r *proto.Rack) string {
	if r.PoolStart == "" && r.PoolEnd == "" {
		return ""
	}
	return r.PoolStart + "-" + r.PoolEnd
}

func lease(d proto.Duration) string {
	if d == 0 {
		return ""
	}
	return time.Duration(d).String()
}

func newRackCreateCmd(g *globals) *cobra.Command {
	var r proto.Rack
	var poolRange string
	var leaseTime time.Duration
	cmd := &cobra.Command{
		Use:   "create NAME --subnet CIDR --gateway IP --pool START-END --boot-server IP [--dns IP,...] [--lease-time DURATION] [--answer-non-pxe]",
		Short: "Create a rack",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			r.Name = a[0]
			start, end, ok := strings.Cut(poolRange, "-")
			start, end = strings.TrimSpace(start), strings.TrimSpace(end)
			if !ok || start == "" || end == "" {
				return fmt.Errorf("--pool %q: want START-END, such as 10.0.0.100-10.0.0.200", poolRange)
			}
			r.PoolStart, r.PoolEnd = start, end
			if leaseTime < 0 {
				return fmt.Errorf("--lease-time %s: must not be negative", leaseTime)
			}
			r.LeaseTime = proto.Duration(leaseTime)
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.CreateRack(cmd.Context(), r)
			if err != nil {
				return err
			}
			return g.showRack(out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&r.Subnet, "subnet", "", "IPv4 subnet, CIDR")
	f.StringVar(&r.Gateway, "gateway", "", "default gateway for the rack's nodes")
	f.StringVar(&poolRange, "pool", "", "dynamic address range START-END")
	f.StringVar(&r.BootServer, "boot-server", "", "IP address of the rack agent nodes boot from")
	f.StringSliceVar(&r.DNS, "dns", nil, "DNS servers (comma-separated or repeatable)")
	f.DurationVar(&leaseTime, "lease-time", 0, "DHCP lease time, such as 12h (default: the agent's)")
	f.BoolVar(&r.AnswerNonPXE, "answer-non-pxe", false, "give unknown MACs that are not network-booting a pool address too")
	for _, n := range []string{"subnet", "gateway", "pool", "boot-server"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// --- shared ---

// listCmd is `KIND list`: the client's list method, then a table of one
// row per object (or the JSON list).
func listCmd[T any](g *globals, short string, list func(*apiclient.Client, context.Context) ([]*T, error), header []string, row func(*T) []string) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   short,
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			vs, err := list(c, cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(orEmpty(vs))
			}
			rows := make([][]string, 0, len(vs))
			for _, v := range vs {
				rows = append(rows, row(v))
			}
			return g.printTable(header, rows)
		},
	}
}

// showCmd is `KIND show ARG`: the client's get method, then show.
func showCmd[T any](g *globals, arg, short string, get func(*apiclient.Client, context.Context, string) (*T, error), show func(*globals, *T) error) *cobra.Command {
	return &cobra.Command{
		Use:     "show " + arg,
		Aliases: []string{"get"},
		Short:   short,
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := get(c, cmd.Context(), a[0])
			if err != nil {
				return err
			}
			return show(g, v)
		},
	}
}

// deleteCmd is `KIND delete ARG`, over the client's delete method.
func deleteCmd(g *globals, kind, arg, short string, del func(*apiclient.Client, context.Context, string) error) *cobra.Command {
	return &cobra.Command{
		Use:     "delete " + arg,
		Aliases: []string{"rm"},
		Short:   short,
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := del(c, cmd.Context(), a[0]); err != nil {
				return err
			}
			g.printf("deleted %s %s", kind, a[0])
			return nil
		},
	}
}

// cells replaces empty values by "-".
func cells(lines []kv) []kv {
	for i := range lines {
		lines[i].v = cell(lines[i].v)
	}
	return lines
}

func i64(v int64) string { return strconv.FormatInt(v, 10) }
