package state

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/metalfleet/metalfleet/proto"
)

// snapshotVersion is written in the first record of every snapshot.
const snapshotVersion = 1

// Snapshot is a point-in-time view of the store that can be written out
// while the FSM keeps applying. Stored objects are never changed in place
// (the FSM copies before it changes), so copying the maps is enough.
type Snapshot struct{ d *data }

// Snapshot takes a point-in-time view. It is cheap: it copies map entries,
// not objects.
func (s *Store) Snapshot() *Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := *s.d
	d.nodes = maps.Clone(s.d.nodes)
	d.racks = maps.Clone(s.d.racks)
	d.flavors = maps.Clone(s.d.flavors)
	d.images = maps.Clone(s.d.images)
	d.instances = maps.Clone(s.d.instances)
	d.tokens = maps.Clone(s.d.tokens)
	d.servers = maps.Clone(s.d.servers)
	d.agentSeqs = maps.Clone(s.d.agentSeqs) // values are replaced, never changed
	d.sightings = maps.Clone(s.d.sightings)
	d.tickets = cloneTickets(s.d.tickets)
	d.history = maps.Clone(s.d.history) // a node's slice is replaced or appended past the copy's length, never changed within it
	d.tasks = maps.Clone(s.d.tasks)     // values are replaced, never changed
	d.nodeTasks = make(map[string][]string, len(s.d.nodeTasks))
	for k, v := range s.d.nodeTasks {
		d.nodeTasks[k] = slices.Clone(v)
	}
	d.leases = make(map[string]map[string]*proto.Lease, len(s.d.leases))
	for r, m := range s.d.leases {
		d.leases[r] = maps.Clone(m)
	}
	// Indexes are rebuilt on restore, not written.
	d.nodeByIP, d.rackIdx, d.nodeOrder, d.nodeByIdent, d.identOf, d.sightAge, d.ipHint, d.rackOrder = nil, nil, nil, nil, nil, nil, nil, nil
	return &Snapshot{d: &d}
}

// record is one line of a snapshot: a type tag and one object.
type record struct {
	T string          `json:"t"`
	V json.RawMessage `json:"v"`
}

type header struct {
	Version int    `json:"version"`
	Index   uint64 `json:"index"`
}

// tokenRecord carries the secret hash that proto.Token keeps out of JSON.
type tokenRecord struct {
	proto.Token
	SecretHash string `json:"secret_hash"`
}

type leaseRecord struct {
	Rack string `json:"rack"`
	proto.Lease
}

// WriteTo writes the snapshot as JSON lines, one typed record at a time.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	cw := &countWriter{w: bw}
	// Each record is the line json.Encoder would write for record{t, v},
	// put together by hand: v is marshalled (and so validated and
	// compacted) once, not a second time as a json.RawMessage.
	put := func(t string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", t, err)
		}
		if _, err := cw.Write([]byte(`{"t":"` + t + `","v":`)); err != nil {
			return err
		}
		if _, err := cw.Write(b); err != nil {
			return err
		}
		_, err = cw.Write([]byte("}\n"))
		return err
	}
	d := sn.d
	if err := put("header", header{Version: snapshotVersion, Index: d.index}); err != nil {
		return cw.n, err
	}
	if err := put("settings", d.settings); err != nil {
		return cw.n, err
	}
	for _, k := range sortedKeys(d.racks) {
		if err := put("rack", d.racks[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.images) {
		if err := put("image", d.images[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.flavors) {
		if err := put("flavor", d.flavors[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.nodes) {
		if err := put("node", d.nodes[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.instances) {
		if err := put("instance", d.instances[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.tokens) {
		t := d.tokens[k]
		if err := put("token", tokenRecord{Token: *t, SecretHash: t.SecretHash}); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.servers) {
		if err := put("server", d.servers[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.sightings) {
		if err := put("sighting", d.sightings[k]); err != nil {
			return cw.n, err
		}
	}
	for _, r := range sortedKeys(d.leases) {
		for _, ip := range sortedKeys(d.leases[r]) {
			if err := put("lease", leaseRecord{Rack: r, Lease: *d.leases[r][ip]}); err != nil {
				return cw.n, err
			}
		}
	}
	for _, k := range sortedKeys(d.agentSeqs) {
		if err := put("agentseq", d.agentSeqs[k]); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.history) {
		if err := put("history", historyRecord{Node: k, Events: d.history[k]}); err != nil {
			return cw.n, err
		}
	}
	for _, node := range sortedKeys(d.nodeTasks) {
		for _, id := range d.nodeTasks[node] {
			t := d.tasks[id]
			if err := put("task", taskRecord{Task: *t, TokenHash: t.TokenHash}); err != nil {
				return cw.n, err
			}
		}
	}
	if len(d.taskKey) > 0 {
		if err := put("taskkey", taskKeyRecord{Key: d.taskKey}); err != nil {
			return cw.n, err
		}
	}
	for _, k := range sortedKeys(d.tickets) {
		if err := put("ticket", d.tickets[k]); err != nil {
			return cw.n, err
		}
	}
	if err := put("end", struct{}{}); err != nil {
		return cw.n, err
	}
	return cw.n, bw.Flush()
}

// Restore reads a snapshot written by WriteTo into a fresh data set and
// swaps it in whole; on any error the store is left as it was.
func (s *Store) Restore(r io.Reader) error {
	d := newData()
	br := bufio.NewReaderSize(r, 1<<16)
	tx := &Tx{d: d}
	sawHeader, sawEnd := false, false
	for !sawEnd {
		rec, err := readRecord(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("snapshot ends before its end record")
			}
			return fmt.Errorf("snapshot: %w", err)
		}
		if !sawHeader && rec.T != "header" {
			return fmt.Errorf("snapshot starts with %q, want header", rec.T)
		}
		switch rec.T {
		case "header":
			var h header
			if err = json.Unmarshal(rec.V, &h); err == nil {
				if h.Version != snapshotVersion {
					return fmt.Errorf("snapshot version %d, this build reads %d", h.Version, snapshotVersion)
				}
				d.index, sawHeader = h.Index, true
			}
		case "settings":
			err = json.Unmarshal(rec.V, &d.settings)
		case "rack":
			v := new(proto.Rack)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.racks[v.Name] = v
			}
		case "image":
			v := new(proto.Image)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.images[v.Name] = v
			}
		case "flavor":
			v := new(proto.Flavor)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.flavors[v.Name] = v
			}
		case "node":
			v := new(proto.Node)
			if err = json.Unmarshal(rec.V, v); err == nil {
				meta := v.Meta
				tx.PutNode(v)
				v.Meta = meta
			}
		case "instance":
			v := new(proto.Instance)
			if err = json.Unmarshal(rec.V, v); err == nil {
				meta := v.Meta
				tx.PutInstance(v)
				v.Meta = meta
			}
		case "token":
			var v tokenRecord
			if err = json.Unmarshal(rec.V, &v); err == nil {
				t := v.Token
				t.SecretHash = v.SecretHash
				d.tokens[t.ID] = &t
				d.tokenByHash[t.SecretHash] = t.ID
			}
		case "server":
			v := new(proto.Server)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.servers[v.ID] = v
			}
		case "sighting":
			v := new(proto.Sighting)
			if err = json.Unmarshal(rec.V, v); err == nil {
				meta := v.Meta
				tx.PutSighting(v)
				v.Meta = meta
			}
		case "lease":
			var v leaseRecord
			if err = json.Unmarshal(rec.V, &v); err == nil {
				if d.leases[v.Rack] == nil {
					d.leases[v.Rack] = map[string]*proto.Lease{}
				}
				l := v.Lease
				d.leases[v.Rack][l.IP] = &l
			}
		case "report":
			// Report ids of the global window that agentseq replaced:
			// an agent that sends ids only is refused now, so they
			// are of no use.
		case "agentseq":
			v := new(AgentSeq)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.agentSeqs[v.Rack+"/"+v.Agent] = v
			}
		case "history":
			var v historyRecord
			if err = json.Unmarshal(rec.V, &v); err == nil && len(v.Events) > 0 {
				d.history[v.Node] = v.Events
			}
		case "task":
			var v taskRecord
			if err = json.Unmarshal(rec.V, &v); err == nil {
				t := v.Task
				t.TokenHash = v.TokenHash
				d.restoreTask(&t)
			}
		case "taskkey":
			var v taskKeyRecord
			if err = json.Unmarshal(rec.V, &v); err == nil {
				d.taskKey = v.Key
			}
		case "ticket":
			v := new(ConsoleTicket)
			if err = json.Unmarshal(rec.V, v); err == nil {
				d.restoreTicket(v)
			}
		case "end":
			sawEnd = true
		default:
			return fmt.Errorf("snapshot: unknown record type %q", rec.T)
		}
		if err != nil {
			return fmt.Errorf("snapshot %s record: %w", rec.T, err)
		}
	}
	d.sortNodeTasks()
	// Whatever rack agents wait on may have changed: wake them all.
	for r := range d.racks {
		d.rackIdx[r] = d.index
	}
	d.bootIdx = d.index
	s.replace(d)
	return nil
}

// readRecord reads one line of a snapshot. The lines WriteTo writes,
// {"t":"TYPE","v":VALUE}, are split without decoding VALUE (it is decoded
// once, into its type); any other line is decoded as a record.
func readRecord(br *bufio.Reader) (record, error) {
	line, err := br.ReadBytes('\n')
	if err != nil && (err != io.EOF || len(bytes.TrimSpace(line)) == 0) {
		return record{}, err
	}
	line = bytes.TrimSpace(line)
	if rest, ok := bytes.CutPrefix(line, []byte(`{"t":"`)); ok {
		if i := bytes.IndexByte(rest, '"'); i > 0 {
			if v, ok := bytes.CutPrefix(rest[i+1:], []byte(`,"v":`)); ok && len(v) > 0 && v[len(v)-1] == '}' {
				return record{T: string(rest[:i]), V: v[:len(v)-1]}, nil
			}
		}
	}
	var rec record
	if err := json.Unmarshal(line, &rec); err != nil {
		return record{}, err
	}
	return rec, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
