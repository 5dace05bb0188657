package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/cluster/gossip"
	"github.com/metalfleet/metalfleet/rackagent/power"
)

// powerSplit divides power sync between a rack's agents the way
// gossipSplit divides unknown MACs: a stable hash of the node's uuid picks
// one of the rack's agents that gossip says are alive; a survivor polls
// every node. Intents need no split: each names the agent that runs it.
type powerSplit struct {
	g    *gossip.Gossip
	self string
	rack string
}

func (s powerSplit) Mine(uuid string) bool { return gossipMine(s.g, s.rack, s.self, []byte(uuid)) }

// Power is the agent's out-of-band control: intents and power sync.
func (a *Agent) Power() *power.Manager { return a.power }

// powerCollectors are the power manager's metrics.
func (a *Agent) powerCollectors() []prometheus.Collector {
	st := func(f func(power.Stats) int64) func() float64 {
		return func() float64 { return float64(f(a.power.Stats())) }
	}
	counter := func(name, help string, f func(power.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, st(f))
	}
	return []prometheus.Collector{
		counter("metalfleet_bmc_power_polls_total", "Power sync reads of a BMC's power state.", func(s power.Stats) int64 { return s.Polls }),
		counter("metalfleet_bmc_power_poll_errors_total", "Power sync reads that failed (the node's power reported unknown).",
			func(s power.Stats) int64 { return s.PollErrors }),
		counter("metalfleet_bmc_power_reports_total", "Power changes reported by power sync.", func(s power.Stats) int64 { return s.PowerReports }),
		counter("metalfleet_bmc_power_sync_rounds_total", "Power sync rounds finished.", func(s power.Stats) int64 { return s.SyncRounds }),
		counter("metalfleet_bmc_intents_total", "BMC intents executed and reported (verify, power, boot device).",
			func(s power.Stats) int64 { return s.Intents }),
		counter("metalfleet_bmc_intent_errors_total", "BMC intents whose result is an error.", func(s power.Stats) int64 { return s.IntentErrors }),
		counter("metalfleet_bmc_calls_total", "BMC driver calls made (each try).", func(s power.Stats) int64 { return s.Calls }),
		counter("metalfleet_bmc_call_errors_total", "BMC driver calls that failed.", func(s power.Stats) int64 { return s.CallErrors }),
		counter("metalfleet_bmc_call_retries_total", "BMC driver calls made again after the BMC was unreachable or timed out.",
			func(s power.Stats) int64 { return s.Retries }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "metalfleet_bmc_calls_in_flight", Help: "BMC driver calls in flight."},
			st(func(s power.Stats) int64 { return s.InFlight })),
	}
}
