package main

import (
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

func newNodeCmd(g *globals) *cobra.Command {
	return group(g, "node", "Manage nodes (physical servers)",
		newNodeListCmd(g),
		newNodeShowCmd(g),
		newNodeCreateCmd(g),
		newNodeSetCmd(g),
		newNodeDeleteCmd(g),
		newNodeEnrollCmd(g, true),
		newNodeEnrollCmd(g, false),
		newNodeMaintenanceCmd(g),
		newNodeProvisionCmd(g),
		newNodeConsoleCmd(g),
		newNodeConsoleLogCmd(g),
		newNodePowerCmd(g),
		newNodeBootDeviceCmd(g),
		newNodeHistoryCmd(g),
		newNodeTaskCmd(g),
		newNodeTasksCmd(g),
	)
}

// listPageSize is how many items a list command asks for per request
// (0: apiclient.DefaultPageSize); tests make it small.
var listPageSize = 0

func newNodeListCmd(g *globals) *cobra.Command {
	var state, rack, instance string
	var discovered, enrolled, maintenance bool
	var limit int
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List nodes, optionally filtered",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if state != "" {
				if !proto.ProvisionState(state).Valid() {
					return fmt.Errorf("--state %q: want one of %s", state, joinAny(proto.AllStates))
				}
				q.Set("provision_state", state)
			}
			if rack != "" {
				q.Set("rack", rack)
			}
			if instance != "" {
				q.Set("instance", instance)
			}
			fl := cmd.Flags()
			if fl.Changed("enrolled") {
				q.Set("enrolled", strconv.FormatBool(enrolled))
			}
			if fl.Changed("discovered") {
				q.Set("enrolled", strconv.FormatBool(!discovered))
			}
			if fl.Changed("maintenance") {
				q.Set("maintenance", strconv.FormatBool(maintenance))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			// Page through the list (a few thousand nodes a request);
			// JSON output is still one array of every node.
			nodes, err := apiclient.Pages[*proto.Node](cmd.Context(), c, "/v1/nodes", q, listPageSize, limit)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(orEmpty(nodes))
			}
			rows := make([][]string, 0, len(nodes))
			for _, n := range nodes {
				rows = append(rows, []string{n.UUID, n.Name, string(n.ProvisionState), string(n.PowerState),
					yesNo(n.Enrolled), yesNo(n.Maintenance), n.Rack, n.IP, n.InstanceUUID})
			}
			return g.printTable([]string{"UUID", "NAME", "STATE", "POWER", "ENROLLED", "MAINT", "RACK", "IP", "INSTANCE"}, rows)
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only nodes in this provision state")
	f.StringVar(&rack, "rack", "", "only nodes in this rack")
	f.BoolVar(&discovered, "discovered", false, "only discovered (not enrolled) nodes")
	f.BoolVar(&enrolled, "enrolled", false, "only enrolled nodes (--enrolled=false: only discovered ones)")
	f.BoolVar(&maintenance, "maintenance", false, "only nodes in maintenance (--maintenance=false: only those not)")
	f.StringVar(&instance, "instance", "", "only the node holding this instance (name or uuid)")
	f.IntVar(&limit, "limit", 0, "print at most this many nodes (default: every one, read page by page)")
	cmd.MarkFlagsMutuallyExclusive("discovered", "enrolled")
	return cmd
}

func newNodeShowCmd(g *globals) *cobra.Command {
	var instance string
	cmd := &cobra.Command{
		Use:   "show ID | --instance NAME_OR_UUID",
		Short: "Show a node (by uuid, name or MAC, or by the instance it holds)",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if (len(a) == 1) == (instance != "") {
				return fmt.Errorf("node show: give a node ID or --instance NAME_OR_UUID, one of them")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if instance == "" {
				n, err := c.Node(cmd.Context(), a[0])
				if err != nil {
					return err
				}
				return g.showNode(n)
			}
			var nodes []*proto.Node
			if _, err := c.Do(cmd.Context(), "GET", "/v1/nodes?instance="+url.QueryEscape(instance), nil, &nodes); err != nil {
				return err
			}
			if len(nodes) == 0 {
				return fmt.Errorf("node show: no node holds instance %q", instance)
			}
			return g.showNode(nodes[0])
		},
	}
	cmd.Flags().StringVar(&instance, "instance", "", "the node holding this instance (name or uuid)")
	return cmd
}

// showNode prints a node: its JSON, or key: value lines.
func (g *globals) showNode(n *proto.Node) error {
	if g.json() {
		return g.printJSON(n)
	}
	// The API never returns the password; PasswordSet says if one exists.
	pw := "not set"
	if n.BMC.PasswordSet {
		pw = "set"
	}
	port := ""
	if n.BMC.Port != 0 {
		port = strconv.Itoa(n.BMC.Port)
	}
	lines := []kv{
		{"uuid", n.UUID},
		{"name", n.Name},
		{"macs", strings.Join(n.MACs, ", ")},
		{"rack", n.Rack},
		{"ip", n.IP},
		{"provision_state", string(n.ProvisionState)},
		{"power_state", string(n.PowerState)},
		{"enrolled", yesNo(n.Enrolled)},
		{"maintenance", yesNo(n.Maintenance)},
	}
	if n.Maintenance {
		lines = append(lines, kv{"maintenance_reason", n.MaintenanceReason})
	}
	lines = append(lines,
		kv{"bmc.driver", n.BMC.Driver},
		kv{"bmc.address", n.BMC.Address},
		kv{"bmc.port", port},
		kv{"bmc.username", n.BMC.Username},
		kv{"bmc.password", pw},
		kv{"bmc.interface", n.BMC.Interface},
		kv{"bmc.status", fmtBMCStatus(n.BMCStatus)},
		kv{"intents", fmtIntents(n.Intents)},
		kv{"properties", joinProps(n.Properties)},
		kv{"traits", strings.Join(n.Traits, ", ")},
		kv{"root_device", rootHint(n.RootDevice)},
		kv{"instance", n.InstanceUUID},
		kv{"last_error", n.LastError},
		kv{"last_boot", fmtBoot(n.LastBoot)},
	)
	if len(n.Inventory) > 0 {
		lines = append(lines, kv{"inventory", fmt.Sprintf("%d bytes (see -o json)", len(n.Inventory))})
	}
	lines = append(lines,
		kv{"created_at", fmtTime(n.CreatedAt)},
		kv{"updated_at", fmtTime(n.UpdatedAt)},
	)
	return g.printKV(cells(lines))
}

func fmtBMCStatus(s *proto.BMCStatus) string {
	if s == nil {
		return "unverified"
	}
	out := string(s.State)
	if s.Info != nil {
		out += fmt.Sprintf(" (%s %s, firmware %s, %s)", s.Info.Vendor, s.Info.Model, s.Info.FirmwareVersion, s.Info.Protocol)
	}
	if s.Error != "" {
		out += ": " + s.Error
	}
	if !s.CheckedAt.IsZero() {
		out += ", checked " + fmtTime(s.CheckedAt)
	}
	return out
}

func fmtIntents(ins []proto.Intent) string {
	var parts []string
	for _, in := range ins {
		st := "pending"
		switch {
		case in.Done && in.Error != "":
			st = "failed: " + in.Error
		case in.Done:
			st = "done"
		}
		parts = append(parts, fmt.Sprintf("#%d %s (%s, agent %s)", in.Generation, in.Describe(), st, in.Agent))
	}
	return strings.Join(parts, "; ")
}

// bmcFlags are the --bmc-* flags of node create and node set.
type bmcFlags struct {
	driver, address, username, passwordFile string
	iface, caFile                           string
	insecure                                bool
	port                                    int
}

func (b *bmcFlags) register(f *pflag.FlagSet) {
	f.StringVar(&b.driver, "bmc-driver", "", "BMC driver: ipmi, redfish or fake (create: ipmi if --bmc-address is given)")
	f.StringVar(&b.address, "bmc-address", "", "BMC host name or IP address (ipmi); a URL https://host[:port][/redfish/v1/Systems/ID] (redfish)")
	f.StringVar(&b.iface, "bmc-interface", "", "IPMI interface: lanplus (default, IPMI v2.0 RMCP+) or lan (IPMI v1.5)")
	f.StringVar(&b.caFile, "bmc-ca-file", "", "PEM file of the CA(s) that sign a redfish BMC's certificate")
	f.BoolVar(&b.insecure, "bmc-insecure", false, "do not verify a redfish BMC's TLS certificate")
	f.IntVar(&b.port, "bmc-port", 0, "BMC port (0: the driver's default)")
	f.StringVar(&b.username, "bmc-username", "", "BMC user name")
	f.StringVar(&b.passwordFile, "bmc-password-file", "", "file holding the BMC password (-: standard input)")
}

// patch returns the BMC fields whose flags were given, nil if none was.
func (b *bmcFlags) patch(cmd *cobra.Command) (*proto.BMCPatch, error) {
	fl := cmd.Flags()
	var p proto.BMCPatch
	set := false
	if fl.Changed("bmc-driver") {
		p.Driver, set = &b.driver, true
	}
	if fl.Changed("bmc-address") {
		p.Address, set = &b.address, true
	}
	if fl.Changed("bmc-port") {
		p.Port, set = &b.port, true
	}
	if fl.Changed("bmc-username") {
		p.Username, set = &b.username, true
	}
	if fl.Changed("bmc-interface") {
		p.Interface, set = &b.iface, true
	}
	if fl.Changed("bmc-insecure") {
		p.Insecure, set = &b.insecure, true
	}
	if fl.Changed("bmc-ca-file") {
		ca := ""
		if b.caFile != "" {
			pem, err := os.ReadFile(b.caFile)
			if err != nil {
				return nil, fmt.Errorf("--bmc-ca-file: %w", err)
			}
			ca = string(pem)
		}
		p.CACert, set = &ca, true
	}
	if fl.Changed("bmc-password-file") {
		pw, err := readSecretFile(cmd, b.passwordFile)
		if err != nil {
			return nil, err
		}
		p.Password, set = &pw, true
	}
	if !set {
		return nil, nil
	}
	return &p, nil
}

func newNodeCreateCmd(g *globals) *cobra.Command {
	var req proto.NodeCreate
	var props []string
	var discovered bool
	var bmc bmcFlags
	cmd := &cobra.Command{
		Use:   "create --mac MAC [--mac MAC ...] [flags]",
		Short: "Create a node (enrolled unless --discovered)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if req.Properties, err = parseProperties(props); err != nil {
				return err
			}
			bp, err := bmc.patch(cmd)
			if err != nil {
				return err
			}
			if bp != nil {
				req.BMC = proto.BMC{Driver: bmc.driver, Address: bmc.address, Port: bmc.port, Username: bmc.username,
					Interface: bmc.iface, Insecure: bmc.insecure}
				if bp.Password != nil {
					req.BMC.Password = *bp.Password
				}
				if bp.CACert != nil {
					req.BMC.CACert = *bp.CACert
				}
				if req.BMC.Driver == "" && req.BMC.Address != "" {
					req.BMC.Driver = "ipmi"
				}
			}
			if discovered {
				f := false
				req.Enrolled = &f
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			n, err := c.CreateNode(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.showNode(n)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "node name")
	f.StringSliceVar(&req.MACs, "mac", nil, "MAC address (repeatable, or comma-separated)")
	f.StringVar(&req.Rack, "rack", "", "rack the node is in")
	f.StringVar(&req.IP, "ip", "", "reserved address in the rack's subnet, outside its pool (default: the lowest free one)")
	f.StringArrayVar(&props, "property", nil, "property key=value (repeatable)")
	f.BoolVar(&discovered, "discovered", false, "create the node as discovered rather than enrolled")
	bmc.register(f)
	_ = cmd.MarkFlagRequired("mac")
	return cmd
}

func newNodeSetCmd(g *globals) *cobra.Command {
	var name, rack, ip string
	var macs, props, traits []string
	var clearProps bool
	var bmc bmcFlags
	var root proto.RootDeviceHint
	cmd := &cobra.Command{
		Use:   "set ID [flags]",
		Short: "Change a node's fields: only the flags given are changed",
		Long: `Change a node's fields. Only the flags given are sent: --mac replaces the
node's list of MACs, --property replaces all its properties, --rack ""
takes it out of its rack (a new rack gives it a new address unless --ip
is given), --ip "" gives it the lowest free address of its rack.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			fl := cmd.Flags()
			var p proto.NodePatch
			if fl.Changed("name") {
				p.Name = &name
			}
			if fl.Changed("mac") {
				p.MACs = &macs
			}
			if fl.Changed("rack") {
				p.Rack = &rack
			}
			if fl.Changed("ip") {
				p.IP = &ip
			}
			if fl.Changed("property") {
				m, err := parseProperties(props)
				if err != nil {
					return err
				}
				p.Properties = &m
			}
			if clearProps {
				m := map[string]string{}
				p.Properties = &m
			}
			if fl.Changed("trait") {
				traits = slices.DeleteFunc(traits, func(t string) bool { return strings.TrimSpace(t) == "" })
				p.Traits = &traits
			}
			if fl.Changed("root-device-name") || fl.Changed("root-device-serial") || fl.Changed("root-device-wwn") || fl.Changed("root-device-min-size-gb") {
				p.RootDevice = &root // all empty: clears the hint
			}
			var err error
			if p.BMC, err = bmc.patch(cmd); err != nil {
				return err
			}
			if p == (proto.NodePatch{}) {
				return fmt.Errorf("node set: nothing to change; give at least one of --name, --mac, --rack, --ip, --property, --clear-properties, --trait, --root-device-*, --bmc-*")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			n, err := c.UpdateNode(cmd.Context(), a[0], p)
			if err != nil {
				return err
			}
			return g.showNode(n)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name (\"\" removes it)")
	f.StringSliceVar(&macs, "mac", nil, "MAC address (repeatable; replaces the list)")
	f.StringVar(&rack, "rack", "", "rack (\"\" takes the node out of its rack)")
	f.StringVar(&ip, "ip", "", "reserved address in the rack's subnet, outside its pool (\"\": the lowest free one)")
	f.StringArrayVar(&props, "property", nil, "property key=value (repeatable; replaces all properties)")
	f.BoolVar(&clearProps, "clear-properties", false, "remove all properties")
	f.StringSliceVar(&traits, "trait", nil, "operator trait such as CUSTOM_GPU (repeatable; replaces the list; --trait \"\" clears it)")
	f.StringVar(&root.Name, "root-device-name", "", "root-disk hint for instances: disk name (sda, nvme0n1)")
	f.StringVar(&root.Serial, "root-device-serial", "", "root-disk hint: disk serial")
	f.StringVar(&root.WWN, "root-device-wwn", "", "root-disk hint: disk WWN")
	f.Int64Var(&root.MinSizeGB, "root-device-min-size-gb", 0, "root-disk hint: at least this many GiB (all root-device flags empty: no hint)")
	bmc.register(f)
	cmd.MarkFlagsMutuallyExclusive("property", "clear-properties")
	return cmd
}

func newNodeDeleteCmd(g *globals) *cobra.Command {
	return deleteCmd(g, "node", "ID", "Delete a node that holds no workload", (*apiclient.Client).DeleteNode)
}

func newNodeEnrollCmd(g *globals, enroll bool) *cobra.Command {
	use, short := "enroll ID", "Take a discovered node under management"
	if !enroll {
		use, short = "unenroll ID", "Set an enrolled or manageable node apart again as discovered"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			n, err := c.SetEnrolled(cmd.Context(), a[0], enroll)
			if err != nil {
				return err
			}
			return g.nodeChanged(n, fmt.Sprintf("is %s", n.ProvisionState))
		},
	}
}

func newNodeMaintenanceCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "maintenance ID on|off",
		Short: "Set or clear a node's maintenance flag",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			var on bool
			switch strings.ToLower(a[1]) {
			case "on", "true":
				on = true
			case "off", "false":
				if cmd.Flags().Changed("reason") {
					return fmt.Errorf("--reason goes with on, not off")
				}
			default:
				return fmt.Errorf("node maintenance: %q: want on or off", a[1])
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			n, err := c.SetMaintenance(cmd.Context(), a[0], on, reason)
			if err != nil {
				return err
			}
			msg := "maintenance off"
			if n.Maintenance {
				msg = "maintenance on"
				if n.MaintenanceReason != "" {
					msg += fmt.Sprintf(" (reason: %s)", oneLine(n.MaintenanceReason))
				}
			}
			return g.nodeChanged(n, msg)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the node is in maintenance")
	return cmd
}

func newNodeProvisionCmd(g *globals) *cobra.Command {
	var targets strings.Builder
	for _, ev := range proto.OperatorEvents() {
		t, _ := proto.LookupTransition(ev)
		note := ""
		if t.Hardware {
			note = "; needs a rack agent, not available yet"
		}
		if ev == "manage" {
			note = "; the rack agent verifies the BMC first: see --wait"
		}
		fmt.Fprintf(&targets, "  %-9s %s (from %s%s)\n", ev, t.Doc, joinAny(t.From), note)
	}
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "provision ID TARGET",
		Short: "Move a node through the state machine (manage, provide, ...)",
		Long:  "Move a node through the state machine. TARGET is one of:\n\n" + targets.String(),
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if wait < 0 {
				return fmt.Errorf("node provision: --wait %s: want a duration >= 0", wait)
			}
			n, err := c.ProvisionWait(cmd.Context(), a[0], proto.Event(a[1]), wait)
			if err != nil {
				return err
			}
			if a[1] == "manage" && n.ProvisionState != proto.StateManageable {
				// This manage's verification, not an older last_error.
				if v := latestVerify(n); wait > 0 && v.Done && v.Error != "" {
					return fmt.Errorf("node %s stays %s: BMC verification failed: %s", nodeLabel(n), n.ProvisionState, v.Error)
				}
				if wait > 0 {
					return fmt.Errorf("node %s is still %s: its rack agent has not verified the BMC within %s", nodeLabel(n), n.ProvisionState, wait)
				}
				return g.nodeChanged(n, fmt.Sprintf("is %s; it becomes manageable once its rack agent has verified the BMC (metalfleet node show %s)", n.ProvisionState, a[0]))
			}
			return g.nodeChanged(n, fmt.Sprintf("is %s", n.ProvisionState))
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "for manage: wait this long for the BMC verification (e.g. 1m)")
	return cmd
}

// nodeChanged reports a node after a state change: its JSON, or one line.
func (g *globals) nodeChanged(n *proto.Node, what string) error {
	if g.json() {
		return g.printJSON(n)
	}
	g.printf("node %s %s", nodeLabel(n), what)
	return nil
}

func nodeLabel(n *proto.Node) string {
	if n.Name != "" {
		return fmt.Sprintf("%s (%s)", n.Name, n.UUID)
	}
	return n.UUID
}

func joinProps(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ", ")
}

func joinAny[T ~string](vs []T) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = string(v)
	}
	return strings.Join(parts, ", ")
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// orEmpty makes a nil list print as [] rather than null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// latestVerify is n's verify intent (the one manage made).
func latestVerify(n *proto.Node) proto.Intent {
	for _, in := range n.Intents {
		if in.Action == proto.ActionVerify {
			return in
		}
	}
	return proto.Intent{}
}

// rootHint prints a root-device hint: its fields that are set.
func rootHint(h *proto.RootDeviceHint) string {
	if h == nil {
		return ""
	}
	var parts []string
	for _, f := range []struct{ k, v string }{{"name", h.Name}, {"serial", h.Serial}, {"wwn", h.WWN}} {
		if f.v != "" {
			parts = append(parts, f.k+"="+f.v)
		}
	}
	if h.MinSizeGB > 0 {
		parts = append(parts, fmt.Sprintf("min_size_gb=%d", h.MinSizeGB))
	}
	return strings.Join(parts, " ")
}
