package httpboot

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

const testToken = "tt-3q9ZkVJ1xQ" // ramdiskNode's

func TestCallbacks(t *testing.T) {
	h := newHarness(t, 1<<20, func(c *Config) { c.CallbackBurst = 1000 }) // not about the rate limit
	h.backend.addNode(ramdiskNode())
	h.backend.addNode(proto.BootNode{UUID: "11111111-2222-4333-8444-555555555555", MACs: []string{"aa:bb:cc:00:00:04"},
		Boot: proto.BootConfig{Kind: proto.BootLocalDisk}})
	h.backend.setDiscovery(discoveryConfig())
	// aa:bb:cc:00:00:01 is served the discovery script; :09 is not.
	if status, _, _ := h.do("GET", "/boot/aa-bb-cc-00-00-01.ipxe", nil, nil); status != 200 {
		t.Fatalf("GET discovery script = %d", status)
	}
	h.reporter.take()

	const body = `{"cpus": {"count": 64}, "memory": {"total_bytes": 549755813888}}`
	const compact = `{"cpus":{"count":64},"memory":{"total_bytes":549755813888}}`
	bearer := func(tok string) string { return "Bearer " + tok }
	tests := []struct {
		name    string
		step    string
		query   string
		hdr     map[string]string
		body    string
		advance time.Duration
		status  int
		code    proto.Code
		report  *proto.AgentReport
	}{
		{name: "good token", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa-bb-cc-00-00-02"},
			body: body, status: 202,
			report: &proto.AgentReport{Kind: proto.ReportCallback, Step: "burnin", MAC: "aa:bb:cc:00:00:02", Node: testNodeID, Data: json.RawMessage(compact)}},
		{name: "good token, mac query, lower-case scheme", step: "burnin", query: "?mac=AABBCC000002",
			hdr:  map[string]string{"Authorization": "bearer " + testToken},
			body: `[1,2]`, status: 202,
			report: &proto.AgentReport{Kind: proto.ReportCallback, Step: "burnin", MAC: "aa:bb:cc:00:00:02", Node: testNodeID, Data: json.RawMessage(`[1,2]`)}},
		{name: "wrong token", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken + "x"), MACHeader: "aa:bb:cc:00:00:02"},
			body: body, status: 401, code: proto.CodeUnauthorized},
		{name: "token of another MAC", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:04"},
			body: body, status: 401, code: proto.CodeUnauthorized},
		{name: "token for an unknown MAC", step: "inventory",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:01"},
			body: body, status: 401, code: proto.CodeUnauthorized},
		{name: "no token for a task", step: "burnin",
			hdr:  map[string]string{MACHeader: "aa:bb:cc:00:00:02"},
			body: body, status: 401, code: proto.CodeUnauthorized},
		{name: "basic auth", step: "burnin",
			hdr:  map[string]string{"Authorization": "Basic Zm9vOmJhcg==", MACHeader: "aa:bb:cc:00:00:02"},
			body: body, status: 401, code: proto.CodeUnauthorized},
		{name: "header and query disagree", step: "burnin", query: "?mac=aa:bb:cc:00:00:04",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: body, status: 400, code: proto.CodeInvalid},
		{name: "no MAC", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken)},
			body: body, status: 400, code: proto.CodeInvalid},
		{name: "bad MAC", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "zz"},
			body: body, status: 400, code: proto.CodeInvalid},
		{name: "bad step", step: "-x",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: body, status: 400, code: proto.CodeInvalid},
		{name: "invalid JSON", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: `{"cpus":`, status: 400, code: proto.CodeInvalid},
		{name: "empty body", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: ``, status: 400, code: proto.CodeInvalid},
		{name: "oversize", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: `"` + strings.Repeat("x", MaxCallbackBytes) + `"`, status: 413, code: proto.CodeTooLarge},
		{name: "just under the limit", step: "burnin",
			hdr:  map[string]string{"Authorization": bearer(testToken), MACHeader: "aa:bb:cc:00:00:02"},
			body: `"` + strings.Repeat("x", MaxCallbackBytes-2) + `"`, status: 202,
			report: &proto.AgentReport{Kind: proto.ReportCallback, Step: "burnin", MAC: "aa:bb:cc:00:00:02", Node: testNodeID, Data: json.RawMessage(`"` + strings.Repeat("x", MaxCallbackBytes-2) + `"`)}},
		{name: "discovery inventory", step: "inventory",
			hdr:  map[string]string{MACHeader: "AA:BB:CC:00:00:01"},
			body: body, status: 202,
			report: &proto.AgentReport{Kind: proto.ReportCallback, Step: "inventory", MAC: "aa:bb:cc:00:00:01", Data: json.RawMessage(compact)}},
		{name: "the same inventory again (a retry): answered, not queued again", step: "inventory",
			hdr:  map[string]string{MACHeader: "AA:BB:CC:00:00:01"},
			body: body, status: 202},
		{name: "another inventory of the same discovery boot", step: "inventory",
			hdr:  map[string]string{MACHeader: "AA:BB:CC:00:00:01"},
			body: `{"cpus":{"count":1}}`, status: 409, code: proto.CodeConflict},
		{name: "discovery inventory from another MAC", step: "inventory",
			hdr:  map[string]string{MACHeader: "aa:bb:cc:00:00:09"},
			body: body, status: 403, code: proto.CodeForbidden},
		{name: "discovery MAC, another step", step: "burnin",
			hdr:  map[string]string{MACHeader: "aa:bb:cc:00:00:01"},
			body: body, status: 403, code: proto.CodeForbidden},
		{name: "discovery inventory, 9 minutes on: taken already", step: "inventory", advance: 9 * time.Minute,
			hdr:  map[string]string{MACHeader: "aa:bb:cc:00:00:01"},
			body: body, status: 409, code: proto.CodeConflict},
		{name: "discovery inventory, 11 minutes on", step: "inventory", advance: 2 * time.Minute,
			hdr:  map[string]string{MACHeader: "aa:bb:cc:00:00:01"},
			body: body, status: 403, code: proto.CodeForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.clock.Advance(tt.advance)
			path := "/v1/callback/" + tt.step + tt.query
			status, got, hdr := h.do("POST", path, tt.hdr, strings.NewReader(tt.body))
			if status != tt.status {
				t.Errorf("POST %s = %d %.200s, want %d", path, status, got, tt.status)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if tt.status == 202 {
				if strings.TrimSpace(got) != `{"accepted":true}` {
					t.Errorf("body = %q, want {\"accepted\":true}", got)
				}
			} else {
				var eb proto.ErrorBody
				if err := json.Unmarshal([]byte(got), &eb); err != nil || eb.Error == nil || eb.Error.Message == "" {
					t.Errorf("error body %q is not {\"error\":{\"code\",\"message\"}}", got)
				} else if eb.Error.Code != tt.code {
					t.Errorf("error code = %q, want %q (%s)", eb.Error.Code, tt.code, eb.Error.Message)
				}
				if strings.Contains(got, testToken) {
					t.Errorf("error body %q shows the token", got)
				}
			}
			reps := h.reporter.take()
			switch {
			case tt.report == nil && len(reps) != 0:
				t.Errorf("reports = %+v, want none", reps)
			case tt.report != nil:
				tt.report.Time = h.clock.Now()
				if len(reps) != 1 || !equalReport(reps[0], *tt.report) {
					t.Errorf("reports = %.300v, want %.300v", reps, *tt.report)
				}
			}
		})
	}
}

// TestCallbackRateLimit: 20 at once from one address, then 10 a second.
func TestCallbackRateLimit(t *testing.T) {
	h := newHarness(t, 1<<20)
	h.backend.addNode(ramdiskNode())
	post := func() int {
		status, body, hdr := h.do("POST", "/v1/callback/burnin",
			map[string]string{"Authorization": "Bearer " + testToken, MACHeader: "aa:bb:cc:00:00:02"}, strings.NewReader(`{}`))
		if status == http.StatusTooManyRequests {
			var eb proto.ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == nil || eb.Error.Code != "rate_limited" {
				t.Errorf("429 body = %q, want a rate_limited error", body)
			}
			if hdr.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		}
		return status
	}
	count := func(n int) (ok, limited int) {
		for range n {
			switch s := post(); s {
			case 202:
				ok++
			case 429:
				limited++
			default:
				t.Fatalf("POST = %d", s)
			}
		}
		return ok, limited
	}
	for _, step := range []struct {
		advance     time.Duration
		n           int
		ok, limited int
	}{
		{0, 25, 20, 5},
		{time.Second, 15, 10, 5},
		{100 * time.Millisecond, 2, 1, 1},
		{time.Hour, 21, 20, 1}, // refilled to the burst, not beyond
	} {
		h.clock.Advance(step.advance)
		ok, limited := count(step.n)
		if ok != step.ok || limited != step.limited {
			t.Errorf("+%s, %d posts: %d accepted, %d limited; want %d, %d", step.advance, step.n, ok, limited, step.ok, step.limited)
		}
	}
	if n := len(h.reporter.take()); n != 51 {
		t.Errorf("%d reports, want 51 (one per accepted callback)", n)
	}
}

func TestLimiterPerKey(t *testing.T) {
	l := newLimiter(1, 2)
	now := time.Unix(0, 0)
	for i, tt := range []struct {
		key  string
		want bool
	}{{"a", true}, {"a", true}, {"a", false}, {"b", true}, {"b", true}, {"b", false}} {
		if got := l.allow(tt.key, now); got != tt.want {
			t.Errorf("%d: allow(%s) = %v, want %v", i, tt.key, got, tt.want)
		}
	}
	// Full buckets are forgotten.
	l.allow("c", now.Add(time.Hour))
	if _, ok := l.buckets["a"]; ok || len(l.buckets) != 1 {
		t.Errorf("after an hour the limiter keeps %d buckets, want only c's", len(l.buckets))
	}
}
