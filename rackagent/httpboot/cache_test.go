package httpboot

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

func TestArtifactServe(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.backend.addNode(ramdiskNode()) // testNodeID, aa:bb:cc:00:00:02
	data := content(1, 100_000)
	a := h.artifact("vmlinuz", data)
	path := "/artifacts/" + a.SHA256

	// Full body, reported once for the node.
	status, body, hdr := h.do("GET", path+"?node="+testNodeID, nil, nil)
	if status != 200 || body != string(data) {
		t.Fatalf("GET %s = %d, %d bytes; want 200 with the %d bytes", path, status, len(body), len(data))
	}
	if got := hdr.Get("Content-Length"); got != fmt.Sprint(len(data)) {
		t.Errorf("Content-Length = %q, want %d", got, len(data))
	}
	if hdr.Get("Last-Modified") == "" {
		t.Error("no Last-Modified")
	}
	if got := hdr.Get("ETag"); got != `"`+a.SHA256+`"` {
		t.Errorf("ETag = %q, want the quoted sha256", got)
	}

	tests := []struct {
		name   string
		method string
		query  string
		rng    string
		status int
		body   string
		report *proto.AgentReport
	}{
		{"range", "GET", "?node=" + testNodeID, "bytes=1000-1999", 206, string(data[1000:2000]), nil},
		{"suffix range", "GET", "", "bytes=-10", 206, string(data[len(data)-10:]), nil},
		{"range from zero reports", "GET", "?node=aa-bb-cc-00-00-02", "bytes=0-99", 206, string(data[:100]),
			&proto.AgentReport{Kind: proto.ReportBootEvent, Event: "artifact:vmlinuz", MAC: "aa:bb:cc:00:00:02", Node: testNodeID}},
		{"an unknown MAC, no report", "GET", "?node=aa-bb-cc-00-00-01", "", 200, string(data), nil},
		{"an unknown uuid, no report", "GET", "?node=11111111-2222-4333-8444-555555555555", "", 200, string(data), nil},
		{"full with uuid reports", "GET", "?node=" + strings.ToUpper(testNodeID), "", 200, string(data),
			&proto.AgentReport{Kind: proto.ReportBootEvent, Event: "artifact:vmlinuz", Node: testNodeID}},
		{"no node, no report", "GET", "", "", 200, string(data), nil},
		{"bad node, no report", "GET", "?node=bob", "", 200, string(data), nil},
		{"HEAD", "HEAD", "?node=" + testNodeID, "", 200, "", nil},
	}
	h.reporter.take()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.clock.Advance(time.Minute) // past BootEventEvery
			hdrs := map[string]string{}
			if tt.rng != "" {
				hdrs["Range"] = tt.rng
			}
			status, body, hdr := h.do(tt.method, path+tt.query, hdrs, nil)
			if status != tt.status || body != tt.body {
				t.Errorf("%s %s (Range %q) = %d, %d bytes; want %d, %d bytes", tt.method, path+tt.query, tt.rng, status, len(body), tt.status, len(tt.body))
			}
			if tt.method == "HEAD" && hdr.Get("Content-Length") != fmt.Sprint(len(data)) {
				t.Errorf("HEAD Content-Length = %q, want %d", hdr.Get("Content-Length"), len(data))
			}
			got := h.reporter.take()
			switch {
			case tt.report == nil && len(got) != 0:
				t.Errorf("reports = %+v, want none", got)
			case tt.report != nil:
				tt.report.Time = h.clock.Now()
				if len(got) != 1 || !equalReport(got[0], *tt.report) {
					t.Errorf("reports = %+v, want %+v", got, *tt.report)
				}
			}
		})
	}
	if n := h.up.hitCount("/vmlinuz"); n != 1 {
		t.Errorf("upstream fetched %d times, want 1", n)
	}

	for _, tt := range []struct {
		path   string
		status int
	}{
		{"/artifacts/" + strings.ToUpper(a.SHA256), 400},
		{"/artifacts/abc", 400},
		{"/artifacts/" + sum([]byte("unknown")), 404},
	} {
		if status, body, _ := h.do("GET", tt.path, nil, nil); status != tt.status {
			t.Errorf("GET %s = %d %.300q, want %d", tt.path, status, body, tt.status)
		}
	}
}

// TestArtifactChecksumMismatch: bytes that do not match the sha256 are
// never served nor kept; once the source is right, it works.
func TestArtifactChecksumMismatch(t *testing.T) {
	h := newHarness(t, 1<<20)
	good := content(2, 50_000)
	a := h.artifact("initrd", good)
	evil := content(3, 50_000)
	h.up.put("/initrd", evil)

	path := "/artifacts/" + a.SHA256 + "?node=" + testNodeID
	status, body, _ := h.do("GET", path, nil, nil)
	if status != http.StatusBadGateway {
		t.Errorf("GET with a bad source = %d, want 502", status)
	}
	for _, want := range []string{"expected sha256 " + a.SHA256, "got " + sum(evil)} {
		if !strings.Contains(body, want) {
			t.Errorf("GET with a bad source: body %.300q does not say %q", body, want)
		}
	}
	if strings.Contains(body, string(evil[:64])) {
		t.Error("the bad bytes were served")
	}
	if files := dirFiles(t, h.dir); len(files) != 0 {
		t.Errorf("cache dir holds %v after a mismatch, want nothing", files)
	}
	if got := h.reporter.take(); len(got) != 0 {
		t.Errorf("reports = %+v after a failed fetch, want none", got)
	}

	// A short source with a known size: refused too.
	h.up.put("/initrd", good[:40_000])
	if status, body, _ := h.do("GET", path, nil, nil); status != http.StatusBadGateway || !strings.Contains(body, "want 50000") {
		t.Errorf("GET with a short source = %d %.300q, want 502 naming the size", status, body)
	}

	// A long one: refused too.
	h.up.put("/initrd", append(append([]byte{}, good...), 'x'))
	if status, body, _ := h.do("GET", path, nil, nil); status != http.StatusBadGateway || !strings.Contains(body, "50000") {
		t.Errorf("GET with a long source = %d %.300q, want 502 naming the size", status, body)
	}

	h.up.put("/initrd", good)
	status, body, _ = h.do("GET", path, nil, nil)
	if status != 200 || body != string(good) {
		t.Errorf("GET after the source was fixed = %d, %d bytes; want 200 with the right bytes", status, len(body))
	}
	if files := dirFiles(t, h.dir); !slices.Equal(files, []string{a.SHA256}) {
		t.Errorf("cache dir = %v, want just %s", files, a.SHA256)
	}
}

func TestArtifactSourceErrors(t *testing.T) {
	h := newHarness(t, 1<<20)
	tests := []struct {
		name   string
		a      proto.Artifact
		status int
		want   string
	}{
		{"404 upstream", proto.Artifact{URL: h.up.URL + "/missing?sig=SECRET", SHA256: sum([]byte("x"))}, 502, "404 Not Found"},
		{"bad scheme", proto.Artifact{URL: "ftp://images/x", SHA256: sum([]byte("y"))}, 502, `scheme "ftp"`},
		{"missing file", proto.Artifact{URL: "file:///nonexistent/metalfleet/x", SHA256: sum([]byte("z"))}, 502, "no such file"},
		{"bigger than the cache", proto.Artifact{URL: h.up.URL + "/big", SHA256: sum([]byte("w")), Size: 2 << 20}, 500, "bigger than the cache"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.backend.addArtifact(tt.a)
			status, body, _ := h.do("GET", "/artifacts/"+tt.a.SHA256, nil, nil)
			if status != tt.status || !strings.Contains(body, tt.want) {
				t.Errorf("GET = %d %.300q, want %d with %q", status, body, tt.status, tt.want)
			}
			if strings.Contains(body, "SECRET") {
				t.Errorf("error %q shows the URL's query", body)
			}
			if files := dirFiles(t, h.dir); len(files) != 0 {
				t.Errorf("cache dir = %v, want empty", files)
			}
		})
	}
}

func newTestCache(t *testing.T, dir string, maxBytes int64) *Cache {
	t.Helper()
	c, err := NewCache(CacheConfig{Dir: dir, MaxBytes: maxBytes, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCacheFileURL(t *testing.T) {
	src := filepath.Join(t.TempDir(), "vmlinuz")
	data := content(4, 12345)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, t.TempDir(), 1<<20)
	for _, u := range []string{"file://" + src, "file://localhost" + src} {
		p, err := c.Ensure(context.Background(), proto.Artifact{URL: u, SHA256: sum(data)})
		if err != nil {
			t.Fatalf("Ensure(%s) = %v", u, err)
		}
		if got, _ := os.ReadFile(p); string(got) != string(data) {
			t.Errorf("Ensure(%s): the cached file differs from the source", u)
		}
	}
	// Wrong sha256 from a file: refused, nothing kept.
	wrong := sum([]byte("other"))
	if _, err := c.Ensure(context.Background(), proto.Artifact{URL: "file://" + src, SHA256: wrong}); !errors.Is(err, ErrMismatch) {
		t.Errorf("Ensure(file with the wrong sha) = %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(c.dir, wrong)); err == nil {
		t.Error("a mismatched file was kept")
	}
	if _, err := c.Ensure(context.Background(), proto.Artifact{URL: "file://otherhost" + src, SHA256: wrong}); err == nil {
		t.Error("Ensure(file://otherhost/...) succeeded, want an error")
	}
}

func TestCacheLRU(t *testing.T) {
	h := newHarness(t, 3500)
	c := h.cache
	ctx := context.Background()
	arts := map[string]proto.Artifact{}
	for i, name := range []string{"a", "b", "c", "d", "e"} {
		arts[name] = h.artifact(name, content(byte(10+i), 1000))
	}
	ensure := func(name string) {
		t.Helper()
		if _, err := c.Ensure(ctx, arts[name]); err != nil {
			t.Fatalf("Ensure(%s) = %v", name, err)
		}
		if n := dirBytes(t, h.dir); n > 3500 {
			t.Fatalf("after Ensure(%s) the cache dir holds %d bytes, over 3500", name, n)
		}
	}
	cached := func() []string {
		var names []string
		for _, n := range []string{"a", "b", "c", "d", "e"} {
			if _, err := os.Stat(filepath.Join(h.dir, arts[n].SHA256)); err == nil {
				names = append(names, n)
			}
		}
		return names
	}
	steps := []struct {
		ensure string
		want   []string
	}{
		{"a", []string{"a"}},
		{"b", []string{"a", "b"}},
		{"c", []string{"a", "b", "c"}},
		{"a", []string{"a", "b", "c"}}, // a is now the most recently used
		{"d", []string{"a", "c", "d"}}, // so b goes
		{"c", []string{"a", "c", "d"}},
		{"e", []string{"c", "d", "e"}}, // a is the least recently used now
		{"b", []string{"c", "e", "b"}},
	}
	for i, s := range steps {
		ensure(s.ensure)
		got := cached()
		slices.Sort(got)
		want := slices.Clone(s.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("step %d: after Ensure(%s) cached = %v, want %v", i, s.ensure, got, want)
		}
	}
	if n := h.up.hitCount("/b"); n != 2 {
		t.Errorf("b fetched %d times, want 2 (evicted once)", n)
	}
}

// TestCacheKeepsOpenFiles: a file being served is never evicted; when
// every file is open, a new one is refused rather than overflow the dir.
func TestCacheKeepsOpenFiles(t *testing.T) {
	h := newHarness(t, 2500)
	c := h.cache
	ctx := context.Background()
	a := h.artifact("a", content(20, 1000))
	b := h.artifact("b", content(21, 1000))
	d := h.artifact("d", content(22, 1000))

	fa, err := c.Open(ctx, a) // a is open, and the least recently used
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, d); err != nil { // evicts b, not the open a
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, a.SHA256)); err != nil {
		t.Errorf("open file a was evicted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, b.SHA256)); err == nil {
		t.Error("b was kept, want it evicted")
	}
	fd, err := c.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, b); !errors.Is(err, ErrCacheFull) {
		t.Errorf("Ensure(b) with every file open = %v, want ErrCacheFull", err)
	}
	status, _, hdr := h.do("GET", "/artifacts/"+b.SHA256, nil, nil)
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("GET b with every file open = %d (Retry-After %q), want 503 with Retry-After", status, hdr.Get("Retry-After"))
	}
	if n := dirBytes(t, h.dir); n > 2500 {
		t.Errorf("cache dir holds %d bytes, over 2500", n)
	}
	fa.Close()
	fa.Close() // twice is harmless
	if _, err := c.Ensure(ctx, b); err != nil {
		t.Errorf("Ensure(b) after a was closed = %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, a.SHA256)); err == nil {
		t.Error("a was kept, want it evicted once closed")
	}
	fd.Close()
}

// TestCacheTooLarge: an artifact bigger than the cache is refused, with
// or without a declared size.
func TestCacheTooLarge(t *testing.T) {
	h := newHarness(t, 1000)
	big := content(30, 1500)
	a := h.artifact("big", big)
	if _, err := h.cache.Ensure(context.Background(), a); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Ensure(1500 bytes, size given) = %v, want ErrTooLarge", err)
	}
	a.Size = 0
	if _, err := h.cache.Ensure(context.Background(), a); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Ensure(1500 bytes, no size) = %v, want ErrTooLarge", err)
	}
	// And with neither a size nor a Content-Length: chunked.
	chunked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 3; i++ {
			w.Write(big[i*500 : (i+1)*500])
			w.(http.Flusher).Flush()
		}
	}))
	defer chunked.Close()
	a.URL = chunked.URL + "/big"
	if _, err := h.cache.Ensure(context.Background(), a); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Ensure(1500 bytes, chunked) = %v, want ErrTooLarge", err)
	}
	if files := dirFiles(t, h.dir); len(files) != 0 {
		t.Errorf("cache dir = %v, want empty", files)
	}
	if h.cache.used != 0 {
		t.Errorf("cache accounts %d bytes in use, want 0", h.cache.used)
	}
}

// TestCacheStartup: on start the cache deletes leftover downloads and
// files whose content does not match their name, keeps the good ones
// without fetching them again, and evicts down to its size.
func TestCacheStartup(t *testing.T) {
	dir := t.TempDir()
	up := newUpstream(t)
	good, stale, corrupt := content(40, 700), content(41, 700), content(42, 700)
	write := func(name string, b []byte, age time.Duration) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(-age)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	write(sum(good), good, time.Minute)
	write(sum(stale), stale, time.Hour) // older: evicted first
	corrupted := append([]byte{}, corrupt...)
	corrupted[100] ^= 1
	write(sum(corrupt), corrupted, 0)
	write(tmpPrefix+"123", content(43, 500), 0)
	write("README", []byte("not ours"), 0)

	c := newTestCache(t, dir, 1000) // room for one file
	files := dirFiles(t, dir)
	slices.Sort(files)
	want := []string{"README", sum(good)}
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Errorf("after startup the dir holds %v, want %v", files, want)
	}
	a := proto.Artifact{URL: up.put("/good", good), SHA256: sum(good)}
	if _, err := c.Ensure(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if n := up.hitCount("/good"); n != 0 {
		t.Errorf("a verified cached file was fetched again (%d hits)", n)
	}
	b := proto.Artifact{URL: up.put("/corrupt", corrupt), SHA256: sum(corrupt)}
	p, err := c.Ensure(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != string(corrupt) {
		t.Error("the corrupted file was not fetched again")
	}
}

// TestCacheConcurrentEnsure: many callers, one upstream fetch.
func TestCacheConcurrentEnsure(t *testing.T) {
	h := newHarness(t, 1<<20)
	a := h.artifact("kernel", content(50, 200_000))
	release := h.up.hold()
	defer release()

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := h.cache.Ensure(context.Background(), a)
			errs <- err
		})
	}
	// Let the fetch go only once all callers wait for it.
	waitFor(t, "all callers to join the fetch", func() bool {
		h.cache.mu.Lock()
		defer h.cache.mu.Unlock()
		f := h.cache.flights[a.SHA256]
		return f != nil && f.waiters == n
	})
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Ensure = %v", err)
		}
	}
	if hits := h.up.hitCount("/kernel"); hits != 1 {
		t.Errorf("upstream fetched %d times for %d callers, want 1", hits, n)
	}
}

// TestCacheEnsureCancel: when the only caller gives up, the fetch stops
// and leaves nothing behind; the next caller fetches afresh.
func TestCacheEnsureCancel(t *testing.T) {
	h := newHarness(t, 1<<20)
	a := h.artifact("kernel", content(51, 10_000))
	release := h.up.hold()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := h.cache.Ensure(ctx, a)
		done <- err
	}()
	waitFor(t, "the fetch to reach upstream", func() bool { return h.up.hitCount("/kernel") == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Ensure after cancel = %v, want context.Canceled", err)
	}
	waitFor(t, "the abandoned fetch to clean up", func() bool {
		h.cache.mu.Lock()
		defer h.cache.mu.Unlock()
		return len(h.cache.flights) == 0 && h.cache.used == 0 && len(dirFiles(t, h.dir)) == 0
	})
	release()
	if _, err := h.cache.Ensure(context.Background(), a); err != nil {
		t.Fatalf("Ensure after an abandoned fetch = %v", err)
	}
}

func TestNewCacheRefuses(t *testing.T) {
	for _, cfg := range []CacheConfig{{}, {Dir: t.TempDir()}, {Dir: t.TempDir(), MaxBytes: -1}} {
		if _, err := NewCache(cfg); err == nil {
			t.Errorf("NewCache(%+v) succeeded, want an error", cfg)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, what, cond)
}
