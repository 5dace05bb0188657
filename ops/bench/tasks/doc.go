// Package tasks measures what servicing tasks cost the coordinator: 100
// simulated machines (the METALFLEET_BENCH_TASKS_MACHINES count) run a
// short burn-in at once, and the benchmark reports the Raft entries and
// the coordinator's CPU per task, with an idle baseline over the same
// wall time subtracted.
//
// The wiring is `metalfleet dev` with the coordinator apart, as the boot
// storm benchmark (ops/bench/storm.sh) has it: `metalfleet coordinator`
// is a process of its own (its CPU is read from /proc/PID/stat, so it is
// its alone), and `metalfleet dev --coordinator` is another: the rack
// agent and the simulated machines with their BMCs, which boot the task
// ramdisk over DHCP and HTTP and run the real task runner
// (nodeagent.RunTask on simulated hardware). The test process only drives
// the API; the breakdown of the Raft entries by command is read from the
// coordinator's raft.db once it has stopped.
//
// It is a test behind an environment variable: `make bench-tasks`
// (METALFLEET_BENCH_TASKS=1 go test ./ops/bench/tasks/), a few minutes.
package tasks
