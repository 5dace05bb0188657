package httpboot

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// The network burn-in's routes: a task ramdisk measures its throughput
// to the rack agent by reading N bytes from BurninSourcePath and writing
// a body to BurninSinkPath. At most BurninConcurrency transfers run at
// once per agent; one more waits up to BurninQueueWait for a slot (many
// machines burning in at once take turns rather than fail), and past
// that is answered 429 with Retry-After. Each transfer is bounded by
// proto.MaxBurninBytes and by BurninTimeout.

// BurninSinkResult answers POST proto.BurninSinkPath.
type BurninSinkResult struct {
	// Bytes is how many bytes of the body the agent read.
	Bytes int64 `json:"bytes"`
	// Seconds is how long the agent took to read them.
	Seconds float64 `json:"seconds"`
}

// burninChunk is what the source repeats: a fixed pattern, not zeros
// (nothing on the way may compress it to nothing).
var burninChunk = func() []byte {
	b := make([]byte, 64<<10)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}()

// BurninTransfers reports the network burn-in transfers running now and
// those waiting for a slot.
func (s *Server) BurninTransfers() (running, waiting int) {
	return len(s.burnin), int(s.waiting.Load())
}

// burninSlot takes a transfer slot, waiting up to BurninQueueWait for
// one; past it, it answers 429 and returns false.
func (s *Server) burninSlot(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	select {
	case s.burnin <- struct{}{}:
		return func() { <-s.burnin }, true
	default:
	}
	if wait := s.cfg.BurninQueueWait; wait > 0 {
		s.waiting.Add(1)
		defer s.waiting.Add(-1)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case s.burnin <- struct{}{}:
			return func() { <-s.burnin }, true
		case <-r.Context().Done():
			return nil, false
		case <-t.C:
		}
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, proto.Errorf(proto.CodeRateLimited, "%d network burn-in transfers are running on this rack agent, the most it runs at once; retry", cap(s.burnin)))
	return nil, false
}

// handleBurninSource serves GET BurninSourcePath?bytes=N.
func (s *Server) handleBurninSource(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(proto.AgentBootHeader, s.boot)
	_, _, log, ok := s.taskCaller(w, r, s.burninLimit)
	if !ok {
		return
	}
	raw := r.URL.Query().Get("bytes")
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 || n > proto.MaxBurninBytes {
		writeError(w, proto.Errorf(proto.CodeInvalid, "bytes=%q: want a whole number from 0 to %d", truncateQuery(raw), proto.MaxBurninBytes))
		return
	}
	release, ok := s.burninSlot(w, r)
	if !ok {
		return
	}
	defer release()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.BurninTimeout))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	start := time.Now()
	left := n
	for left > 0 {
		c := burninChunk[:min(int64(len(burninChunk)), left)]
		k, err := w.Write(c)
		left -= int64(k)
		if err != nil {
			log.Info("network burn-in source: the client went away", "sent", n-left, "of", n, "err", err)
			return
		}
	}
	log.Debug("network burn-in source done", "bytes", n, "took", time.Since(start))
}

// handleBurninSink serves POST BurninSinkPath.
func (s *Server) handleBurninSink(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(proto.AgentBootHeader, s.boot)
	_, _, log, ok := s.taskCaller(w, r, s.burninLimit)
	if !ok {
		return
	}
	if r.ContentLength > proto.MaxBurninBytes {
		writeError(w, proto.Errorf(proto.CodeTooLarge, "the body is %d bytes; at most %d", r.ContentLength, proto.MaxBurninBytes))
		return
	}
	release, ok := s.burninSlot(w, r)
	if !ok {
		return
	}
	defer release()
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.BurninTimeout))
	start := time.Now()
	n, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, proto.MaxBurninBytes))
	took := time.Since(start)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, proto.Errorf(proto.CodeTooLarge, "the body is over %d bytes", proto.MaxBurninBytes))
		return
	case err != nil:
		log.Info("network burn-in sink: reading the body failed", "read", n, "err", err)
		writeError(w, proto.Errorf(proto.CodeInvalid, "reading the body: %v (after %d bytes)", err, n))
		return
	}
	log.Debug("network burn-in sink done", "bytes", n, "took", took)
	writeJSON(w, http.StatusOK, BurninSinkResult{Bytes: n, Seconds: took.Seconds()})
}

func truncateQuery(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
