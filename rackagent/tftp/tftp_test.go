package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ptftp "github.com/pin/tftp/v3"
	"go.uber.org/goleak"

	"github.com/metalfleet/metalfleet/ops/testkit"
)

// TestMain fails the package if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---------------------------------------------------------------------
// Fixture: two roots and a secret beside them.

const bigSize = 3 << 20 // 3 MiB: thousands of blocks at any blksize

// exactSize is a multiple of both 512 and 1468, so the transfer ends with
// an empty DATA block whichever size is negotiated.
const exactSize = 512 * 367

type fixture struct {
	base         string // t.TempDir(): root1, root2, secret, outside/
	root1, root2 string
	secretPath   string
	secret       []byte
	files        map[string][]byte // requested name -> bytes it must serve
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	base := t.TempDir()
	f := &fixture{
		base:       base,
		root1:      filepath.Join(base, "root1"),
		root2:      filepath.Join(base, "root2"),
		secretPath: filepath.Join(base, "secret"),
		secret:     append([]byte("SECRET-"), randomBytes(99, 4096)...),
		files:      map[string][]byte{},
	}
	small := randomBytes(1, 1000)
	big := randomBytes(2, bigSize)
	exact := randomBytes(3, exactSize)
	nested := randomBytes(4, 3000)
	snp := randomBytes(5, 100_000)
	shadow1, shadow2 := []byte("from root1\n"), []byte("from root2, never served\n")

	mkdir := func(p string) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, b []byte) {
		mkdir(filepath.Dir(p))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	mkdir(f.root1)
	mkdir(f.root2)
	write(f.secretPath, f.secret)
	write(filepath.Join(base, "outside", "secret"), f.secret)

	write(filepath.Join(f.root1, "undionly.kpxe"), small)
	write(filepath.Join(f.root1, "ipxe.efi"), big)
	write(filepath.Join(f.root1, "exact.bin"), exact)
	write(filepath.Join(f.root1, "empty.bin"), nil)
	write(filepath.Join(f.root1, "sub", "nested.efi"), nested)
	write(filepath.Join(f.root1, "shadow.bin"), shadow1)
	write(filepath.Join(f.root2, "shadow.bin"), shadow2)
	write(filepath.Join(f.root2, "snponly.efi"), snp)
	link("undionly.kpxe", filepath.Join(f.root1, "alias.kpxe")) // stays inside: allowed
	link(f.secretPath, filepath.Join(f.root1, "link"))          // absolute, outside
	link("../secret", filepath.Join(f.root1, "rel-link"))       // relative, outside
	link(filepath.Join(base, "outside"), filepath.Join(f.root1, "linkdir"))

	f.files["undionly.kpxe"] = small
	f.files["/undionly.kpxe"] = small
	f.files["ipxe.efi"] = big
	f.files["exact.bin"] = exact
	f.files["empty.bin"] = []byte{}
	f.files["sub/nested.efi"] = nested
	f.files["/sub/nested.efi"] = nested
	f.files["alias.kpxe"] = small
	f.files["shadow.bin"] = shadow1
	f.files["snponly.efi"] = snp
	return f
}

// tree lists every file under dir with its size, to show that nothing was
// created or changed.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %v %d", p, info.Mode(), info.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ---------------------------------------------------------------------
// Log capture: JSON lines in a buffer, mirrored to t.Log.

type logCapture struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return l.b.Write(p)
}

func (l *logCapture) records() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(l.b.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			l.t.Errorf("log line %q is not JSON: %v", line, err)
			continue
		}
		out = append(out, m)
	}
	return out
}

// matching returns the records at level with message msg whose "path"
// is name quoted with %q.
func (l *logCapture) matching(level slog.Level, msg, name string) []map[string]any {
	var out []map[string]any
	for _, r := range l.records() {
		if r["level"] == level.String() && r["msg"] == msg && r["path"] == fmt.Sprintf("%q", name) {
			out = append(out, r)
		}
	}
	return out
}

// wantOneWarn checks that exactly one warn line msg names the path and a
// loopback remote.
func (l *logCapture) wantOneWarn(t *testing.T, msg, name string) {
	t.Helper()
	got := l.matching(slog.LevelWarn, msg, name)
	if len(got) != 1 {
		t.Errorf("warn lines %q for path %q: got %d, want 1; log:\n%s", msg, name, len(got), l.String())
		return
	}
	if remote, _ := got[0]["remote"].(string); !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("warn line remote = %q, want 127.0.0.1:port", remote)
	}
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// eventually polls cond until it holds or 10 s pass. For things the
// server does after the client has already returned (the last ACK is
// the client's final packet).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, what, cond)
}

// ---------------------------------------------------------------------
// Server under test.

type readEvent struct {
	remote net.Addr
	path   string
	size   int64
}

type testServer struct {
	*Server
	addr string
	logs *logCapture

	mu    sync.Mutex
	reads []readEvent
}

func (ts *testServer) readEvents() []readEvent {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Clone(ts.reads)
}

// startServer runs ListenAndServe on 127.0.0.1:0 until the test ends,
// with logs captured and OnRead recorded, and checks that it then
// returns nil.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{logs: &logCapture{t: t}}
	cfg.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.OnRead = func(remote net.Addr, path string, size int64) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		ts.reads = append(ts.reads, readEvent{remote, path, size})
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts.Server = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ListenAndServe = %v, want nil", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("ListenAndServe did not return after cancel")
		}
	})
	eventually(t, "the server to bind", func() bool { return s.Addr() != nil })
	ts.addr = s.Addr().String()
	return ts
}

func (f *fixture) config() Config {
	return Config{Roots: []string{f.root1, filepath.Join(f.base, "missing"), f.root2}}
}

// ---------------------------------------------------------------------
// Clients: pin/tftp's, tftp-hpa's, and raw packets.

type fetchResult struct {
	data   []byte
	tsize  int64
	tsized bool
}

// fetch reads name with pin/tftp's client, asking for tsize and, if
// blksize > 0, that block size.
func fetch(addr, name string, blksize int) (fetchResult, error) {
	var res fetchResult
	c, err := ptftp.NewClient(addr)
	if err != nil {
		return res, err
	}
	c.SetTimeout(3 * time.Second)
	c.SetRetries(3)
	c.RequestTSize(true)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return res, err
	}
	if it, ok := wt.(ptftp.IncomingTransfer); ok {
		res.tsize, res.tsized = it.Size()
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return res, err
	}
	res.data = buf.Bytes()
	return res, nil
}

// hpaClient returns the path of tftp-hpa's tftp. Without it the test is
// skipped on a developer's machine and fails under CI, where
// ops/apt-packages.txt installs it.
func hpaClient(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("tftp")
	if err == nil {
		out, _ := exec.Command(bin, "-V").CombinedOutput()
		if !bytes.Contains(out, []byte("tftp-hpa")) {
			err = fmt.Errorf("%s is not tftp-hpa: %q", bin, out)
		}
	}
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("tftp-hpa client not available (apt-get install tftp-hpa): %v", err)
		}
		t.Fatalf("tftp-hpa client not available under CI (ops/apt-packages.txt lists it): %v", err)
	}
	return bin
}

// hpa runs tftp-hpa's client with one command ("get NAME LOCAL" or "put
// LOCAL NAME") against addr. tftp-hpa 5.2 exits 0 even when the transfer
// fails, so callers read its output ("Error code N: message").
func hpa(t *testing.T, addr string, command ...string) string {
	t.Helper()
	bin := hpaClient(t)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// -l: literal mode, so a ':' in a name is never read as host:file.
	args := append([]string{"-l", host, port, "-m", "binary", "-c"}, command...)
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("tftp %q: %v\n%s", args, err, out)
	}
	return string(out)
}

// hpaGet fetches name with tftp-hpa and returns the local file's bytes
// (empty if it made none) and the client's output.
func hpaGet(t *testing.T, addr, name string) ([]byte, string) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "got")
	out := hpa(t, addr, "get", name, local)
	got, err := os.ReadFile(local)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return got, out
}

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// request builds an RRQ or WRQ by hand: opcode, then NUL-terminated
// fields. name is written as given, NUL bytes included.
func request(op uint16, name, mode string, opts ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, op)
	for _, s := range append([]string{name, mode}, opts...) {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

func ack(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func errPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(nil, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	return append(append(b, msg...), 0)
}

// rawPeer is a bare UDP socket on loopback for hand-made packets.
type rawPeer struct {
	t    *testing.T
	conn *net.UDPConn
}

func newRawPeer(t *testing.T) *rawPeer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawPeer{t: t, conn: conn}
}

func (p *rawPeer) send(to string, b []byte) {
	p.t.Helper()
	a, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.conn.WriteToUDP(b, a); err != nil {
		p.t.Fatalf("send %d bytes: %v", len(b), err)
	}
}

// recv returns the next packet and where it came from, or fails the test
// after 5 s.
func (p *rawPeer) recv() ([]byte, *net.UDPAddr) {
	p.t.Helper()
	buf := make([]byte, 65536)
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := p.conn.ReadFromUDP(buf)
	if err != nil {
		p.t.Fatalf("waiting for a packet: %v", err)
	}
	return buf[:n], from
}

// recvError reads packets until an ERROR arrives and returns its message;
// it fails the test if a DATA packet carries the secret.
func (p *rawPeer) recvError(secret []byte) string {
	p.t.Helper()
	for {
		b, _ := p.recv()
		if len(b) < 4 {
			p.t.Fatalf("short packet % x", b)
		}
		switch binary.BigEndian.Uint16(b) {
		case opERROR:
			return string(bytes.TrimRight(b[4:], "\x00"))
		case opDATA:
			if secret != nil && bytes.Contains(secret, b[4:]) && len(b) > 4 {
				p.t.Fatalf("received DATA from the secret file")
			}
		}
	}
}

func oackOptions(b []byte) map[string]string {
	fields := strings.Split(strings.TrimSuffix(string(b[2:]), "\x00"), "\x00")
	m := map[string]string{}
	for i := 0; i+1 < len(fields); i += 2 {
		m[strings.ToLower(fields[i])] = fields[i+1]
	}
	return m
}

// ---------------------------------------------------------------------
// Tests.

func TestNew(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		roots   []string
		wantErr bool
	}{
		{"no roots", nil, true},
		{"only a missing root", []string{missing}, true},
		{"a file, not a directory", []string{file}, true},
		{"one root", []string{dir}, false},
		{"missing root before an existing one", []string{missing, dir}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{Roots: tt.roots})
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%q) error = %v, want error %v", tt.roots, err, tt.wantErr)
			}
			if err == nil && s.Addr() != nil {
				t.Errorf("Addr() before Serve = %v, want nil", s.Addr())
			}
		})
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct {
		in      string
		want    string // "" means refused
		refused string // part of the reason, when refused
	}{
		{"undionly.kpxe", "undionly.kpxe", ""},
		{"/undionly.kpxe", "undionly.kpxe", ""},
		{"///ipxe/snponly.efi", "ipxe/snponly.efi", ""},
		{"a//b", "a/b", ""},
		{"./a", "a", ""},
		{"/etc/passwd", "etc/passwd", ""},
		{"", "", "empty"},
		{"/", "", "names no file"},
		{".", "", "names no file"},
		{"a/", "a", ""},
		{"..", "", ".."},
		{"../secret", "", ".."},
		{"a/../../secret", "", ".."},
		{"a/../b", "", ".."},
		{"/../secret", "", ".."},
		{"a/..", "", ".."},
		{"..\\secret", "", "backslash"},
		{"a\\b", "", "backslash"},
		{"secret\x00.kpxe", "", "NUL"},
		{"undionly.kpxe\n", "", "control"},
		{"\x1b[2Jx", "", "control"},
		{"..a", "..a", ""},
		{"a..", "a..", ""},
	}
	for _, tt := range tests {
		got, reason := cleanName(tt.in)
		if got != tt.want || (tt.refused == "") != (reason == "") || !strings.Contains(reason, tt.refused) {
			t.Errorf("cleanName(%q) = %q, %q; want %q, reason containing %q", tt.in, got, reason, tt.want, tt.refused)
		}
	}
}

// TestOpen checks the HTTP-boot entry point: same roots, same refusals.
func TestOpen(t *testing.T) {
	f := newFixture(t)
	s, err := New(f.config())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"undionly.kpxe", "/sub/nested.efi", "snponly.efi", "alias.kpxe"} {
		file, size, err := s.Open(name)
		if err != nil {
			t.Errorf("Open(%q) error: %v", name, err)
			continue
		}
		got, err := io.ReadAll(file)
		file.Close()
		if want := f.files[name]; err != nil || !bytes.Equal(got, want) || size != int64(len(want)) {
			t.Errorf("Open(%q) = %d bytes (size %d), %v; want %d bytes", name, len(got), size, err, len(want))
		}
	}
	for name, want := range map[string]error{
		"../secret": errAccess, "link": errAccess, "..\\secret": errAccess, "sub": errAccess,
		"/etc/passwd": errNotFound, "nosuch": errNotFound,
	} {
		if file, _, err := s.Open(name); !errors.Is(err, want) {
			if file != nil {
				file.Close()
			}
			t.Errorf("Open(%q) error = %v, want %v", name, err, want)
		}
	}
}

// TestFetch reads every kind of file with pin/tftp's client, at the
// default block size and at 1468, and checks bytes, tsize, the OnRead
// report and the debug log line.
func TestFetch(t *testing.T) {
	f := newFixture(t)
	names := []string{
		"undionly.kpxe", "/undionly.kpxe", "ipxe.efi", "exact.bin", "empty.bin",
		"sub/nested.efi", "alias.kpxe", "shadow.bin", "snponly.efi",
	}
	for _, name := range names {
		for _, blksize := range []int{0, MaxBlockSize} {
			t.Run(fmt.Sprintf("%s/blksize=%d", name, blksize), func(t *testing.T) {
				ts := startServer(t, f.config())
				want := f.files[name]
				res, err := fetch(ts.addr, name, blksize)
				if err != nil {
					t.Fatalf("fetch(%q) error: %v", name, err)
				}
				if !bytes.Equal(res.data, want) {
					t.Fatalf("fetch(%q) = %d bytes, want %d bytes (same content)", name, len(res.data), len(want))
				}
				// pin/tftp never sends tsize=0 (it drops the option),
				// so only a non-empty file has one to check.
				if len(want) > 0 && (!res.tsized || res.tsize != int64(len(want))) {
					t.Errorf("tsize = %d (reported %v), want %d", res.tsize, res.tsized, len(want))
				}
				rel, _ := cleanName(name)
				eventually(t, "OnRead", func() bool { return len(ts.readEvents()) == 1 })
				ev := ts.readEvents()[0]
				if ev.path != rel || ev.size != int64(len(want)) || !strings.HasPrefix(ev.remote.String(), "127.0.0.1:") {
					t.Errorf("OnRead(%v, %q, %d), want (127.0.0.1:port, %q, %d)", ev.remote, ev.path, ev.size, rel, len(want))
				}
				served := ts.logs.matching(slog.LevelDebug, "tftp: served", name)
				if len(served) != 1 || served[0]["bytes"] != float64(len(want)) {
					t.Errorf("debug lines 'tftp: served' for %q = %v, want one with bytes=%d", name, served, len(want))
				}
			})
		}
	}
}

// TestOptionNegotiation checks the OACK by hand: blksize is capped at
// MaxBlockSize, tsize is the file's size, and DATA blocks have the
// agreed size.
func TestOptionNegotiation(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		ask, want string
	}{
		{"512", "512"},
		{"1024", "1024"},
		{"1468", "1468"},
		{"8192", "1468"},
		{"65464", "1468"},
	}
	for _, tt := range tests {
		t.Run("blksize="+tt.ask, func(t *testing.T) {
			ts := startServer(t, f.config())
			p := newRawPeer(t)
			p.send(ts.addr, request(opRRQ, "ipxe.efi", "octet", "blksize", tt.ask, "tsize", "0"))
			b, tid := p.recv()
			if op := binary.BigEndian.Uint16(b); op != opOACK {
				t.Fatalf("first answer opcode %d, want OACK (%d): %q", op, opOACK, b)
			}
			opts := oackOptions(b)
			if opts["blksize"] != tt.want || opts["tsize"] != strconv.Itoa(bigSize) {
				t.Errorf("OACK options = %v, want blksize=%s tsize=%d", opts, tt.want, bigSize)
			}
			p.send(tid.String(), ack(0))
			b, _ = p.recv()
			want, _ := strconv.Atoi(tt.want)
			if op := binary.BigEndian.Uint16(b); op != opDATA || len(b)-4 != want {
				t.Errorf("DATA 1: opcode %d, %d bytes; want opcode %d, %d bytes", op, len(b)-4, opDATA, want)
			}
			if !bytes.Equal(b[4:], f.files["ipxe.efi"][:len(b)-4]) {
				t.Errorf("DATA 1 does not hold the file's first bytes")
			}
			// Abort, as a PXE ROM does after learning the size.
			p.send(tid.String(), errPacket(0, "enough"))
		})
	}
}

// TestFetchTFTPHPA reads files with Debian's tftp-hpa client (512-byte
// blocks, no options: version 5.2 has no blksize or tsize support).
func TestFetchTFTPHPA(t *testing.T) {
	hpaClient(t)
	f := newFixture(t)
	ts := startServer(t, f.config())
	for _, name := range []string{"undionly.kpxe", "ipxe.efi", "exact.bin", "empty.bin", "/sub/nested.efi", "alias.kpxe", "snponly.efi", "shadow.bin"} {
		t.Run(name, func(t *testing.T) {
			got, out := hpaGet(t, ts.addr, name)
			if want := f.files[name]; !bytes.Equal(got, want) {
				t.Fatalf("tftp get %q = %d bytes, want %d bytes (same content); output: %s", name, len(got), len(want), out)
			}
			if strings.Contains(out, "Error") {
				t.Errorf("tftp get %q printed an error: %s", name, out)
			}
		})
	}
}

// TestRefusedReads tries every way out of the roots, and other names that
// must not be served, with pin/tftp's client and with tftp-hpa's. Each
// must end in a TFTP error, never the secret's bytes, and one warn line
// naming the requested path.
func TestRefusedReads(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name    string // as the client sends it
		logged  string // as the server sees it; "" means name
		wantMsg string // error message the client must get
		noHPA   bool   // tftp-hpa cannot send this name
	}{
		{name: "../secret", wantMsg: "access violation"},
		{name: "a/../../secret", wantMsg: "access violation"},
		{name: "/etc/passwd", wantMsg: "file not found"}, // ROOT/etc/passwd, which does not exist
		{name: f.secretPath, wantMsg: "file not found"},  // ROOT/<that path>, likewise
		{name: "link", wantMsg: "access violation"},      // absolute symlink out of the root
		{name: "rel-link", wantMsg: "access violation"},  // relative symlink out of the root
		{name: "linkdir/secret", wantMsg: "access violation"},
		{name: "..\\secret", wantMsg: "access violation"},
		{name: "a/../undionly.kpxe", wantMsg: "access violation"}, // would stay inside; refused anyway
		// A NUL ends the filename field on the wire: the server sees the
		// part before it (the rest is read as the mode).
		{name: "../secret\x00undionly.kpxe", logged: "../secret", wantMsg: "access violation", noHPA: true},
		{name: "nosuch\x00../secret", logged: "nosuch", wantMsg: "file not found", noHPA: true},
		{name: "undionly.kpxe\x1b[2J", wantMsg: "access violation", noHPA: true},
		{name: "sub", wantMsg: "access violation"}, // a directory
		{name: "nosuch.efi", wantMsg: "file not found"},
		{name: "", wantMsg: "access violation", noHPA: true},
		{name: "/", wantMsg: "access violation"},
	}
	// Short timeouts, so that a regression that starts sending the secret
	// fails fast instead of waiting out an unacknowledged transfer.
	cfg := f.config()
	cfg.Timeout, cfg.Retries = 200*time.Millisecond, 2
	for _, tt := range tests {
		logged := tt.logged
		if logged == "" && !strings.Contains(tt.name, "\x00") {
			logged = tt.name
		}
		t.Run(fmt.Sprintf("%q/pin", tt.name), func(t *testing.T) {
			ts := startServer(t, cfg)
			res, err := fetch(ts.addr, tt.name, 0)
			if err == nil {
				t.Fatalf("fetch(%q) = %d bytes, want an error", tt.name, len(res.data))
			}
			if bytes.Contains(res.data, f.secret[:64]) {
				t.Fatalf("fetch(%q) received the secret", tt.name)
			}
			if !strings.Contains(err.Error(), "code: 1, message: "+tt.wantMsg) {
				t.Errorf("fetch(%q) error = %v, want a TFTP error %q", tt.name, err, tt.wantMsg)
			}
			ts.logs.wantOneWarn(t, "tftp: read refused", logged)
			if ev := ts.readEvents(); len(ev) != 0 {
				t.Errorf("OnRead called: %v", ev)
			}
		})
		t.Run(fmt.Sprintf("%q/raw", tt.name), func(t *testing.T) {
			ts := startServer(t, cfg)
			p := newRawPeer(t)
			p.send(ts.addr, request(opRRQ, tt.name, "octet", "blksize", "1468", "tsize", "0"))
			if msg := p.recvError(f.secret); msg != tt.wantMsg {
				t.Errorf("RRQ %q: error %q, want %q", tt.name, msg, tt.wantMsg)
			}
			ts.logs.wantOneWarn(t, "tftp: read refused", logged)
		})
		if tt.noHPA {
			continue
		}
		t.Run(fmt.Sprintf("%q/tftp-hpa", tt.name), func(t *testing.T) {
			hpaClient(t)
			ts := startServer(t, cfg)
			got, out := hpaGet(t, ts.addr, tt.name)
			if bytes.Contains(got, f.secret[:64]) {
				t.Fatalf("tftp get %q received the secret", tt.name)
			}
			if len(got) != 0 {
				t.Errorf("tftp get %q wrote %d bytes, want none", tt.name, len(got))
			}
			if !strings.Contains(out, "Error code 1: "+tt.wantMsg) {
				t.Errorf("tftp get %q output = %q, want Error code 1: %s", tt.name, out, tt.wantMsg)
			}
			ts.logs.wantOneWarn(t, "tftp: read refused", logged)
		})
	}
}

// TestWriteRefused sends write requests with both clients: each gets
// "read-only server", is logged, and no root (nor anything near it)
// changes.
func TestWriteRefused(t *testing.T) {
	f := newFixture(t)
	before := tree(t, f.base)
	local := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(local, []byte("not welcome"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"upload.bin", "undionly.kpxe", "../evil", "/new/file"} {
		t.Run(name+"/pin", func(t *testing.T) {
			ts := startServer(t, f.config())
			c, err := ptftp.NewClient(ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetTimeout(3 * time.Second)
			rf, err := c.Send(name, "octet")
			if err == nil {
				_, err = rf.ReadFrom(strings.NewReader("not welcome"))
			}
			if err == nil || !strings.Contains(err.Error(), "read-only server") {
				t.Errorf("WRQ %q: error = %v, want read-only server", name, err)
			}
			ts.logs.wantOneWarn(t, "tftp: write refused", name)
		})
		t.Run(name+"/tftp-hpa", func(t *testing.T) {
			hpaClient(t)
			ts := startServer(t, f.config())
			out := hpa(t, ts.addr, "put", local, name)
			if !strings.Contains(out, "Error code 1: read-only server") {
				t.Errorf("tftp put %q output = %q, want Error code 1: read-only server", name, out)
			}
			ts.logs.wantOneWarn(t, "tftp: write refused", name)
		})
	}
	if after := tree(t, f.base); !slices.Equal(before, after) {
		t.Errorf("files changed:\nbefore %q\nafter  %q", before, after)
	}
}

// TestConcurrentFetches runs 20 transfers at once, big and small, at
// both block sizes.
func TestConcurrentFetches(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, f.config())
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		name := []string{"ipxe.efi", "undionly.kpxe", "snponly.efi", "exact.bin"}[i%4]
		blksize := []int{0, MaxBlockSize}[i%2]
		wg.Go(func() {
			res, err := fetch(ts.addr, name, blksize)
			switch {
			case err != nil:
				errs <- fmt.Errorf("fetch %d (%s, blksize %d): %v", i, name, blksize, err)
			case !bytes.Equal(res.data, f.files[name]):
				errs <- fmt.Errorf("fetch %d (%s, blksize %d): %d bytes, want %d", i, name, blksize, len(res.data), len(f.files[name]))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually(t, "OnRead for every fetch", func() bool { return len(ts.readEvents()) == n })
}

// TestHostileDatagrams sends garbage to the listening port, then checks
// the server still serves.
func TestHostileDatagrams(t *testing.T) {
	f := newFixture(t)
	cfg := f.config()
	// Some of these start transfers nobody acknowledges; let them die
	// within seconds, not the default half minute, but leave the real
	// fetches below room for a slow, busy machine.
	cfg.Timeout, cfg.Retries = time.Second, 2
	ts := startServer(t, cfg)
	p := newRawPeer(t)
	huge := bytes.Repeat([]byte{0xff}, 65000)
	hugeRRQ := request(opRRQ, strings.Repeat("A", 60000), "octet")
	garbage := [][]byte{
		{},
		{0},
		{0, opRRQ},
		{0, opRRQ, 'a'},
		[]byte("\x00\x01undionly.kpxe"),        // no NUL, no mode
		[]byte("\x00\x01undionly.kpxe\x00oct"), // mode not terminated
		{0, opRRQ, 0, 0},                       // empty name and mode
		{0, 9, 'h', 'i', 0},                    // unknown opcode
		{0xff, 0xff, 0xff, 0xff},
		ack(1),
		{0, opDATA, 0, 1, 'x'},
		errPacket(0, "boo"),
		{0, opOACK, 'x', 0, 'y', 0},
		huge,
		hugeRRQ,
		request(opRRQ, "undionly.kpxe", "octet", "blksize", "abc"),
		request(opRRQ, "undionly.kpxe", "octet", "blksize", "1"),
		request(opRRQ, "undionly.kpxe", "octet", "blksize", "99999999999999999999"),
		request(opRRQ, "undionly.kpxe", "octet", "tsize", "-5"),
		request(opRRQ, "undionly.kpxe", "octet", "blksize"), // option without value
		request(opRRQ, "undionly.kpxe", "no-such-mode"),
		request(opWRQ, "", ""),
	}
	for _, g := range garbage {
		p.send(ts.addr, g)
	}
	for _, blksize := range []int{0, MaxBlockSize} {
		res, err := fetch(ts.addr, "ipxe.efi", blksize)
		if err != nil {
			t.Fatalf("fetch after garbage (blksize %d): %v", blksize, err)
		}
		if !bytes.Equal(res.data, f.files["ipxe.efi"]) {
			t.Fatalf("fetch after garbage (blksize %d): %d bytes, want %d", blksize, len(res.data), bigSize)
		}
	}
	bad := 0
	for _, r := range ts.logs.records() {
		if r["msg"] == "tftp: bad packet" {
			bad++
		}
	}
	if bad == 0 {
		t.Errorf("no 'tftp: bad packet' debug line after garbage; log:\n%s", ts.logs.String())
	}
}

// TestServeStops checks that Serve and ListenAndServe return when their
// context ends, close their socket, stop transfers in progress, and leave
// no goroutine behind.
func TestServeStops(t *testing.T) {
	f := newFixture(t)
	ignore := goleak.IgnoreCurrent()

	t.Run("Serve", func(t *testing.T) {
		conn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(f.config())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, conn) }()
		if res, err := fetch(conn.LocalAddr().String(), "undionly.kpxe", 0); err != nil || !bytes.Equal(res.data, f.files["undionly.kpxe"]) {
			t.Fatalf("fetch: %d bytes, %v", len(res.data), err)
		}
		if got := s.Addr().String(); got != conn.LocalAddr().String() {
			t.Errorf("Addr() = %s, want %s", got, conn.LocalAddr())
		}
		cancel()
		waitReturn(t, done)
		if _, _, err := conn.ReadFrom(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("after Serve: ReadFrom = %v, want net.ErrClosed", err)
		}
	})

	t.Run("ListenAndServe", func(t *testing.T) {
		s, err := New(f.config())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
		eventually(t, "bind", func() bool { return s.Addr() != nil })
		addr := s.Addr().String()
		if _, err := fetch(addr, "undionly.kpxe", MaxBlockSize); err != nil {
			t.Fatal(err)
		}
		cancel()
		waitReturn(t, done)
		// The port is free again: the socket was closed.
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Errorf("rebinding %s after ListenAndServe: %v", addr, err)
		} else {
			c.Close()
		}
	})

	t.Run("cancelled before start", func(t *testing.T) {
		s, err := New(f.config())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		conn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Serve(ctx, conn); err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
		if _, _, err := conn.ReadFrom(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("after Serve: ReadFrom = %v, want net.ErrClosed", err)
		}
	})

	// Any net.PacketConn, not only a *net.UDPConn: pin/tftp takes another
	// path for it (and then caps blksize at 512), which must serve and
	// stop as well.
	t.Run("wrapped PacketConn", func(t *testing.T) {
		conn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(f.config())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, struct{ net.PacketConn }{conn}) }()
		res, err := fetch(conn.LocalAddr().String(), "ipxe.efi", MaxBlockSize)
		if err != nil || !bytes.Equal(res.data, f.files["ipxe.efi"]) {
			t.Fatalf("fetch: %d bytes, %v", len(res.data), err)
		}
		cancel()
		waitReturn(t, done)
	})

	// A transfer in progress: the client acknowledges after the cancel
	// and gets an error instead of the next block.
	t.Run("transfer in progress", func(t *testing.T) {
		conn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{Roots: f.config().Roots, Timeout: 2 * time.Second, Retries: 2})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, conn) }()
		p := newRawPeer(t)
		p.send(conn.LocalAddr().String(), request(opRRQ, "ipxe.efi", "octet"))
		b, tid := p.recv()
		if binary.BigEndian.Uint16(b) != opDATA {
			t.Fatalf("want DATA 1, got %q", b)
		}
		cancel()
		p.send(tid.String(), ack(1))
		if msg := p.recvError(nil); msg != errShutdown.Error() {
			t.Errorf("after cancel: error %q, want %q", msg, errShutdown)
		}
		waitReturn(t, done)
	})

	// A client that stops answering: Serve returns once the transfer has
	// run out of retries.
	t.Run("silent client", func(t *testing.T) {
		conn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{Roots: f.config().Roots, Timeout: 100 * time.Millisecond, Retries: 2})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, conn) }()
		p := newRawPeer(t)
		p.send(conn.LocalAddr().String(), request(opRRQ, "ipxe.efi", "octet"))
		p.recv()
		cancel()
		waitReturn(t, done)
	})

	goleak.VerifyNone(t, ignore)
}

func waitReturn(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}
