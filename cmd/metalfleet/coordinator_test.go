package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestConfigFileFlagsWin(t *testing.T) {
	var f coordinatorFlags
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse([]string{"--node-id", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(path, []byte(`{"node-id": "from-file", "data-dir": "/d", "bootstrap": true, "raft-heartbeat-timeout": "2s"}`), 0o600)
	if err := applyConfigFile(fs, path); err != nil {
		t.Fatal(err)
	}
	if f.nodeID != "from-flag" || f.dataDir != "/d" || !f.bootstrap || f.heartbeat.String() != "2s" {
		t.Fatalf("after config: node-id=%q data-dir=%q bootstrap=%v heartbeat=%s", f.nodeID, f.dataDir, f.bootstrap, f.heartbeat)
	}
	for _, bad := range []string{`{"no-such-flag": 1}`, `{"bootstrap": "maybe"}`, `{"raft-heartbeat-timeout": 5}`, `not json`} {
		var f coordinatorFlags
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		f.register(fs)
		os.WriteFile(path, []byte(bad), 0o600)
		if err := applyConfigFile(fs, path); err == nil {
			t.Errorf("config %s: accepted, want an error", bad)
		}
	}
}

// TestCoordinatorRefusesEmptyDataDir: a server with no state that is told
// neither to bootstrap nor to join says what to do instead of waiting
// forever for a cluster.
func TestCoordinatorRefusesEmptyDataDir(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"coordinator", "--node-id", "a", "--data-dir", t.TempDir()}, "--bootstrap"},
		{[]string{"coordinator", "--data-dir", t.TempDir(), "--bootstrap"}, "node id is required"},
		{[]string{"coordinator", "--node-id", "a", "--data-dir", t.TempDir(), "--join", "http://x"}, "--token-file"},
		{[]string{"coordinator", "--node-id", "a", "--data-dir", t.TempDir(), "--bootstrap", "--log-level", "loud"}, "--log-level"},
	} {
		var out, errb bytes.Buffer
		root := newRoot(&out, &errb)
		root.SetArgs(tc.args)
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one mentioning %s", tc.args, err, tc.want)
		}
	}
}
