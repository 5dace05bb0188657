# Metalfleet. `make help` lists the targets.
GO       ?= go
BIN      := bin/metalfleet
PKGS     := ./...

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/metalfleet
	$(GO) build -o $(BIN) ./cmd/metalfleet

.PHONY: run
run: build ## run a dev coordinator on embedded defaults (state in ./.metalfleet)
	$(BIN) dev

.PHONY: test
test: build ## run all tests with -race (includes the 3-process failover test)
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: ci
ci: ## what CI runs (.ci/run)
	bash .ci/run
