package main

import (
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// --- rack agents: what they have seen, and who they are ---

func newSightingsCmd(g *globals) *cobra.Command {
	var rack string
	var limit int
	cmd := &cobra.Command{
		Use:   "sightings [--rack R]",
		Short: "List unknown MACs rack agents have seen",
		Long: `List the unknown MACs rack agents have seen asking for an address or a
boot file, by MAC. A MAC is forgotten once a node with it is created.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if rack != "" {
				q.Set("rack", rack)
			}
			sg, err := apiclient.Pages[*proto.Sighting](cmd.Context(), c, "/v1/sightings", q, listPageSize, limit)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(orEmpty(sg))
			}
			rows := make([][]string, 0, len(sg))
			for _, s := range sg {
				rows = append(rows, []string{s.MAC, s.Rack, s.Arch, strconv.Itoa(s.Count), fmtTime(s.FirstSeen), fmtTime(s.LastSeen)})
			}
			return g.printTable([]string{"MAC", "RACK", "ARCH", "COUNT", "FIRST_SEEN", "LAST_SEEN"}, rows)
		},
	}
	cmd.Flags().StringVar(&rack, "rack", "", "only MACs seen in this rack")
	cmd.Flags().IntVar(&limit, "limit", 0, "print at most this many (default: every one)")
	return cmd
}

func newAgentsCmd(g *globals) *cobra.Command {
	var rack string
	cmd := &cobra.Command{
		Use:   "agents [--rack R]",
		Short: "List the rack agents the coordinators know of",
		Long: `List the rack agents the coordinators know of, by name: those gossip
knows of and those that called the leader's API (so agents are listed with
gossip off, as in metalfleet dev). LAST_CONTACT is the later of the last
gossip contact and the agent's last API call; an agent known only from its
API calls is alive if it called within the last 2 minutes, else unknown.
MGMT is the management address the agent gave on its calls.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var ags []proto.AgentInfo
			if rack == "" {
				ags, err = c.Agents(cmd.Context())
			} else {
				_, err = c.Do(cmd.Context(), "GET", "/v1/agents?rack="+url.QueryEscape(rack), nil, &ags)
			}
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(orEmpty(ags))
			}
			rows := make([][]string, 0, len(ags))
			for _, a := range ags {
				rows = append(rows, []string{a.Name, a.Rack, a.Status, a.Address, a.MgmtAddr, a.Version, fmtTime(a.LastContact)})
			}
			return g.printTable([]string{"NAME", "RACK", "STATUS", "ADDRESS", "MGMT", "VERSION", "LAST_CONTACT"}, rows)
		},
	}
	cmd.Flags().StringVar(&rack, "rack", "", "only the agents of this rack")
	return cmd
}

// fmtBoot renders a node's last boot step: "kernel at TIME by AGENT".
func fmtBoot(b *proto.BootEvent) string {
	if b == nil {
		return ""
	}
	s := b.Event + " at " + fmtTime(b.Time)
	if b.Agent != "" {
		s += " by " + b.Agent
	}
	return s
}
