package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// Servicing tasks: node task, node task show, node task abort, node tasks.

func newNodeTaskCmd(g *globals) *cobra.Command {
	var params []string
	var timeout time.Duration
	var wait bool
	cmd := &cobra.Command{
		Use:   "task ID inspect|burnin|firmware|bios|raid [--param key=value ...]",
		Short: "Run a servicing task on a manageable node (through the task ramdisk)",
		Long: `Run a servicing task on a manageable node. The node becomes servicing, is
power-cycled into the task ramdisk (settings tasks.kernel and tasks.ramdisk),
runs the task's steps and is powered off; it is manageable again when every
step passed, or failed with last_error naming the task and step.

Params (--param key=value, repeatable, never split on commas):
  burnin    duration=30m memory_percent=80 disk_bytes=16GiB destructive=false network=true
  raid      level=0|1|10 disks=SERIAL,SERIAL,...   or   delete=true
  firmware  component=bios|bmc|nic:<mac> image=IMAGE
  bios      settings='{"Name":"value",...}'
  inspect   (none)

With --wait the command follows the task step by step and exits non-zero when
it fails; with -o json the progress goes to stderr and stdout gets the task.`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			kind := proto.TaskKind(a[1])
			pm := map[string]string{}
			pairs, err := parseKV("--param", params)
			if err != nil {
				return err
			}
			for _, kv := range pairs {
				if _, dup := pm[kv[0]]; dup {
					return fmt.Errorf("node task: --param %s is given twice", kv[0])
				}
				pm[kv[0]] = kv[1]
			}
			if _, err := proto.ParseTaskParams(kind, pm); err != nil {
				return fmt.Errorf("node task: %v", err)
			}
			if timeout < 0 {
				return fmt.Errorf("node task: --timeout %s: want a positive duration", timeout)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			req := proto.TaskRequest{Kind: kind, Params: pm, Timeout: proto.Duration(timeout), RequestID: uuid.NewString()}
			t, err := retryWrite(cmd.Context(), func() (*proto.Task, error) { return c.CreateTask(cmd.Context(), a[0], req) })
			if err != nil {
				return err
			}
			if !wait {
				if g.json() {
					return g.printJSON(t)
				}
				g.printf("node %s: task %s (%s) started: %s; follow it with: metalfleet node task show %s %s", a[0], t.ID, t.Kind, stepNames(t), a[0], t.ID)
				return nil
			}
			progress := g.stdout
			if g.json() {
				progress = g.stderr
			}
			t, err = followTask(cmd.Context(), c, a[0], t, progress)
			if err != nil {
				return err
			}
			if g.json() {
				if err := g.printJSON(t); err != nil {
					return err
				}
			}
			return taskOutcome(a[0], t)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&params, "param", nil, "a task parameter key=value (repeatable)")
	f.DurationVar(&timeout, "timeout", 0, "fail the task when nothing is heard of it for this long (default: the kind's)")
	f.BoolVar(&wait, "wait", false, "follow the task until it ends")
	cmd.AddCommand(newNodeTaskShowCmd(g), newNodeTaskAbortCmd(g))
	return cmd
}

func stepNames(t *proto.Task) string {
	names := make([]string, len(t.Steps))
	for i, s := range t.Steps {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// taskOutcome is nil for a task that succeeded, else an error naming why.
func taskOutcome(node string, t *proto.Task) error {
	switch t.State {
	case proto.TaskSucceeded:
		return nil
	case proto.TaskRunning:
		return fmt.Errorf("node %s: task %s is still running", node, t.ID)
	}
	return fmt.Errorf("node %s: %s", node, t.Error)
}

// followTask reads the task every second until it ends, printing each
// step's start, progress and end to w. Reads that fail (a failover) are
// retried; the task's own timeout bounds the wait.
func followTask(ctx context.Context, c *apiclient.Client, node string, t *proto.Task, w io.Writer) (*proto.Task, error) {
	seen := map[string]string{}
	report := func(t *proto.Task) {
		for i, s := range t.Steps {
			line := ""
			switch s.State {
			case proto.StepRunning:
				line = fmt.Sprintf("step %d/%d %s: running", i+1, len(t.Steps), s.Name)
				if s.Percent > 0 || s.Message != "" {
					line += fmt.Sprintf(" %d%% %s", s.Percent, s.Message)
				}
			case proto.StepPassed:
				line = fmt.Sprintf("step %d/%d %s: passed %s", i+1, len(t.Steps), s.Name, compact(s.Result))
			case proto.StepFailed:
				line = fmt.Sprintf("step %d/%d %s: FAILED: %s", i+1, len(t.Steps), s.Name, s.Error)
			}
			if line != "" && seen[s.Name] != line {
				seen[s.Name] = line
				fmt.Fprintln(w, line)
			}
		}
	}
	fmt.Fprintf(w, "task %s (%s) on node %s: %s\n", t.ID, t.Kind, node, stepNames(t))
	for !t.State.Ended() {
		if err := pause(ctx, time.Second); err != nil {
			return t, err
		}
		nt, err := c.Task(ctx, node, t.ID)
		if err != nil {
			var ae *apiclient.Error
			if errors.As(err, &ae) && ae.Code == proto.CodeNotFound {
				return t, err
			}
			continue
		}
		t = nt
		report(t)
	}
	fmt.Fprintf(w, "task %s %s\n", t.ID, t.State)
	return t, nil
}

func compact(raw []byte) string {
	if len(raw) > 200 {
		return string(raw[:200]) + "..."
	}
	return string(raw)
}

func newNodeTaskShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID TASK",
		Short: "Show a task with its steps, results and logs",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.Task(cmd.Context(), a[0], a[1])
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(t)
			}
			lines := []kv{
				{"id", t.ID}, {"kind", string(t.Kind)}, {"state", string(t.State)}, {"node", t.Node},
				{"params", fmtParams(t.Params)}, {"vendor_tool", t.Vendor}, {"timeout", time.Duration(t.Timeout).String()},
				{"by", t.By}, {"created", t.CreatedAt.Format(time.RFC3339)},
			}
			if !t.EndedAt.IsZero() {
				lines = append(lines, kv{"ended", t.EndedAt.Format(time.RFC3339)})
			}
			if t.Error != "" {
				lines = append(lines, kv{"error", t.Error})
			}
			if err := g.printKV(cells(lines)); err != nil {
				return err
			}
			rows := make([][]string, len(t.Steps))
			for i, s := range t.Steps {
				detail := compact(s.Result)
				if s.Error != "" {
					detail = s.Error
				} else if s.State == proto.StepRunning {
					detail = fmt.Sprintf("%d%% %s", s.Percent, s.Message)
				}
				rows[i] = []string{strconv.Itoa(i + 1), s.Name, string(s.State), strconv.Itoa(s.Attempts), detail}
			}
			g.printf("")
			if err := g.printTable([]string{"#", "STEP", "STATE", "ATTEMPTS", "RESULT"}, rows); err != nil {
				return err
			}
			for _, s := range t.Steps {
				if s.Log != "" {
					g.printf("\n--- log of step %s ---\n%s", s.Name, strings.TrimRight(s.Log, "\n"))
				}
			}
			if t.ConsoleLog != "" {
				g.printf("\n--- console log ---\n%s", strings.TrimRight(t.ConsoleLog, "\n"))
			}
			return nil
		},
	}
}

func fmtParams(p map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(p)) {
		parts = append(parts, k+"="+p[k])
	}
	return strings.Join(parts, " ")
}

func newNodeTaskAbortCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "abort ID TASK",
		Short: "Abort a running task (refused during a firmware write)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.AbortTask(cmd.Context(), a[0], a[1])
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(t)
			}
			g.printf("node %s: %s", a[0], t.Error)
			return nil
		},
	}
}

func newNodeTasksCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tasks ID",
		Short: "List a node's tasks, newest first",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.Tasks(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ts)
			}
			rows := make([][]string, len(ts))
			for i, t := range ts {
				step := "-"
				if s := t.CurrentStep(); s != nil && !t.State.Ended() {
					step = fmt.Sprintf("%d/%d %s", t.Current+1, len(t.Steps), s.Name)
				}
				ended := "-"
				if !t.EndedAt.IsZero() {
					ended = t.EndedAt.Format(time.RFC3339)
				}
				rows[i] = []string{t.ID, string(t.Kind), string(t.State), step, t.CreatedAt.Format(time.RFC3339), ended}
			}
			return g.printTable([]string{"ID", "KIND", "STATE", "STEP", "CREATED", "ENDED"}, rows)
		},
	}
}
