package httpboot

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/metalfleet/metalfleet/proto"
)

// BenchmarkArtifact serves cached artifacts over loopback: 50 concurrent
// fetches of a 30 MiB artifact, and a single 64 MiB fetch. MB/s counts
// the bytes every client received.
func BenchmarkArtifact(b *testing.B) {
	const mib = 1 << 20
	be := newFakeBackend()
	cache, err := NewCache(CacheConfig{Dir: b.TempDir(), MaxBytes: 128 * mib})
	if err != nil {
		b.Fatal(err)
	}
	src := b.TempDir()
	artifact := func(name string, size int) proto.Artifact {
		data := content(byte(size), size)
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		a := proto.Artifact{Name: name, URL: "file://" + p, SHA256: sum(data), Size: int64(size)}
		if _, err := cache.Ensure(context.Background(), a); err != nil {
			b.Fatal(err)
		}
		be.addArtifact(a)
		return a
	}
	a30, a64 := artifact("a30", 30*mib), artifact("a64", 64*mib)

	ts := httptest.NewServer(New(Config{Backend: be, Cache: cache, BaseURL: "http://127.0.0.1"}).Handler())
	defer ts.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	defer client.CloseIdleConnections()
	fetch := func(a proto.Artifact) error {
		resp, err := client.Get(ts.URL + "/artifacts/" + a.SHA256 + "?node=" + testNodeID)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || n != a.Size {
			return fmt.Errorf("GET %s = %d, %d bytes; want 200, %d", a.Name, resp.StatusCode, n, a.Size)
		}
		return nil
	}

	b.Run("concurrent50x30MiB", func(b *testing.B) {
		const clients = 50
		b.SetBytes(clients * a30.Size)
		for b.Loop() {
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for range clients {
				wg.Go(func() { errs <- fetch(a30) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("single64MiB", func(b *testing.B) {
		b.SetBytes(a64.Size)
		for b.Loop() {
			if err := fetch(a64); err != nil {
				b.Fatal(err)
			}
		}
	})
}
