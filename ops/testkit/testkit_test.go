package testkit

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestEventuallyEvery checks the condition at the interval asked for,
// not every Poll.
func TestEventuallyEvery(t *testing.T) {
	calls := 0
	took := EventuallyEvery(t, 5*time.Second, 100*time.Millisecond, "third check", func() bool {
		calls++
		return calls == 3
	})
	if calls != 3 || took < 200*time.Millisecond {
		t.Fatalf("true on the third check after %s (%d checks); want at least 200ms between the first and the third", took, calls)
	}
}

// TestBinaryPerTest: without Main, Binary builds into the test's own
// temporary directory, which the test removes.
func TestBinaryPerTest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds metalfleet")
	}
	t.Setenv("METALFLEET_BIN", "")
	var path string
	t.Run("build", func(t *testing.T) {
		path = Binary(t)
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(path) != "metalfleet" {
			t.Fatalf("built %s", path)
		}
	})
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Fatalf("%s left behind after the test (stat: %v)", filepath.Dir(path), err)
	}
}
