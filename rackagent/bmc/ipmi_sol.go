package bmc

// IPMI Serial-over-LAN: a second RMCP+ session (so power polling goes on
// beside a console) with the SOL payload activated, streamed by go-ipmi's
// SOLStream.

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/transport"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/metalfleet/metalfleet/proto"
)

// solPollInterval is how often an idle console asks the BMC for output.
const solPollInterval = 50 * time.Millisecond

// solConsole is an active SOL payload: Read is the console's output,
// Write its keyboard; Close deactivates the payload and ends the session.
type solConsole struct {
	c         *client.Client
	connected time.Time // when c connected (its keepalive's clock)
	cancel    context.CancelFunc
	done      chan struct{}
	outR      *io.PipeReader
	inW       *io.PipeWriter

	closeOnce sync.Once
	err       error // the stream's end, once done is closed
}

func (d *ipmiDriver) openSOL(ctx context.Context) (io.ReadWriteCloser, error) {
	// Share the polling session's cipher choice: connect decides it.
	if err := d.connect(ctx); err != nil {
		return nil, classify("connect", err, true)
	}
	c, err := d.newClient()
	if err != nil {
		return nil, classify("console", err, false)
	}
	c.WithCipherSuiteID(d.suite)
	if err := c.Connect(ctx); err != nil {
		closeClient(c, false) // no keepalive yet: it starts once connected
		return nil, classify("connect", err, true)
	}
	connected := time.Now()
	if _, err := c.ActivatePayload(ctx, &transport.ActivatePayloadRequest{
		PayloadType:     types.PayloadTypeSOL,
		PayloadInstance: 1,
	}); err != nil {
		closeWhenSafe(c, connected, true)
		return nil, classify("console", err, false)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	runCtx, cancel := context.WithCancel(context.Background())
	s := &solConsole{c: c, connected: connected, cancel: cancel, done: make(chan struct{}), outR: outR, inW: inW}
	go func() {
		defer close(s.done)
		s.err = c.SOLStream(runCtx, inR, outW, &client.SOLStreamOptions{PollInterval: solPollInterval})
		if s.err == nil || errors.Is(s.err, context.Canceled) {
			_ = outW.Close() // readers see EOF
		} else {
			_ = outW.CloseWithError(&Error{Op: "console", Kind: KindOf(classify("console", s.err, false)), Err: s.err})
		}
		_ = inR.Close()
	}()
	return s, nil
}

func (s *solConsole) Read(p []byte) (int, error) { return s.outR.Read(p) }

func (s *solConsole) Write(p []byte) (int, error) {
	select {
	case <-s.done:
		return 0, &Error{Op: "console", Kind: proto.BMCErrUnreachable, Err: errors.New("the SOL session has ended")}
	default:
	}
	return s.inW.Write(p)
}

// Close stops the stream, deactivates the payload and closes the session.
func (s *solConsole) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		_ = s.inW.Close()
		_ = s.outR.Close()
		<-s.done
		ctx, cancel := context.WithTimeout(context.Background(), ipmiCloseTimeout)
		defer cancel()
		_, _ = s.c.DeactivatePayload(ctx, &transport.DeactivatePayloadRequest{
			PayloadType:     types.PayloadTypeSOL,
			PayloadInstance: 1,
		})
		closeWhenSafe(s.c, s.connected, true)
	})
	return nil
}
