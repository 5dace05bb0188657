package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/metalfleet/metalfleet/cluster/raftnode"
	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/proto"
)

// TestAdminTokenNotInJournal: a bootstrapping server whose stdout is not
// a terminal (systemd's journal, a pipe, a file) prints only the path of
// the 0600 file that holds the admin secret; on a terminal it shows the
// secret once.
func TestAdminTokenNotInJournal(t *testing.T) {
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("terminal=%v", tty), func(t *testing.T) {
			old := isTerminal
			isTerminal = func(*os.File) bool { return tty }
			defer func() { isTerminal = old }()

			dir := t.TempDir()
			out, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			s, err := New(Config{NodeID: "s1", DataDir: dir, HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
				Bootstrap: true, Raft: raftnode.TestConfig(), Out: out})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()

			path := filepath.Join(dir, AdminTokenFile)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s mode = %v, want 0600", path, fi.Mode().Perm())
			}
			b, _ := os.ReadFile(path)
			secret := strings.TrimSpace(string(b))
			printed, _ := os.ReadFile(out.Name())
			if !strings.Contains(string(printed), path) {
				t.Fatalf("stdout = %q, want the token file's path %s", printed, path)
			}
			if got := strings.Contains(string(printed), secret); got != tty {
				t.Fatalf("secret on stdout = %v, want %v (stdout: %q)", got, tty, printed)
			}
		})
	}
}

// TestApplyErrorsNever4xx: whatever Raft says about a proposal, the API
// answers 5xx (or times out): a 4xx would tell the client the write was
// not applied, and after these the outcome is unknown.
func TestApplyErrorsNever4xx(t *testing.T) {
	for _, err := range []error{
		raftnode.ErrNotLeader, raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress,
		raft.ErrAbortedByRestore, raft.ErrEnqueueTimeout, raft.ErrRaftShutdown, context.DeadlineExceeded,
		errors.New("disk full"), fmt.Errorf("wrapped: %w", raft.ErrLeadershipLost),
	} {
		got := applyError(err)
		status := proto.CodeOf(got).Status()
		switch {
		case errors.Is(got, httpapi.ErrNotLeader), errors.Is(got, context.DeadlineExceeded):
			// httpapi answers 503 and 504 for these.
		case status < 500:
			t.Errorf("applyError(%v) = %v (%d), want a 5xx", err, got, status)
		}
	}
}
