package proto

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func validReport() AgentReport {
	return AgentReport{ID: "r-1", Kind: ReportMACSeen, Rack: "r1", Agent: "agent-a", Incarnation: "0f3c9a", Seq: 1,
		Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), MAC: "52:54:00:00:00:01", Arch: "efi-x86_64", Interface: "eth0"}
}

func TestAgentReportValidate(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	inv := func(mut func(*Inventory)) json.RawMessage {
		v := Inventory{Version: InventoryVersion, Interfaces: []Interface{{Name: "eth0", MAC: "52:54:00:00:00:01"}}}
		mut(&v)
		b, _ := json.Marshal(v)
		return b
	}
	for _, tc := range []struct {
		name string
		mut  func(*AgentReport)
		code Code   // "" = valid
		msg  string // a fragment naming the field
	}{
		{"valid", func(*AgentReport) {}, "", ""},
		{"valid inventory", func(r *AgentReport) { r.Kind, r.Step, r.Data = ReportCallback, StepInventory, inv(func(*Inventory) {}) }, "", ""},
		{"valid artifact event", func(r *AgentReport) { r.Kind, r.Event = ReportBootEvent, "artifact:ipxe.efi" }, "", ""},
		{"no id", func(r *AgentReport) { r.ID = "" }, CodeInvalid, "id is required"},
		{"1 MiB id", func(r *AgentReport) { r.ID = long(1 << 20) }, CodeTooLarge, "id: 1048576 bytes, at most 64"},
		{"id with a space", func(r *AgentReport) { r.ID = "a b" }, CodeInvalid, "id: byte 1 (0x20)"},
		{"unknown kind", func(r *AgentReport) { r.Kind = "teleport" }, CodeInvalid, `kind "teleport"`},
		{"no agent", func(r *AgentReport) { r.Agent = "" }, CodeInvalid, "agent is required"},
		{"long agent", func(r *AgentReport) { r.Agent = long(129) }, CodeTooLarge, "agent: 129 bytes, at most 128"},
		{"no incarnation", func(r *AgentReport) { r.Incarnation = "" }, CodeInvalid, "incarnation is required"},
		{"no seq", func(r *AgentReport) { r.Seq = 0 }, CodeInvalid, "seq is required"},
		{"no time", func(r *AgentReport) { r.Time = time.Time{} }, CodeInvalid, "time is required"},
		{"bad mac", func(r *AgentReport) { r.MAC = "zz" }, CodeInvalid, `mac "zz"`},
		{"long arch", func(r *AgentReport) { r.Arch = long(65) }, CodeTooLarge, "arch: 65 bytes"},
		{"control in arch", func(r *AgentReport) { r.Arch = "a\x00" }, CodeInvalid, "arch: byte 1"},
		{"long interface", func(r *AgentReport) { r.Interface = long(65) }, CodeTooLarge, "interface: 65 bytes, at most 64"},
		{"bad giaddr", func(r *AgentReport) { r.Giaddr = "x" }, CodeInvalid, `giaddr "x"`},
		{"negative count", func(r *AgentReport) { r.Count = -1 }, CodeInvalid, "count -1"},
		{"long event", func(r *AgentReport) { r.Event = long(81) }, CodeTooLarge, "event: 81 bytes, at most 80"},
		{"event with spaces", func(r *AgentReport) { r.Event = "a b" }, CodeInvalid, `event "a b"`},
		{"unknown lease event", func(r *AgentReport) { r.LeaseEvent = "stolen" }, CodeInvalid, `lease_event "stolen"`},
		{"lease ip", func(r *AgentReport) { r.Lease = &Lease{IP: "ten"} }, CodeInvalid, `lease.ip "ten"`},
		{"power state", func(r *AgentReport) { r.PowerState = "maybe" }, CodeInvalid, `power_state "maybe"`},
		{"error kind without error", func(r *AgentReport) { r.ErrorKind = BMCErrAuth }, CodeInvalid, `error is required with error_kind "auth"`},
		{"console report without user", func(r *AgentReport) { r.Kind, r.Mode = ReportConsole, ConsoleInteractive }, CodeInvalid, "user and mode are required"},
		{"callback without step", func(r *AgentReport) { r.Kind = ReportCallback }, CodeInvalid, "step is required"},
		{"long step", func(r *AgentReport) { r.Kind, r.Step = ReportCallback, long(33) }, CodeTooLarge, "step: 33 bytes, at most 32"},
		{"data too big", func(r *AgentReport) {
			r.Kind, r.Step, r.Data = ReportCallback, "x", json.RawMessage(`"`+long(MaxCallbackBytes)+`"`)
		}, CodeTooLarge, "data: 196610 bytes, at most 196608"},
		{"data not JSON", func(r *AgentReport) { r.Kind, r.Step, r.Data = ReportCallback, "x", json.RawMessage(`{`) }, CodeInvalid, "data: not valid JSON"},
		{"inventory not one", func(r *AgentReport) { r.Kind, r.Step, r.Data = ReportCallback, StepInventory, json.RawMessage(`[]`) }, CodeInvalid, "data: not an inventory"},
		{"inventory over a limit", func(r *AgentReport) {
			r.Kind, r.Step, r.Data = ReportCallback, StepInventory, inv(func(v *Inventory) { v.Memory.DIMMs = make([]DIMM, MaxInvDIMMs+1) })
		}, CodeTooLarge, "data.memory.dimms: 513 entries, at most 512"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validReport()
			tc.mut(&r)
			err := r.Validate()
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Validate() = %v (code %s), want %s containing %q", err, CodeOf(err), tc.code, tc.msg)
			}
			if len(err.Error()) > 400 {
				t.Errorf("the error quotes the value whole: %d bytes", len(err.Error()))
			}
		})
	}
}

func TestInventoryValidate(t *testing.T) {
	long := strings.Repeat("s", MaxInvString+1)
	for _, tc := range []struct {
		name string
		mut  func(*Inventory)
		msg  string
	}{
		{"valid", func(*Inventory) {}, ""},
		{"a big real server", func(v *Inventory) {
			v.Interfaces = make([]Interface, 64)
			v.Disks = make([]Disk, 100)
			v.Memory.DIMMs = make([]DIMM, 48)
			v.PCI = make([]PCIDevice, 400)
			v.CPUs.Count, v.CPUs.Flags = 512, make([]string, 200)
		}, ""},
		{"interfaces", func(v *Inventory) { v.Interfaces = make([]Interface, MaxInvInterfaces+1) }, "interfaces: 257 entries, at most 256"},
		{"addresses", func(v *Inventory) { v.Interfaces[0].Addresses = make([]string, MaxInvAddresses+1) }, "interfaces[0].addresses: 65 entries"},
		{"disks", func(v *Inventory) { v.Disks = make([]Disk, MaxInvDisks+1) }, "disks: 1025 entries, at most 1024"},
		{"dimms", func(v *Inventory) { v.Memory.DIMMs = make([]DIMM, MaxInvDIMMs+1) }, "memory.dimms: 513 entries"},
		{"cpu flags", func(v *Inventory) { v.CPUs.Flags = make([]string, MaxInvCPUFlags+1) }, "cpus.flags: 1025 entries"},
		{"cpu count", func(v *Inventory) { v.CPUs.Count = MaxInvCPUs + 1 }, "cpus.count 65537"},
		{"serial", func(v *Inventory) { v.System.Serial = long }, "system.serial: 257 bytes, at most 256"},
		{"disk model", func(v *Inventory) { v.Disks = []Disk{{Model: long}} }, "disks[0].model: 257 bytes"},
		{"interface name", func(v *Inventory) { v.Interfaces[0].Name = strings.Repeat("e", 65) }, "interfaces[0].name: 65 bytes, at most 64"},
		{"interface mac", func(v *Inventory) { v.Interfaces[0].MAC = "nope" }, `interfaces[0].mac "nope"`},
		{"lldp", func(v *Inventory) { v.Interfaces[0].LLDP = &LLDP{PortID: long} }, "interfaces[0].lldp.port_id: 257 bytes"},
		{"not UTF-8", func(v *Inventory) { v.System.Vendor = "\xff" }, "system.vendor: not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Inventory{Version: InventoryVersion, Interfaces: []Interface{{Name: "eth0", MAC: "52:54:00:00:00:01"}}}
			tc.mut(&v)
			err := v.Validate()
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.msg)
			}
		})
	}
}

func TestCheckHostPort(t *testing.T) {
	for s, ok := range map[string]bool{
		"10.0.0.2:7481": true, "[fe80::1]:7481": true, "agent-1.example.com:443": true,
		"": false, "10.0.0.2": false, "10.0.0.2:0": false, "10.0.0.2:65536": false, ":7481": false,
		"a b:1": false, strings.Repeat("a", 300) + ":1": false,
	} {
		if err := CheckHostPort("mgmt", s); (err == nil) != ok {
			t.Errorf("CheckHostPort(%.40q) = %v, want ok=%v", s, err, ok)
		}
	}
}
