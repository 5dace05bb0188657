package httpapi_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/httpapi"
	"github.com/metalfleet/metalfleet/proto"
)

// TestAPIPagination: ?limit and ?after page through a list in its order,
// the next marker in X-Metalfleet-Next (absent on the last page), and a
// list without ?limit answers every item as before.
func TestAPIPagination(t *testing.T) {
	e := startAgentAPI(t)
	const n = 23
	var want []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("node-%02d", i)
		rack := "r1"
		if i%3 == 0 {
			rack = "r2"
		}
		e.createNode(proto.NodeCreate{Name: name, MACs: []string{mac(i + 1)}, Rack: rack})
		want = append(want, name)
	}
	// Every node without ?limit; no next header.
	var all []proto.Node
	r := e.ok(200, "GET", "/v1/nodes", asAdmin, nil, &all)
	if len(all) != n || r.Header.Get(httpapi.NextHeader) != "" {
		t.Fatalf("GET /v1/nodes: %d nodes, next %q; want %d and none", len(all), r.Header.Get(httpapi.NextHeader), n)
	}
	pages := func(query string, limit int) (names []string, count int) {
		t.Helper()
		after := ""
		for count = 0; count < 100; count++ {
			q := url.Values{"limit": {fmt.Sprint(limit)}}
			if after != "" {
				q.Set("after", after)
			}
			var page []proto.Node
			r := e.ok(200, "GET", "/v1/nodes?"+q.Encode()+query, asAdmin, nil, &page)
			if len(page) > limit {
				t.Fatalf("a page of %d nodes for limit %d", len(page), limit)
			}
			for _, nd := range page {
				names = append(names, nd.Name)
			}
			after = r.Header.Get(httpapi.NextHeader)
			if after == "" {
				return names, count + 1
			}
		}
		t.Fatal("more than 100 pages")
		return nil, 0
	}
	for _, limit := range []int{1, 5, 22, 23, 100} {
		got, count := pages("", limit)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("limit %d: paged %v, want %v", limit, got, want)
		}
		if wantPages := (n + limit - 1) / limit; count != wantPages {
			t.Errorf("limit %d: %d pages, want %d", limit, count, wantPages)
		}
	}
	// With a filter.
	got, _ := pages("&rack=r2", 2)
	if len(got) != 8 || got[0] != "node-00" || got[7] != "node-21" {
		t.Errorf("rack r2 paged by 2: %v, want the 8 nodes node-00, node-03 ... node-21", got)
	}
	// A marker stays valid when its node is deleted.
	var first []proto.Node
	r = e.ok(200, "GET", "/v1/nodes?limit=3", asAdmin, nil, &first)
	e.ok(http.StatusNoContent, "DELETE", "/v1/nodes/node-02", asAdmin, nil, nil)
	var next []proto.Node
	e.ok(200, "GET", "/v1/nodes?limit=2&after="+url.QueryEscape(r.Header.Get(httpapi.NextHeader)), asAdmin, nil, &next)
	if len(next) != 2 || next[0].Name != "node-03" {
		t.Errorf("the page after a deleted marker: %+v, want node-03 first", next)
	}

	// Other lists page the same way.
	for i := 0; i < 5; i++ {
		e.ok(http.StatusCreated, "POST", "/v1/racks", asAdmin, proto.Rack{Name: fmt.Sprintf("extra-%d", i)}, nil)
	}
	var racks []proto.Rack
	r = e.ok(200, "GET", "/v1/racks?limit=4", asAdmin, nil, &racks)
	if len(racks) != 4 || racks[0].Name != "extra-0" || r.Header.Get(httpapi.NextHeader) == "" {
		t.Fatalf("racks page 1: %d, next %q", len(racks), r.Header.Get(httpapi.NextHeader))
	}
	r = e.ok(200, "GET", "/v1/racks?limit=4&after="+url.QueryEscape(r.Header.Get(httpapi.NextHeader)), asAdmin, nil, &racks)
	if len(racks) != 3 || racks[0].Name != "extra-4" || racks[2].Name != "r2" || r.Header.Get(httpapi.NextHeader) != "" {
		t.Errorf("racks page 2: %+v, next %q; want extra-4, r1, r2 and no next", racks, r.Header.Get(httpapi.NextHeader))
	}
	var toks []proto.Token
	r = e.ok(200, "GET", "/v1/tokens?limit=1", asAdmin, nil, &toks)
	if len(toks) != 1 || r.Header.Get(httpapi.NextHeader) == "" {
		t.Errorf("tokens?limit=1: %d tokens, next %q", len(toks), r.Header.Get(httpapi.NextHeader))
	}

	e.runErrCases([]errCase{
		{name: "limit 0", method: "GET", path: "/v1/nodes?limit=0", status: 400, code: proto.CodeInvalid, msg: `limit "0": want a whole number from 1 to 10000`},
		{name: "limit not a number", method: "GET", path: "/v1/racks?limit=ten", status: 400, code: proto.CodeInvalid, msg: `limit "ten"`},
		{name: "limit over the max", method: "GET", path: "/v1/nodes?limit=10001", status: 400, code: proto.CodeInvalid, msg: "limit 10001: at most 10000"},
		{name: "a marker we never gave", method: "GET", path: "/v1/nodes?limit=1&after=%25%25", status: 400, code: proto.CodeInvalid, msg: "after"},
	})
}

// TestAPISettingsDiscoveryActive: GET and PATCH /v1/settings say whether
// discovery is active and, if not, why.
func TestAPISettingsDiscoveryActive(t *testing.T) {
	e := startAPI(t)
	var s proto.SettingsView
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_enabled":true}`, &s)
	if !s.DiscoveryEnabled || s.DiscoveryActive || s.DiscoveryInactiveReason != "discovery.kernel is not set; discovery.ramdisk is not set" {
		t.Errorf("enabled without images: %+v, want inactive naming the kernel and ramdisk settings", s)
	}
	e.ok(200, "GET", "/v1/settings", asAdmin, nil, &s)
	if s.DiscoveryActive || !strings.Contains(s.DiscoveryInactiveReason, "discovery.kernel is not set") {
		t.Errorf("GET: %+v, want inactive", s)
	}
	for _, im := range []proto.Image{
		{Name: "dk", Kind: proto.ImageKernel, URL: "http://x/k", SHA256: strings.Repeat("ab", 32)},
		{Name: "dr", Kind: proto.ImageRamdisk, URL: "http://x/r", SHA256: strings.Repeat("cd", 32)},
	} {
		e.ok(http.StatusCreated, "POST", "/v1/images", asAdmin, im, nil)
	}
	e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_kernel":"dk","discovery_ramdisk":"dr"}`, &s)
	if !s.DiscoveryActive || s.DiscoveryInactiveReason != "" {
		t.Errorf("with both images: %+v, want active", s)
	}
	r := e.ok(200, "PATCH", "/v1/settings", asAdmin, `{"discovery_enabled":false}`, &s)
	if s.DiscoveryActive || s.DiscoveryInactiveReason != "discovery.enabled is false" {
		t.Errorf("disabled: %+v", s)
	}
	if strings.Contains(string(r.Body), "discovery_inactive_reason\": \"\"") {
		t.Errorf("an empty reason is written: %s", r.Body)
	}
}

// TestBadPageBeforeBlocking: a bad ?limit on a blocking list read is
// refused at once, not after the read has waited out its ?wait (here 10
// minutes; the client gives up long before).
func TestBadPageBeforeBlocking(t *testing.T) {
	e := startAgentAPI(t)
	req, err := http.NewRequest("GET", e.base+"/v1/nodes?index=999999&wait=10m&limit=abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", bearer(e.admin))
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("a bad page on a blocking read was not refused at once: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
}
