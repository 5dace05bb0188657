package fsm

import (
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Instances: workloads placed on nodes.

func applyInstanceCreate(tx *state.Tx, c *InstanceCreate) (any, error) {
	in := c.Instance
	if !proto.IsUUID(in.UUID) {
		return nil, proto.Errorf(proto.CodeInternal, "instance create without a uuid")
	}
	if err := proto.CheckName("name", in.Name); err != nil {
		return nil, err
	}
	if tx.Instance(in.UUID) != nil || tx.Instance(in.Name) != nil {
		return nil, proto.Errorf(proto.CodeConflict, "instance %q exists", in.Name)
	}
	if tx.Flavor(in.Flavor) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "flavor %q does not exist", in.Flavor)
	}
	if tx.Image(in.Image) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "image %q does not exist", in.Image)
	}
	if in.RescueImage != "" && tx.Image(in.RescueImage) == nil {
		return nil, proto.Errorf(proto.CodeInvalid, "rescue_image %q does not exist", in.RescueImage)
	}
	if in.State == "" {
		in.State = proto.InstanceBuilding
	}
	var node *proto.Node
	if in.Node != "" {
		n, err := findNode(tx, in.Node)
		if err != nil {
			return nil, err
		}
		if n.InstanceUUID != "" {
			return nil, proto.Errorf(proto.CodeConflict, "node %s already holds instance %s", nodeRef(n), n.InstanceUUID)
		}
		// Forcing a node skips the scheduler's filters, never the
		// state checks.
		if n.ProvisionState != proto.StateAvailable {
			return nil, proto.Errorf(proto.CodeWrongState, "cannot place instance %s on node %s: it is %s; instances go on available nodes",
				in.Name, nodeRef(n), n.ProvisionState)
		}
		if n.Maintenance {
			return nil, proto.Errorf(proto.CodeWrongState, "cannot place instance %s on node %s: it is in maintenance", in.Name, nodeRef(n))
		}
		in.Node = n.UUID
		n.InstanceUUID = in.UUID
		n.UpdatedAt = in.CreatedAt
		node = n
	}
	if node != nil {
		tx.PutNode(node)
	}
	tx.PutInstance(&in)
	c2 := in
	return &c2, nil
}

func applyInstanceDelete(tx *state.Tx, c *InstanceDelete) (any, error) {
	in := tx.Instance(c.Ref)
	if in == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "instance %q not found", c.Ref)
	}
	if in.Node != "" {
		if n := tx.Node(in.Node); n != nil && n.InstanceUUID == in.UUID {
			n = n.Clone()
			n.InstanceUUID = ""
			tx.PutNode(n)
		}
	}
	tx.DeleteInstance(in.UUID)
	return nil, nil
}
