package nodeagent

import (
	"bufio"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// readMemory reads the RAM the kernel sees (MemTotal) and the DIMMs of
// the SMBIOS table, when readable.
func readMemory(fs sysfs, log *slog.Logger) (proto.Memory, error) {
	text, err := fs.read("proc/meminfo")
	if err != nil {
		return proto.Memory{}, fmt.Errorf("%w: %v", errNotLinux, err)
	}
	total, err := memTotal(text)
	if err != nil {
		return proto.Memory{}, err
	}
	m := proto.Memory{TotalBytes: total, DIMMs: readDIMMs(fs, log)}
	for _, d := range m.DIMMs {
		m.PhysicalBytes += d.SizeBytes
	}
	return m, nil
}

// memTotal returns /proc/meminfo's MemTotal in bytes.
func memTotal(meminfo string) (int64, error) {
	sc := bufio.NewScanner(strings.NewReader(meminfo))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "MemTotal:" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo: MemTotal %q: %w", f[1], err)
		}
		if len(f) > 2 && f[2] != "kB" {
			return 0, fmt.Errorf("meminfo: MemTotal in %q, want kB", f[2])
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("meminfo: no MemTotal")
}
