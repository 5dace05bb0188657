package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/state"
	"github.com/metalfleet/metalfleet/proto"
)

// TestRestoredReplicaAgrees: a replica restored from a snapshot taken at
// any point of a log ends in the same state as one that applied the whole
// log, failed commands and derived state (address hints, identity and
// order indexes) included. Failed commands are the trap: they must leave
// no trace a snapshot would not carry.
func TestRestoredReplicaAgrees(t *testing.T) {
	t1 := t0.Add(time.Minute)
	var seq uint64
	inv := func(mac, sysUUID, bmc string) Command {
		seq++
		i := proto.Inventory{Version: proto.InventoryVersion, System: proto.System{UUID: sysUUID, Serial: "S-" + mac},
			BMCAddress: bmc, Interfaces: []proto.Interface{{Name: "eth0", MAC: mac}}}
		raw, _ := json.Marshal(i)
		return AgentReports{Rack: "r1", Reports: []proto.AgentReport{{ID: fmt.Sprint("inv-", seq), Kind: proto.ReportCallback,
			Step: proto.StepInventory, Rack: "r1", Agent: "a1", Incarnation: "i1", Seq: seq, Time: t1, MAC: mac, Data: raw}}}
	}
	mk := func(uuid, name, mac, driver string) Command {
		c := node(uuid, name, mac, proto.StateEnrolled)
		c.Node.Rack, c.Node.BMC.Driver = "r1", driver
		return c
	}
	log := []Command{
		rackWithPool(),
		mk(uuid1, "n1", "52:54:00:00:00:01", "ipmi"),
		mk(uuid2, "n2", "52:54:00:00:00:02", "nosuch-driver"),                            // fails after choosing an address
		inv("52:54:00:00:0a:01", "5b2f0c1e-0000-4000-8000-00000000000a", "10.9.0.250 x"), // fails: bad BMC address
		mk(uuid3, "n3", "52:54:00:00:00:03", "ipmi"),
		inv("52:54:00:00:0b:01", "5b2f0c1e-0000-4000-8000-00000000000b", ""),
		NodeDelete{Ref: "n1"},
		inv("52:54:00:00:0c:01", "5b2f0c1e-0000-4000-8000-00000000000c", ""),
		mk(uuid2, "n2", "52:54:00:00:00:02", "ipmi"),
		inv("52:54:00:00:0d:01", "5b2f0c1e-0000-4000-8000-00000000000d", ""),
		// The rack gives up its DNS address (10.9.0.3): below the hint,
		// free now; the next node must get it on every replica.
		RackPut{Rack: proto.Rack{Name: "r1", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", BootServer: "10.9.0.2",
			PoolStart: "10.9.0.100", PoolEnd: "10.9.0.199"}},
		mk("44444444-4444-4444-8444-444444444444", "n4", "52:54:00:00:00:04", "ipmi"),
	}
	enc := make([][]byte, len(log))
	for i, c := range log {
		enc[i] = mustEncode(t, c)
	}
	whole := New(state.New(), nil)
	for i, e := range enc {
		whole.ApplyBytes(uint64(i+1), e)
	}
	want := stateBytes(t, whole.Store())
	for cut := 1; cut < len(enc); cut++ {
		a := New(state.New(), nil)
		for i := 0; i < cut; i++ {
			a.ApplyBytes(uint64(i+1), enc[i])
		}
		b := New(state.New(), nil)
		if err := b.Store().Restore(snapshotReader(t, a.Store())); err != nil {
			t.Fatal(err)
		}
		for i := cut; i < len(enc); i++ {
			b.ApplyBytes(uint64(i+1), enc[i])
		}
		if got := stateBytes(t, b.Store()); !bytes.Equal(got, want) {
			t.Fatalf("restored after entry %d, the replica differs:\n got %s\nwant %s", cut, got, want)
		}
	}
}
