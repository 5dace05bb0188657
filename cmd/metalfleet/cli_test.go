package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/coordinator/coordtest"
	"github.com/metalfleet/metalfleet/proto"
)

// cli runs the metalfleet command in-process against one coordinator.
type cli struct {
	t     *testing.T
	srv   *coordtest.Server
	addr  string
	token string
}

func startCLI(t *testing.T) *cli {
	t.Helper()
	s, tok := coordtest.StartSingle(t)
	return &cli{t: t, srv: s, addr: s.HTTPAddr(), token: tok}
}

// runAs runs the command with token and returns its stdout, stderr and
// error.
func (c *cli) runAs(token string, args ...string) (string, string, error) {
	c.t.Helper()
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb)
	root.SetArgs(append([]string{"--addr", c.addr, "--token", token}, args...))
	root.SetIn(strings.NewReader(""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// ok runs the command as admin and fails the test if it fails.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, _, err := c.runAs(c.token, args...)
	if err != nil {
		c.t.Fatalf("metalfleet %s: got error %q, want success", strings.Join(args, " "), errorLine(err))
	}
	return out
}

// fail runs the command as admin and returns its error line; it fails the
// test if the command succeeds.
func (c *cli) fail(args ...string) string {
	c.t.Helper()
	out, _, err := c.runAs(c.token, args...)
	if err == nil {
		c.t.Fatalf("metalfleet %s: got success with output %q, want an error", strings.Join(args, " "), out)
	}
	return errorLine(err)
}

// json runs the command as admin with -o json and decodes its output.
func (c *cli) json(v any, args ...string) {
	c.t.Helper()
	out := c.ok(append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("metalfleet -o json %s: output %q is not JSON for %T: %v", strings.Join(args, " "), out, v, err)
	}
}

func (c *cli) node(ref string) proto.Node {
	c.t.Helper()
	var n proto.Node
	c.json(&n, "node", "show", ref)
	return n
}

// parseTable reads an aligned table into one map per row, keyed by the
// header. Cells hold no spaces ("-" stands for empty), but the last one may.
func parseTable(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("table output %q has no header", out)
	}
	header := strings.Fields(lines[0])
	var rows []map[string]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) > len(header) {
			f = append(f[:len(header)-1], strings.Join(f[len(header)-1:], " "))
		}
		if len(f) != len(header) {
			t.Fatalf("table row %q has %d cells, want %d (header %v)", l, len(f), len(header), header)
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = f[i]
		}
		rows = append(rows, row)
	}
	return rows
}

// parseKVOut reads "key: value" lines.
func parseKVOut(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("line %q of %q is not key: value", l, out)
		}
		m[k] = strings.TrimSpace(v)
	}
	return m
}

func wantContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s: got %q, want it to contain %q", what, got, w)
		}
	}
}

func names(nodes []proto.Node) []string {
	out := []string{}
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func TestNodeCommands(t *testing.T) {
	c := startCLI(t)

	out := c.ok("node", "create", "--name", "n1", "--mac", "52:54:00:00:00:01", "--property", "cpu=8", "--property", "ram=64G")
	kv := parseKVOut(t, out)
	if kv["name"] != "n1" || kv["provision_state"] != "enrolled" || kv["properties"] != "cpu=8, ram=64G" {
		t.Errorf("node create output: got name %q state %q properties %q, want n1, enrolled, \"cpu=8, ram=64G\"",
			kv["name"], kv["provision_state"], kv["properties"])
	}
	c.ok("node", "create", "--name", "d1", "--mac", "52:54:00:00:00:02,52:54:00:00:00:03", "--discovered")

	t.Run("list table", func(t *testing.T) {
		out := c.ok("node", "list")
		if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); !reflect.DeepEqual(h, []string{"UUID", "NAME", "STATE", "POWER", "ENROLLED", "MAINT", "RACK", "IP", "INSTANCE"}) {
			t.Errorf("header: got %v", h)
		}
		rows := parseTable(t, out)
		if len(rows) != 2 {
			t.Fatalf("rows: got %d, want 2 in %q", len(rows), out)
		}
		want := map[string][2]string{"d1": {"discovered", "no"}, "n1": {"enrolled", "yes"}}
		for _, r := range rows {
			w, ok := want[r["NAME"]]
			if !ok {
				t.Errorf("unexpected row %v", r)
				continue
			}
			if r["STATE"] != w[0] || r["ENROLLED"] != w[1] || r["POWER"] != "unknown" || r["RACK"] != "-" || r["IP"] != "-" {
				t.Errorf("row %s: got %v, want state %s enrolled %s power unknown rack - ip -", r["NAME"], r, w[0], w[1])
			}
		}
	})

	t.Run("list json", func(t *testing.T) {
		out := c.ok("node", "list", "-o", "json")
		if !strings.HasPrefix(out, "[\n  {") {
			t.Errorf("json list: got %q, want an indented JSON array", out)
		}
		var nodes []proto.Node
		if err := json.Unmarshal([]byte(out), &nodes); err != nil {
			t.Fatalf("json list: %v", err)
		}
		if got := names(nodes); !reflect.DeepEqual(got, []string{"d1", "n1"}) {
			t.Errorf("json list: got %v, want [d1 n1]", got)
		}
		if nodes[0].MACs[1] != "52:54:00:00:00:03" {
			t.Errorf("d1 macs: got %v, want both comma-separated MACs", nodes[0].MACs)
		}
	})

	t.Run("show", func(t *testing.T) {
		n1 := c.node("n1")
		for _, ref := range []string{"n1", n1.UUID, "52:54:00:00:00:01"} {
			kv := parseKVOut(t, c.ok("node", "show", ref))
			if kv["uuid"] != n1.UUID || kv["name"] != "n1" || kv["bmc.password"] != "not set" {
				t.Errorf("node show %s: got uuid %q name %q password %q, want %s n1 \"not set\"", ref, kv["uuid"], kv["name"], kv["bmc.password"], n1.UUID)
			}
		}
	})

	t.Run("enroll and unenroll", func(t *testing.T) {
		out := c.ok("node", "enroll", "d1")
		wantContains(t, "enroll output", out, "node d1 (", ") is enrolled")
		if n := c.node("d1"); n.ProvisionState != proto.StateEnrolled || !n.Enrolled {
			t.Errorf("after enroll: got %s enrolled=%v, want enrolled true", n.ProvisionState, n.Enrolled)
		}
		c.ok("node", "unenroll", "d1")
		if n := c.node("d1"); n.ProvisionState != proto.StateDiscovered || n.Enrolled {
			t.Errorf("after unenroll: got %s enrolled=%v, want discovered false", n.ProvisionState, n.Enrolled)
		}
	})

	t.Run("maintenance", func(t *testing.T) {
		out := c.ok("node", "maintenance", "n1", "on", "--reason", "disk swap")
		wantContains(t, "maintenance output", out, "maintenance on (reason: disk swap)")
		if n := c.node("n1"); !n.Maintenance || n.MaintenanceReason != "disk swap" {
			t.Errorf("after maintenance on: got %v %q, want true \"disk swap\"", n.Maintenance, n.MaintenanceReason)
		}
		kv := parseKVOut(t, c.ok("node", "show", "n1"))
		if kv["maintenance"] != "yes" || kv["maintenance_reason"] != "disk swap" {
			t.Errorf("show: got maintenance %q reason %q, want yes, disk swap", kv["maintenance"], kv["maintenance_reason"])
		}
		var nodes []proto.Node
		c.json(&nodes, "node", "list", "--maintenance")
		if got := names(nodes); !reflect.DeepEqual(got, []string{"n1"}) {
			t.Errorf("list --maintenance: got %v, want [n1]", got)
		}
		c.ok("node", "maintenance", "n1", "off")
		if n := c.node("n1"); n.Maintenance || n.MaintenanceReason != "" {
			t.Errorf("after maintenance off: got %v %q, want false \"\"", n.Maintenance, n.MaintenanceReason)
		}
	})

	t.Run("provision", func(t *testing.T) {
		// manage waits for the rack agent's BMC verification.
		a := c.standIn("agent-n")
		c.ok("node", "set", "n1", "--rack", "pr", "--bmc-driver", "fake", "--bmc-address", "bmc-n1")
		out := c.ok("node", "provision", "n1", "manage")
		wantContains(t, "provision manage", out, "is enrolled; it becomes manageable once its rack agent has verified the BMC")
		if a.Answer("") == 0 {
			t.Fatal("the verify intent did not reach the agent")
		}
		for _, step := range []struct {
			target string
			want   proto.ProvisionState
		}{{"manage", proto.StateManageable}, {"provide", proto.StateAvailable}} {
			if step.target != "manage" {
				out := c.ok("node", "provision", "n1", step.target)
				wantContains(t, "provision "+step.target, out, "is "+string(step.want))
			}
			if n := c.node("n1"); n.ProvisionState != step.want {
				t.Errorf("after %s: got %s, want %s", step.target, n.ProvisionState, step.want)
			}
		}
	})

	t.Run("filters", func(t *testing.T) {
		c.ok("node", "create", "--name", "e1", "--mac", "52:54:00:00:00:04")
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"--discovered"}, []string{"d1"}},
			{[]string{"--enrolled"}, []string{"e1", "n1"}},
			{[]string{"--enrolled=false"}, []string{"d1"}},
			{[]string{"--state", "available"}, []string{"n1"}},
			{[]string{"--state", "enrolled"}, []string{"e1"}},
			{[]string{"--maintenance"}, []string{}},
			{[]string{"--maintenance=false"}, []string{"d1", "e1", "n1"}},
			{[]string{"--rack", "nosuch"}, []string{}},
			{[]string{"--instance", "nosuch"}, []string{}},
		} {
			var nodes []proto.Node
			c.json(&nodes, append([]string{"node", "list"}, tc.args...)...)
			if got := names(nodes); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("node list %v: got %v, want %v", tc.args, got, tc.want)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			args  []string
			wants []string
		}{
			{[]string{"node", "show", "nosuch"}, []string{`node "nosuch" not found`, "HTTP 404"}},
			{[]string{"node", "provision", "e1", "provide"}, []string{"cannot provide node e1: it is enrolled", "allowed from manageable", "HTTP 409 wrong_state"}},
			{[]string{"node", "provision", "e1", "deploy"}, []string{`target "deploy"`, "HTTP 400"}},
			{[]string{"node", "create", "--name", "n1", "--mac", "52:54:00:00:00:09"}, []string{"taken", "HTTP 409 conflict"}},
			{[]string{"node", "create", "--mac", "nonsense"}, []string{"not an Ethernet MAC", "HTTP 400"}},
			{[]string{"node", "delete", "nosuch"}, []string{"not found", "HTTP 404"}},
		} {
			got := c.fail(tc.args...)
			wantContains(t, strings.Join(tc.args, " "), got, tc.wants...)
			if strings.Contains(got, "\n") {
				t.Errorf("%v: got a multi-line error %q, want one line", tc.args, got)
			}
		}
	})

	t.Run("set", func(t *testing.T) {
		out := c.ok("node", "set", "e1", "--name", "e2", "--property", "a=b=c")
		kv := parseKVOut(t, out)
		if kv["name"] != "e2" || kv["properties"] != "a=b=c" {
			t.Errorf("set output: got name %q properties %q, want e2, a=b=c", kv["name"], kv["properties"])
		}
		n := c.node("e2")
		if !reflect.DeepEqual(n.MACs, []string{"52:54:00:00:00:04"}) {
			t.Errorf("set without --mac: got macs %v, want them unchanged", n.MACs)
		}
		c.ok("node", "set", "e2", "--mac", "52:54:00:00:00:05", "--mac", "52:54:00:00:00:06")
		if n := c.node("e2"); !reflect.DeepEqual(n.MACs, []string{"52:54:00:00:00:05", "52:54:00:00:00:06"}) || n.Properties["a"] != "b=c" {
			t.Errorf("set --mac: got macs %v properties %v, want the new MACs and properties kept", n.MACs, n.Properties)
		}
		c.ok("node", "set", "e2", "--clear-properties")
		if n := c.node("e2"); len(n.Properties) != 0 {
			t.Errorf("set --clear-properties: got %v, want none", n.Properties)
		}
		kv = parseKVOut(t, c.ok("node", "set", "e2", "--trait", "CUSTOM_GPU", "--trait", "CUSTOM_FPGA", "--root-device-serial", "S1"))
		if kv["traits"] != "CUSTOM_FPGA, CUSTOM_GPU" || kv["root_device"] != "serial=S1" {
			t.Errorf("set --trait --root-device-serial: traits %q root_device %q", kv["traits"], kv["root_device"])
		}
		wantContains(t, "a bad trait", c.fail("node", "set", "e2", "--trait", "gpu"), `trait "gpu"`)
		c.ok("node", "set", "e2", "--trait", "", "--root-device-serial", "")
		if n := c.node("e2"); len(n.Traits) != 0 || n.RootDevice != nil {
			t.Errorf("clearing traits and the root-device hint: got %v, %+v", n.Traits, n.RootDevice)
		}
	})

	t.Run("delete", func(t *testing.T) {
		wantContains(t, "delete output", c.ok("node", "delete", "e2"), "deleted node e2")
		got := c.fail("node", "show", "e2")
		wantContains(t, "show after delete", got, "HTTP 404")
		if out := c.ok("node", "delete", "d1", "-o", "json"); out != "" {
			t.Errorf("delete -o json: got %q, want no output", out)
		}
	})
}

// TestArgumentErrors checks that bad arguments fail before any request:
// the address answers nothing, so a request would fail differently.
func TestArgumentErrors(t *testing.T) {
	c := &cli{t: t, addr: "127.0.0.1:1", token: "x"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "show"}, "give a node ID or --instance NAME_OR_UUID"},
		{[]string{"node", "show", "a", "b"}, "accepts at most 1 arg(s), received 2"},
		{[]string{"node", "provision", "n1"}, "accepts 2 arg(s), received 1; usage: metalfleet node provision ID TARGET"},
		{[]string{"node", "bogus"}, `unknown command "bogus" for "metalfleet node"`},
		{[]string{"node", "create", "--name", "x"}, `required flag(s) "mac" not set`},
		{[]string{"node", "create", "--mac", "52:54:00:00:00:01", "--property", "novalue"}, `--property "novalue": want key=value`},
		{[]string{"node", "create", "--mac", "52:54:00:00:00:01", "--property", "=v"}, `--property "=v": want key=value`},
		{[]string{"node", "set", "n1"}, "nothing to change"},
		{[]string{"node", "set", "n1", "--property", "a"}, `--property "a": want key=value`},
		{[]string{"node", "maintenance", "n1", "maybe"}, `"maybe": want on or off`},
		{[]string{"node", "maintenance", "n1", "off", "--reason", "x"}, "--reason goes with on"},
		{[]string{"node", "list", "--discovered", "--enrolled"}, "[discovered enrolled]"},
		{[]string{"node", "list", "--state", "sleeping"}, `--state "sleeping": want one of discovered, enrolled`},
		{[]string{"node", "create", "--mac", "52:54:00:00:00:01", "--bmc-password-file", "/nonexistent/pw"}, "reading password"},
		{[]string{"-o", "yaml", "node", "list"}, `-o "yaml": want table or json`},
		{[]string{"flavor", "create"}, "a flavor needs a name"},
		{[]string{"flavor", "create", "a", "--name", "b"}, `name "a" and --name "b" differ`},
		{[]string{"image", "create", "i1", "--kind", "disk"}, `required flag(s) "sha256", "url" not set`},
		{[]string{"rack", "create", "r1", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1", "--boot-server", "10.0.0.2", "--pool", "10.0.0.5"}, `--pool "10.0.0.5": want START-END`},
		{[]string{"rack", "create", "r1", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1", "--boot-server", "10.0.0.2", "--pool", "10.0.0.5-10.0.0.9", "--lease-time", "soon"}, `invalid argument "soon"`},
		{[]string{"settings", "set"}, "requires at least 1 arg(s)"},
		{[]string{"settings", "set", "auto_enroll"}, `setting "auto_enroll": want key=value`},
		{[]string{"settings", "set", "bogus=1"}, `unknown setting "bogus"`},
		{[]string{"settings", "set", "auto_enroll=maybe"}, `setting auto_enroll="maybe": want true or false`},
		{[]string{"settings", "set", "auto_enroll=true", "auto_enroll=false"}, "auto_enroll is given twice"},
		{[]string{"token", "create"}, `required flag(s) "role" not set`},
		{[]string{"token", "create", "--role", "king"}, `--role "king": want admin, operator, reader or agent`},
		{[]string{"cluster", "remove-peer"}, "accepts 1 arg(s), received 0"},
		{[]string{"sightings", "extra"}, `unknown command "extra" for "metalfleet sightings"`},
		{[]string{"-o", "yaml", "sightings"}, `-o "yaml": want table or json`},
		{[]string{"-o", "yaml", "agents"}, `-o "yaml": want table or json`},
	} {
		_, _, err := c.runAs("x", tc.args...)
		if err == nil {
			t.Errorf("%v: got success, want error %q", tc.args, tc.want)
			continue
		}
		if got := errorLine(err); !strings.Contains(got, tc.want) {
			t.Errorf("%v: got error %q, want it to contain %q", tc.args, got, tc.want)
		}
	}
	// The same address does fail a request, so the errors above were not
	// request failures.
	if _, _, err := c.runAs("x", "node", "list"); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Errorf("node list against a closed port: got %v, want a connection error", err)
	}
}

func TestObjectCommands(t *testing.T) {
	c := startCLI(t)
	sum := strings.Repeat("ab", 32)

	t.Run("racks", func(t *testing.T) {
		out := c.ok("rack", "create", "r1", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1",
			"--pool", "10.0.0.100-10.0.0.200", "--boot-server", "10.0.0.2", "--dns", "1.1.1.1,8.8.8.8", "--lease-time", "12h")
		kv := parseKVOut(t, out)
		if kv["pool"] != "10.0.0.100-10.0.0.200" || kv["lease_time"] != "12h0m0s" || kv["dns"] != "1.1.1.1, 8.8.8.8" {
			t.Errorf("rack create output: got %v", kv)
		}
		c.ok("rack", "create", "r2", "--subnet", "10.0.1.0/24", "--gateway", "10.0.1.1", "--pool", "10.0.1.10-10.0.1.20", "--boot-server", "10.0.1.2")
		rows := parseTable(t, c.ok("rack", "list"))
		if len(rows) != 2 || rows[0]["NAME"] != "r1" || rows[0]["SUBNET"] != "10.0.0.0/24" || rows[1]["LEASE_TIME"] != "-" {
			t.Errorf("rack list: got %v, want r1 (10.0.0.0/24) and r2 (no lease time)", rows)
		}
		var racks []proto.Rack
		c.json(&racks, "rack", "list")
		if len(racks) != 2 || racks[0].LeaseTime != proto.Duration(12*time.Hour) || !reflect.DeepEqual(racks[0].DNS, []string{"1.1.1.1", "8.8.8.8"}) {
			t.Errorf("rack list json: got %+v", racks)
		}
		got := c.fail("rack", "create", "r3", "--subnet", "10.0.2.0/24", "--gateway", "10.9.9.9", "--pool", "10.0.2.10-10.0.2.20", "--boot-server", "10.0.2.2")
		wantContains(t, "rack with outside gateway", got, "outside subnet", "HTTP 400 invalid")
		wantContains(t, "duplicate rack", c.fail("rack", "create", "r2", "--subnet", "10.0.1.0/24", "--gateway", "10.0.1.1", "--pool", "10.0.1.10-10.0.1.20", "--boot-server", "10.0.1.2"),
			`rack "r2" exists`, "HTTP 409")
	})

	t.Run("images", func(t *testing.T) {
		c.ok("image", "create", "k1", "--kind", "kernel", "--url", "http://images.example/k1", "--sha256", sum, "--size", "1024")
		c.ok("image", "create", "rd1", "--kind", "ramdisk", "--url", "http://images.example/rd1", "--sha256", sum)
		rows := parseTable(t, c.ok("image", "list"))
		if len(rows) != 2 || rows[0]["NAME"] != "k1" || rows[0]["KIND"] != "kernel" || rows[0]["SIZE"] != "1024" || rows[1]["SIZE"] != "-" {
			t.Errorf("image list: got %v", rows)
		}
		kv := parseKVOut(t, c.ok("image", "show", "k1"))
		if kv["sha256"] != sum || kv["url"] != "http://images.example/k1" {
			t.Errorf("image show: got %v", kv)
		}
		var ims []proto.Image
		c.json(&ims, "image", "list")
		if len(ims) != 2 || ims[1].Kind != proto.ImageRamdisk {
			t.Errorf("image list json: got %+v", ims)
		}
		wantContains(t, "bad kind", c.fail("image", "create", "x", "--kind", "iso", "--url", "http://a/b", "--sha256", sum), `kind "iso"`, "HTTP 400")
	})

	t.Run("flavors", func(t *testing.T) {
		c.ok("flavor", "create", "--name", "f1", "--cpus", "4", "--memory-mb", "8192", "--disk-gb", "100",
			"--trait", "gpu", "--trait", "ssd", "--rack", "r1", "--rescue-image", "k1")
		c.ok("flavor", "create", "f2", "--cpus", "1")
		rows := parseTable(t, c.ok("flavor", "list"))
		want := []map[string]string{
			{"NAME": "f1", "CPUS": "4", "MEMORY_MB": "8192", "DISK_GB": "100", "TRAITS": "gpu,ssd", "RACK": "r1", "RESCUE_IMAGE": "k1"},
			{"NAME": "f2", "CPUS": "1", "MEMORY_MB": "0", "DISK_GB": "0", "TRAITS": "-", "RACK": "-", "RESCUE_IMAGE": "-"},
		}
		if !reflect.DeepEqual(rows, want) {
			t.Errorf("flavor list: got %v, want %v", rows, want)
		}
		c.ok("flavor", "set", "f1", "--cpus", "8", "--rack", "")
		var f proto.Flavor
		c.json(&f, "flavor", "show", "f1")
		if f.CPUs != 8 || f.MemoryMB != 8192 || f.Rack != "" || !reflect.DeepEqual(f.RequiredTraits, []string{"gpu", "ssd"}) || f.RescueImage != "k1" {
			t.Errorf("after flavor set --cpus 8 --rack \"\": got %+v, want cpus 8, no rack, the rest unchanged", f)
		}
		wantContains(t, "flavor set nothing", c.fail("flavor", "set", "f1"), "nothing to change")
		wantContains(t, "flavor set missing", c.fail("flavor", "set", "nosuch", "--cpus", "1"), "HTTP 404")
		wantContains(t, "flavor bad rack", c.fail("flavor", "create", "f3", "--rack", "nosuch"), `rack "nosuch" does not exist`, "HTTP 400")
	})

	t.Run("references and deletes", func(t *testing.T) {
		c.ok("node", "create", "--name", "n1", "--mac", "52:54:00:00:01:01", "--rack", "r1")
		var nodes []proto.Node
		c.json(&nodes, "node", "list", "--rack", "r1")
		if got := names(nodes); !reflect.DeepEqual(got, []string{"n1"}) {
			t.Errorf("node list --rack r1: got %v, want [n1]", got)
		}
		wantContains(t, "delete used rack", c.fail("rack", "delete", "r1"), "in use", "HTTP 409")
		wantContains(t, "delete used image", c.fail("image", "delete", "k1"), "in use by [flavor f1]", "HTTP 409")
		c.ok("node", "delete", "n1")
		for _, args := range [][]string{{"flavor", "delete", "f1"}, {"flavor", "delete", "f2"}, {"image", "delete", "k1"}, {"image", "delete", "rd1"}, {"rack", "delete", "r1"}, {"rack", "delete", "r2"}} {
			out := c.ok(args...)
			wantContains(t, strings.Join(args, " "), out, "deleted "+args[0]+" "+args[2])
		}
		for _, kind := range []string{"flavor", "image", "rack"} {
			if out := c.ok(kind, "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
				t.Errorf("%s list -o json after deletes: got %q, want []", kind, out)
			}
			if rows := parseTable(t, c.ok(kind, "list")); len(rows) != 0 {
				t.Errorf("%s list after deletes: got %v, want only a header", kind, rows)
			}
		}
	})
}

func TestSettingsCommands(t *testing.T) {
	c := startCLI(t)
	kv := parseKVOut(t, c.ok("settings", "show"))
	want := map[string]string{"auto_enroll": "false", "discovery.enabled": "false", "discovery.kernel": "-", "discovery.ramdisk": "-", "discovery.cmdline": "-",
		"tasks.kernel": "-", "tasks.ramdisk": "-", "tasks.cmdline": "-", "tasks.ready": "no (tasks.kernel is not set; tasks.ramdisk is not set)",
		"vendor_tools": "metalfleet-lab (built in)"}
	if !reflect.DeepEqual(kv, want) {
		t.Errorf("settings show: got %v, want %v", kv, want)
	}

	// Enabled without images: on, but inactive, and said so.
	_, stderr, err := c.runAs(c.token, "settings", "set", "auto_enroll=true", "discovery.enabled=on")
	if err != nil {
		t.Fatal(err)
	}
	inactive := "INACTIVE: discovery.kernel is not set; discovery.ramdisk is not set"
	if !strings.Contains(stderr, "warning: discovery is enabled but "+inactive) {
		t.Errorf("settings set discovery.enabled=on without images: stderr %q, want a warning that discovery is inactive", stderr)
	}
	kv = parseKVOut(t, c.ok("settings", "show"))
	if kv["auto_enroll"] != "true" || kv["discovery.enabled"] != "true ("+inactive+")" {
		t.Errorf("after set: got %v, want auto_enroll true and discovery.enabled true (%s)", kv, inactive)
	}
	var sv proto.SettingsView
	c.json(&sv, "settings", "show")
	if !sv.DiscoveryEnabled || sv.DiscoveryActive || sv.DiscoveryInactiveReason == "" {
		t.Errorf("settings show -o json: got %+v, want enabled, not active, with a reason", sv)
	}

	sum := strings.Repeat("0f", 32)
	c.ok("image", "create", "k1", "--kind", "kernel", "--url", "file:///srv/k1", "--sha256", sum)
	c.ok("image", "create", "rd1", "--kind", "ramdisk", "--url", "file:///srv/rd1", "--sha256", sum)
	var s proto.Settings
	c.json(&s, "settings", "set", "discovery_kernel=k1", "discovery.ramdisk=rd1", "discovery_enabled=false")
	if s.DiscoveryKernel != "k1" || s.DiscoveryRamdisk != "rd1" || s.DiscoveryEnabled || !s.AutoEnroll {
		t.Errorf("settings set -o json: got %+v, want kernel k1, ramdisk rd1, discovery off, auto_enroll kept", s)
	}

	wantContains(t, "ramdisk as kernel", c.fail("settings", "set", "discovery.kernel=rd1"), `image "rd1" is a ramdisk`, "HTTP 400")

	// A bad key or value stops the whole command before any request: the
	// valid auto_enroll=false beside it is not applied.
	for _, args := range [][]string{{"auto_enroll=false", "bogus=1"}, {"auto_enroll=false", "discovery.enabled=perhaps"}} {
		c.fail(append([]string{"settings", "set"}, args...)...)
		if kv := parseKVOut(t, c.ok("settings", "show")); kv["auto_enroll"] != "true" {
			t.Errorf("after failed settings set %v: got auto_enroll %q, want true (unchanged)", args, kv["auto_enroll"])
		}
	}

	c.ok("settings", "set", "discovery.kernel=")
	s = proto.Settings{}
	c.json(&s, "settings", "show")
	if s.DiscoveryKernel != "" || s.DiscoveryRamdisk != "rd1" {
		t.Errorf("after clearing discovery.kernel: got %+v, want no kernel and ramdisk rd1", s)
	}

	// With both images, enabled is active: no warning, no INACTIVE.
	_, stderr, err = c.runAs(c.token, "settings", "set", "discovery.kernel=k1", "discovery.enabled=true")
	if err != nil || stderr != "" {
		t.Errorf("settings set with both images: err %v, stderr %q; want no warning", err, stderr)
	}
	if kv := parseKVOut(t, c.ok("settings", "show")); kv["discovery.enabled"] != "true" {
		t.Errorf("settings show with discovery active: discovery.enabled %q, want true", kv["discovery.enabled"])
	}
}

// TestTokenNotInHelp: --help never shows the token's value, even when it
// comes from METALFLEET_TOKEN.
func TestTokenNotInHelp(t *testing.T) {
	const secret = "mf_thisisthesecretvalue"
	t.Setenv("METALFLEET_TOKEN", secret)
	for _, args := range [][]string{{"--help"}, {"node", "list", "--help"}, {"settings", "--help"}} {
		var out, errb bytes.Buffer
		root := newRoot(&out, &errb)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		help := out.String() + errb.String()
		if strings.Contains(help, secret) || strings.Contains(help, "thisisthesecret") {
			t.Errorf("metalfleet %v prints the token:\n%s", args, help)
		}
		if !strings.Contains(help, "$METALFLEET_TOKEN") {
			t.Errorf("metalfleet %v: help does not say the token comes from $METALFLEET_TOKEN:\n%s", args, help)
		}
	}
	// The value is still used.
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	if err := root.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := root.PersistentFlags().GetString("token"); v != secret {
		t.Errorf("--token from the environment: %q, want the variable's value", v)
	}
}

// TestNodeListPages: node list reads the list page by page and prints
// every node (one JSON array with -o json) unless --limit is given.
func TestNodeListPages(t *testing.T) {
	old := listPageSize
	listPageSize = 2
	t.Cleanup(func() { listPageSize = old })
	c := startCLI(t)
	for i := 0; i < 7; i++ {
		c.ok("node", "create", "--name", fmt.Sprintf("n%d", i), "--mac", fmt.Sprintf("52:54:00:00:03:%02x", i))
	}
	var nodes []proto.Node
	c.json(&nodes, "node", "list")
	if len(nodes) != 7 || nodes[0].Name != "n0" || nodes[6].Name != "n6" {
		t.Errorf("node list -o json with pages of 2: %d nodes, want n0..n6 in one array", len(nodes))
	}
	if rows := parseTable(t, c.ok("node", "list")); len(rows) != 7 {
		t.Errorf("node list: %d rows, want 7", len(rows))
	}
	c.json(&nodes, "node", "list", "--limit", "3")
	if len(nodes) != 3 || nodes[2].Name != "n2" {
		t.Errorf("node list --limit 3: %d nodes, want n0..n2", len(nodes))
	}
	wantContains(t, "negative limit", c.fail("node", "list", "--limit", "-1"), "--limit -1")
	wantContains(t, "negative limit of sightings", c.fail("sightings", "--limit", "-5"), "--limit -5")
}

func TestTokenCommands(t *testing.T) {
	c := startCLI(t)
	out := c.ok("token", "create", "--role", "reader", "--description", "ci")
	wantContains(t, "token create output", out, "Created token tok-", "role reader", "shown only this once")
	var secret string
	for _, l := range strings.Split(out, "\n") {
		if s := strings.TrimSpace(l); strings.HasPrefix(s, "mf_") {
			secret = s
		}
	}
	if secret == "" {
		t.Fatalf("token create: got %q, want a line with the secret", out)
	}

	var toks []proto.Token
	c.json(&toks, "token", "list")
	var id string
	for _, tk := range toks {
		if tk.Description == "ci" {
			id = tk.ID
		}
	}
	if len(toks) != 2 || id == "" {
		t.Fatalf("token list: got %+v, want the bootstrap token and the ci token", toks)
	}
	for _, args := range [][]string{{"token", "list"}, {"-o", "json", "token", "list"}} {
		if out := c.ok(args...); strings.Contains(out, secret) || strings.Contains(out, c.token) {
			t.Errorf("%v: got a secret in %q", args, out)
		}
	}
	rows := parseTable(t, c.ok("token", "list"))
	if len(rows) != 2 || rows[0]["DESCRIPTION"] != "created by --bootstrap" || rows[1]["ID"] != id || rows[1]["ROLE"] != "reader" {
		t.Errorf("token list table: got %v, want the bootstrap token and %s (reader)", rows, id)
	}

	// The reader token reads but may not write.
	if _, _, err := c.runAs(secret, "node", "list"); err != nil {
		t.Fatalf("node list with the reader token: got %q, want success", errorLine(err))
	}
	for _, args := range [][]string{
		{"node", "create", "--mac", "52:54:00:00:00:01"},
		{"settings", "set", "auto_enroll=true"},
		{"token", "list"},
	} {
		_, _, err := c.runAs(secret, args...)
		if err == nil {
			t.Errorf("%v with a reader token: got success, want 403", args)
			continue
		}
		wantContains(t, strings.Join(args, " ")+" as reader", errorLine(err), "a reader token may not", "HTTP 403 forbidden")
	}

	var created proto.TokenCreated
	c.json(&created, "token", "create", "--role", "operator")
	if created.Secret == "" || created.Role != proto.RoleOperator || !strings.HasPrefix(created.ID, "tok-") {
		t.Errorf("token create -o json: got %+v, want an operator token with a secret", created)
	}
	if _, _, err := c.runAs(created.Secret, "node", "create", "--mac", "52:54:00:00:00:01"); err != nil {
		t.Errorf("node create with the operator token: got %q, want success", errorLine(err))
	}

	wantContains(t, "token revoke", c.ok("token", "revoke", id), "revoked token "+id)
	_, _, err := c.runAs(secret, "node", "list")
	if err == nil {
		t.Fatal("node list with a revoked token: got success, want 401")
	}
	wantContains(t, "revoked token", errorLine(err), "HTTP 401")
	wantContains(t, "revoke again", c.fail("token", "revoke", id), "not found", "HTTP 404")
	wantContains(t, "agent without rack", c.fail("token", "create", "--role", "agent"), "bound to one rack", "HTTP 400")
}

func TestBMCPasswordNeverPrinted(t *testing.T) {
	c := startCLI(t)
	const pw = "Sup3r-S3cret-BMC-pw"
	const pw2 = "An0ther-S3cret"
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "pw1"), filepath.Join(dir, "pw2")
	if err := os.WriteFile(f1, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f2, []byte(pw2), 0o600); err != nil {
		t.Fatal(err)
	}

	var all strings.Builder
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := c.runAs(c.token, args...)
		if err != nil {
			t.Fatalf("%v: got error %q", args, errorLine(err))
		}
		all.WriteString(out + errOut)
		return out
	}
	a := c.standIn("agent-b")
	run("node", "create", "--name", "b1", "--mac", "52:54:00:00:00:01", "--rack", "pr", "--bmc-address", "10.1.1.1", "--bmc-port", "623", "--bmc-username", "root", "--bmc-password-file", f1)
	run("-o", "json", "node", "create", "--name", "b2", "--mac", "52:54:00:00:00:02", "--bmc-driver", "fake", "--bmc-password-file", f1)
	for _, args := range [][]string{
		{"node", "show", "b1"}, {"-o", "json", "node", "show", "b1"},
		{"node", "list"}, {"-o", "json", "node", "list"},
		{"node", "enroll", "b1"}, {"-o", "json", "node", "maintenance", "b1", "on"},
		{"-o", "json", "node", "provision", "b1", "manage"},
	} {
		run(args...)
	}
	a.Answer("")
	run("node", "history", "b1")
	run("-o", "json", "node", "history", "b1")
	run("node", "set", "b1", "--bmc-password-file", f2)
	run("-o", "json", "node", "set", "b1", "--bmc-username", "admin")
	run("node", "show", "b1")

	for _, p := range []string{pw, pw2} {
		if strings.Contains(all.String(), p) {
			t.Errorf("a BMC password appears in the output:\n%s", all.String())
		}
	}

	// The passwords did reach the server: the test would pass vacuously
	// if they were never sent.
	n, ok := c.srv.Store().Node("b1")
	if !ok || n.BMC.Password != pw2 || n.BMC.Username != "admin" || n.BMC.Driver != "ipmi" || n.BMC.Port != 623 {
		t.Errorf("stored b1 BMC: got %+v, want password %q, user admin, driver ipmi, port 623", n.BMC, pw2)
	}
	if n, _ := c.srv.Store().Node("b2"); n.BMC.Password != pw || n.BMC.Driver != "fake" {
		t.Errorf("stored b2 BMC: got %+v, want password %q, driver fake", n.BMC, pw)
	}
	kv := parseKVOut(t, c.ok("node", "show", "b1"))
	if kv["bmc.password"] != "set" || kv["bmc.address"] != "10.1.1.1" {
		t.Errorf("node show: got bmc.password %q address %q, want set, 10.1.1.1", kv["bmc.password"], kv["bmc.address"])
	}
}

func TestClusterCommands(t *testing.T) {
	c := startCLI(t)
	out := c.ok("cluster", "status")
	head, peers, ok := strings.Cut(out, "\n\n")
	if !ok {
		t.Fatalf("cluster status: got %q, want key: value lines, a blank line and a peer table", out)
	}
	kv := parseKVOut(t, head)
	if kv["node_id"] != "s1" || kv["raft_state"] != "leader" || !strings.HasPrefix(kv["leader"], "s1") || kv["applied_index"] == "0" || kv["last_index"] == "" {
		t.Errorf("cluster status: got %v, want node s1 leading", kv)
	}
	rows := parseTable(t, peers)
	if len(rows) != 1 || rows[0]["PEER"] != "s1" || rows[0]["LEADER"] != "yes" || rows[0]["SUFFRAGE"] != "voter" || rows[0]["RAFT_ADDR"] != c.srv.RaftAddr() {
		t.Errorf("cluster status peers: got %v, want s1, voter, leader at %s", rows, c.srv.RaftAddr())
	}
	var st proto.Status
	c.json(&st, "cluster", "status")
	if st.NodeID != "s1" || len(st.Peers) != 1 {
		t.Errorf("cluster status -o json: got %+v", st)
	}
	wantContains(t, "remove-peer nosuch", c.fail("cluster", "remove-peer", "nosuch"), "not a member", "HTTP 404")
	wantContains(t, "remove-peer self", c.fail("cluster", "remove-peer", "s1"), "HTTP 409 conflict")
}

func TestAgentCommands(t *testing.T) {
	c := startCLI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	kv := parseKVOut(t, c.ok("rack", "create", "r1", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1",
		"--pool", "10.0.0.100-10.0.0.200", "--boot-server", "10.0.0.2", "--answer-non-pxe"))
	if kv["answer_non_pxe"] != "yes" {
		t.Errorf("rack create --answer-non-pxe: got answer_non_pxe %q, want yes", kv["answer_non_pxe"])
	}
	c.ok("rack", "create", "r2", "--subnet", "10.0.1.0/24", "--gateway", "10.0.1.1", "--pool", "10.0.1.100-10.0.1.200", "--boot-server", "10.0.1.2")
	if kv := parseKVOut(t, c.ok("rack", "show", "r2")); kv["answer_non_pxe"] != "no" {
		t.Errorf("rack show r2: got answer_non_pxe %q, want no", kv["answer_non_pxe"])
	}
	var rk proto.Rack
	c.json(&rk, "rack", "show", "r1")
	if !rk.AnswerNonPXE {
		t.Errorf("rack show r1 -o json: got %+v, want answer_non_pxe true", rk)
	}

	var tok proto.TokenCreated
	c.json(&tok, "token", "create", "--role", "agent", "--rack", "r1")
	agent := apiclient.New(c.addr, tok.Secret)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

	t.Run("sightings", func(t *testing.T) {
		if rows := parseTable(t, c.ok("sightings")); len(rows) != 0 {
			t.Errorf("sightings before any report: got %v, want none", rows)
		}
		if out := c.ok("-o", "json", "sightings"); strings.TrimSpace(out) != "[]" {
			t.Errorf("sightings -o json before any report: got %q, want []", out)
		}
		ack, err := agent.Reports(ctx, "r1", []proto.AgentReport{
			{ID: "s1", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Incarnation: "i1", Seq: 1, Time: t0, MAC: "52:54:00:AA:BB:01", Arch: "00:07", Count: 2},
			{ID: "s2", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Incarnation: "i1", Seq: 2, Time: t0.Add(time.Minute), MAC: "52:54:00:aa:bb:01"},
			{ID: "s3", Kind: proto.ReportMACSeen, Rack: "r1", Agent: "agent-a", Incarnation: "i1", Seq: 3, Time: t0, MAC: "52:54:00:aa:bb:02"},
		})
		if err != nil || !reflect.DeepEqual(ack.Acked, []string{"s1", "s2", "s3"}) {
			t.Fatalf("reports: got %+v, %v; want s1, s2, s3 acked", ack, err)
		}
		out := c.ok("sightings")
		if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); !reflect.DeepEqual(h, []string{"MAC", "RACK", "ARCH", "COUNT", "FIRST_SEEN", "LAST_SEEN"}) {
			t.Errorf("sightings header: got %v", h)
		}
		want := []map[string]string{
			{"MAC": "52:54:00:aa:bb:01", "RACK": "r1", "ARCH": "00:07", "COUNT": "3", "FIRST_SEEN": "2026-03-01T12:00:00Z", "LAST_SEEN": "2026-03-01T12:01:00Z"},
			{"MAC": "52:54:00:aa:bb:02", "RACK": "r1", "ARCH": "-", "COUNT": "1", "FIRST_SEEN": "2026-03-01T12:00:00Z", "LAST_SEEN": "2026-03-01T12:00:00Z"},
		}
		if rows := parseTable(t, out); !reflect.DeepEqual(rows, want) {
			t.Errorf("sightings: got %v, want %v", rows, want)
		}
		if rows := parseTable(t, c.ok("sightings", "--rack", "r1")); len(rows) != 2 {
			t.Errorf("sightings --rack r1: got %v, want 2 rows", rows)
		}
		if rows := parseTable(t, c.ok("sightings", "--rack", "r2")); len(rows) != 0 {
			t.Errorf("sightings --rack r2: got %v, want none", rows)
		}
		if rows := parseTable(t, c.ok("sightings", "--limit", "1")); len(rows) != 1 || rows[0]["MAC"] != "52:54:00:aa:bb:01" {
			t.Errorf("sightings --limit 1: got %v, want the first", rows)
		}
		var sg []proto.Sighting
		c.json(&sg, "sightings")
		if len(sg) != 2 || sg[0].MAC != "52:54:00:aa:bb:01" || sg[0].Count != 3 || sg[0].Agent != "agent-a" || !sg[0].LastSeen.Equal(t0.Add(time.Minute)) {
			t.Errorf("sightings -o json: got %+v", sg)
		}
		// Readers may list sightings; the agent token may not.
		var rd proto.TokenCreated
		c.json(&rd, "token", "create", "--role", "reader")
		if _, _, err := c.runAs(rd.Secret, "sightings"); err != nil {
			t.Errorf("sightings as reader: got %q, want success", errorLine(err))
		}
		_, _, err = c.runAs(tok.Secret, "sightings")
		if err == nil {
			t.Fatal("sightings with an agent token: got success, want 403")
		}
		wantContains(t, "sightings as agent", errorLine(err), "an agent token may not GET /v1/sightings", "HTTP 403 forbidden")
	})

	t.Run("agents", func(t *testing.T) {
		// Without gossip, the agents that called the API are listed: an
		// agent that names itself and its management address, as rack
		// agents do, and agent-a of the reports above.
		named := apiclient.New(c.addr, tok.Secret)
		named.SetHeader("X-Metalfleet-Agent", "rack1-agent")
		named.SetHeader(proto.AgentMgmtHeader, "10.0.0.2:7481")
		if _, err := named.BootState(ctx, "r1", 0, 0); err != nil {
			t.Fatal(err)
		}
		out := c.ok("agents")
		if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); !reflect.DeepEqual(h, []string{"NAME", "RACK", "STATUS", "ADDRESS", "MGMT", "VERSION", "LAST_CONTACT"}) {
			t.Errorf("agents header: got %v", h)
		}
		rows := parseTable(t, out)
		if len(rows) != 2 || rows[0]["NAME"] != "agent-a" || rows[1]["NAME"] != "rack1-agent" || rows[1]["MGMT"] != "10.0.0.2:7481" ||
			rows[1]["RACK"] != "r1" || rows[1]["STATUS"] != "alive" {
			t.Errorf("agents without gossip: got %v, want agent-a and rack1-agent (alive in r1, mgmt 10.0.0.2:7481)", rows)
		}
		var ags []proto.AgentInfo
		c.json(&ags, "agents", "--rack", "r2")
		if len(ags) != 0 {
			t.Errorf("agents --rack r2: got %+v, want none", ags)
		}
		c.json(&ags, "agents", "--rack", "r1")
		if len(ags) != 2 || ags[1].MgmtAddr != "10.0.0.2:7481" || ags[1].Source != "api" {
			t.Errorf("agents --rack r1 -o json: got %+v", ags)
		}
	})

	t.Run("node ip", func(t *testing.T) {
		kv := parseKVOut(t, c.ok("node", "create", "--name", "n1", "--mac", "52:54:00:00:02:01", "--rack", "r1"))
		if kv["ip"] != "10.0.0.3" || kv["last_boot"] != "-" {
			t.Errorf("node create in r1: got ip %q last_boot %q, want 10.0.0.3 (after gateway and boot server) and -", kv["ip"], kv["last_boot"])
		}
		c.ok("node", "create", "--name", "n2", "--mac", "52:54:00:00:02:02", "--rack", "r1")
		c.ok("node", "create", "--name", "n3", "--mac", "52:54:00:00:02:03")
		ips := map[string]string{}
		for _, r := range parseTable(t, c.ok("node", "list")) {
			ips[r["NAME"]] = r["IP"]
		}
		if want := map[string]string{"n1": "10.0.0.3", "n2": "10.0.0.4", "n3": "-"}; !reflect.DeepEqual(ips, want) {
			t.Errorf("node list IP column: got %v, want %v", ips, want)
		}

		if kv := parseKVOut(t, c.ok("node", "set", "n2", "--ip", "10.0.0.50")); kv["ip"] != "10.0.0.50" {
			t.Errorf("node set --ip 10.0.0.50: got ip %q", kv["ip"])
		}
		if n := c.node("n2"); n.IP != "10.0.0.50" {
			t.Errorf("node show n2 -o json after set --ip: got %q", n.IP)
		}
		wantContains(t, "set --ip in the pool", c.fail("node", "set", "n2", "--ip", "10.0.0.150"), "inside the dynamic pool 10.0.0.100-10.0.0.200", "HTTP 400 invalid")
		wantContains(t, "set --ip taken", c.fail("node", "set", "n1", "--ip", "10.0.0.50"), "belongs to node", "HTTP 409 conflict")
		if kv := parseKVOut(t, c.ok("node", "set", "n2", "--ip", "")); kv["ip"] != "10.0.0.4" {
			t.Errorf(`node set --ip "": got ip %q, want the lowest free 10.0.0.4`, kv["ip"])
		}

		// The last boot step an agent saw shows in node show.
		n1 := c.node("n1")
		ack, err := agent.Reports(ctx, "r1", []proto.AgentReport{{ID: "b1", Kind: proto.ReportBootEvent, Rack: "r1", Agent: "agent-a",
			Incarnation: "i1", Seq: 4, Time: t0.Add(time.Hour), Node: n1.UUID, Event: "kernel"}})
		if err != nil || !reflect.DeepEqual(ack.Acked, []string{"b1"}) {
			t.Fatalf("boot event report: got %+v, %v", ack, err)
		}
		if kv := parseKVOut(t, c.ok("node", "show", "n1")); kv["last_boot"] != "kernel at 2026-03-01T13:00:00Z by agent-a" || kv["ip"] != "10.0.0.3" {
			t.Errorf("node show n1 after a boot event: got last_boot %q ip %q", kv["last_boot"], kv["ip"])
		}
	})

	t.Run("node create --ip", func(t *testing.T) {
		if kv := parseKVOut(t, c.ok("node", "create", "--name", "n4", "--mac", "52:54:00:00:02:04", "--rack", "r1", "--ip", "10.0.0.60")); kv["ip"] != "10.0.0.60" {
			t.Errorf("node create --ip 10.0.0.60: got ip %q", kv["ip"])
		}
		wantContains(t, "create --ip in the pool", c.fail("node", "create", "--mac", "52:54:00:00:02:05", "--rack", "r1", "--ip", "10.0.0.100"),
			"inside the dynamic pool", "HTTP 400 invalid")
	})
}
