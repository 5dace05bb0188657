package gossip

import (
	"encoding/binary"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate is memberlist's Delegate: it hands out this member's encoded
// Meta and carries leave intents, the one user message of this package.
type delegate struct{ g *Gossip }

// msgLeaveIntent is followed by an 8-byte nonce and the leaving node's
// name. memberlist tells "left" from "dead" internally but does not say
// which to its delegates (see events), so a member about to Leave
// gossips this first and everyone who hears it records the node as left
// when memberlist then reports it gone.
const msgLeaveIntent byte = 1

func (d delegate) NodeMeta(limit int) []byte {
	b := *d.g.meta.Load()
	if len(b) > limit { // cannot happen: encode checks MetaMaxSize
		return nil
	}
	return b
}

func (d delegate) NotifyMsg(b []byte) { d.g.handleMsg(b) }

func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.g.bcast.GetBroadcasts(overhead, limit)
}

func (d delegate) LocalState(join bool) []byte            { return nil }
func (d delegate) MergeRemoteState(buf []byte, join bool) {}

// leaveBroadcast is one leave intent in the broadcast queue; a newer one
// for the same node replaces it.
type leaveBroadcast struct {
	node string
	msg  []byte
}

func (b *leaveBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*leaveBroadcast)
	return ok && ob.node == b.node
}
func (b *leaveBroadcast) Name() string    { return "leave/" + b.node }
func (b *leaveBroadcast) Message() []byte { return b.msg }
func (b *leaveBroadcast) Finished()       {}

func leaveIntent(nonce uint64, node string) []byte {
	msg := make([]byte, 9, 9+len(node))
	msg[0] = msgLeaveIntent
	binary.BigEndian.PutUint64(msg[1:9], nonce)
	return append(msg, node...)
}

// handleMsg records a leave intent heard from the cluster and passes it
// on once (memberlist reuses b: it is copied).
func (g *Gossip) handleMsg(b []byte) {
	if len(b) < 10 || b[0] != msgLeaveIntent {
		g.log.Debug("gossip: ignoring unknown user message", "len", len(b))
		return
	}
	nonce := binary.BigEndian.Uint64(b[1:9])
	node := string(b[9:])
	now := time.Now()

	g.mu.Lock()
	if _, dup := g.seen[nonce]; dup {
		g.mu.Unlock()
		return
	}
	g.seen[nonce] = now
	g.leaving[node] = now
	// The intent may arrive after memberlist reported the node gone.
	if m := g.nodes[node]; m != nil && m.State == StateDead && now.Sub(m.LastChange) < g.reapAfter {
		m.State = StateLeft
		g.publishLocked(now)
	}
	g.mu.Unlock()

	g.log.Debug("gossip: member announced leave", "member", node)
	g.bcast.QueueBroadcast(&leaveBroadcast{node: node, msg: leaveIntent(nonce, node)})
}
