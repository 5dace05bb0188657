package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/metalfleet/metalfleet/proto"
)

// MaxFirmwareImage bounds a firmware image download when the plan does
// not give its size.
const MaxFirmwareImage = 1 << 30

// firmwareResult is the result of each firmware step.
type firmwareResult struct {
	Component     string `json:"component"`
	Image         string `json:"image"`
	SHA256        string `json:"sha256,omitempty"`
	Size          int64  `json:"size,omitempty"`
	VersionBefore string `json:"version_before,omitempty"`
	VersionAfter  string `json:"version_after,omitempty"`
}

var unsafeFileChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// imagePath is where the image is kept between the steps.
func (r *taskRunner) imagePath(name string) string {
	return filepath.Join(r.env.TempDir, "metalfleet-firmware-"+r.plan.ID+"-"+unsafeFileChars.ReplaceAllString(name, "_"))
}

// firmwareArtifact returns the plan's artifact of the image to apply.
func (r *taskRunner) firmwareArtifact() (*proto.FirmwareParams, proto.Artifact, error) {
	p := r.params.Firmware
	if p == nil {
		return nil, proto.Artifact{}, errors.New("no firmware params")
	}
	a, err := r.planArtifact(p.Image)
	return p, a, err
}

// planArtifact returns the plan's artifact of the named image, its URL
// set and its sha256 well formed.
func (r *taskRunner) planArtifact(image string) (proto.Artifact, error) {
	a, ok := r.plan.Artifacts[image]
	if !ok || a.URL == "" {
		return a, fmt.Errorf("image %q is not among the plan's artifacts", image)
	}
	if _, err := hex.DecodeString(a.SHA256); err != nil || len(a.SHA256) != 64 {
		return a, fmt.Errorf("image %q: sha256 %q is not 64 hex digits", image, a.SHA256)
	}
	return a, nil
}

// firmwareDownload fetches the image through the agent's cache, checks
// its sha256 and reads the component's version before.
func (r *taskRunner) firmwareDownload(ctx context.Context, sc *stepCtx) stepResult {
	p, a, err := r.firmwareArtifact()
	if err != nil {
		return stepResult{err: err}
	}
	res := firmwareResult{Component: p.Component, Image: p.Image}
	tool, err := r.toolFor(ctx, "firmware", func(v *proto.VendorTool) *proto.ToolCommands { return v.Firmware })
	if err != nil {
		return stepResult{result: res, err: err}
	}
	n, err := r.download(ctx, sc, a, r.imagePath(p.Image))
	if err != nil {
		return stepResult{result: res, err: err}
	}
	res.SHA256, res.Size = strings.ToLower(a.SHA256), n
	v, err := r.firmwareVersion(ctx, sc, tool, p.Component)
	if err != nil {
		return stepResult{result: res, err: fmt.Errorf("reading the version before: %w", err)}
	}
	res.VersionBefore, r.versionBefore = v, v
	return stepResult{result: res}
}

// firmwareApply writes the image with the vendor tool (downloading it
// again when the ramdisk restarted since the download step).
func (r *taskRunner) firmwareApply(ctx context.Context, sc *stepCtx) stepResult {
	p, a, err := r.firmwareArtifact()
	if err != nil {
		return stepResult{err: err}
	}
	res := firmwareResult{Component: p.Component, Image: p.Image, SHA256: strings.ToLower(a.SHA256), VersionBefore: r.versionBefore}
	tool, err := r.toolFor(ctx, "firmware", func(v *proto.VendorTool) *proto.ToolCommands { return v.Firmware })
	if err != nil {
		return stepResult{result: res, err: err}
	}
	file := r.imagePath(p.Image)
	if sum, err := fileSHA256(file); err != nil || sum != strings.ToLower(a.SHA256) {
		sc.logf("the image is not here (the ramdisk restarted?): downloading it again")
		if _, err := r.download(ctx, sc, a, file); err != nil {
			return stepResult{result: res, err: err}
		}
	}
	_ = sc.progress(ctx, 10, "writing %s to %s", p.Image, p.Component)
	if _, err := r.runTool(ctx, sc, tool.Program, tool.Apply, map[string]string{"component": p.Component, "file": file}); err != nil {
		return stepResult{result: res, err: fmt.Errorf("applying: %w", err)}
	}
	return stepResult{result: res}
}

// firmwareVerify reads the component's version after.
func (r *taskRunner) firmwareVerify(ctx context.Context, sc *stepCtx) stepResult {
	p, a, err := r.firmwareArtifact()
	if err != nil {
		return stepResult{err: err}
	}
	res := firmwareResult{Component: p.Component, Image: p.Image, SHA256: strings.ToLower(a.SHA256), VersionBefore: r.versionBefore}
	tool, err := r.toolFor(ctx, "firmware", func(v *proto.VendorTool) *proto.ToolCommands { return v.Firmware })
	if err != nil {
		return stepResult{result: res, err: err}
	}
	v, err := r.firmwareVersion(ctx, sc, tool, p.Component)
	if err != nil {
		return stepResult{result: res, err: fmt.Errorf("reading the version after: %w", err)}
	}
	res.VersionAfter = v
	_ = os.Remove(r.imagePath(p.Image))
	return stepResult{result: res}
}

// firmwareVersion runs the Version command: its first line.
func (r *taskRunner) firmwareVersion(ctx context.Context, sc *stepCtx, tool *proto.ToolCommands, component string) (string, error) {
	out, err := r.runTool(ctx, sc, tool.Program, tool.Version, map[string]string{"component": component})
	if err != nil {
		return "", err
	}
	v, _, _ := strings.Cut(strings.TrimSpace(string(out.Stdout)), "\n")
	v = strings.TrimSpace(v)
	if v == "" {
		return "", fmt.Errorf("%s printed no version", tool.Program)
	}
	return truncate(v, 128), nil
}

// download streams an artifact to file, checking its sha256 on the way;
// it retries temporary failures.
func (r *taskRunner) download(ctx context.Context, sc *stepCtx, a proto.Artifact, file string) (int64, error) {
	limit := int64(MaxFirmwareImage)
	if a.Size > 0 {
		limit = a.Size
	}
	var (
		n          int64
		mismatches int
	)
	err := r.retry(ctx, "GET "+a.URL, func(ctx context.Context) error {
		var err error
		n, err = r.downloadOnce(ctx, sc, a, file, limit)
		var bad *checksumError
		if errors.As(err, &bad) {
			// One bad copy may be one bad transfer; three are the image.
			if mismatches++; mismatches >= 3 {
				return &StatusError{Status: http.StatusUnprocessableEntity, Body: fmt.Sprintf("%v (%d downloads)", err, mismatches)}
			}
			sc.logf("download %d: %v; again", mismatches, err)
		}
		return err
	})
	if err != nil {
		_ = os.Remove(file)
		return 0, err
	}
	sc.logf("downloaded %s: %d bytes, sha256 %s", a.URL, n, strings.ToLower(a.SHA256))
	return n, nil
}

func (r *taskRunner) downloadOnce(ctx context.Context, sc *stepCtx, a proto.Artifact, file string, limit int64) (int64, error) {
	req, err := r.request(ctx, http.MethodGet, a.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError(resp)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".download-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	pw := &progressWriter{ctx: ctx, sc: sc, total: resp.ContentLength, what: "downloading"}
	n, err := io.Copy(io.MultiWriter(tmp, h, pw), io.LimitReader(resp.Body, limit+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, err
	}
	if n > limit {
		return n, &StatusError{Status: http.StatusUnprocessableEntity, Body: fmt.Sprintf("the image is over %d bytes", limit)}
	}
	if a.Size > 0 && n != a.Size {
		return n, fmt.Errorf("the image is %d bytes, want %d", n, a.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(a.SHA256) {
		return n, &checksumError{got: got, want: strings.ToLower(a.SHA256)}
	}
	return n, os.Rename(tmp.Name(), file)
}

// checksumError is an image whose sha256 is not the artifact's.
type checksumError struct{ got, want string }

func (e *checksumError) Error() string {
	return fmt.Sprintf("sha256 mismatch: got %s, want %s", e.got, e.want)
}

// progressWriter reports a transfer's progress.
type progressWriter struct {
	ctx      context.Context
	sc       *stepCtx
	n, total int64
	what     string
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	pct := 0
	if p.total > 0 {
		pct = int(p.n * 100 / p.total)
	}
	if err := p.sc.progress(p.ctx, pct, "%s: %d bytes", p.what, p.n); err != nil {
		return 0, err
	}
	return len(b), nil
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// biosFile is where the settings to apply are written.
func (r *taskRunner) biosFile() string {
	return filepath.Join(r.env.TempDir, "metalfleet-bios-"+r.plan.ID+".json")
}

// biosApply writes the asked settings to a JSON file and runs Set.
func (r *taskRunner) biosApply(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.BIOS
	if p == nil {
		return stepResult{err: errors.New("no bios params")}
	}
	res := map[string]any{"settings": p.Settings}
	tool, err := r.toolFor(ctx, "BIOS", func(v *proto.VendorTool) *proto.ToolCommands { return v.BIOS })
	if err != nil {
		return stepResult{result: res, err: err}
	}
	raw, _ := json.MarshalIndent(p.Settings, "", "  ")
	file := r.biosFile()
	if err := os.WriteFile(file, append(raw, '\n'), 0o600); err != nil {
		return stepResult{result: res, err: err}
	}
	defer os.Remove(file)
	if _, err := r.runTool(ctx, sc, tool.Program, tool.Set, map[string]string{"file": file}); err != nil {
		return stepResult{result: res, err: fmt.Errorf("setting: %w", err)}
	}
	return stepResult{result: res}
}

// biosVerify runs Get and compares every asked setting.
func (r *taskRunner) biosVerify(ctx context.Context, sc *stepCtx) stepResult {
	p := r.params.BIOS
	if p == nil {
		return stepResult{err: errors.New("no bios params")}
	}
	tool, err := r.toolFor(ctx, "BIOS", func(v *proto.VendorTool) *proto.ToolCommands { return v.BIOS })
	if err != nil {
		return stepResult{err: err}
	}
	out, err := r.runTool(ctx, sc, tool.Program, tool.Get, nil)
	if err != nil {
		return stepResult{err: fmt.Errorf("reading back: %w", err)}
	}
	var got map[string]any
	if err := json.Unmarshal(out.Stdout, &got); err != nil || got == nil {
		return stepResult{err: fmt.Errorf("%s printed no JSON object of settings: %v", tool.Program, err)}
	}
	read := map[string]string{}
	var bad []string
	for _, k := range slices.Sorted(maps.Keys(p.Settings)) {
		want := p.Settings[k]
		v, ok := got[k]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s: asked %q, not read back", k, want))
			continue
		}
		s := fmt.Sprint(v)
		read[k] = s
		if s != want {
			bad = append(bad, fmt.Sprintf("%s: asked %q, read %q", k, want, s))
		}
	}
	res := map[string]any{"settings": read, "asked": p.Settings, "matched": len(p.Settings) - len(bad)}
	if len(bad) > 0 {
		return stepResult{result: res, err: fmt.Errorf("%d of %d settings differ: %s", len(bad), len(p.Settings), strings.Join(bad, "; "))}
	}
	return stepResult{result: res}
}
