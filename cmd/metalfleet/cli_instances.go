package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// Instances: instance create, list, show, set, delete, rescue, unrescue.

func newInstanceCmd(g *globals) *cobra.Command {
	return group(g, "instance", "Place, find, rescue and delete instances (workloads on nodes)",
		newInstanceCreateCmd(g), newInstanceListCmd(g),
		showCmd(g, "NAME", "Show an instance (by name or uuid)", (*apiclient.Client).Instance, (*globals).showInstance),
		newInstanceSetCmd(g), newInstanceDeleteCmd(g), newInstanceRescueCmd(g), newInstanceUnrescueCmd(g),
	)
}

func (g *globals) showInstance(in *proto.Instance) error {
	if g.json() {
		return g.printJSON(in)
	}
	since := ""
	if !in.StateSince.IsZero() {
		since = in.StateSince.Format(time.RFC3339)
	}
	return g.printKV(cells([]kv{
		{"uuid", in.UUID}, {"name", in.Name}, {"state", string(in.State)}, {"state_since", since},
		{"node", in.Node}, {"flavor", in.Flavor}, {"image", in.Image}, {"rescue_image", in.RescueImage},
		{"forced", fmt.Sprint(in.Forced)}, {"task", in.Task}, {"last_error", in.LastError},
	}))
}

// waitInstance reads the instance every second until done says it is
// where it should be (nil), it is in error (an error naming last_error),
// or timeout passes. gone: the instance no longer exists (a delete).
func waitInstance(ctx context.Context, c *apiclient.Client, id string, timeout time.Duration, done func(in *proto.Instance, gone bool) bool) (*proto.Instance, error) {
	deadline := time.Now().Add(timeout)
	var last *proto.Instance
	for {
		in, err := c.Instance(ctx, id)
		var ae *apiclient.Error
		switch {
		case errors.As(err, &ae) && ae.Code == proto.CodeNotFound:
			if done(nil, true) {
				return nil, nil
			}
		case err != nil:
			// a failover: read again
		default:
			last = in
			if done(in, false) {
				return in, nil
			}
			if in.State == proto.InstanceError {
				return in, fmt.Errorf("instance %s is in error: %s", in.Name, in.LastError)
			}
		}
		if time.Now().After(deadline) {
			state := "gone"
			if last != nil {
				state = string(last.State)
			}
			return last, fmt.Errorf("instance %s: still %s after %s", id, state, timeout)
		}
		if err := pause(ctx, time.Second); err != nil {
			return last, err
		}
	}
}

func newInstanceCreateCmd(g *globals) *cobra.Command {
	var req proto.InstanceRequest
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "create NAME --flavor F --image I [--rescue-image R] [--node NODE] [--wait]",
		Short: "Place an instance: the scheduler picks a node, or --node forces one (admin)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			req.Name, req.RequestID = a[0], uuid.NewString()
			c, err := g.client()
			if err != nil {
				return err
			}
			in, err := retryWrite(cmd.Context(), func() (*proto.Instance, error) { return c.CreateInstance(cmd.Context(), req) })
			if err != nil {
				return err
			}
			if wait {
				if in, err = waitInstance(cmd.Context(), c, in.UUID, timeout, func(in *proto.Instance, _ bool) bool {
					return in != nil && in.State == proto.InstanceRunning
				}); err != nil {
					return err
				}
			}
			if g.json() {
				return g.printJSON(in)
			}
			g.printf("instance %s (%s) on node %s: %s", in.Name, in.UUID, in.Node, in.State)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Flavor, "flavor", "", "the flavor (required)")
	f.StringVar(&req.Image, "image", "", "the disk image (required)")
	f.StringVar(&req.RescueImage, "rescue-image", "", "the instance's rescue image (a ramdisk image)")
	f.StringVar(&req.Node, "node", "", "force this node (uuid or name; admin token)")
	f.BoolVar(&wait, "wait", false, "wait until the instance is running")
	f.DurationVar(&timeout, "timeout", time.Hour, "how long --wait waits")
	return cmd
}

func newInstanceListCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "list [--node NODE]",
		Short: "List instances, or the one on a node",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ins, err := c.Instances(cmd.Context(), node)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ins)
			}
			rows := make([][]string, len(ins))
			for i, in := range ins {
				rows[i] = []string{in.Name, in.UUID, string(in.State), in.Node, in.Flavor, in.Image}
			}
			return g.printTable([]string{"NAME", "UUID", "STATE", "NODE", "FLAVOR", "IMAGE"}, rows)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only the instance on this node (uuid, name or MAC)")
	return cmd
}

func newInstanceSetCmd(g *globals) *cobra.Command {
	var rescue string
	cmd := &cobra.Command{
		Use:   "set NAME --rescue-image R",
		Short: "Set or clear (--rescue-image \"\") an instance's rescue image",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if !cmd.Flags().Changed("rescue-image") {
				return fmt.Errorf("instance set: nothing to change: give --rescue-image R (\"\" clears it)")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			in, err := c.PatchInstance(cmd.Context(), a[0], proto.InstancePatch{RescueImage: &rescue})
			if err != nil {
				return err
			}
			return g.showInstance(in)
		},
	}
	cmd.Flags().StringVar(&rescue, "rescue-image", "", "the rescue image; \"\" clears it")
	return cmd
}

func newInstanceDeleteCmd(g *globals) *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "delete NAME [--wait]",
		Short: "Delete an instance; its node is cleaned and available again",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			in, err := c.Instance(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if _, err := c.DeleteInstance(cmd.Context(), a[0]); err != nil {
				return err
			}
			if !wait {
				g.printf("instance %s: deleting", a[0])
				return nil
			}
			if _, err := waitInstance(cmd.Context(), c, in.UUID, timeout, func(_ *proto.Instance, gone bool) bool { return gone }); err != nil {
				return err
			}
			if in.Node != "" {
				// Returns when the node is available again.
				deadline := time.Now().Add(timeout)
				for {
					n, err := c.Node(cmd.Context(), in.Node)
					if err == nil && n.ProvisionState == proto.StateAvailable {
						break
					}
					if err == nil && n.ProvisionState == proto.StateFailed {
						return fmt.Errorf("instance %s deleted, but node %s failed: %s", a[0], in.Node, n.LastError)
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("instance %s deleted; node %s not available after %s", a[0], in.Node, timeout)
					}
					if err := pause(cmd.Context(), time.Second); err != nil {
						return err
					}
				}
			}
			g.printf("instance %s deleted; node %s available", a[0], in.Node)
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the node is available again")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Hour, "how long --wait waits")
	return cmd
}

func newInstanceRescueCmd(g *globals) *cobra.Command {
	var image, pwFile, keyFile string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rescue NAME [--image R] [--password-file F | --ssh-key-file F] [--wait]",
		Short: "Boot a running instance's node into a rescue image (serial shell; SSH for user rescue)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := proto.RescueRequest{Image: image}
			if pwFile != "" && keyFile != "" {
				return fmt.Errorf("instance rescue: give --password-file or --ssh-key-file, not both")
			}
			for _, x := range []struct {
				file string
				dst  *string
			}{{pwFile, &req.Password}, {keyFile, &req.SSHKey}} {
				if x.file == "" {
					continue
				}
				b, err := os.ReadFile(x.file)
				if err != nil {
					return fmt.Errorf("instance rescue: %v", err)
				}
				*x.dst = strings.TrimRight(string(b), "\r\n")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			in, err := c.RescueInstance(cmd.Context(), a[0], req)
			if err != nil {
				return err
			}
			if wait {
				if in, err = waitInstance(cmd.Context(), c, in.UUID, timeout, func(in *proto.Instance, _ bool) bool {
					return in != nil && in.State == proto.InstanceRescue
				}); err != nil {
					return err
				}
			}
			if g.json() {
				return g.printJSON(in)
			}
			g.printf("instance %s: %s (metalfleet node console %s for its serial shell)", in.Name, in.State, in.Node)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "the rescue image (default: the instance's, else its flavor's)")
	f.StringVar(&pwFile, "password-file", "", "a file holding the password of user rescue over SSH")
	f.StringVar(&keyFile, "ssh-key-file", "", "a public key (authorized_keys line) for user rescue over SSH")
	f.BoolVar(&wait, "wait", false, "wait until the instance is in rescue")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "how long --wait waits")
	return cmd
}

func newInstanceUnrescueCmd(g *globals) *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "unrescue NAME [--wait]",
		Short: "Restore a rescued instance's boot config and boot its disk",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			in, err := c.UnrescueInstance(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if wait {
				if in, err = waitInstance(cmd.Context(), c, in.UUID, timeout, func(in *proto.Instance, _ bool) bool {
					return in != nil && in.State == proto.InstanceRunning
				}); err != nil {
					return err
				}
			}
			if g.json() {
				return g.printJSON(in)
			}
			g.printf("instance %s: %s", in.Name, in.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the instance is running")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long --wait waits")
	return cmd
}
