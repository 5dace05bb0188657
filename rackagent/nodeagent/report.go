package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// MACHeader names the MAC a callback is about; rackagent/httpboot reads
// it (proto.MACHeader).
const MACHeader = proto.MACHeader

// StepInventory is the step a discovery ramdisk reports, without a
// token (proto.StepInventory).
const StepInventory = proto.StepInventory

// Defaults of a Reporter.
const (
	DefaultReportMaxElapsed = 3 * time.Minute
	DefaultInitialBackoff   = 500 * time.Millisecond
	DefaultMaxBackoff       = 15 * time.Second
	DefaultAttemptTimeout   = 30 * time.Second
)

// Clock is what a Reporter waits by; tests use a fake that advances at
// once.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Reporter posts ramdisk callbacks to a rack agent. The zero value uses
// the defaults.
type Reporter struct {
	// Client does the posting (nil: a client with a timeout of
	// DefaultAttemptTimeout per attempt).
	Client *http.Client
	// MaxElapsed bounds the time spent retrying one report (0:
	// DefaultReportMaxElapsed). The context can cut it shorter.
	MaxElapsed time.Duration
	// InitialBackoff and MaxBackoff shape the waits between attempts:
	// doubling from the first to the second, each with up to 20% of
	// jitter, or what the agent's Retry-After asks if longer (0: the
	// defaults).
	InitialBackoff, MaxBackoff time.Duration
	// Log hears each failed attempt (nil: nothing is logged).
	Log *slog.Logger
	// Clock (nil: the real one).
	Clock Clock
}

// Report posts body as JSON to {callbackURL}/{step} with the MAC header
// and, when token is not empty, "Authorization: Bearer token", retrying
// for up to DefaultReportMaxElapsed. See Reporter.Report.
func Report(ctx context.Context, callbackURL, mac, token, step string, body any) error {
	var r Reporter
	return r.Report(ctx, callbackURL, mac, token, step, body)
}

// StatusError is a callback the rack agent answered with an error status.
// It unwraps to the agent's *proto.Error when the body carried one.
type StatusError struct {
	Status int
	Err    *proto.Error // nil when the body was not an API error
	Body   string       // the start of the body otherwise
}

func (e *StatusError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Err.Code, e.Err.Message)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Body)
}

func (e *StatusError) Unwrap() error {
	if e.Err == nil {
		return nil
	}
	return e.Err
}

// Temporary says whether the same callback could succeed later: a
// timeout, too many requests, or a server error. A refusal (wrong token,
// not recently served the discovery script, a bad body) is final.
func (e *StatusError) Temporary() bool {
	return e.Status == http.StatusRequestTimeout || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

var defaultClient = &http.Client{Timeout: DefaultAttemptTimeout}

var stepRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// StepURL joins a callback URL (http://agent:port/v1/callback) and a step.
func StepURL(callbackURL, step string) (string, error) {
	if !stepRE.MatchString(step) {
		return "", fmt.Errorf("step %q: want 1-63 letters, digits, '.', '_' or '-'", step)
	}
	u, err := url.Parse(callbackURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("callback URL %q: want http(s)://HOST[:PORT]/PATH", callbackURL)
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/" + step
	u.RawPath = ""
	return u.String(), nil
}

// Report posts body (marshalled with encoding/json; pass a
// json.RawMessage for JSON already encoded) to {callbackURL}/{step}. It
// retries network errors, 408, 429 and 5xx answers with backoff until
// MaxElapsed or ctx ends, and returns at once on any other refusal (a
// *StatusError). The token is never logged.
func (r *Reporter) Report(ctx context.Context, callbackURL, mac, token, step string, body any) error {
	target, err := StepURL(callbackURL, step)
	if err != nil {
		return err
	}
	mac, err = proto.NormalizeMAC(mac)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encoding the %s report: %w", step, err)
	}
	clock := r.Clock
	if clock == nil {
		clock = realClock{}
	}
	maxElapsed := cmpOr(r.MaxElapsed, DefaultReportMaxElapsed)
	backoff := cmpOr(r.InitialBackoff, DefaultInitialBackoff)
	maxBackoff := cmpOr(r.MaxBackoff, DefaultMaxBackoff)

	start := clock.Now()
	for attempt := 1; ; attempt++ {
		retryAfter, err := r.post(ctx, target, mac, token, payload)
		if err == nil {
			return nil
		}
		var se *StatusError
		if errors.As(err, &se) && !se.Temporary() {
			return fmt.Errorf("POST %s: %w", target, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("POST %s: %w (after %d attempts)", target, err, attempt)
		}
		wait := jitter(backoff)
		if retryAfter > wait {
			wait = retryAfter
		}
		elapsed := clock.Now().Sub(start)
		if elapsed+wait > maxElapsed {
			return fmt.Errorf("POST %s: giving up after %d attempts in %s: %w", target, attempt, elapsed.Round(time.Millisecond), err)
		}
		if r.Log != nil {
			r.Log.Warn("report failed; retrying", "step", step, "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("POST %s: %w (after %d attempts: %v)", target, ctx.Err(), attempt, err)
		case <-clock.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// post makes one attempt. It returns how long a 429 or 503 asked to wait.
func (r *Reporter) post(ctx context.Context, target, mac, token string, payload []byte) (time.Duration, error) {
	client := r.Client
	if client == nil {
		client = defaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "metalfleet-nodeagent/"+Version)
	req.Header.Set(MACHeader, mac)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 == 2 {
		return 0, nil
	}
	se := &StatusError{Status: resp.StatusCode}
	var eb proto.ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		se.Err = eb.Error
	} else {
		se.Body = strings.TrimSpace(string(raw[:min(len(raw), 200)]))
	}
	var retryAfter time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	return retryAfter, se
}

// jitter returns d less up to 20%, so ramdisks that failed together do
// not retry together.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
