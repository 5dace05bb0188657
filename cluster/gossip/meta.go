package gossip

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/hashicorp/memberlist"
)

// Roles a member announces in Meta.Role.
const (
	RoleCoordinator = "coordinator"
	RoleAgent       = "agent"
)

// MetaMaxSize is the largest encoded Meta memberlist carries (its node
// metadata limit).
const MetaMaxSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is returned (wrapped) by New and UpdateMeta for a Meta
// whose encoding exceeds MetaMaxSize.
var ErrMetaTooLarge = errors.New("gossip: meta too large")

// Meta is what a member tells the others about itself. It travels as
// compact JSON in memberlist's node metadata; unknown fields are ignored
// when decoding, so fields can be added without breaking older members.
type Meta struct {
	// Role is RoleCoordinator or RoleAgent.
	Role string `json:"role"`
	// Rack is the rack an agent serves ("" for coordinators).
	Rack string `json:"rack,omitempty"`
	// API is the member's HTTP address, host:port.
	API string `json:"api,omitempty"`
	// Version is the software version the member runs.
	Version string `json:"ver,omitempty"`
	// Leader is, for coordinators, the API address of the current Raft
	// leader as this coordinator sees it; "" if it knows none.
	Leader string `json:"leader,omitempty"`
}

// encode validates m and returns its wire form.
func (m Meta) encode() ([]byte, error) {
	switch m.Role {
	case RoleCoordinator, RoleAgent:
	default:
		return nil, fmt.Errorf("gossip: meta role %q, want %q or %q", m.Role, RoleCoordinator, RoleAgent)
	}
	for _, f := range []struct{ name, v string }{{"api", m.API}, {"leader", m.Leader}} {
		if f.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(f.v); err != nil {
			return nil, fmt.Errorf("gossip: meta %s %q is not host:port: %w", f.name, f.v, err)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("gossip: encode meta: %w", err)
	}
	if len(b) > MetaMaxSize {
		return nil, fmt.Errorf("%w: encodes to %d bytes, memberlist allows at most %d", ErrMetaTooLarge, len(b), MetaMaxSize)
	}
	return b, nil
}

// decodeMeta parses the wire form; an empty buffer is an empty Meta.
func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("gossip: decode meta: %w", err)
	}
	return m, nil
}
