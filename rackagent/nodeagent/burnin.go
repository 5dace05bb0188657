package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/metalfleet/metalfleet/proto"
)

// Burn-in figures are measured with the monotonic wall clock (what the
// hardware did); how long each component runs is decided by the task's
// Clock (a fake one in tests).

// rate is n bytes over d in MB/s (10^6 bytes), rounded to 0.1.
func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/1e6/d.Seconds()*10) / 10
}

// burnTick is how often a timed burn-in checks its clock.
const burnTick = time.Second

// runFor waits until d has passed on the task's clock (or ctx ends),
// reporting progress on the way.
func (r *taskRunner) runFor(ctx context.Context, sc *stepCtx, d time.Duration, what func() string) error {
	start := r.clock.Now()
	for {
		elapsed := r.clock.Now().Sub(start)
		if elapsed >= d {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.clock.After(min(burnTick, d-elapsed)):
		}
		pct := int(100 * r.clock.Now().Sub(start) / d)
		if err := sc.progress(ctx, pct, "%s", what()); err != nil {
			return err
		}
	}
}

// cpuRounds is how many distinct inputs the CPU burn-in cycles through.
const cpuRounds = 16

// cpuOp is one unit of CPU work: a chain of SHA-256 over a fixed seed
// and the round, with a chain of floating-point arithmetic folded in.
// Its result depends on nothing else, so every core must get the same.
func cpuOp(round int) [32]byte {
	var h [32]byte
	binary.LittleEndian.PutUint64(h[:], uint64(round)+0x6d6574616c666c74)
	x := float64(round + 1)
	var b [40]byte
	for i := 0; i < 256; i++ {
		x = math.Mod(math.Sqrt(x*x+float64(i))*1.000123+math.Sin(x), 1e6)
		copy(b[:32], h[:])
		binary.LittleEndian.PutUint64(b[32:], math.Float64bits(x))
		h = sha256.Sum256(b[:])
	}
	return h
}

// cpuResult is the cpu burn-in's result.
type cpuResult struct {
	Status    string  `json:"status"`
	Cores     int     `json:"cores"`
	OpsPerSec float64 `json:"ops_per_sec"`
	Ops       int64   `json:"ops"`
	Errors    int64   `json:"errors"`
}

// burnCPU runs cpuOp on every core for the burn-in's duration, checking
// each result against the reference computed (twice) at the start.
func (r *taskRunner) burnCPU(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.Burnin
	if p == nil {
		return stepResult{err: errors.New("no burnin params")}
	}
	var ref [cpuRounds][32]byte
	for i := range ref {
		ref[i] = cpuOp(i)
		if cpuOp(i) != ref[i] {
			return stepResult{result: cpuResult{Status: "fail", Errors: 1}, err: errors.New("cpu: the reference computation gave two answers")}
		}
	}
	cores := runtime.NumCPU()
	var (
		ops, errs atomic.Int64
		stop      atomic.Bool
		wg        sync.WaitGroup
	)
	wallStart := time.Now()
	for w := 0; w < cores; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i++ {
				if cpuOp(i%cpuRounds) != ref[i%cpuRounds] {
					errs.Add(1)
				}
				ops.Add(1)
				if stop.Load() {
					return
				}
			}
		}()
	}
	err := r.runFor(ctx, sc, p.Duration, func() string {
		return fmt.Sprintf("cpu: %d cores, %d ops, %d errors", cores, ops.Load(), errs.Load())
	})
	stop.Store(true)
	wg.Wait()
	res := cpuResult{Cores: cores, Ops: ops.Load(), Errors: errs.Load()}
	res.OpsPerSec = math.Round(float64(res.Ops) / time.Since(wallStart).Seconds())
	sc.logf("cpu: %d cores, %d ops in %s, %d errors", cores, res.Ops, time.Since(wallStart).Round(time.Millisecond), res.Errors)
	if err == nil && res.Errors > 0 {
		err = fmt.Errorf("cpu: %d of %d computations gave a wrong result", res.Errors, res.Ops)
	}
	res.Status = statusOf(err)
	return stepResult{result: res, err: err}
}

// memChunk is the unit the memory burn-in allocates and checks (a
// variable for tests).
var memChunk int64 = 64 << 20

// memPatterns names the memory burn-in's patterns, in order.
var memPatterns = []string{"0x55", "0xaa", "walking-ones", "address"}

// memWord is pattern p's value for the word at index i of the region.
func memWord(p int, i uint64) uint64 {
	switch p {
	case 0:
		return 0x5555555555555555
	case 1:
		return 0xaaaaaaaaaaaaaaaa
	case 2:
		return 1 << (i % 64)
	}
	return i * 8 // the word's own byte offset in the region
}

// memFill writes pattern p to words (the region's words from base).
func memFill(words []uint64, p int, base uint64) {
	for i := range words {
		words[i] = memWord(p, base+uint64(i))
	}
}

// memCheck counts the words that do not hold pattern p.
func memCheck(words []uint64, p int, base uint64) int64 {
	var bad int64
	for i, w := range words {
		if w != memWord(p, base+uint64(i)) {
			bad++
		}
	}
	return bad
}

// memResult is the memory burn-in's result.
type memResult struct {
	Status   string  `json:"status"`
	Bytes    int64   `json:"bytes"`
	MBPerSec float64 `json:"mb_per_sec"`
	Passes   int     `json:"passes"`
	Errors   int64   `json:"errors"`
}

// burnMemory writes and verifies each pattern over MemoryPercent of the
// available memory, held in memChunk pieces, pass after pass until the
// duration has passed (at least one whole pass).
func (r *taskRunner) burnMemory(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.Burnin
	if p == nil {
		return stepResult{err: errors.New("no burnin params")}
	}
	avail, err := r.env.Machine.MemAvailable()
	if err != nil {
		return stepResult{result: memResult{Status: "fail"}, err: fmt.Errorf("memory: reading MemAvailable: %w", err)}
	}
	region := avail * int64(p.MemoryPercent) / 100 &^ 4095
	res := memResult{Bytes: region}
	sc.logf("memory: %d bytes available, testing %d%%: %d bytes", avail, p.MemoryPercent, region)
	if region == 0 {
		res.Status = "pass"
		sc.logf("memory: nothing to test")
		return stepResult{result: res}
	}
	var chunks [][]uint64
	for left := region; left > 0; left -= memChunk {
		n := min(left, memChunk)
		chunks = append(chunks, make([]uint64, n/8))
	}
	defer func() {
		chunks = nil
		debug.FreeOSMemory()
	}()
	bases := make([]uint64, len(chunks)) // each chunk's first word in the region
	for i := 1; i < len(chunks); i++ {
		bases[i] = bases[i-1] + uint64(len(chunks[i-1]))
	}
	// Each phase (write or verify one pattern over the region) runs on
	// every core, a chunk at a time.
	workers := min(runtime.NumCPU(), len(chunks))
	phase := func(pi int, verify bool) {
		var next atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ci := int(next.Add(1) - 1); ci < len(chunks) && ctx.Err() == nil; ci = int(next.Add(1) - 1) {
					if !verify {
						memFill(chunks[ci], pi, bases[ci])
					} else if bad := memCheck(chunks[ci], pi, bases[ci]); bad > 0 {
						mu.Lock()
						res.Errors += bad
						mu.Unlock()
						sc.logf("memory: pass %d pattern %s: %d bad words in chunk %d", res.Passes+1, memPatterns[pi], bad, ci)
					}
				}
			}()
		}
		wg.Wait()
	}
	start := r.clock.Now()
	wallStart := time.Now()
	var touched int64
	done := false
	for !done {
		for pi := range memPatterns {
			for _, verify := range []bool{false, true} {
				phase(pi, verify)
				if err := ctx.Err(); err != nil {
					return stepResult{result: res, err: err}
				}
				touched += region
				pct := int(100 * r.clock.Now().Sub(start) / p.Duration)
				if err := sc.progress(ctx, pct, "memory: pass %d, pattern %s, %d errors", res.Passes+1, memPatterns[pi], res.Errors); err != nil {
					return stepResult{result: res, err: err}
				}
			}
		}
		res.Passes++
		done = r.clock.Now().Sub(start) >= p.Duration
	}
	res.MBPerSec = rate(touched, time.Since(wallStart))
	sc.logf("memory: %d passes of %d patterns over %d bytes, %.1f MB/s, %d errors", res.Passes, len(memPatterns), region, res.MBPerSec, res.Errors)
	if res.Errors > 0 {
		err = fmt.Errorf("memory: %d words read back wrong", res.Errors)
	}
	res.Status = statusOf(err)
	return stepResult{result: res, err: err}
}

// diskBlock is the disk burn-in's transfer size and alignment.
const (
	diskBlock = 1 << 20
	diskAlign = 4096
	// diskMaxErrors stops a disk's pass after this many I/O errors.
	diskMaxErrors = 16
)

// alignedBuf returns n bytes aligned on diskAlign (for O_DIRECT).
func alignedBuf(n int) []byte {
	b := make([]byte, n+diskAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (diskAlign - 1))
	if off != 0 {
		off = diskAlign - off
	}
	return b[off : off+n : off+n]
}

// diskFigures is one disk's result.
type diskFigures struct {
	Name          string  `json:"name"`
	Serial        string  `json:"serial"`
	Bytes         int64   `json:"bytes"`
	ReadMBPerSec  float64 `json:"read_mb_per_sec"`
	WriteMBPerSec float64 `json:"write_mb_per_sec,omitempty"`
	Errors        int64   `json:"errors"`

	readBytes, writeBytes int64
	readTime, writeTime   time.Duration
}

// diskResult is the disk burn-in's result.
type diskResult struct {
	Status      string        `json:"status"`
	Destructive bool          `json:"destructive"`
	Passes      int           `json:"passes"`
	Disks       []diskFigures `json:"disks"`
}

// burnDisks reads DiskBytes from the start of every disk (not the lab
// tool's device, not md arrays) and, only when Destructive, writes a
// pattern there and reads it back, pass after pass until the duration
// has passed (at least one). LinuxMachine opens the disks with O_DIRECT,
// so the figures are the disk's, not the page cache's.
func (r *taskRunner) burnDisks(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.Burnin
	if p == nil {
		return stepResult{err: errors.New("no burnin params")}
	}
	inv, err := r.env.Machine.Inventory(ctx)
	if err != nil {
		return stepResult{result: diskResult{Status: "fail"}, err: fmt.Errorf("disk: collecting the inventory: %w", err)}
	}
	res := diskResult{Destructive: p.Destructive, Disks: []diskFigures{}}
	for _, d := range inv.Disks {
		if d.RAID != "" || d.Serial == proto.LabDeviceSerial || d.SizeBytes <= 0 {
			continue
		}
		res.Disks = append(res.Disks, diskFigures{Name: d.Name, Serial: d.Serial, Bytes: min(p.DiskBytes, d.SizeBytes) &^ (diskAlign - 1)})
	}
	var total int64
	for _, f := range res.Disks {
		total += f.Bytes
	}
	if p.Destructive {
		total *= 3
	}
	sc.logf("disk: %d disks, %d bytes each at most, destructive=%t", len(res.Disks), p.DiskBytes, p.Destructive)
	start := r.clock.Now()
	buf, want := alignedBuf(diskBlock), alignedBuf(diskBlock)
	var moved int64
	progress := func(n int64) error {
		moved += n
		pct := 0
		if total > 0 {
			pct = int(100 * moved / (total * int64(res.Passes+1)))
		}
		return sc.progress(ctx, pct, "disk: pass %d, %d bytes", res.Passes+1, moved)
	}
	for {
		for i := range res.Disks {
			if err := r.diskPass(ctx, sc, &res.Disks[i], p.Destructive, res.Passes, buf, want, progress); err != nil {
				return stepResult{result: res, err: err}
			}
		}
		res.Passes++
		if r.clock.Now().Sub(start) >= p.Duration {
			break
		}
	}
	var errs int64
	for i := range res.Disks {
		f := &res.Disks[i]
		f.ReadMBPerSec, f.WriteMBPerSec = rate(f.readBytes, f.readTime), rate(f.writeBytes, f.writeTime)
		errs += f.Errors
		sc.logf("disk %s (%s): read %.1f MB/s, write %.1f MB/s, %d errors", f.Name, f.Serial, f.ReadMBPerSec, f.WriteMBPerSec, f.Errors)
	}
	if errs > 0 {
		err = fmt.Errorf("disk: %d errors", errs)
	}
	res.Status = statusOf(err)
	return stepResult{result: res, err: err}
}

// diskPass reads f's region once and, when destructive, writes it with
// a pattern of this pass and reads it back.
func (r *taskRunner) diskPass(ctx context.Context, sc *stepCtx, f *diskFigures, destructive bool, pass int, buf, want []byte, progress func(int64) error) error {
	if f.Bytes == 0 {
		return nil
	}
	dev, err := r.env.Machine.OpenDisk(f.Name, destructive)
	if err != nil {
		f.Errors++
		sc.logf("disk %s: open: %v", f.Name, err)
		return nil
	}
	defer dev.Close()
	errs := 0
	var stopErr error // ctx ended, or a progress report was refused
	each := func(op string, fn func(off int64, b []byte) error) {
		for off := int64(0); off < f.Bytes && errs < diskMaxErrors && stopErr == nil; off += diskBlock {
			b := buf[:min(diskBlock, f.Bytes-off)]
			if err := fn(off, b); err != nil {
				errs++
				f.Errors++
				sc.logf("disk %s: %s at %d: %v", f.Name, op, off, err)
			}
			if stopErr = ctx.Err(); stopErr == nil {
				stopErr = progress(int64(len(b)))
			}
		}
	}
	t := time.Now()
	each("read", func(off int64, b []byte) error { _, err := dev.ReadAt(b, off); return err })
	f.readTime += time.Since(t)
	f.readBytes += f.Bytes
	if !destructive || stopErr != nil {
		return stopErr
	}
	seed := uint64(pass+1) << 48
	t = time.Now()
	each("write", func(off int64, b []byte) error {
		diskPattern(b, seed, off)
		_, err := dev.WriteAt(b, off)
		return err
	})
	if err := dev.Sync(); err != nil {
		f.Errors++
		sc.logf("disk %s: sync: %v", f.Name, err)
	}
	f.writeTime += time.Since(t)
	f.writeBytes += f.Bytes
	each("verify", func(off int64, b []byte) error {
		if _, err := dev.ReadAt(b, off); err != nil {
			return err
		}
		w := want[:len(b)]
		diskPattern(w, seed, off)
		if string(w) != string(b) {
			return errors.New("read back differs from what was written")
		}
		return nil
	})
	return stopErr
}

// diskPattern fills b with each 8-byte word's offset on the disk, xored
// with the pass's seed.
func diskPattern(b []byte, seed uint64, off int64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seed^uint64(off+int64(i)))
	}
}
