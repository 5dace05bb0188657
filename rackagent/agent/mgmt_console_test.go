package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/ops/testkit"
	"github.com/metalfleet/metalfleet/proto"
)

// TestConsoleTicketAuth: the console routes take a console ticket, not a
// bearer token; a malformed one costs no coordinator call; the ticket the
// coordinator answers must be for the route's node and purpose; bad
// tickets from one source are bounded like bad tokens.
func TestConsoleTicketAuth(t *testing.T) {
	const good, logTicket = "1111111111111111111111111111111111111111111111111111111111111111",
		"2222222222222222222222222222222222222222222222222222222222222222"
	var mu sync.Mutex
	redeems := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/agent/console-ticket" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		redeems++
		mu.Unlock()
		var req apiclient.ConsoleTicketRedeem
		json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		switch req.Ticket {
		case good:
			json.NewEncoder(w).Encode(apiclient.ConsoleTicket{Node: "node-a", Rack: "r1", User: "tok (alice)", Mode: "interactive", Purpose: apiclient.PurposeConsole})
		case logTicket:
			json.NewEncoder(w).Encode(apiclient.ConsoleTicket{Node: "node-a", Rack: "r1", User: "tok (alice)", Purpose: apiclient.PurposeLog})
		default:
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(proto.ErrorBody{Error: proto.Errorf(proto.CodeUnauthorized, "console ticket unknown, already used or expired")})
		}
	}))
	defer srv.Close()
	a := runAgent(t, srv.URL)
	get := func(path, auth string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+a.mgmtLn.Addr().String()+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb proto.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		msg := ""
		if eb.Error != nil {
			msg = eb.Error.Message
		}
		return resp.StatusCode, msg
	}
	calls := func() int { mu.Lock(); defer mu.Unlock(); return redeems }

	for _, auth := range []string{"", "Bearer tok", "Ticket short", "Ticket " + strings.Repeat("AB", 32)} {
		if st, msg := get("/v1/console/node-a", auth); st != http.StatusUnauthorized || !strings.Contains(msg, "Ticket") {
			t.Errorf("Authorization %q: %d %q, want 401 asking for a ticket", auth, st, msg)
		}
	}
	if n := calls(); n != 0 {
		t.Fatalf("malformed tickets made %d coordinator calls, want 0", n)
	}
	// Another node's, or another purpose's, ticket.
	if st, msg := get("/v1/console/node-b", "Ticket "+good); st != http.StatusForbidden || !strings.Contains(msg, "node-a") {
		t.Errorf("node-a's ticket on node-b: %d %q, want 403 naming node-a", st, msg)
	}
	if st, msg := get("/v1/console/node-a", "Ticket "+logTicket); st != http.StatusForbidden || !strings.Contains(msg, "log") {
		t.Errorf("a log ticket on the console: %d %q, want 403", st, msg)
	}
	// The node is not in this agent's boot state: a clear refusal, no
	// upgrade.
	if st, msg := get("/v1/console/node-a", "Ticket "+good); st != http.StatusNotFound && st != http.StatusServiceUnavailable {
		t.Errorf("a node the agent does not know: %d %q, want 404 or 503", st, msg)
	}
	if st, msg := get("/v1/console/node-a/log", "Ticket "+logTicket); st != http.StatusNotFound || !strings.Contains(msg, "no console output") {
		t.Errorf("the log of a node never consoled: %d %q, want 404", st, msg)
	}
	// Refused tickets from one source: bounded like bad tokens.
	before := calls()
	limited := 0
	for i := range 100 {
		st, _ := get("/v1/console/node-a", fmt.Sprintf("Ticket %064x", i+1000))
		if st == http.StatusTooManyRequests {
			limited++
		}
	}
	if n := calls() - before; n > mgmtFailBurst+1 || limited == 0 {
		t.Errorf("100 refused tickets: %d coordinator calls (want at most %d), %d answered 429 (want some)", n, mgmtFailBurst+1, limited)
	}
}

// TestConsoleTicketsAtOnce: many fake tickets sent at once from one
// source are charged to its failure budget before the coordinator is
// asked, so at most a burst of them reach it; and ticket redemptions
// share mgmtAuth's slots with token checks, so at most mgmtMaxChecks
// coordinator checks are in flight in all.
func TestConsoleTicketsAtOnce(t *testing.T) {
	const tickets, tokens = 30, mgmtMaxChecks
	var mu sync.Mutex
	inFlight, most, redeems := 0, 0, 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/agent/console-ticket" && r.URL.Path != "/v1/tokens" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		if r.URL.Path == "/v1/agent/console-ticket" {
			redeems++
		}
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(proto.ErrorBody{Error: proto.Errorf(proto.CodeUnauthorized, "unknown")})
	}))
	defer srv.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // before srv.Close, even when the test fails
	a := runAgent(t, srv.URL)

	var finished atomic.Int64
	var wg sync.WaitGroup
	// Admin-token checks from other sources hold coordinator slots too.
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			_ = a.mgmtAuth.check(context.Background(), fmt.Sprintf("token-%d", i), fmt.Sprintf("10.0.3.%d", i))
		}()
	}
	url := "http://" + a.mgmtLn.Addr().String() + "/v1/console/node-a"
	for i := range tickets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("Authorization", fmt.Sprintf("Ticket %064x", i+5000))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := http.DefaultClient.Do(req.WithContext(ctx))
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	// Every request in flight at the coordinator, waiting for a slot or
	// answered (or the cap already broken).
	testkit.Eventually(t, 10*time.Second, "every request in flight, waiting or answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return most > mgmtMaxChecks || int64(inFlight)+a.mgmtAuth.queued.Load()+finished.Load() == tickets+tokens
	})
	free()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if most > mgmtMaxChecks {
		t.Errorf("%d coordinator checks in flight at once, want at most %d", most, mgmtMaxChecks)
	}
	// The budget refills at mgmtFailRate a second: one more for slack.
	if redeems > mgmtFailBurst+1 {
		t.Errorf("%d fake tickets at once from one source: %d coordinator redemptions, want at most %d", tickets, redeems, mgmtFailBurst+1)
	}
}
