package coordtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/coordinator/apiclient"
	"github.com/metalfleet/metalfleet/proto"
)

// StandInAgent plays a rack agent's part in coordinator-only tests: it
// polls its rack's boot state (so the coordinator knows it, as it knows a
// real agent) and answers the intents addressed to it as a BMC that does
// what it is told would. Tests of the real agent use rackagent instead.
type StandInAgent struct {
	t     testing.TB
	c     *apiclient.Client
	Rack  string
	Name  string
	inc   string
	seq   atomic.Uint64
	power map[string]proto.PowerState
}

// NewStandInAgent makes a stand-in agent named name for rack, calling the
// coordinator at addr with an agent token of that rack.
func NewStandInAgent(t testing.TB, addr, token, rack, name string) *StandInAgent {
	c := apiclient.New(addr, token)
	c.SetHeader("X-Metalfleet-Agent", name)
	return &StandInAgent{t: t, c: c, Rack: rack, Name: name, inc: fmt.Sprintf("standin-%d", time.Now().UnixNano()),
		power: map[string]proto.PowerState{}}
}

// Poll reads the boot state once, as an agent's poll does.
func (a *StandInAgent) Poll() *proto.RackBootState {
	a.t.Helper()
	st, err := a.c.BootState(context.Background(), a.Rack, 0, 0)
	if err != nil {
		a.t.Fatalf("stand-in agent %s: boot state: %v", a.Name, err)
	}
	return st
}

// Answer polls the boot state and answers every pending intent addressed
// to this agent: successfully, or with failWith (an auth failure) when it
// is not empty. It returns how many it answered.
func (a *StandInAgent) Answer(failWith string) int {
	a.t.Helper()
	st := a.Poll()
	var rs []proto.AgentReport
	for _, n := range st.Nodes {
		if n.BMC == nil {
			continue
		}
		for _, in := range n.BMC.Intents {
			if in.Agent != a.Name {
				continue
			}
			seq := a.seq.Add(1)
			r := proto.AgentReport{ID: fmt.Sprintf("%s-%d", a.inc, seq), Kind: proto.ReportBMC, Rack: a.Rack, Agent: a.Name,
				Incarnation: a.inc, Seq: seq, Time: time.Now().UTC(), Node: n.UUID, Action: in.Action, Generation: in.Generation}
			switch {
			case failWith != "":
				r.Error, r.ErrorKind = failWith, proto.BMCErrAuth
			case in.Action == proto.ActionVerify:
				r.BMCInfo = &proto.BMCInfo{Vendor: "Stand-in", Model: "BMC", FirmwareVersion: "1.0", Protocol: "fake"}
				r.PowerState = a.powerOf(n.UUID)
			case in.Action == proto.ActionPower:
				ps := proto.PowerOn
				if in.Power == proto.PowerTargetOff || in.Power == proto.PowerTargetSoftOff {
					ps = proto.PowerOff
				}
				a.power[n.UUID] = ps
				r.PowerState = ps
			}
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return 0
	}
	ack, err := a.c.Reports(context.Background(), a.Rack, rs)
	if err != nil {
		a.t.Fatalf("stand-in agent %s: reports: %v", a.Name, err)
	}
	if len(ack.Rejected) > 0 {
		a.t.Fatalf("stand-in agent %s: reports rejected: %v", a.Name, ack.Rejected)
	}
	return len(rs)
}

func (a *StandInAgent) powerOf(uuid string) proto.PowerState {
	if p, ok := a.power[uuid]; ok {
		return p
	}
	return proto.PowerOff
}
