package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// addCLICommands adds the operator CLI's commands.
func addCLICommands(root *cobra.Command, g *globals) {
	root.AddCommand(
		newNodeCmd(g),
		newFlavorCmd(g),
		newImageCmd(g),
		newInstanceCmd(g),
		newRackCmd(g),
		newSettingsCmd(g),
		newTokenCmd(g),
		newClusterCmd(g),
		newSightingsCmd(g),
		newAgentsCmd(g),
	)
}

// group returns a command that only holds subcommands. Run bare it prints
// its help; with an unknown subcommand it fails. It checks -o before any
// of its subcommands runs, so a bad format never follows a write.
func group(g *globals, use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.checkOutput()
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// args wraps a cobra argument check so that its error names the command's
// usage.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return fmt.Errorf("%s: %v; usage: %s", cmd.CommandPath(), err, cmd.UseLine())
		}
		return nil
	}
}

// --- output ---

func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("-o %q: want table or json", g.output)
}

func (g *globals) json() bool { return g.output == "json" }

// printJSON writes v as indented JSON, the API's own encoding.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printTable writes an aligned table with a header row.
func (g *globals) printTable(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		for i := range r {
			r[i] = cell(r[i])
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// kv is one line of a `show`.
type kv struct{ k, v string }

// printKV writes aligned "key: value" lines.
func (g *globals) printKV(lines []kv) error {
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 1, ' ', 0)
	for _, l := range lines {
		fmt.Fprintf(tw, "%s:\t%s\n", l.k, oneLine(l.v))
	}
	return tw.Flush()
}

// printf writes a message line (table mode only: in JSON mode stdout holds
// only JSON).
func (g *globals) printf(format string, a ...any) {
	if !g.json() {
		fmt.Fprintf(g.stdout, format+"\n", a...)
	}
}

// cell makes a value fit a table cell: "-" for empty, one line, no tabs.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return oneLine(s)
}

func oneLine(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// --- argument parsing ---

// parseKV splits "key=value" arguments into pairs, in order.
func parseKV(what string, items []string) ([][2]string, error) {
	out := make([][2]string, 0, len(items))
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want key=value", what, it)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// parseProperties turns --property k=v flags into a map.
func parseProperties(items []string) (map[string]string, error) {
	pairs, err := parseKV("--property", items)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		if _, dup := m[p[0]]; dup {
			return nil, fmt.Errorf("--property %s is given twice", p[0])
		}
		m[p[0]] = p[1]
	}
	return m, nil
}

// readSecretFile reads a secret from a file ("-": standard input), without
// its trailing newline.
func readSecretFile(cmd *cobra.Command, path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(cmd.InOrStdin())
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("reading password: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("password file %s is empty", path)
	}
	return s, nil
}
