package nodeagent

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/metalfleet/metalfleet/proto"
)

// A deploy's write step (proto.StepNameWrite) streams the image from the
// rack agent's artifact cache to the root disk and reads it back:
//
//   - the root disk is chosen from a fresh inventory (chooseRootDisk):
//     the root-device hint's disk, else the smallest disk that fits;
//   - the image's format is told by its first bytes: raw, gzip or zstd
//     (a compressed raw image); qcow2, xz and bzip2 are refused, naming
//     the format;
//   - a reader goroutine fetches and decompresses into deployBuffers
//     aligned buffers of deployBlock bytes, hashing the bytes as fetched
//     (the artifact's sha256, checked at the end); the step writes each
//     buffer at its offset with one aligned write (the Machine opens the
//     disk with O_DIRECT where it can), hashing the bytes written (sha256
//     and a CRC-32C per block);
//   - the disk's last MiB is zeroed before the image is written (no
//     backup GPT header of an earlier system survives past the image);
//   - after an fsync the step reads exactly those bytes back (O_DIRECT,
//     the page cache dropped) and compares the sha256; on a mismatch the
//     per-block CRCs name the blocks that differ.
//
// A transfer cut or a corrupt copy is fetched and written again (up to
// deployMaxAttempts); a disk error or a refused image fails the step.

// Image formats (the result's "format").
const (
	FormatRaw  = "raw"
	FormatGzip = "gzip"
	FormatZstd = "zstd"
)

// deployBlock is the size of one disk write and read (a variable for
// tests).
var deployBlock = 4 << 20

const (
	// deployBuffers bounds the memory of a deploy: the blocks being
	// fetched, queued and written.
	deployBuffers = 3
	// deployMaxAttempts bounds the fetches of one image (a cut transfer
	// or a bad copy is fetched again).
	deployMaxAttempts = 4
	// zstdMaxWindow bounds the zstd decoder's window (zstd --long=27).
	zstdMaxWindow = 128 << 20
)

// deployResult is the write step's result.
type deployResult struct {
	Image          string  `json:"image"`
	Disk           string  `json:"disk"`
	Serial         string  `json:"serial"`
	Format         string  `json:"format"`
	Bytes          int64   `json:"bytes"`
	SHA256         string  `json:"sha256"`
	WriteMBPerSec  float64 `json:"write_mb_per_sec"`
	VerifyMBPerSec float64 `json:"verify_mb_per_sec"`
}

// permanentError is a failure that fetching the image again cannot mend
// (a refused format, a disk error, an image too big for the disk).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(format string, args ...any) error {
	return &permanentError{fmt.Errorf(format, args...)}
}

// detectFormat tells an image's format from its first bytes.
func detectFormat(head []byte) (string, error) {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return FormatGzip, nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}),
		len(head) >= 4 && head[0]&0xf0 == 0x50 && bytes.Equal(head[1:4], []byte{0x2a, 0x4d, 0x18}): // a skippable frame first (pzstd)
		return FormatZstd, nil
	}
	if f := refusedFormat(head); f != "" {
		return "", fmt.Errorf("the image is %s", f)
	}
	return FormatRaw, nil
}

// refusedFormat names the formats told by their magic that are not
// written (an image in one is not raw: writing it would give a disk that
// does not boot).
func refusedFormat(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return "qcow2: not supported (convert it to raw with `qemu-img convert -O raw`, and compress it with gzip or zstd if you like)"
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz-compressed: not supported (use gzip or zstd)"
	case bytes.HasPrefix(head, []byte("BZh")) && len(head) >= 4 && head[3] >= '1' && head[3] <= '9':
		return "bzip2-compressed: not supported (use gzip or zstd)"
	case bytes.HasPrefix(head, []byte("KDMV")):
		return "VMDK: not supported (convert it to raw)"
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return "VHDX: not supported (convert it to raw)"
	}
	return ""
}

// diskLabel describes a disk for an error message.
func diskLabel(d proto.Disk) string {
	s := fmt.Sprintf("%s (%d bytes", d.Name, d.SizeBytes)
	if d.Serial != "" {
		s += ", serial " + d.Serial
	}
	if d.WWN != "" {
		s += ", wwn " + d.WWN
	}
	return s + ")"
}

// normWWN compares WWNs with or without 0x, in any case.
func normWWN(s string) string {
	return strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x")
}

// hintString is a root-device hint as the operator gave it.
func hintString(h *proto.RootDeviceHint) string {
	var parts []string
	if h.Name != "" {
		parts = append(parts, "name="+h.Name)
	}
	if h.Serial != "" {
		parts = append(parts, "serial="+h.Serial)
	}
	if h.WWN != "" {
		parts = append(parts, "wwn="+h.WWN)
	}
	if h.MinSizeGB > 0 {
		parts = append(parts, fmt.Sprintf("min_size_gb=%d", h.MinSizeGB))
	}
	if len(parts) == 0 {
		return "{} (empty)"
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// hintMatches says whether disk d has every field hint h gives.
// MinSizeGB counts GiB (2^30 bytes), as Ironic's size hint does.
func hintMatches(h *proto.RootDeviceHint, d proto.Disk) bool {
	if h.Name != "" && strings.TrimPrefix(h.Name, "/dev/") != d.Name {
		return false
	}
	if h.Serial != "" && !strings.EqualFold(strings.TrimSpace(h.Serial), d.Serial) {
		return false
	}
	if h.WWN != "" && normWWN(h.WWN) != normWWN(d.WWN) {
		return false
	}
	if h.MinSizeGB > 0 && d.SizeBytes>>30 < h.MinSizeGB { // not MinSizeGB<<30: it overflows
		return false
	}
	return true
}

// chooseRootDisk picks the disk to deploy to from inv: with a hint, the
// smallest disk that has every field it gives and holds need bytes;
// without, the smallest disk that holds need bytes (ties: by name). Never
// the lab tool's device, a software RAID array or one of its members.
func chooseRootDisk(inv *proto.Inventory, hint *proto.RootDeviceHint, need int64) (proto.Disk, error) {
	members := map[string]string{}
	for _, d := range inv.Disks {
		for _, m := range d.Members {
			// A member may be a partition (sda1, nvme0n1p2): its disk
			// holds the array too.
			members[m] = d.Name
			if disk := partitionDisk(inv, m); disk != "" {
				members[disk] = d.Name
			}
		}
	}
	var cands, all []string
	var fit []proto.Disk
	matched := 0
	for _, d := range inv.Disks {
		label := diskLabel(d)
		switch {
		case d.RAID != "":
			label += " [md array]"
		case d.Serial == proto.LabDeviceSerial:
			label += " [lab device]"
		case members[d.Name] != "":
			label += " [member of " + members[d.Name] + "]"
		case d.SizeBytes <= 0:
			label += " [no size]"
		}
		all = append(all, label)
		if d.RAID != "" || d.Serial == proto.LabDeviceSerial || members[d.Name] != "" || d.SizeBytes <= 0 {
			continue
		}
		if hint != nil && !hintMatches(hint, d) {
			continue
		}
		matched++
		cands = append(cands, diskLabel(d))
		if d.SizeBytes >= need {
			fit = append(fit, d)
		}
	}
	have := orNone(strings.Join(all, ", "))
	switch {
	case hint != nil && matched == 0:
		return proto.Disk{}, fmt.Errorf("no disk matches the root-device hint %s: disks here: %s", hintString(hint), have)
	case len(fit) == 0 && hint != nil:
		return proto.Disk{}, fmt.Errorf("the disks matching the root-device hint %s are smaller than the %d bytes needed: %s", hintString(hint), need, strings.Join(cands, ", "))
	case len(fit) == 0:
		return proto.Disk{}, fmt.Errorf("no disk of at least %d bytes: disks here: %s", need, have)
	}
	slices.SortStableFunc(fit, func(a, b proto.Disk) int {
		if a.SizeBytes != b.SizeBytes {
			return int(min(max(a.SizeBytes-b.SizeBytes, -1), 1))
		}
		return strings.Compare(a.Name, b.Name)
	})
	return fit[0], nil
}

// deployArtifact returns the plan's artifact of the image.
func (r *taskRunner) deployArtifact() (*proto.DeployParams, proto.Artifact, error) {
	p := r.params.Deploy
	if p == nil {
		return nil, proto.Artifact{}, errors.New("no deploy params")
	}
	a, err := r.planArtifact(p.Image)
	return p, a, err
}

// deployWrite is the write step.
func (r *taskRunner) deployWrite(ctx context.Context, sc *stepCtx) stepResult {
	p, a, err := r.deployArtifact()
	if err != nil {
		return stepResult{err: err}
	}
	w := &imageWriter{r: r, sc: sc, p: p, a: a, res: deployResult{Image: p.Image}}
	backoff := cmpOr(r.rep.InitialBackoff, DefaultInitialBackoff)
	for attempt := 1; ; attempt++ {
		err = w.writeOnce(ctx)
		if err == nil {
			break
		}
		var pe *permanentError
		if errors.As(err, &pe) || ctx.Err() != nil || attempt >= deployMaxAttempts {
			if attempt > 1 {
				err = fmt.Errorf("%w (attempt %d)", err, attempt)
			}
			return stepResult{result: w.res, err: err}
		}
		sc.logf("attempt %d: %v; fetching the image again", attempt, err)
		r.log.Warn("deploy: fetching the image again", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return stepResult{result: w.res, err: ctx.Err()}
		case <-r.clock.After(jitter(backoff)):
		}
		backoff = min(2*backoff, cmpOr(r.rep.MaxBackoff, DefaultMaxBackoff))
	}
	if err := w.verify(ctx); err != nil {
		return stepResult{result: w.res, err: err}
	}
	sc.logf("deployed %s (%s, %d bytes, sha256 %s) to %s (serial %q): write %.1f MB/s, read back %.1f MB/s",
		p.Image, w.res.Format, w.res.Bytes, w.res.SHA256, w.res.Disk, w.res.Serial, w.res.WriteMBPerSec, w.res.VerifyMBPerSec)
	return stepResult{result: w.res}
}

// imageWriter is one deploy's write and read-back.
type imageWriter struct {
	r   *taskRunner
	sc  *stepCtx
	p   *proto.DeployParams
	a   proto.Artifact
	res deployResult

	disk       *proto.Disk // chosen on the first attempt
	tailZeroed bool        // the disk's last MiB
	crcs       []uint32    // CRC-32C of each deployBlock written
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fetchReader hashes and counts the bytes as fetched.
type fetchReader struct {
	r io.Reader
	h hash.Hash
	n atomic.Int64
}

func (f *fetchReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 {
		f.h.Write(p[:n])
		f.n.Add(int64(n))
	}
	return n, err
}

// block is a filled buffer.
type block struct {
	buf []byte
	n   int
}

// writeOnce fetches the image and writes it to the disk once.
func (w *imageWriter) writeOnce(ctx context.Context) error {
	r, sc := w.r, w.sc
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := r.request(ctx, http.MethodGet, w.a.URL, nil)
	if err != nil {
		return &permanentError{err}
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		se := statusError(resp)
		if !se.Temporary() {
			return &permanentError{fmt.Errorf("GET %s: %w", w.a.URL, se)}
		}
		return fmt.Errorf("GET %s: %w", w.a.URL, se)
	}
	total := w.a.Size
	if total <= 0 {
		total = resp.ContentLength
	}
	var body io.Reader = resp.Body
	if w.a.Size > 0 {
		body = io.LimitReader(resp.Body, w.a.Size+1)
	}
	fr := &fetchReader{r: body, h: sha256.New()}
	br := bufio.NewReaderSize(fr, 64<<10)
	head, _ := br.Peek(zstd.HeaderMaxSize)
	if len(head) == 0 {
		return fmt.Errorf("image %q: the agent sent no bytes", w.p.Image)
	}
	format, err := detectFormat(head)
	if err != nil {
		return permanent("image %q: %v", w.p.Image, err)
	}
	w.res.Format = format
	var src io.Reader = br
	known := int64(0) // the image's size on disk, when known before writing
	switch format {
	case FormatRaw:
		known = total
	case FormatGzip:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("image %q: gzip: %w", w.p.Image, err)
		}
		defer gz.Close()
		src = gz
	case FormatZstd:
		var h zstd.Header
		if h.Decode(head) == nil && h.HasFCS && !h.Skippable {
			known = int64(h.FrameContentSize) // at least (more frames may follow)
		}
		zd, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return fmt.Errorf("image %q: zstd: %w", w.p.Image, err)
		}
		defer zd.Close()
		src = zd
	}
	if format != FormatRaw {
		inner := bufio.NewReaderSize(src, 64<<10)
		ih, err := inner.Peek(8)
		if len(ih) == 0 && err != nil {
			return fmt.Errorf("image %q: %s: %w", w.p.Image, format, err)
		}
		if f := refusedFormat(ih); f != "" {
			return permanent("image %q: a %s image whose content is %s", w.p.Image, format, f)
		}
		src = inner
	}

	if w.disk == nil {
		inv, err := r.env.Machine.Inventory(ctx)
		if err != nil {
			return permanent("collecting the inventory: %w", err)
		}
		need := max(w.p.MinBytes, known)
		d, err := chooseRootDisk(inv, w.p.RootDevice, need)
		if err != nil {
			return &permanentError{err}
		}
		w.disk = &d
		w.res.Disk, w.res.Serial = d.Name, d.Serial
		why := "the smallest disk that fits"
		if w.p.RootDevice != nil {
			why = "the root-device hint " + hintString(w.p.RootDevice)
		}
		sc.logf("root disk: %s, by %s (need %d bytes: min_bytes %d, image %d)", diskLabel(d), why, need, w.p.MinBytes, known)
	}
	sc.logf("writing %s image %q (%d bytes fetched, %s) to %s", format, w.p.Image, total, w.a.URL, w.disk.Name)
	dev, err := r.env.Machine.OpenDisk(w.disk.Name, true)
	if err != nil {
		return permanent("opening %s for writing: %w", w.disk.Name, err)
	}
	defer dev.Close()
	if !w.tailZeroed {
		// A backup GPT header left at the disk's end by an earlier
		// system would contradict the image's partition table: the last
		// MiB is zeroed first (the image overwrites it if it reaches it).
		end := w.disk.SizeBytes &^ (diskAlign - 1)
		from := max(0, end-cleanEdge)
		zeros := alignedBuf(cleanEdge)
		if err := zeroRange(dev, from, end-from, zeros); err != nil {
			return permanent("zeroing the last MiB of %s: %w", w.disk.Name, err)
		}
		w.tailZeroed = true
		sc.logf("zeroed the last %d bytes of %s (an old backup GPT header)", end-from, w.disk.Name)
	}

	// The reader: fetch, decompress, fill aligned buffers.
	free := make(chan []byte, deployBuffers)
	for range deployBuffers {
		free <- alignedBuf(deployBlock)
	}
	full := make(chan block, deployBuffers)
	readErr := make(chan error, 1)
	go func() {
		defer close(full)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				readErr <- ctx.Err()
				return
			}
			n, err := io.ReadFull(src, buf)
			if n > 0 {
				select {
				case full <- block{buf, n}:
				case <-ctx.Done():
					readErr <- ctx.Err()
					return
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				readErr <- nil
				return
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()

	// The writer: one aligned write per block, hashing what is written.
	var hw hash.Hash
	if format != FormatRaw {
		hw = sha256.New() // for raw the bytes written are the bytes fetched
	}
	w.crcs = w.crcs[:0]
	var off int64
	tail := alignedBuf(diskAlign)
	start := time.Now()
	var werr error
	for b := range full {
		if werr != nil {
			continue // drain: the reader ends on cancel
		}
		if off+int64(b.n) > w.disk.SizeBytes {
			werr = permanent("image %q is bigger than disk %s (%d bytes): over %d bytes already", w.p.Image, w.disk.Name, w.disk.SizeBytes, off+int64(b.n))
			cancel()
			continue
		}
		wlen := (b.n + diskAlign - 1) &^ (diskAlign - 1)
		if wlen != b.n {
			// The image's last bytes end inside a 4 KiB block: keep
			// what the disk has after them.
			at := off + int64(b.n&^(diskAlign-1))
			if _, err := dev.ReadAt(tail, at); err != nil && !errors.Is(err, io.EOF) {
				werr = permanent("reading %s at %d (the image's last block): %w", w.disk.Name, at, err)
				cancel()
				continue
			}
			copy(b.buf[b.n:wlen], tail[b.n%diskAlign:])
		}
		if hw != nil {
			hw.Write(b.buf[:b.n])
		}
		w.crcs = append(w.crcs, crc32.Checksum(b.buf[:b.n], castagnoli))
		if _, err := dev.WriteAt(b.buf[:wlen], off); err != nil {
			werr = permanent("writing %s at %d: %w", w.disk.Name, off, err)
			cancel()
			continue
		}
		off += int64(b.n)
		free <- b.buf
		fetched := fr.n.Load()
		pct := 0
		if total > 0 {
			pct = int(fetched * 90 / total)
		}
		if err := sc.progress(ctx, pct, "writing %s to %s: %d MiB, %.1f MB/s", w.p.Image, w.disk.Name, off>>20, rate(off, time.Since(start))); err != nil {
			werr = &permanentError{err}
			cancel()
		}
	}
	rerr := <-readErr
	if werr != nil {
		return werr
	}
	if rerr != nil {
		return fmt.Errorf("fetching %s image %q: %w", format, w.p.Image, rerr)
	}
	// The fetched-bytes hash covers everything the agent sent (a
	// decompressor may stop before the end of the stream).
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("fetching image %q: %w", w.p.Image, err)
	}
	if err := dev.Sync(); err != nil {
		return permanent("flushing %s: %w", w.disk.Name, err)
	}
	took := time.Since(start)
	n := fr.n.Load()
	if w.a.Size > 0 && n != w.a.Size {
		return fmt.Errorf("image %q: fetched %d bytes, want %d", w.p.Image, n, w.a.Size)
	}
	got := hex.EncodeToString(fr.h.Sum(nil))
	if want := strings.ToLower(w.a.SHA256); got != want {
		return &checksumError{got: got, want: want}
	}
	if off == 0 {
		return permanent("image %q is empty", w.p.Image)
	}
	w.res.Bytes = off
	if hw != nil {
		w.res.SHA256 = hex.EncodeToString(hw.Sum(nil))
	} else {
		w.res.SHA256 = got
	}
	w.res.WriteMBPerSec = rate(off, took)
	sc.logf("wrote %d bytes (%d fetched) to %s in %s: %.1f MB/s", off, n, w.disk.Name, took.Round(time.Millisecond), w.res.WriteMBPerSec)
	return nil
}

// maxNamedBlocks bounds the differing blocks a read-back failure names.
const maxNamedBlocks = 8

// verify reads back the bytes written and compares their sha256.
func (w *imageWriter) verify(ctx context.Context) error {
	r, sc := w.r, w.sc
	dev, err := r.env.Machine.OpenDisk(w.disk.Name, false)
	if err != nil {
		return fmt.Errorf("opening %s to read back: %w", w.disk.Name, err)
	}
	defer dev.Close()
	dropCache(dev)
	n := w.res.Bytes
	h := sha256.New()
	buf := alignedBuf(deployBlock)
	var bad []string
	nbad := 0
	start := time.Now()
	for i, off := 0, int64(0); off < n; i, off = i+1, off+int64(deployBlock) {
		k := int(min(int64(deployBlock), n-off))
		rlen := (k + diskAlign - 1) &^ (diskAlign - 1)
		if _, err := dev.ReadAt(buf[:rlen], off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading back %s at %d: %w", w.disk.Name, off, err)
		}
		h.Write(buf[:k])
		if i < len(w.crcs) && crc32.Checksum(buf[:k], castagnoli) != w.crcs[i] {
			if nbad++; nbad <= maxNamedBlocks {
				bad = append(bad, fmt.Sprintf("%d-%d", off, off+int64(k)))
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := sc.progress(ctx, 90+int(off*10/n), "reading back %s: %d of %d MiB", w.disk.Name, off>>20, n>>20); err != nil {
			return err
		}
	}
	took := time.Since(start)
	w.res.VerifyMBPerSec = rate(n, took)
	got := hex.EncodeToString(h.Sum(nil))
	if got != w.res.SHA256 {
		where := ""
		if nbad > 0 {
			where = fmt.Sprintf("; %d of %d blocks of %d bytes differ, at bytes %s", nbad, len(w.crcs), deployBlock, strings.Join(bad, ", "))
			if nbad > len(bad) {
				where += ", ..."
			}
		}
		return fmt.Errorf("read back from %s: sha256 %s, written %s%s", w.disk.Name, got, w.res.SHA256, where)
	}
	sc.logf("read back %d bytes from %s in %s: %.1f MB/s, sha256 matches", n, w.disk.Name, took.Round(time.Millisecond), w.res.VerifyMBPerSec)
	return nil
}

// partitionDisk is the disk of inv that partition name is on (sda for
// sda1, nvme0n1 for nvme0n1p2), or "".
func partitionDisk(inv *proto.Inventory, name string) string {
	for _, d := range inv.Disks {
		rest, ok := strings.CutPrefix(name, d.Name)
		if !ok || rest == "" || d.Name == name {
			continue
		}
		rest = strings.TrimPrefix(rest, "p")
		if rest != "" && strings.Trim(rest, "0123456789") == "" {
			return d.Name
		}
	}
	return ""
}
