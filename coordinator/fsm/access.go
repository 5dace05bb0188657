package fsm

import (
	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// Access: API tokens and the coordinators recorded in the state.

func applyTokenCreate(tx *state.Tx, c *TokenCreate) (any, error) {
	t := c.Token
	t.SecretHash = c.SecretHash
	if old := tx.Token(t.ID); old != nil {
		if c.IfAbsent && old.SecretHash == c.SecretHash {
			cp := *old
			return &cp, nil
		}
		return nil, proto.Errorf(proto.CodeConflict, "token %s exists", t.ID)
	}
	if t.ID == "" || len(c.SecretHash) != 64 {
		return nil, proto.Errorf(proto.CodeInternal, "token create without id or secret hash")
	}
	if _, ok := tx.TokenByHash(c.SecretHash); ok {
		return nil, proto.Errorf(proto.CodeConflict, "token secret reused")
	}
	if !t.Role.Valid() {
		return nil, proto.Errorf(proto.CodeInvalid, "role %q: want admin, operator, reader or agent", t.Role)
	}
	if t.Role == proto.RoleAgent {
		if t.Rack == "" {
			return nil, proto.Errorf(proto.CodeInvalid, "rack: an agent token is bound to one rack")
		}
		if tx.Rack(t.Rack) == nil {
			return nil, proto.Errorf(proto.CodeInvalid, "rack %q does not exist", t.Rack)
		}
	} else if t.Rack != "" {
		return nil, proto.Errorf(proto.CodeInvalid, "rack: only agent tokens are bound to a rack")
	}
	tx.PutToken(&t)
	cp := t
	return &cp, nil
}

func applyTokenRevoke(tx *state.Tx, c *TokenRevoke) (any, error) {
	t := tx.Token(c.ID)
	if t == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "token %q not found", c.ID)
	}
	if t.Role == proto.RoleAdmin {
		// Checked here, not in the API, so two admins revoking each other
		// at once cannot both succeed and lock everyone out.
		others := false
		tx.EachToken(func(o *proto.Token) { others = others || o.ID != t.ID && o.Role == proto.RoleAdmin })
		if !others {
			return nil, proto.Errorf(proto.CodeConflict, "token %s is the last admin token; create another admin token first", c.ID)
		}
	}
	tx.DeleteToken(c.ID)
	return nil, nil
}

func applyServerPut(tx *state.Tx, c *ServerPut) (any, error) {
	sv := c.Server
	if sv.ID == "" || sv.RaftAddr == "" {
		return nil, proto.Errorf(proto.CodeInvalid, "a server needs an id and a raft address")
	}
	if old := tx.Server(sv.ID); old != nil && old.RaftAddr == sv.RaftAddr && old.HTTPAddr == sv.HTTPAddr {
		cp := *old
		return &cp, nil // unchanged: no write, no wake-up
	}
	tx.PutServer(&sv)
	cp := sv
	return &cp, nil
}

func applyServerRemove(tx *state.Tx, c *ServerRemove) (any, error) {
	if tx.Server(c.ID) != nil {
		tx.DeleteServer(c.ID)
	}
	return nil, nil
}
