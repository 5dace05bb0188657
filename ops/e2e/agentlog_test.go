//go:build linux

package e2e

// The rack agent's log (JSON lines, --log-level debug) read as the
// record of what the VM asked for: its DHCP exchanges, the boot script,
// the kernel and initrd fetches, the ramdisk's callback.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

type agentLine struct {
	Time     time.Time `json:"time"`
	Level    string    `json:"level"`
	Msg      string    `json:"msg"`
	MAC      string    `json:"mac"`
	Node     string    `json:"node"`
	Type     string    `json:"type"`
	Reply    string    `json:"reply"`
	YIAddr   string    `json:"yiaddr"`
	Artifact string    `json:"artifact"`
	Step     string    `json:"step"`
	Kind     string    `json:"kind"`
	Why      string    `json:"why"`
}

func readAgentLog(path string) []agentLine {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []agentLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l agentLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && !l.Time.IsZero() {
			out = append(out, l)
		}
	}
	return out
}

// bootRecord is one boot as the agent, the console and the coordinator
// saw it. Times are wall-clock; zero means not seen.
type bootRecord struct {
	PowerOn      time.Time
	ConsoleCfg   time.Time // iPXE's "Configuring (net0 ...)" (console)
	Discover     time.Time // first DHCPDISCOVER answered (the firmware's)
	Lease        time.Time // the firmware's DHCPACK
	LeaseIP      string
	ConsoleCfgOK time.Time // iPXE's "Configuring ... ok" done (console)
	Script       time.Time // boot script served
	ScriptKind   string
	Kernel       time.Time // kernel fetch started
	Initrd       time.Time // initrd fetch started (the kernel is in)
	Fetched      time.Time // initrd fetched (console)
	Init         time.Time // the ramdisk's /init runs (console)
	RamdiskLease time.Time // the ramdisk's DHCPACK
	RamdiskIP    string
	Callback     time.Time // inventory callback accepted
	Discovered   time.Time // the coordinator has the inventory (polled)
	PoweredOff   time.Time // QEMU exited
	Drops        []string  // DHCP requests of this MAC not answered, and why
}

// scan fills in the agent's side of a boot of mac (node: its uuid once
// known) from the agent's log lines since the power-on.
func (b *bootRecord) scan(lines []agentLine, mac, node string) {
	for _, l := range lines {
		if l.Time.Before(b.PowerOn) {
			continue
		}
		mine := strings.EqualFold(l.MAC, mac) || (node != "" && strings.EqualFold(l.Node, node))
		if !mine {
			continue
		}
		switch l.Msg {
		case "answered":
			switch {
			case l.Type == "DISCOVER" && b.Discover.IsZero():
				b.Discover = l.Time
			case l.Reply == "ACK" && b.Initrd.IsZero() && b.Lease.IsZero():
				b.Lease, b.LeaseIP = l.Time, l.YIAddr
			case l.Reply == "ACK" && !b.Initrd.IsZero() && b.RamdiskLease.IsZero():
				b.RamdiskLease, b.RamdiskIP = l.Time, l.YIAddr
			}
		case "no answer":
			if len(b.Drops) < 5 {
				b.Drops = append(b.Drops, fmt.Sprintf("%s %s: %s", l.Time.Format("15:04:05.000"), l.Type, l.Why))
			}
		case "served boot script":
			if b.Script.IsZero() {
				b.Script, b.ScriptKind = l.Time, l.Kind
			}
		case "node fetching artifact":
			switch {
			case l.Artifact == kernelImage && b.Kernel.IsZero():
				b.Kernel = l.Time
			case l.Artifact == ramdiskImage && b.Initrd.IsZero():
				b.Initrd = l.Time
			}
		case "callback accepted":
			if l.Step == "inventory" && b.Callback.IsZero() {
				b.Callback = l.Time
			}
		}
	}
}

// since formats t as seconds after the power-on.
func (b *bootRecord) since(t time.Time) string {
	if t.IsZero() {
		return "      -"
	}
	return fmt.Sprintf("%6.2fs", t.Sub(b.PowerOn).Seconds())
}

// logPhases logs the boot's phases: time since the power-on and since
// the previous phase.
func (b *bootRecord) logPhases(t *testing.T, title string) {
	t.Helper()
	phases := []struct {
		name string
		at   time.Time
	}{
		{"iPXE starts configuring the NIC (console)", b.ConsoleCfg},
		{"first DHCPDISCOVER (firmware)", b.Discover},
		{"DHCP lease " + b.LeaseIP + " (firmware)", b.Lease},
		{"iPXE done configuring: DHCP + IPv6 (console)", b.ConsoleCfgOK},
		{"boot script fetched (" + b.ScriptKind + ")", b.Script},
		{"kernel fetch started", b.Kernel},
		{"initrd fetch started (kernel fetched)", b.Initrd},
		{"initrd fetched (console)", b.Fetched},
		{"Linux up, nodeagent (/init) runs (console)", b.Init},
		{"ramdisk DHCP lease " + b.RamdiskIP, b.RamdiskLease},
		{"inventory callback accepted", b.Callback},
		{"node discovered (coordinator)", b.Discovered},
		{"VM powered off", b.PoweredOff},
	}
	var s strings.Builder
	fmt.Fprintf(&s, "%s: phases from VM power-on at %s (agent log times; console times polled, up to 50 ms late)\n",
		title, b.PowerOn.Format("15:04:05.000"))
	last := b.PowerOn
	for _, p := range phases {
		step := "       "
		if !p.at.IsZero() {
			step = fmt.Sprintf("%+6.2fs", p.at.Sub(last).Seconds())
			last = p.at
		}
		fmt.Fprintf(&s, "  %-48s %s  %s\n", p.name, b.since(p.at), step)
	}
	t.Log(strings.TrimRight(s.String(), "\n"))
}
