package nodeagent

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A fixture is a machine's /sys, /proc and /dev as a txtar archive (see
// testdata/capture.sh for the conventions): "-- path --" is a file,
// "-- path [hex] --" a binary file as hex bytes, "-- path -> target --" a
// symbolic link. It is kept as one text file (and not as a tree) because
// sysfs paths have colons, which Go module zips refuse.

type fixtureEntry struct {
	path, target string // target: for links
	data         []byte
}

// parseFixture parses a fixture archive. Lines before the first header
// are a comment.
func parseFixture(t testing.TB, text string) []fixtureEntry {
	t.Helper()
	var (
		out     []fixtureEntry
		cur     *fixtureEntry
		hexData bool
	)
	flush := func(body []string) {
		if cur == nil {
			return
		}
		data := strings.Join(body, "\n")
		if len(body) > 0 {
			data += "\n"
		}
		if hexData {
			b, err := hex.DecodeString(strings.Join(strings.Fields(data), ""))
			if err != nil {
				t.Fatalf("fixture %s: %v", cur.path, err)
			}
			cur.data = b
		} else {
			cur.data = []byte(data)
		}
		out = append(out, *cur)
	}
	var body []string
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if strings.HasPrefix(line, "-- ") && strings.HasSuffix(line, " --") && len(line) >= 6 {
			flush(body)
			body = nil
			name := line[3 : len(line)-3]
			cur, hexData = &fixtureEntry{}, false
			switch {
			case strings.Contains(name, " -> "):
				cur.path, cur.target, _ = strings.Cut(name, " -> ")
			case strings.HasSuffix(name, " [hex]"):
				cur.path, hexData = strings.TrimSuffix(name, " [hex]"), true
			default:
				cur.path = name
			}
			continue
		}
		if cur != nil {
			body = append(body, line)
		}
	}
	flush(body)
	return out
}

// loadFixture writes testdata/name.txtar into a new directory and
// returns it.
func loadFixture(t testing.TB, name string) string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name+".txtar"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, e := range parseFixture(t, string(text)) {
		p := filepath.Join(root, filepath.FromSlash(e.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if e.target != "" {
			if err := os.Symlink(e.target, p); err != nil {
				t.Fatalf("fixture %s: %v", e.path, err)
			}
			continue
		}
		if err := os.WriteFile(p, e.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestParseFixture(t *testing.T) {
	got := parseFixture(t, "comment\n-- a/b --\nx\n\n-- c [hex] --\n00 ff\n0a\n-- d -> ../e --\n-- f --\n")
	want := []fixtureEntry{
		{path: "a/b", data: []byte("x\n\n")},
		{path: "c", data: []byte{0, 0xff, 0x0a}},
		{path: "d", target: "../e", data: []byte{}},
		{path: "f", data: []byte{}},
	}
	if len(got) != len(want) {
		t.Fatalf("parseFixture = %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].path != want[i].path || got[i].target != want[i].target || string(got[i].data) != string(want[i].data) {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
