package apiclient

import (
	"context"
	"net/url"
	"time"

	"github.com/metalfleet/metalfleet/proto"
)

// waitQuery is "?wait=D" for d > 0.
func waitQuery(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return "?wait=" + url.QueryEscape(d.String())
}

// SetPower records a power intent on a node; with wait > 0 the answer
// comes when the rack agent's result is in (or the wait ends: Intent.Done
// says which). A request with an id may be retried safely.
func (c *Client) SetPower(ctx context.Context, id string, req proto.PowerRequest, wait time.Duration) (*proto.IntentAccepted, error) {
	var out proto.IntentAccepted
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(id)+"/power"+waitQuery(wait), req, &out)
	return &out, err
}

// SetBootDevice records a boot-device intent on a node, as SetPower.
func (c *Client) SetBootDevice(ctx context.Context, id string, req proto.BootDeviceRequest, wait time.Duration) (*proto.IntentAccepted, error) {
	var out proto.IntentAccepted
	_, err := c.Do(ctx, "PUT", "/v1/nodes/"+esc(id)+"/boot-device"+waitQuery(wait), req, &out)
	return &out, err
}

// ProvisionWait is Provision that, for manage (which verifies the BMC
// first), waits up to wait for the verification's result.
func (c *Client) ProvisionWait(ctx context.Context, id string, target proto.Event, wait time.Duration) (*proto.Node, error) {
	var out proto.Node
	_, err := c.Do(ctx, "POST", "/v1/nodes/"+esc(id)+"/provision"+waitQuery(wait), proto.ProvisionRequest{Target: target}, &out)
	return &out, err
}

// History returns a node's recent events, oldest first.
func (c *Client) History(ctx context.Context, id string) ([]proto.HistoryEvent, error) {
	var out []proto.HistoryEvent
	_, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(id)+"/history", nil, &out)
	return out, err
}
