package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestDevMode runs `metalfleet dev` as a newcomer would (on free ports):
// the simulated machines PXE-boot through the rack agent, report their
// inventory and end up enrolled nodes with the inventory they reported;
// a second run finds the same state and the machines boot their disks.
func TestDevMode(t *testing.T) {
	dir := t.TempDir()
	api := freeAddr(t, "tcp")
	args := []string{"dev", "--data-dir", dir, "--http-addr", api, "--raft-addr", freeAddr(t, "tcp"),
		"--agent-http-addr", freeAddr(t, "tcp"), "--dhcp-addr", freeAddr(t, "udp"), "--tftp-addr", freeAddr(t, "udp"), "--machines", "3"}
	run := func(want string) string {
		t.Helper()
		out := &lockedBuf{}
		root := newRoot(out, out)
		root.SetArgs(args)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(ctx) }()
		deadline := time.Now().Add(60 * time.Second)
		for strings.Count(out.String(), want) < 3 {
			if time.Now().After(deadline) {
				cancel()
				<-done
				t.Fatalf("dev mode: no %q for every machine within 60s; output:\n%s", want, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("dev mode returned %v; output:\n%s", err, out)
		}
		return out.String()
	}
	out := run("discovered as node")
	if !strings.Contains(out, "METALFLEET_TOKEN=") {
		t.Fatalf("dev mode does not print how to reach it:\n%s", out)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "coordinator", "admin.token"))
	run("known node, booted its local disk")

	// The state is still there and right: start dev once more and read it.
	outBuf := &lockedBuf{}
	root := newRoot(outBuf, outBuf)
	root.SetArgs(append(append([]string{}, args...), "--machines", "0"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() { cancel(); <-done }()
	c := apiclient.New(api, strings.TrimSpace(string(tok)))
	var nodes []*proto.Node
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if nodes, _, err = c.Nodes(context.Background(), nil); err == nil && len(nodes) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes after dev: %d, %v", len(nodes), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range nodes {
		if n.ProvisionState != proto.StateEnrolled || !strings.HasPrefix(n.Name, "sim-") || len(n.Inventory) == 0 || n.IP == "" || n.Rack != "dev" {
			t.Errorf("node after dev mode: %s %s state=%s ip=%s rack=%s inventory=%d bytes", n.Name, n.UUID, n.ProvisionState, n.IP, n.Rack, len(n.Inventory))
		}
	}
}
