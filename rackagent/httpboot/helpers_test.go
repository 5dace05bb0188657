package httpboot

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// testLogger routes logs to t.Log until the test ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// upstream is an image server: it serves files by path and counts hits.
// A request waits while gate is closed (see hold).
type upstream struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]int
	gate  chan struct{} // nil: open
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{files: map[string][]byte{}, hits: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hits[r.URL.Path]++
		gate := u.gate
		u.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		u.mu.Lock()
		b, ok := u.files[r.URL.Path]
		u.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(b)))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) put(path string, b []byte) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.files[path] = b
	return u.URL + path
}

func (u *upstream) hitCount(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[path]
}

// hold makes requests wait until the returned func is called.
func (u *upstream) hold() (release func()) {
	g := make(chan struct{})
	u.mu.Lock()
	u.gate = g
	u.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			u.gate = nil
			u.mu.Unlock()
			close(g)
		})
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// content is n deterministic bytes distinct for each seed.
func content(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// harness is a Server on loopback with fakes and a real cache.
type harness struct {
	t        *testing.T
	backend  *fakeBackend
	reporter *fakeReporter
	clock    *fakeClock
	cache    *Cache
	dir      string
	srv      *Server
	ts       *httptest.Server
	up       *upstream
}

func newHarness(t *testing.T, maxBytes int64, opts ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, backend: newFakeBackend(), reporter: &fakeReporter{}, clock: newFakeClock(), dir: t.TempDir(), up: newUpstream(t)}
	log := testLogger(t)
	var err error
	h.cache, err = NewCache(CacheConfig{Dir: h.dir, MaxBytes: maxBytes, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Backend: h.backend, Reporter: h.reporter, Cache: h.cache, BaseURL: testBase, Logger: log, Now: h.clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	h.srv = New(cfg)
	h.ts = httptest.NewServer(h.srv.Handler())
	t.Cleanup(h.ts.Close)
	return h
}

// do sends a request and returns status, body and headers.
func (h *harness) do(method, path string, hdr map[string]string, body io.Reader) (int, string, http.Header) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.ts.URL+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// artifact puts b on the upstream and returns its artifact, known to the
// backend.
func (h *harness) artifact(name string, b []byte) proto.Artifact {
	a := proto.Artifact{Name: name, URL: h.up.put("/"+name, b), SHA256: sum(b), Size: int64(len(b))}
	h.backend.addArtifact(a)
	return a
}

// dirFiles lists the names in the cache directory.
func dirFiles(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, de := range des {
		info, err := de.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size()
	}
	return n
}
