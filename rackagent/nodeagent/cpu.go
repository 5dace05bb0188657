package nodeagent

import (
	"bufio"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// cpuInfoProc is one processor block of /proc/cpuinfo.
type cpuInfoProc struct {
	ModelName  string
	PhysicalID string
	CoreID     string
	MHz        float64
	Flags      []string
	// Implementer and Part name an ARM core that has no model name.
	Implementer, Part string
}

// parseCPUInfo parses /proc/cpuinfo: one block per logical CPU, blocks
// separated by blank lines, "key<TAB>: value" lines. x86 names the flags
// "flags", ARM "Features".
func parseCPUInfo(text string) []cpuInfoProc {
	var (
		out []cpuInfoProc
		cur *cpuInfoProc
	)
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if key == "processor" {
			out = append(out, cpuInfoProc{})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil {
			continue // ARM's header lines before the first processor
		}
		switch key {
		case "model name":
			cur.ModelName = val
		case "physical id":
			cur.PhysicalID = val
		case "core id":
			cur.CoreID = val
		case "cpu MHz":
			cur.MHz, _ = strconv.ParseFloat(val, 64)
		case "flags", "Features":
			cur.Flags = strings.Fields(val)
		case "CPU implementer":
			cur.Implementer = val
		case "CPU part":
			cur.Part = val
		}
	}
	return out
}

// parseCPUList parses a kernel CPU list ("0-3,8-11", "0") into the count
// of CPUs it names.
func parseCPUList(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		n += b - a + 1
	}
	return n, nil
}

// readCPUs reads the processors: the count and model from /proc/cpuinfo,
// sockets and cores from the sysfs topology of each online CPU (or
// cpuinfo's physical and core ids), threads from the present CPUs, the
// frequency from cpufreq's maximum (or cpuinfo's current).
func readCPUs(fs sysfs, live bool) (proto.CPUs, error) {
	text, err := fs.read("proc/cpuinfo")
	if err != nil {
		return proto.CPUs{}, fmt.Errorf("%w: %v", errNotLinux, err)
	}
	procs := parseCPUInfo(text)
	c := proto.CPUs{Count: len(procs), Architecture: readArch(fs, live, procs)}
	if len(procs) > 0 {
		p := procs[0]
		c.Model, c.MHz, c.Flags = p.ModelName, p.MHz, p.Flags
		if c.Model == "" && p.Implementer != "" {
			c.Model = "ARM implementer " + p.Implementer + " part " + p.Part
		}
	}
	if c.Count == 0 {
		c.Count, _ = parseCPUList(fs.str("sys/devices/system/cpu/online"))
	}

	// Topology: sysfs first (every architecture), cpuinfo's ids else.
	sockets, cores := map[string]bool{}, map[string]bool{}
	for _, name := range fs.list("sys/devices/system/cpu") {
		if !strings.HasPrefix(name, "cpu") {
			continue
		}
		if _, err := strconv.Atoi(name[3:]); err != nil {
			continue
		}
		t := "sys/devices/system/cpu/" + name + "/topology/"
		pkg, err := fs.read(t + "physical_package_id")
		if err != nil {
			continue // offline
		}
		sockets[pkg] = true
		cores[pkg+"/"+fs.str(t+"core_id")] = true
	}
	if len(sockets) == 0 {
		for _, p := range procs {
			if p.PhysicalID != "" {
				sockets[p.PhysicalID] = true
				cores[p.PhysicalID+"/"+p.CoreID] = true
			}
		}
	}
	c.Sockets, c.Cores = len(sockets), len(cores)
	c.Threads, _ = parseCPUList(fs.str("sys/devices/system/cpu/present"))
	if c.Threads == 0 {
		c.Threads = c.Count
	}
	if khz, ok := fs.int64("sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"); ok && khz > 0 {
		c.MHz = float64(khz) / 1000
	}
	return c, nil
}

// readArch names the architecture as uname -m does: the kernel's
// /proc/sys/kernel/arch, uname on a live machine, else a guess from
// cpuinfo, else the architecture nodeagent was built for.
func readArch(fs sysfs, live bool, procs []cpuInfoProc) string {
	if a := fs.str("proc/sys/kernel/arch"); a != "" {
		return a
	}
	if live {
		if m := unameMachine(); m != "" {
			return m
		}
	}
	if len(procs) > 0 {
		p := procs[0]
		switch {
		case p.Implementer != "":
			return "aarch64"
		case hasFlag(p.Flags, "lm"):
			return "x86_64"
		}
	}
	return unameArch(runtime.GOARCH)
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// unameArch maps a GOARCH to uname -m's name.
func unameArch(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i686"
	}
	return goarch
}
