package tftp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	ptftp "github.com/pin/tftp/v3"

	"github.com/metalfleet/metalfleet/ops/testkit"
)

const (
	benchSize   = 64 << 20
	initrdSize  = 30 << 20
	concurrency = 50
)

// BenchmarkTFTP fetches a 64 MiB file over loopback with blksize 1468
// through pin/tftp's client, from our server and, when tftpd-hpa is
// installed, from Debian's in.tftpd serving the same directory, so the two
// are compared in one run. MB/s is the file's bytes per second.
func BenchmarkTFTP(b *testing.B) {
	root := filepath.Join(b.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		b.Fatal(err)
	}
	// in.tftpd serves only world-readable files unless --permissive.
	for name, data := range map[string][]byte{"big.bin": randomBytes(7, benchSize), "initrd.img": randomBytes(8, initrdSize), "ready": []byte("ok")} {
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("server=metalfleet", func(b *testing.B) {
		s, err := New(Config{Roots: []string{root}})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				b.Errorf("ListenAndServe: %v", err)
			}
		}()
		if err := waitReady(func() string {
			if a := s.Addr(); a != nil {
				return a.String()
			}
			return ""
		}); err != nil {
			b.Fatal(err)
		}
		benchAll(b, s.Addr().String())
	})

	b.Run("server=in.tftpd", func(b *testing.B) {
		bin, err := exec.LookPath("in.tftpd")
		if err != nil {
			b.Skip("in.tftpd not installed (apt-get install tftpd-hpa)")
		}
		u, err := user.Current()
		if err != nil {
			b.Fatal(err)
		}
		addr := freeUDPAddr(b)
		var stderr bytes.Buffer
		// --secure chroots into root (which needs root); --user keeps
		// the current user so the file stays readable; --blocksize
		// caps blksize as ours does.
		cmd := exec.Command(bin, "--foreground", "--address", addr, "--secure",
			"--user", u.Username, "--blocksize", strconv.Itoa(MaxBlockSize), root)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pid := cmd.Process.Pid
		defer func() {
			// Stop it by its pid, then reap it.
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				b.Errorf("kill %d: %v", pid, err)
			}
			cmd.Wait()
		}()
		if err := waitReady(func() string { return addr }); err != nil {
			b.Fatalf("%v; in.tftpd said: %s", err, stderr.Bytes())
		}
		benchAll(b, addr)
	})
}

// benchAll runs the two shapes the rack agent sees: one large file, and
// a rack's worth of nodes fetching the same initrd at once.
func benchAll(b *testing.B, addr string) {
	b.Run("file=64MiB", func(b *testing.B) { benchFetch(b, addr, "big.bin", benchSize, 1) })
	b.Run("file=30MiB/clients=50", func(b *testing.B) { benchFetch(b, addr, "initrd.img", initrdSize, concurrency) })
}

func benchFetch(b *testing.B, addr, name string, size int64, clients int) {
	b.SetBytes(size * int64(clients))
	for b.Loop() {
		errc := make(chan error, clients)
		for i := 0; i < clients; i++ {
			go func() {
				c, err := ptftp.NewClient(addr)
				if err != nil {
					errc <- err
					return
				}
				c.SetBlockSize(MaxBlockSize)
				c.RequestTSize(true)
				c.SetTimeout(5 * time.Second)
				wt, err := c.Receive(name, "octet")
				if err != nil {
					errc <- err
					return
				}
				n, err := wt.WriteTo(io.Discard)
				if err == nil && n != size {
					err = errors.New("short transfer")
				}
				errc <- err
			}()
		}
		for i := 0; i < clients; i++ {
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		}
	}
}

// waitReady polls a small fetch until the server at addr() answers.
func waitReady(addr func() string) error {
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(testkit.Poll)
	defer tick.Stop()
	for {
		if a := addr(); a != "" {
			c, err := ptftp.NewClient(a)
			if err != nil {
				return err
			}
			c.SetTimeout(200 * time.Millisecond)
			c.SetRetries(1)
			if wt, err := c.Receive("ready", "octet"); err == nil {
				if _, err := wt.WriteTo(io.Discard); err == nil {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return errors.New("server did not become ready")
		}
		<-tick.C
	}
}

// freeUDPAddr returns a loopback address with a UDP port that was free a
// moment ago, for a server that cannot report the port it bound.
func freeUDPAddr(b *testing.B) string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}
