package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/proto"
)

// --- settings ---

func newSettingsCmd(g *globals) *cobra.Command {
	return group(g, "settings", "Show or change the fleet-wide settings",
		&cobra.Command{
			Use:     "show",
			Aliases: []string{"get"},
			Short:   "Show the settings",
			Args:    args(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				s, err := c.Settings(cmd.Context())
				if err != nil {
					return err
				}
				return g.showSettings(s)
			},
		},
		&cobra.Command{
			Use:   "set KEY=VALUE ...",
			Short: "Change settings",
			Long: `Change settings. Keys:

  auto_enroll        true or false: enroll discovered nodes at once
  discovery.enabled  true or false: boot unknown machines into discovery
  discovery.kernel   name of a kernel image for discovery ("" clears it)
  discovery.ramdisk  name of a ramdisk image for discovery ("" clears it)
  discovery.cmdline  extra kernel command line for discovery, e.g.
                     "console=ttyS0 metalfleet.poweroff=false" to keep machines up

discovery_enabled, discovery_kernel, discovery_ramdisk and discovery_cmdline are accepted too.`,
			Args: args(cobra.MinimumNArgs(1)),
			RunE: func(cmd *cobra.Command, a []string) error {
				p, err := parseSettings(a)
				if err != nil {
					return err
				}
				c, err := g.client()
				if err != nil {
					return err
				}
				s, err := c.UpdateSettings(cmd.Context(), p)
				if err != nil {
					return err
				}
				if s.DiscoveryEnabled && !s.DiscoveryActive {
					fmt.Fprintf(g.stderr, "warning: discovery is enabled but INACTIVE: %s\n", s.DiscoveryInactiveReason)
				}
				return g.showSettings(s)
			},
		},
	)
}

// parseSettings turns KEY=VALUE arguments into a patch, refusing an
// unknown key, a key given twice or a bad boolean.
func parseSettings(items []string) (proto.SettingsPatch, error) {
	var p proto.SettingsPatch
	pairs, err := parseKV("setting", items)
	if err != nil {
		return p, err
	}
	seen := map[string]bool{}
	for _, kv := range pairs {
		key := strings.ToLower(strings.ReplaceAll(kv[0], "_", "."))
		if key == "auto.enroll" {
			key = "auto_enroll"
		}
		if seen[key] {
			return p, fmt.Errorf("setting %s is given twice", key)
		}
		seen[key] = true
		v := kv[1]
		switch key {
		case "auto_enroll":
			if p.AutoEnroll, err = parseBool(key, v); err != nil {
				return p, err
			}
		case "discovery.enabled":
			if p.DiscoveryEnabled, err = parseBool(key, v); err != nil {
				return p, err
			}
		case "discovery.kernel":
			p.DiscoveryKernel = &v
		case "discovery.ramdisk":
			p.DiscoveryRamdisk = &v
		case "discovery.cmdline":
			p.DiscoveryCmdline = &v
		case "tasks.kernel":
			p.TasksKernel = &v
		case "tasks.ramdisk":
			p.TasksRamdisk = &v
		case "tasks.cmdline":
			p.TasksCmdline = &v
		case "vendor.tools":
			tools, err := readVendorTools(v)
			if err != nil {
				return p, err
			}
			p.VendorTools = &tools
		default:
			return p, fmt.Errorf("unknown setting %q: want auto_enroll, discovery.enabled, discovery.kernel, discovery.ramdisk, discovery.cmdline, tasks.kernel, tasks.ramdisk, tasks.cmdline or vendor_tools", kv[0])
		}
	}
	return p, nil
}

func parseBool(key, v string) (*bool, error) {
	var b bool
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "on", "yes", "1":
		b = true
	case "false", "off", "no", "0":
	default:
		return nil, fmt.Errorf("setting %s=%q: want true or false", key, v)
	}
	return &b, nil
}

func (g *globals) showSettings(s *proto.SettingsView) error {
	if g.json() {
		return g.printJSON(s)
	}
	tasksReady := "yes"
	if !s.TasksReady {
		tasksReady = "no (" + s.TasksNotReadyReason + ")"
	}
	enabled := strconv.FormatBool(s.DiscoveryEnabled)
	if s.DiscoveryEnabled && !s.DiscoveryActive {
		enabled += " (INACTIVE: " + s.DiscoveryInactiveReason + ")"
	}
	return g.printKV(cells([]kv{
		{"auto_enroll", strconv.FormatBool(s.AutoEnroll)},
		{"discovery.enabled", enabled},
		{"discovery.kernel", s.DiscoveryKernel},
		{"discovery.ramdisk", s.DiscoveryRamdisk},
		{"discovery.cmdline", s.DiscoveryCmdline},
		{"tasks.kernel", s.TasksKernel},
		{"tasks.ramdisk", s.TasksRamdisk},
		{"tasks.cmdline", s.TasksCmdline},
		{"tasks.ready", tasksReady},
		{"vendor_tools", vendorTools(s.VendorTools)},
	}))
}

// vendorTools names the vendor tools in effect.
func vendorTools(ts []proto.VendorTool) string {
	if len(ts) == 0 {
		return proto.LabTool.Name + " (built in)"
	}
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = fmt.Sprintf("%s (%s %s)", t.Name, t.Vendor, t.Product)
	}
	return strings.Join(names, ", ")
}

// readVendorTools reads the vendor_tools setting: a JSON list, inline or
// from @FILE; "" or [] is the built-in lab tool only.
func readVendorTools(v string) ([]proto.VendorTool, error) {
	raw := []byte(v)
	if name, ok := strings.CutPrefix(v, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("vendor_tools: %v", err)
		}
		raw = b
	}
	tools := []proto.VendorTool{}
	if strings.TrimSpace(string(raw)) == "" {
		return tools, nil
	}
	if err := json.Unmarshal(raw, &tools); err != nil {
		return nil, fmt.Errorf("vendor_tools: want a JSON list of tools (see DESIGN.md, \"Vendor tools\"): %v", err)
	}
	return tools, nil
}

// --- tokens ---

func newTokenCmd(g *globals) *cobra.Command {
	return group(g, "token", "Manage API tokens (admin only)",
		newTokenCreateCmd(g),
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List tokens (never their secrets)",
			Args:    args(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				ts, err := c.Tokens(cmd.Context())
				if err != nil {
					return err
				}
				if g.json() {
					return g.printJSON(orEmpty(ts))
				}
				rows := make([][]string, 0, len(ts))
				for _, t := range ts {
					rows = append(rows, []string{t.ID, string(t.Role), t.Rack, fmtTime(t.CreatedAt), t.Description})
				}
				return g.printTable([]string{"ID", "ROLE", "RACK", "CREATED", "DESCRIPTION"}, rows)
			},
		},
		&cobra.Command{
			Use:     "revoke ID",
			Aliases: []string{"delete", "rm"},
			Short:   "Revoke a token",
			Args:    args(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, a []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				if err := c.RevokeToken(cmd.Context(), a[0]); err != nil {
					return err
				}
				g.printf("revoked token %s", a[0])
				return nil
			},
		},
	)
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	var req proto.TokenCreate
	var role string
	cmd := &cobra.Command{
		Use:   "create --role admin|operator|reader|agent [--description D] [--rack R]",
		Short: "Create a token and print its secret, once",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Role = proto.Role(role)
			if !req.Role.Valid() {
				return fmt.Errorf("--role %q: want admin, operator, reader or agent", role)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(t)
			}
			what := "role " + string(t.Role)
			if t.Rack != "" {
				what += ", rack " + t.Rack
			}
			g.printf("Created token %s (%s).", t.ID, what)
			g.printf("Its secret is shown only this once; store it now:\n\n  %s\n", t.Secret)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "admin, operator, reader or agent")
	f.StringVar(&req.Description, "description", "", "what the token is for")
	f.StringVar(&req.Rack, "rack", "", "the rack an agent token is bound to")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

// --- cluster ---

func newClusterCmd(g *globals) *cobra.Command {
	return group(g, "cluster", "Show or change the coordinator cluster",
		&cobra.Command{
			Use:   "status",
			Short: "Show this coordinator's Raft state and the cluster's peers",
			Args:  args(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				st, err := c.Status(cmd.Context())
				if err != nil {
					return err
				}
				if g.json() {
					return g.printJSON(st)
				}
				leader := st.LeaderID
				if leader != "" {
					if st.LeaderHTTP != "" {
						leader += " (http " + st.LeaderHTTP + ")"
					} else if st.LeaderAddr != "" {
						leader += " (raft " + st.LeaderAddr + ")"
					}
				}
				if err := g.printKV(cells([]kv{
					{"node_id", st.NodeID},
					{"raft_state", st.RaftState},
					{"leader", leader},
					{"term", u64(st.Term)},
					{"last_index", u64(st.LastIndex)},
					{"applied_index", u64(st.AppliedIndex)},
					{"protocol_version", strconv.Itoa(st.Version)},
				})); err != nil {
					return err
				}
				fmt.Fprintln(g.stdout)
				rows := make([][]string, 0, len(st.Peers))
				for _, p := range st.Peers {
					l := ""
					if p.Leader {
						l = "yes"
					}
					rows = append(rows, []string{p.ID, p.RaftAddr, p.HTTPAddr, p.Suffrage, l})
				}
				return g.printTable([]string{"PEER", "RAFT_ADDR", "HTTP_ADDR", "SUFFRAGE", "LEADER"}, rows)
			},
		},
		&cobra.Command{
			Use:   "remove-peer ID",
			Short: "Remove a server from the cluster",
			Args:  args(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, a []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				if err := c.RemovePeer(cmd.Context(), a[0]); err != nil {
					return err
				}
				g.printf("removed server %s from the cluster", a[0])
				return nil
			},
		},
	)
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
