// Package bmcpoll measures power-status polling over IPMI: how many polls
// per second one poller (the rack agent's ipmi driver, RMCP+ sessions
// reused, 64 at a time) sustains against 1,000 simulated BMCs (ipmisim, in
// a child process so the poller's CPU is its own), and its CPU per poll,
// beside an ipmitool process per poll; and, per call against one BMC, the
// latency and CPU of each way the driver could have been built (go-ipmi
// session reuse, a new go-ipmi session per call, goipmi's v1.5 lan,
// ipmitool processes).
//
// It is a test behind an environment variable: `make bench-bmc`
// (METALFLEET_BENCH_BMC=1 go test ./ops/bench/bmcpoll/), under 3 minutes.
package bmcpoll
