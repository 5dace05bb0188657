package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// Out-of-band commands: node power, node boot-device, node history.

// retryIntent sends an intent request until it is answered, retrying
// with the same request id (so the coordinator records it once) only
// while the answer is lost to a leader change. With wait, an accepted
// intent is then followed by reading the node until its result is in,
// it is replaced by a newer intent (never sent again: that would
// re-assert a superseded request), or the wait ends.
func retryIntent(ctx context.Context, c *apiclient.Client, node string, wait time.Duration, send func(wait time.Duration) (*proto.IntentAccepted, error)) (*proto.IntentAccepted, error) {
	deadline := time.Now().Add(max(wait, 30*time.Second))
	var out *proto.IntentAccepted
	for {
		var err error
		out, err = send(wait)
		var ae *apiclient.Error
		if err == nil {
			break
		}
		if !errors.As(err, &ae) || ae.Code != proto.CodeNoLeader && ae.Code != proto.CodeTimeout || time.Now().After(deadline) {
			return nil, err
		}
		if err := pause(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if wait == 0 || out.Intent.Done {
		return out, nil
	}
	gen, until := out.Intent.Generation, time.Now().Add(wait)
	for time.Now().Before(until) {
		if err := pause(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
		n, err := c.Node(ctx, node)
		if err != nil {
			continue // a failover: read again
		}
		i := slices.IndexFunc(n.Intents, func(x proto.Intent) bool { return x.Generation == gen })
		if i < 0 {
			return nil, fmt.Errorf("node %s: %s (generation %d) was replaced by a newer request before its result came in; see metalfleet node history %s",
				node, out.Intent.Describe(), gen, node)
		}
		if n.Intents[i].Done {
			out.Intent = n.Intents[i]
			return out, nil
		}
	}
	return out, nil
}

// retryWrite sends a request carrying a request id until it is answered,
// for up to 30 s while the answer is lost to a leader change (the id
// makes the coordinator record it once).
func retryWrite[T any](ctx context.Context, send func() (T, error)) (T, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := send()
		var ae *apiclient.Error
		if err == nil || !errors.As(err, &ae) || ae.Code != proto.CodeNoLeader && ae.Code != proto.CodeTimeout || time.Now().After(deadline) {
			return v, err
		}
		if err := pause(ctx, 500*time.Millisecond); err != nil {
			return v, err
		}
	}
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// intentDone prints an intent's outcome; a failed one is an error.
func (g *globals) intentDone(node string, out *proto.IntentAccepted, waited bool) error {
	if g.json() {
		if err := g.printJSON(out); err != nil {
			return err
		}
	}
	in := out.Intent
	switch {
	case in.Done && in.Error != "":
		return fmt.Errorf("node %s: %s failed: %s", node, in.Describe(), in.Error)
	case g.json():
	case in.Done:
		g.printf("node %s: %s done (generation %d)", node, in.Describe(), in.Generation)
	case waited:
		return fmt.Errorf("node %s: %s not done yet (generation %d, agent %s); see metalfleet node show %s", node, in.Describe(), in.Generation, in.Agent, node)
	default:
		g.printf("node %s: %s requested (generation %d, agent %s)", node, in.Describe(), in.Generation, in.Agent)
	}
	return nil
}

func newNodePowerCmd(g *globals) *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "power ID on|off|soft-off|reboot",
		Short: "Switch a node on or off, or reboot it (through its rack agent and BMC)",
		Long: `Switch a node on or off, or reboot it. The coordinator records the request
and the node's rack agent executes it once through the BMC. reboot of a node
that is on is a hard reset; of a node that is off, it powers on. With --wait
the command returns when the result is in, and fails if the action failed.`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			t := proto.PowerTarget(a[1])
			if !t.Valid() {
				return fmt.Errorf("node power: %q: want on, off, soft-off or reboot", a[1])
			}
			if timeout <= 0 {
				return fmt.Errorf("node power: --timeout %s: want a positive duration", timeout)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			req := proto.PowerRequest{Target: t, RequestID: uuid.NewString()}
			w := time.Duration(0)
			if wait {
				w = timeout
			}
			out, err := retryIntent(cmd.Context(), c, a[0], w, func(w time.Duration) (*proto.IntentAccepted, error) {
				return c.SetPower(cmd.Context(), a[0], req, w)
			})
			if err != nil {
				return err
			}
			return g.intentDone(a[0], out, wait)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the result")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

func newNodeBootDeviceCmd(g *globals) *cobra.Command {
	var wait, persistent bool
	var mode string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "boot-device ID pxe|disk",
		Short: "Set the device a node boots from next (once, or --persistent)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := proto.BootDeviceRequest{BootDeviceSpec: proto.BootDeviceSpec{Device: proto.BootDevice(a[1]), Persistent: persistent, Mode: proto.BootMode(mode)}, RequestID: uuid.NewString()}
			if err := req.Check(); err != nil {
				return fmt.Errorf("node boot-device: %v", err)
			}
			if timeout <= 0 {
				return fmt.Errorf("node boot-device: --timeout %s: want a positive duration", timeout)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			w := time.Duration(0)
			if wait {
				w = timeout
			}
			out, err := retryIntent(cmd.Context(), c, a[0], w, func(w time.Duration) (*proto.IntentAccepted, error) {
				return c.SetBootDevice(cmd.Context(), a[0], req, w)
			})
			if err != nil {
				return err
			}
			return g.intentDone(a[0], out, wait)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&persistent, "persistent", false, "every boot, not just the next one")
	f.StringVar(&mode, "mode", "", "firmware boot mode: uefi or legacy (default: the BMC's)")
	f.BoolVar(&wait, "wait", false, "wait for the result")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

func newNodeHistoryCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history ID",
		Short: "Show a node's recent events (power, boot device, BMC, console sessions)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			evs, err := c.History(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(evs)
			}
			var rows [][]string
			for _, e := range evs {
				rows = append(rows, []string{fmtTime(e.Time), e.Kind, e.User, e.Message})
			}
			return g.printTable([]string{"TIME", "KIND", "USER", "MESSAGE"}, rows)
		},
	}
}
