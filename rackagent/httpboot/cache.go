package httpboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// Errors a Cache returns (wrapped, with details).
var (
	// ErrMismatch: the fetched bytes do not have the artifact's sha256
	// (or size). They are deleted, never served.
	ErrMismatch = errors.New("artifact does not match its checksum")
	// ErrTooLarge: the artifact is bigger than the whole cache.
	ErrTooLarge = errors.New("artifact is bigger than the cache")
	// ErrCacheFull: there is no room without evicting files being served
	// or fetched.
	ErrCacheFull = errors.New("artifact cache is full")
)

// tmpPrefix starts the names of downloads in progress; NewCache deletes
// any it finds.
const tmpPrefix = ".fetch-"

// CacheConfig configures a Cache.
type CacheConfig struct {
	// Dir holds the verified artifacts, each named by its sha256, and
	// the downloads in progress. Required; created if missing.
	Dir string
	// MaxBytes bounds the bytes in Dir (downloads in progress included).
	// Required, > 0.
	MaxBytes int64
	// Client fetches http:// and https:// URLs; nil means a client with
	// no overall timeout (artifacts are large), cancelled with the fetch.
	Client *http.Client
	// Logger; nil discards.
	Logger *slog.Logger
}

// Cache is a content-addressed artifact cache. Every file in it has been
// verified against its sha256: after a download, and on startup. It keeps
// Dir under MaxBytes by evicting the least recently used files that are not
// open.
type Cache struct {
	dir    string
	max    int64
	client *http.Client
	log    *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry  // by sha256; verified files in dir
	flights map[string]*flight // by sha256; fetches in progress
	used    int64              // bytes of entries plus reservations of fetches
	tick    uint64             // use clock for LRU
}

type entry struct {
	sha     string
	size    int64
	lastUse uint64
	refs    int // open Files
}

// flight is one fetch, shared by every Ensure of its sha256.
type flight struct {
	done    chan struct{}
	err     error // set before done is closed
	waiters int
	cancel  context.CancelFunc
}

// NewCache opens the cache in cfg.Dir: it deletes leftover downloads,
// hashes every cached file and deletes those whose content does not match
// their name, and evicts down to MaxBytes.
func NewCache(cfg CacheConfig) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("artifact cache: Dir is required")
	}
	if cfg.MaxBytes <= 0 {
		return nil, fmt.Errorf("artifact cache: MaxBytes must be > 0, not %d", cfg.MaxBytes)
	}
	c := &Cache{
		dir:     cfg.Dir,
		max:     cfg.MaxBytes,
		client:  cfg.Client,
		log:     cfg.Logger,
		entries: map[string]*entry{},
		flights: map[string]*flight{},
	}
	if c.client == nil {
		c.client = &http.Client{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	if err := c.load(); err != nil {
		return nil, fmt.Errorf("artifact cache: %w", err)
	}
	return c, nil
}

func (c *Cache) load() error {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	type found struct {
		e   *entry
		mod int64
	}
	var files []found
	for _, de := range des {
		name := de.Name()
		p := filepath.Join(c.dir, name)
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			c.log.Info("deleting leftover download", "file", p)
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		case shaRE.MatchString(name) && de.Type().IsRegular():
			sum, size, err := hashFile(p)
			if err != nil {
				return err
			}
			if sum != name {
				c.log.Warn("deleting cached artifact that does not match its sha256", "file", p, "sha256", sum)
				if err := os.Remove(p); err != nil {
					return err
				}
				continue
			}
			info, err := de.Info()
			if err != nil {
				return err
			}
			files = append(files, found{&entry{sha: name, size: size}, info.ModTime().UnixNano()})
		default:
			c.log.Warn("ignoring a file that is not a cached artifact", "file", p)
		}
	}
	// Last use is not kept across restarts: the oldest download counts
	// as the least recently used.
	sort.Slice(files, func(i, j int) bool { return files[i].mod < files[j].mod })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range files {
		c.tick++
		f.e.lastUse = c.tick
		c.entries[f.e.sha] = f.e
		c.used += f.e.size
	}
	if err := c.makeRoomLocked(0); err != nil {
		return err
	}
	c.log.Info("artifact cache ready", "dir", c.dir, "artifacts", len(c.entries), "bytes", c.used, "max_bytes", c.max)
	return nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func (c *Cache) path(sha string) string { return filepath.Join(c.dir, sha) }

// Ensure makes sure the artifact is in the cache, verified, and returns its
// path. Concurrent calls for one sha256 share one fetch; a caller whose ctx
// ends stops waiting, and the fetch stops when no caller waits for it.
// The file may be evicted once Ensure returns: to serve it, use Open.
func (c *Cache) Ensure(ctx context.Context, a proto.Artifact) (string, error) {
	e, err := c.acquire(ctx, a, false)
	if err != nil {
		return "", err
	}
	return c.path(e.sha), nil
}

// File is an open cached artifact. It is not evicted until it is closed.
type File struct {
	*os.File
	Size    int64
	ModTime time.Time
	release func()
	once    sync.Once
}

// Close closes the file and lets the cache evict it again.
func (f *File) Close() error {
	err := f.File.Close()
	f.once.Do(f.release)
	return err
}

// Open ensures the artifact is cached and opens it; it is not evicted
// while open.
func (c *Cache) Open(ctx context.Context, a proto.Artifact) (*File, error) {
	for attempt := 0; ; attempt++ {
		e, err := c.acquire(ctx, a, true)
		if err != nil {
			return nil, err
		}
		release := func() {
			c.mu.Lock()
			e.refs--
			c.mu.Unlock()
		}
		f, err := os.Open(c.path(e.sha))
		if err != nil {
			release()
			if errors.Is(err, fs.ErrNotExist) && attempt == 0 {
				// Deleted behind our back: forget it and fetch again.
				c.log.Warn("cached artifact vanished; fetching it again", "sha256", e.sha)
				c.forget(e)
				continue
			}
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			release()
			return nil, err
		}
		return &File{File: f, Size: st.Size(), ModTime: st.ModTime(), release: release}, nil
	}
}

func (c *Cache) forget(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[e.sha] == e {
		delete(c.entries, e.sha)
		c.used -= e.size
	}
}

// acquire returns the artifact's entry, fetching it if needed, marked used
// now and pinned (refs++) if pin.
func (c *Cache) acquire(ctx context.Context, a proto.Artifact, pin bool) (*entry, error) {
	sha := strings.ToLower(a.SHA256)
	if !shaRE.MatchString(sha) {
		return nil, fmt.Errorf("artifact %q: sha256 %q is not 64 hex digits", a.Name, a.SHA256)
	}
	a.SHA256 = sha
	for {
		c.mu.Lock()
		if e := c.entries[sha]; e != nil {
			c.tick++
			e.lastUse = c.tick
			if pin {
				e.refs++
			}
			c.mu.Unlock()
			return e, nil
		}
		f := c.flights[sha]
		if f == nil {
			fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			f = &flight{done: make(chan struct{}), cancel: cancel}
			c.flights[sha] = f
			go c.fly(fctx, a, f)
		}
		f.waiters++
		c.mu.Unlock()

		select {
		case <-f.done:
			if f.err != nil {
				return nil, f.err
			}
			// The entry is in place now (or, rarely, already evicted
			// again, and the loop fetches it once more).
		case <-ctx.Done():
			c.mu.Lock()
			f.waiters--
			if f.waiters == 0 {
				f.cancel()
				if c.flights[sha] == f {
					delete(c.flights, sha)
				}
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func (c *Cache) fly(ctx context.Context, a proto.Artifact, f *flight) {
	defer f.cancel()
	err := c.fetch(ctx, a)
	if err != nil && ctx.Err() != nil {
		c.log.Info("artifact fetch abandoned: nobody waits for it", "artifact", a.Name, "sha256", a.SHA256)
	} else if err != nil {
		c.log.Error("artifact fetch failed", "artifact", a.Name, "sha256", a.SHA256, "url", safeURL(a.URL), "err", err)
	}
	c.mu.Lock()
	if c.flights[a.SHA256] == f {
		delete(c.flights, a.SHA256)
	}
	c.mu.Unlock()
	f.err = err
	close(f.done)
}

// fetch downloads a into a temp file in the cache, verifies it and renames
// it into place.
func (c *Cache) fetch(ctx context.Context, a proto.Artifact) (err error) {
	if a.Size > c.max {
		return fmt.Errorf("%w: %s is %d bytes, the cache holds %d", ErrTooLarge, a.SHA256, a.Size, c.max)
	}
	src, length, err := c.openSource(ctx, a.URL)
	if err != nil {
		return err
	}
	defer src.Close()
	if a.Size > 0 && length >= 0 && length != a.Size {
		return fmt.Errorf("%w: %s has %d bytes, want %d", ErrMismatch, safeURL(a.URL), length, a.Size)
	}
	if length > c.max {
		return fmt.Errorf("%w: %s is %d bytes, the cache holds %d", ErrTooLarge, safeURL(a.URL), length, c.max)
	}

	tmp, err := os.CreateTemp(c.dir, tmpPrefix+"*")
	if err != nil {
		return err
	}
	w := &reservingWriter{c: c, f: tmp, declared: a.Size}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
			c.release(w.reserved)
		}
	}()
	switch {
	case a.Size > 0:
		err = w.grow(a.Size)
	case length > 0:
		err = w.grow(length)
	}
	if err != nil {
		return err
	}
	var r io.Reader = src
	if a.Size > 0 {
		r = io.LimitReader(src, a.Size+1) // one more, to see that it is too long
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	n, err := io.CopyBuffer(io.MultiWriter(w, h), r, buf)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", safeURL(a.URL), err)
	}
	if a.Size > 0 && n != a.Size {
		return fmt.Errorf("%w: %s gave %d bytes, want %d", ErrMismatch, safeURL(a.URL), n, a.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 {
		return fmt.Errorf("%w: %s: expected sha256 %s, got %s (%d bytes)", ErrMismatch, safeURL(a.URL), a.SHA256, got, n)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[a.SHA256]; e != nil {
		// An abandoned fetch of the same sha got there first.
		return nil // the deferred cleanup removes ours
	}
	if err := os.Rename(tmp.Name(), c.path(a.SHA256)); err != nil {
		return err
	}
	committed = true
	c.used += n - w.reserved
	c.tick++
	c.entries[a.SHA256] = &entry{sha: a.SHA256, size: n, lastUse: c.tick}
	c.log.Info("artifact cached", "artifact", a.Name, "sha256", a.SHA256, "bytes", n)
	return nil
}

// openSource opens an artifact URL: http, https or file. length is -1 when
// unknown.
func (c *Cache) openSource(ctx context.Context, raw string) (io.ReadCloser, int64, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, 0, fmt.Errorf("artifact URL %q: %w", safeURL(raw), err)
	}
	switch u.Scheme {
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
		if err != nil {
			return nil, 0, fmt.Errorf("artifact URL %q: %w", safeURL(raw), err)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				ue.URL = safeURL(ue.URL) // keep tokens in query strings out of logs
			}
			return nil, 0, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("GET %s: %s", safeURL(raw), resp.Status)
		}
		return resp.Body, resp.ContentLength, nil
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, 0, fmt.Errorf("artifact URL %q: a file URL must name a local path", raw)
		}
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, 0, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		if !st.Mode().IsRegular() {
			f.Close()
			return nil, 0, fmt.Errorf("artifact URL %q: not a regular file", raw)
		}
		return ctxReadCloser{ctx, f}, st.Size(), nil
	}
	return nil, 0, fmt.Errorf("artifact URL %q: scheme %q is not http, https or file", safeURL(raw), u.Scheme)
}

type ctxReadCloser struct {
	ctx context.Context
	io.ReadCloser
}

func (r ctxReadCloser) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.ReadCloser.Read(p)
}

// safeURL drops the user info, query and fragment of a URL, which may
// hold credentials, for logs and errors.
func safeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// reservingWriter writes a download, reserving cache space ahead of it.
type reservingWriter struct {
	c        *Cache
	f        *os.File
	declared int64 // the artifact's size, if given
	n        int64
	reserved int64
}

const reserveChunk = 8 << 20

func (w *reservingWriter) Write(p []byte) (int, error) {
	end := w.n + int64(len(p))
	if w.declared > 0 && end > w.declared {
		return 0, fmt.Errorf("%w: more than the %d bytes declared", ErrMismatch, w.declared)
	}
	if end > w.c.max {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, w.c.max)
	}
	if end > w.reserved {
		more := max(end-w.reserved, min(reserveChunk, w.c.max-w.reserved))
		if err := w.grow(more); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *reservingWriter) grow(n int64) error {
	if err := w.c.reserve(n); err != nil {
		return err
	}
	w.reserved += n
	return nil
}

// reserve makes room for n more bytes, evicting if needed.
func (c *Cache) reserve(n int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.makeRoomLocked(n); err != nil {
		return err
	}
	c.used += n
	return nil
}

func (c *Cache) release(n int64) {
	c.mu.Lock()
	c.used -= n
	c.mu.Unlock()
}

// makeRoomLocked evicts least recently used, unopened files until n more
// bytes fit.
func (c *Cache) makeRoomLocked(n int64) error {
	for c.used+n > c.max {
		var lru *entry
		for _, e := range c.entries {
			if e.refs == 0 && (lru == nil || e.lastUse < lru.lastUse) {
				lru = e
			}
		}
		if lru == nil {
			return fmt.Errorf("%w: need %d bytes; %d of %d are in use by artifacts being served or fetched", ErrCacheFull, n, c.used, c.max)
		}
		if err := os.Remove(c.path(lru.sha)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("evicting %s: %w", lru.sha, err)
		}
		delete(c.entries, lru.sha)
		c.used -= lru.size
		c.log.Info("evicted artifact", "sha256", lru.sha, "bytes", lru.size)
	}
	return nil
}
