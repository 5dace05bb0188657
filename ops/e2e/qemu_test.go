//go:build linux

package e2e

// The VM: QEMU under TCG on the lab's tap, and a watcher of its serial
// console.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/ops/netlab"
)

// OVMF (Debian package ovmf) for the UEFI variant.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// vmDisk is a virtio-blk disk: a sparse raw file of Size bytes.
type vmDisk struct {
	Serial string
	Size   int64
}

// vmSpec is the VM's hardware identity, so the inventory can be checked
// exactly.
type vmSpec struct {
	MAC          string
	UUID         string
	Manufacturer string
	Product      string
	Serial       string
	MemMiB       int
	CPUs         int
	Disks        []vmDisk
	UEFI         bool
	// DiskBoot: behind the virtual BMC, the default boot device boots
	// the VM's disks (bootindex in their order), not the installed OS's
	// kernel and initrd (an instance's image written to a disk).
	DiskBoot bool
}

// vm is one power-on of the VM: the QEMU process and its console.
type vm struct {
	*netlab.Proc
	PowerOn    time.Time
	Serial     string // console log
	console    *consoleWatch
	initrdDone string // console marker (a regexp): the initrd is fetched
}

// bootVM starts QEMU (power-on) in the lab's namespace: BIOS (SeaBIOS)
// or UEFI (OVMF), network boot only (the NIC's own iPXE ROM: romfile
// unset) from the tap, the console on a serial log. -no-reboot: a reboot
// ends QEMU, like the ramdisk's power-off. The disks' files and the UEFI
// variables are made on the first boot and kept for the next.
func (l *lab) bootVM(s vmSpec, n int) *vm {
	t := l.t
	t.Helper()
	sercon := filepath.Join(l.dir, "sercon-port.bin")
	// SeaBIOS and iPXE print to the serial port (0x3f8) too when told
	// its port in fw_cfg etc/sercon-port: with -vga none they would
	// print nowhere else.
	if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(l.dir, fmt.Sprintf("serial-%d.log", n))
	args := []string{"qemu-system-x86_64",
		"-name", "mf-e2e,process=mf-e2e-vm",
		"-accel", "tcg", "-machine", "pc", "-smp", fmt.Sprint(s.CPUs), "-m", fmt.Sprint(s.MemMiB),
		"-display", "none", "-vga", "none", "-monitor", "none", "-no-reboot",
		"-fw_cfg", "name=etc/sercon-port,file=" + sercon,
		"-chardev", "file,id=ser0,path=" + serial, "-serial", "chardev:ser0",
		"-smbios", fmt.Sprintf("type=1,manufacturer=%s,product=%s,serial=%s,uuid=%s", s.Manufacturer, s.Product, s.Serial, s.UUID),
	}
	if s.UEFI {
		vars := filepath.Join(l.dir, "OVMF_VARS.fd")
		if _, err := os.Stat(vars); err != nil {
			b, err := os.ReadFile(ovmfVars)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(vars, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	for i, d := range s.Disks {
		f := filepath.Join(l.dir, fmt.Sprintf("disk%d.img", i+1))
		if _, err := os.Stat(f); err != nil {
			fh, err := os.Create(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := fh.Truncate(d.Size); err != nil { // sparse
				t.Fatal(err)
			}
			fh.Close()
		}
		args = append(args,
			"-drive", fmt.Sprintf("if=none,id=d%d,file=%s,format=raw", i+1, f),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d,serial=%s", i+1, d.Serial))
	}
	args = append(args,
		"-netdev", "tap,id=n0,ifname="+tapName+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+s.MAC+",bootindex=1",
		"-boot", "strict=on")
	v := &vm{Serial: serial}
	// iPXE prints "URL... ok" once a download is done, with a progress
	// count between the two if it takes a while. The "k" is often lost:
	// iPXE starts Linux, which resets the UART, before it is sent.
	v.initrdDone = regexp.QuoteMeta(l.images.RamdiskSHA) + `\.\.\.[ 0-9%.]*o`
	v.console = watchConsole(serial, append([]string{v.initrdDone}, consoleMarkers...))
	t.Cleanup(v.console.stop)
	v.PowerOn = time.Now()
	v.Proc = netlab.Start(t, fmt.Sprintf("qemu#%d", n), l.NS, filepath.Join(l.dir, fmt.Sprintf("qemu-%d.log", n)), args...)
	return v
}

// consoleWatch notes when marker strings first show on the console: the
// VM's own view of the boot's phases, to within the 50 ms poll.
type consoleWatch struct {
	path string
	mu   sync.Mutex
	seen map[string]time.Time
	quit chan struct{}
	once sync.Once
	done chan struct{}
}

// consoleMarkers are the console lines whose times the test reports:
// regular expressions.
var consoleMarkers = []string{
	markCfgStart,
	markCfgDone,
	markInit,
}

const (
	markCfgStart = `Configuring \(net0`                 // iPXE: DHCP and IPv6 autoconfiguration started
	markCfgDone  = `Filename: `                         // iPXE: configuration done
	markInit     = `msg="mounted /proc /sys /dev /run"` // the ramdisk's /init (nodeagent) runs
)

func watchConsole(path string, markers []string) *consoleWatch {
	return watchConsoleFrom(path, 0, markers)
}

// watchConsoleFrom is watchConsole of what the log holds past its first
// from bytes (a log that each power-on appends to).
func watchConsoleFrom(path string, from int64, markers []string) *consoleWatch {
	w := &consoleWatch{path: path, seen: map[string]time.Time{}, quit: make(chan struct{}), done: make(chan struct{})}
	res := make([]*regexp.Regexp, len(markers))
	for i, m := range markers {
		res[i] = regexp.MustCompile(m)
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			b, _ := readFrom(path, from)
			// Lines joined: the firmware wraps long lines (with cursor
			// moves under SeaBIOS's serial console).
			text := strings.ReplaceAll(cleanConsole(b), "\n", "")
			now := time.Now()
			w.mu.Lock()
			for i, m := range markers {
				if _, ok := w.seen[m]; !ok && res[i].MatchString(text) {
					w.seen[m] = now
				}
			}
			w.mu.Unlock()
			select {
			case <-w.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// readFrom reads a file past its first from bytes.
func readFrom(path string, from int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

func (w *consoleWatch) stop() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

// at is when marker first showed (zero: not yet).
func (w *consoleWatch) at(marker string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[marker]
}

// consoleText is the console log with terminal escapes and carriage
// returns taken out, for reading in a test log.
func consoleText(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(cleanConsole(b), "\n"), "\n")
	kept := ls[:0]
	for _, l := range ls {
		if strings.TrimSpace(l) != "" {
			kept = append(kept, strings.TrimRight(l, " "))
		}
	}
	if len(kept) > lines {
		kept = kept[len(kept)-lines:]
	}
	return strings.Join(kept, "\n")
}

// cleanConsole drops terminal escape sequences, carriage returns and
// other control characters but newlines and tabs.
func cleanConsole(b []byte) string {
	var out strings.Builder
	s := string(b)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b: // ESC [ ... letter
			j := i + 1
			if j < len(s) && s[j] == '[' {
				j++
				for j < len(s) && !(s[j] >= '@' && s[j] <= '~') {
					j++
				}
			}
			i = j
		case c == '\r':
		case c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f):
			out.WriteByte(c)
		}
	}
	return out.String()
}
