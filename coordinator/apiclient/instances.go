package apiclient

import (
	"context"

	"github.com/metalfleet/metalfleet/proto"
)

// CreateInstance places an instance (on the node the scheduler picks, or
// on req.Node for an administrator). A request with an id may be retried.
func (c *Client) CreateInstance(ctx context.Context, req proto.InstanceRequest) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "POST", "/v1/instances", req, &out)
	return &out, err
}

// DeleteInstance deletes an instance: gone at once when queued, else
// deleting while its node is cleaned. It answers the instance as the
// delete left it.
func (c *Client) DeleteInstance(ctx context.Context, id string) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "DELETE", "/v1/instances/"+esc(id), nil, &out)
	return &out, err
}

// PatchInstance changes an instance's rescue image.
func (c *Client) PatchInstance(ctx context.Context, id string, p proto.InstancePatch) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "PATCH", "/v1/instances/"+esc(id), p, &out)
	return &out, err
}

// RescueInstance boots an instance's node into a rescue image.
func (c *Client) RescueInstance(ctx context.Context, id string, req proto.RescueRequest) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "POST", "/v1/instances/"+esc(id)+"/rescue", req, &out)
	return &out, err
}

// UnrescueInstance restores an instance's boot config and boots its disk.
func (c *Client) UnrescueInstance(ctx context.Context, id string) (*proto.Instance, error) {
	var out proto.Instance
	_, err := c.Do(ctx, "POST", "/v1/instances/"+esc(id)+"/unrescue", struct{}{}, &out)
	return &out, err
}
