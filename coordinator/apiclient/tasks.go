package apiclient

import (
	"context"

	"github.com/metalfleet/metalfleet/proto"
)

// CreateTask starts a servicing task on a node. A request with an id may
// be retried safely: the same id returns the task it created.
func (c *Client) CreateTask(ctx context.Context, node string, req proto.TaskRequest) (*proto.Task, error) {
	var out proto.Task
	_, err := c.Do(ctx, "POST", "/v1/nodes/"+esc(node)+"/tasks", req, &out)
	return &out, err
}

// Tasks lists a node's tasks, newest first.
func (c *Client) Tasks(ctx context.Context, node string) ([]proto.Task, error) {
	var out []proto.Task
	_, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(node)+"/tasks", nil, &out)
	return out, err
}

// Task returns one task of a node.
func (c *Client) Task(ctx context.Context, node, task string) (*proto.Task, error) {
	var out proto.Task
	_, err := c.Do(ctx, "GET", "/v1/nodes/"+esc(node)+"/tasks/"+esc(task), nil, &out)
	return &out, err
}

// AbortTask aborts a node's running task.
func (c *Client) AbortTask(ctx context.Context, node, task string) (*proto.Task, error) {
	var out proto.Task
	_, err := c.Do(ctx, "DELETE", "/v1/nodes/"+esc(node)+"/tasks/"+esc(task), nil, &out)
	return &out, err
}
