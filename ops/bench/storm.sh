#!/usr/bin/env bash
# Boot storm: RACKS racks of MACHINES simulated machines each, all powered
# on at once (within SPREAD), discovered and enrolled through real rack
# agents by one coordinator. Prints the storm's summary (time from
# power-on to the last node enrolled, retries, addresses ACKed to two MACs
# at once, DHCP counters, Raft entries applied, where the time goes) and
# the coordinator process's CPU seconds and peak RSS.
#
# Wiring (all on loopback, no root):
#   metalfleet coordinator   a process of its own, so its CPU and memory
#                            are its alone (read from /proc/PID)
#   metalfleet dev --coordinator ...
#                            one process: RACKS rack agents (rack K on
#                            127.(K-1).0.1, subnet 127.(K-1).0.0/16) and
#                            the simulated machines, each a goroutine
#                            speaking DHCP (relayed), TFTP and HTTP from
#                            its leased address, as in `metalfleet dev`
#
# Both share this machine's cores. Each run starts from empty state.
#
# Usage: ops/bench/storm.sh
#   RACKS=10 MACHINES=100    machines per rack
#   SPREAD=1s                power-on spread
#   RUNS=1                   runs, one after another
#   IMAGES=auto              real: the discovery kernel and ramdisk of
#                            `make ramdisk` (build/ramdisk, about 14 MB a
#                            machine); stub: 72 KB stand-ins; auto: real
#                            if built
#   API=127.0.0.1:17480 RAFT=127.0.0.1:17481
#   METALFLEET_BIN=bin/metalfleet (built if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."

RACKS=${RACKS:-10}
MACHINES=${MACHINES:-100}
SPREAD=${SPREAD:-1s}
RUNS=${RUNS:-1}
API=${API:-127.0.0.1:17480}
RAFT=${RAFT:-127.0.0.1:17481}
BIN=${METALFLEET_BIN:-bin/metalfleet}
if [[ ! -x $BIN ]]; then
	go build -o "$BIN" ./cmd/metalfleet
fi
BIN=$(realpath "$BIN")
IMAGES=${IMAGES:-auto}
if [[ $IMAGES == auto ]]; then
	IMAGES=stub
	[[ -s build/ramdisk/vmlinuz && -s build/ramdisk/metalfleet-ramdisk.cpio.gz ]] && IMAGES=real
fi
case $IMAGES in
real) # dev registers build/ramdisk's images when run from the checkout
	devdir=$PWD
	[[ -s build/ramdisk/vmlinuz ]] || { echo "IMAGES=real: run make ramdisk first" >&2; exit 1; }
	echo "images: build/ramdisk: kernel $(stat -c %s build/ramdisk/vmlinuz) bytes, ramdisk $(stat -c %s build/ramdisk/metalfleet-ramdisk.cpio.gz) bytes" ;;
stub) devdir="" ;; # run from the work directory: dev makes its stand-ins
*) echo "IMAGES=$IMAGES: want real, stub or auto" >&2; exit 1 ;;
esac

work=$(mktemp -d /tmp/mfstorm.XXXXXX)
coord=""
cleanup() {
	if [[ -n $coord ]]; then
		kill "$coord" 2>/dev/null || true
		wait "$coord" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

status=0
tck=$(getconf CLK_TCK)
cpu_of() { # user+system CPU seconds of a pid
	awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"
}
# http_ok PATH: GET http://$API/PATH answers 200 (bash's /dev/tcp: no
# curl needed).
http_ok() {
	(
		exec 3<>"/dev/tcp/${API%:*}/${API##*:}" || exit 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$API" >&3
		IFS= read -r -t 2 line <&3 || exit 1
		[[ $line == "HTTP/1."?" 200"* ]]
	) 2>/dev/null
}
hwm_of() { awk '/^VmHWM:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"; }

for run in $(seq 1 "$RUNS"); do
	d="$work/run$run"
	mkdir -p "$d"
	"$BIN" coordinator --node-id storm --data-dir "$d/coordinator" --http-addr "$API" --raft-addr "$RAFT" \
		--bootstrap --log-level warn >"$d/coordinator.log" 2>&1 &
	coord=$!
	ready=""
	for _ in $(seq 1 200); do
		[[ -s $d/coordinator/admin.token ]] && http_ok /metrics && { ready=1; break; }
		kill -0 "$coord" 2>/dev/null || { echo "coordinator exited before it was ready; its log:" >&2; cat "$d/coordinator.log" >&2; exit 1; }
		sleep 0.1 # a poll: the coordinator is another process
	done
	if [[ -z $ready ]]; then
		echo "coordinator not ready within 20 s (no admin.token in $d/coordinator or http://$API/metrics not answering 200); its log:" >&2
		cat "$d/coordinator.log" >&2
		exit 1
	fi
	cpu0=$(cpu_of "$coord")
	echo "== run $run of $RUNS: $RACKS racks x $MACHINES machines, power-on spread $SPREAD =="
	TIMEFORMAT="dev process (agents and simulator): %R s wall, %U s user + %S s system CPU"
	cd "${devdir:-$d}"
	time "$BIN" dev --coordinator "$API" --token "$(cat "$d/coordinator/admin.token")" --data-dir "$d/dev" \
		--racks "$RACKS" --machines "$MACHINES" --power-on-spread "$SPREAD" --until-done --name-nodes=false \
		--agent-http-addr 127.0.0.1:0 --dhcp-addr 127.0.0.1:0 --tftp-addr 127.0.0.1:0 --log-level error \
		| sed -n '/^Storm summary/,$p' || status=1
	cd - >/dev/null
	[[ $IMAGES == stub ]] && echo "images: stand-ins, kernel $(stat -c %s "$d/dev/images/vmlinuz") bytes, ramdisk $(stat -c %s "$d/dev/images/ramdisk.cpio.gz") bytes"
	cpu1=$(cpu_of "$coord")
	echo "coordinator process: $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }') s CPU during the storm ($cpu1 s since its start), peak RSS $(hwm_of "$coord")"
	kill "$coord"
	wait "$coord" 2>/dev/null || true
	coord=""
done
exit $status
