# Metalfleet. `make help` lists the targets.
GO       ?= go
BIN      := bin/metalfleet
PKGS     := ./...
BENCHOUT ?= build/bench.txt

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install the Debian packages the tests use (ops/apt-packages.txt)
	ops/install-deps.sh

.PHONY: build
build: ## build bin/metalfleet
	$(GO) build -o $(BIN) ./cmd/metalfleet

.PHONY: run
run: build ## run a dev coordinator on embedded defaults (state in ./.metalfleet)
	$(BIN) dev

.PHONY: test
test: deps build ## install test deps, vet, run every test with -race, the process failover drill included
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	METALFLEET_BIN=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: test-short
test-short: ## the quick unit tests only (no process drills)
	$(GO) test -short -count=1 $(PKGS)

.PHONY: bench
bench: build ## run the benchmarks of BENCHMARKS.md (output in build/bench.txt)
	ops/install-deps.sh apt-bench-packages.txt
	@mkdir -p $(dir $(BENCHOUT))
	$(GO) test -run '^$$' -bench . -benchtime 3000x -count 3 ./coordinator/server/ | tee $(BENCHOUT)
	METALFLEET_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench Failover -benchtime 7x ./ops/drills/ | tee -a $(BENCHOUT)

.PHONY: ramdisk
ramdisk: ## build the task ramdisk (nodeagent as /init), its kernel and BUILD-INFO in build/ramdisk/
	ops/ramdisk/build.sh

.PHONY: e2e
e2e: deps build ramdisk ## boot QEMU VMs (BIOS and UEFI) from a rack agent: discovery; power, boot device, power sync and console through a virtual BMC; servicing tasks; instances: deploy, rescue, unrescue, delete, with faults (root)
	METALFLEET_E2E=1 METALFLEET_E2E_UEFI=1 METALFLEET_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v -run QEMU ./ops/e2e/

.PHONY: drill-linearizable
drill-linearizable: build ## linearizability drill: 3 coordinator processes, KILLS (60) leader SIGKILLs and cluster restarts, checked with porcupine
	METALFLEET_BIN=$(CURDIR)/$(BIN) METALFLEET_DRILL_KILLS=$(or $(KILLS),60) $(GO) test -count=1 -timeout 60m -v -run TestLinearizableUnderLeaderKills ./ops/drills/

.PHONY: bench-dhcp
bench-dhcp: build ## DHCP DORA rate: rack agent vs Kea vs dnsmasq under perfdhcp (root, about 5 min)
	METALFLEET_BIN=$(CURDIR)/$(BIN) ops/bench/dhcp-perf.sh

.PHONY: bench-storm
bench-storm: build ## boot storm: 10 racks x 100 simulated machines powered on at once, enrolled by a coordinator process (RUNS=3 for three)
	METALFLEET_BIN=$(CURDIR)/$(BIN) ops/bench/storm.sh

.PHONY: bench-scale
bench-scale: ## the coordinator's state at 100,000 nodes: memory, snapshot, restore, discovery apply, a 100-node page (a few minutes)
	METALFLEET_SCALE=1 $(GO) test -count=1 -timeout 30m -v -run 'TestScale100k' ./coordinator/fsm/
	METALFLEET_SCALE=1 $(GO) test -count=1 -timeout 30m -run '^$$' -bench 'Scale' -benchtime 900x ./coordinator/fsm/
	METALFLEET_SCALE=1 METALFLEET_SCALE_NODES=1000 $(GO) test -count=1 -timeout 30m -run '^$$' -bench 'Scale' -benchtime 900x ./coordinator/fsm/

.PHONY: ci
ci: ## exactly what CI runs (.ci/run)
	bash .ci/run

.PHONY: clean
clean: ## remove build outputs
	rm -rf bin build

.PHONY: bench-bmc
bench-bmc: ## IPMI power polls/s of one poller against 1,000 simulated BMCs (sessions reused) beside an ipmitool process per poll, with CPU per poll (under a minute)
	METALFLEET_BENCH_BMC=1 $(GO) test -count=1 -timeout 3m -v -run 'TestBMCPoll' ./ops/bench/bmcpoll/

.PHONY: bench-sched
bench-sched: ## scheduling decisions/s over 10,000 simulated nodes: Schedule decoding inventories, with a warm CapacityCache, and the decodes alone (about 3 min)
	$(GO) test -count=6 -timeout 20m -run '^$$' -bench 'Schedule' -benchtime 3s ./coordinator/decide/

.PHONY: bench-tasks
bench-tasks: build ## the coordinator's Raft entries and CPU per servicing task: 100 simulated machines running a burn-in at once, idle baseline subtracted (RUNS=3, a few minutes)
	METALFLEET_BIN=$(CURDIR)/$(BIN) METALFLEET_BENCH_TASKS=1 METALFLEET_BENCH_TASKS_RUNS=$(or $(RUNS),3) $(GO) test -count=1 -timeout 30m -v -run 'TestBurninCost' ./ops/bench/tasks/
