package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics returns the agent's /metrics handler: DHCP counters, the
// outbox's backlog, leases held, whether the boot state is fresh.
func (a *Agent) metrics() http.Handler {
	reg := prometheus.NewRegistry()
	st := &a.dhcp.Stats
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		counter("metalfleet_dhcp_received_total", "DHCP packets received.", func() float64 { return float64(st.Received.Load()) }),
		counter("metalfleet_dhcp_answered_total", "DHCP answers sent.", func() float64 { return float64(st.Answered.Load()) }),
		counter("metalfleet_dhcp_dropped_total", "DHCP requests deliberately not answered.", func() float64 { return float64(st.Dropped.Load()) }),
		counter("metalfleet_dhcp_malformed_total", "Malformed DHCP packets.", func() float64 { return float64(st.Malformed.Load()) }),
		counter("metalfleet_dhcp_overflow_total", "DHCP packets shed under overload.", func() float64 { return float64(st.Overflow.Load()) }),
		counter("metalfleet_dhcp_errors_total", "DHCP requests that failed.", func() float64 { return float64(st.Errors.Load()) }),
		counter("metalfleet_dhcp_sightings_left_out_total", "Sightings of unknown MACs not reported: an interval already held the most new MACs it reports.",
			func() float64 { return float64(a.dhcpH.SightingsLeftOut()) }),
		gauge("metalfleet_dhcp_sightings_gathered", "Unknown MACs whose sightings wait for the next flush to the outbox.",
			func() float64 { return float64(a.dhcpH.SightingsGathered()) }),
		counter("metalfleet_agent_outbox_sightings_dropped_total", "Sighting reports refused by the outbox: its sightings budget was full.",
			func() float64 { return float64(a.out.Stats().SightingsDropped) }),
		counter("metalfleet_agent_outbox_boot_events_dropped_total", "Boot event reports refused by the outbox: its boot events budget was full.",
			func() float64 { return float64(a.out.Stats().BootEventsDropped) }),
		gauge("metalfleet_agent_outbox_reports", "Reports waiting for the coordinator.", func() float64 { return float64(a.out.Len()) }),
		gauge("metalfleet_agent_burnin_transfers", "Network burn-in transfers running on this agent.", func() float64 {
			n, _ := a.http.BurninTransfers()
			return float64(n)
		}),
		gauge("metalfleet_agent_burnin_transfers_waiting", "Network burn-in transfers waiting for a slot.", func() float64 {
			_, n := a.http.BurninTransfers()
			return float64(n)
		}),
		gauge("metalfleet_agent_leases", "Dynamic leases this agent holds.", func() float64 { return float64(len(a.pool.Leases())) }),
		gauge("metalfleet_agent_bootstate_synced", "1 once the boot state came from a coordinator since start.", func() float64 {
			if a.boot.Synced() {
				return 1
			}
			return 0
		}),
		gauge("metalfleet_agent_bootstate_index", "Coordinator index of the boot state served.", func() float64 {
			if v := a.boot.View(); v != nil {
				return float64(v.State.Index)
			}
			return 0
		}),
	)
	reg.MustRegister(a.powerCollectors()...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
