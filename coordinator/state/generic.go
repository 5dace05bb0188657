package state

import (
	"slices"

	"github.com/metalfleet/metalfleet/proto"
)

// The tables of named objects (racks, flavors, images, tokens, servers)
// share one way to read a copy, list copies in key order under one lock,
// and put or delete with the change's index stamped.

// A table accessor ((*data).racksF) reaches one of data's maps; readers
// apply it to the data current under their lock (a restore swaps data).
func (d *data) racksF() map[string]*proto.Rack     { return d.racks }
func (d *data) flavorsF() map[string]*proto.Flavor { return d.flavors }
func (d *data) imagesF() map[string]*proto.Image   { return d.images }
func (d *data) tokensF() map[string]*proto.Token   { return d.tokens }
func (d *data) serversF() map[string]*proto.Server { return d.servers }

func shallow[T any](v *T) *T { c := *v; return &c }

func cloneRack(r *proto.Rack) *proto.Rack {
	c := *r
	c.DNS = slices.Clone(r.DNS)
	return &c
}

func cloneFlavor(f *proto.Flavor) *proto.Flavor {
	c := *f
	c.RequiredTraits = slices.Clone(f.RequiredTraits)
	return &c
}

// getCopy returns a copy of the object at key, read under the lock.
func getCopy[T any](s *Store, table func(*data) map[string]*T, clone func(*T) *T, key string) (*T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := table(s.d)[key]
	if !ok {
		return nil, false
	}
	return clone(v), true
}

// listCopies returns copies of every object of a table, in key order,
// read under one lock.
func listCopies[T any](s *Store, table func(*data) map[string]*T, clone func(*T) *T) []*T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := table(s.d)
	out := make([]*T, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, clone(m[k]))
	}
	return out
}

// putObj inserts or replaces v at key in m, keeping its create index and
// stamping the change's.
func putObj[T any, P interface {
	*T
	GetMeta() *proto.Meta
}](tx *Tx, m map[string]*T, key string, v P) {
	old, exists := m[key]
	if exists {
		P(v).GetMeta().CreateIndex = P(old).GetMeta().CreateIndex
	}
	tx.stamp(v.GetMeta(), !exists)
	m[key] = (*T)(v)
}

// deleteObj removes key from m.
func deleteObj[T any](tx *Tx, m map[string]*T, key string) {
	if _, ok := m[key]; ok {
		delete(m, key)
		tx.changed = true
	}
}
