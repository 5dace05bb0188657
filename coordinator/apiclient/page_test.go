package apiclient_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// TestPages pages through a real coordinator's node list.
func TestPages(t *testing.T) {
	c, ctx, _ := start(t)
	for i := 0; i < 7; i++ {
		if _, err := c.CreateNode(ctx, proto.NodeCreate{Name: fmt.Sprintf("n%d", i), MACs: []string{fmt.Sprintf("52:54:00:00:01:%02x", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ pageSize, max, want int }{{2, 0, 7}, {3, 0, 7}, {0, 0, 7}, {2, 5, 5}, {10, 3, 3}} {
		nodes, err := apiclient.Pages[*proto.Node](ctx, c, "/v1/nodes", nil, tc.pageSize, tc.max)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != tc.want {
			t.Errorf("Pages(page %d, max %d): %d nodes, want %d", tc.pageSize, tc.max, len(nodes), tc.want)
			continue
		}
		for i, n := range nodes {
			if n.Name != fmt.Sprintf("n%d", i) {
				t.Errorf("Pages(page %d, max %d): node %d is %s, want n%d", tc.pageSize, tc.max, i, n.Name, i)
			}
		}
	}
	page, next, err := apiclient.Page[*proto.Node](ctx, c, "/v1/nodes", url.Values{"enrolled": {"true"}}, "", 4)
	if err != nil || len(page) != 4 || next == "" {
		t.Fatalf("Page(limit 4): %d nodes, next %q, err %v; want 4 and a marker", len(page), next, err)
	}
	page, next, err = apiclient.Page[*proto.Node](ctx, c, "/v1/nodes", url.Values{"enrolled": {"true"}}, next, 4)
	if err != nil || len(page) != 3 || next != "" || page[0].Name != "n4" {
		t.Errorf("Page(after the first 4): %d nodes, next %q, err %v; want n4-n6 and no marker", len(page), next, err)
	}
}
