#!/usr/bin/env bash
# DHCPv4 throughput: metalfleet's rack agent against Kea and dnsmasq,
# measured with Kea's perfdhcp (full DORA exchanges at a fixed series of
# offered rates). Prints one table row per server and rate: the achieved
# rate of completed exchanges (ACKs over the run's DURATION), the share of
# exchanges that did not complete (no ACK within perfdhcp's 1 s), and the
# mean REQUEST-to-ACK delay. Read off, for each server, the highest offered
# rate it sustains with < 1% drops.
#
# Wiring (nothing leaves the two namespaces this script creates):
#
#   namespace mfbench-s-PID                      namespace mfbench-c-PID
#     lo (up): metalfleet coordinator
#       on 127.0.0.1:7480 (metalfleet runs only)
#     mfbsPID 10.88.0.1/14  <------- veth ------->  mfbcPID 10.88.0.2/14
#       the DHCP server under test                    perfdhcp -l 10.88.0.2 10.88.0.1
#
# perfdhcp's DHCPv4 clients are relayed: it sets giaddr to its own address
# (10.88.0.2, inside the served subnet) and sends to the server's address,
# so every server answers the relay. Each server gets the same subnet
# (10.88.0.0/14), the same pool (10.88.1.0-10.91.254.255, about 261,000
# addresses: more than CLIENTS, so no run is limited by an exhausted pool;
# a /16 is not enough, as perfdhcp's clients are nearly all distinct until
# CLIENTS wrap), 1 h leases written to disk, no ping before offers, and
# logging at warning level; every rate runs against a freshly started
# server with empty lease state. perfdhcp is not a PXE client, so
# metalfleet's rack has answer_non_pxe on (and discovery on with dummy
# images). The metalfleet row is the whole product: the rack agent plus
# the coordinator it reports every lease to, on the same 2 cores as
# perfdhcp.
#
# Installing kea-dhcp4-server and dnsmasq on a machine that runs systemd
# may start their packaged services in the host namespace; this script
# neither needs nor touches them (it runs its own instances by pid).
#
# Usage: ops/bench/dhcp-perf.sh            (as root)
#   RATES="250 500 1000 2000 3000 4000 8000 16000"  offered DORA/s, one run each
#   DURATION=10                      seconds per run
#   CLIENTS=100000                   distinct client MACs (perfdhcp -R)
#   SERVERS="metalfleet kea dnsmasq"  (also: metalfleet-nocoord)
#   METALFLEET_BIN=bin/metalfleet    (built if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."

RATES=${RATES:-"250 500 1000 2000 3000 4000 8000 16000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-100000}
SERVERS=${SERVERS:-"metalfleet kea dnsmasq"}
BIN=${METALFLEET_BIN:-bin/metalfleet}

if [ "$(id -u)" -ne 0 ]; then
	echo "dhcp-perf: needs root (network namespaces, port 67)" >&2
	exit 1
fi

# --- packages ---------------------------------------------------------------
missing=()
for p in kea-dhcp4-server kea-admin dnsmasq iproute2 curl; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -x "$BIN" ]; then
	echo "building $BIN"
	go build -o "$BIN" ./cmd/metalfleet
fi
BIN=$(realpath "$BIN")

# --- lab --------------------------------------------------------------------
NS_S=mfbench-s-$$
NS_C=mfbench-c-$$
IF_S=mfbs$$
IF_C=mfbc$$
SERVER_IP=10.88.0.1
CLIENT_IP=10.88.0.2
POOL_START=10.88.1.0
POOL_END=10.91.254.255
SUBNET=10.88.0.0/14
NETMASK=255.252.0.0
WORK=$(mktemp -d /tmp/mf-dhcp-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()       # every process this script started, by pid
RESULTS=()    # table rows

stop_pid() { # stop_pid PID: SIGTERM, then SIGKILL after 5 s
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		# a zombie is gone for our purposes (reaped by wait below)
		[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

stop_all() { # newest first: the agent before its coordinator
	local i pid
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	for pid in "${PIDS[@]}"; do
		if [ -e "/proc/$pid" ]; then
			echo "dhcp-perf: pid $pid still there after SIGKILL" >&2
		fi
	done
	PIDS=()
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_all
	ip netns del "$NS_S" 2>/dev/null || true
	ip netns del "$NS_C" 2>/dev/null || true
	if [ $rc -ne 0 ]; then
		echo "dhcp-perf: failed (exit $rc); logs kept in $WORK" >&2
	else
		[ -n "${KEEP:-}" ] && echo "logs kept in $WORK" || rm -rf "$WORK"
	fi
	exit $rc
}
trap cleanup EXIT INT TERM

ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_S" netns "$NS_S" type veth peer name "$IF_C" netns "$NS_C"
ip -n "$NS_S" link set lo up
ip -n "$NS_C" link set lo up
ip -n "$NS_S" addr add "$SERVER_IP/14" dev "$IF_S"
ip -n "$NS_C" addr add "$CLIENT_IP/14" dev "$IF_C"
ip -n "$NS_S" link set "$IF_S" up
ip -n "$NS_C" link set "$IF_C" up

# Short commands in the server namespace. (Servers are started with
# `ip netns exec ... &` directly, never through this function, so that $!
# is the server's own pid: ip execs the program in place.)
in_s() { ip netns exec "$NS_S" "$@"; }

wait_for() { # wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s
	local secs=$1 what=$2 i
	shift 2
	for i in $(seq $((secs * 10))); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	echo "dhcp-perf: timed out waiting for $what" >&2
	return 1
}

# A UDP socket bound to port 67 in the server namespace (any server).
port67_bound() { in_s ss -Hlun 'sport = :67' | grep -q .; }

# --- servers: start_NAME DIR starts one with empty state, its pids in PIDS --
start_metalfleet() {
	local dir=$1
	mkdir -p "$dir"
	ip netns exec "$NS_S" "$BIN" coordinator --bootstrap --node-id c1 --data-dir "$dir/coord" \
		--http-addr 127.0.0.1:7480 --raft-addr 127.0.0.1:7481 --log-level warn \
		--raft-heartbeat-timeout 300ms --raft-election-timeout 300ms --raft-leader-lease 150ms \
		>"$dir/coordinator.log" 2>&1 &
	PIDS+=($!)
	wait_for 20 "coordinator token" test -s "$dir/coord/admin.token"
	export METALFLEET_ADDR=127.0.0.1:7480 METALFLEET_TOKEN
	METALFLEET_TOKEN=$(tr -d '[:space:]' <"$dir/coord/admin.token")
	wait_for 20 "coordinator API" in_s "$BIN" settings show
	in_s "$BIN" rack create r1 --subnet "$SUBNET" --gateway "$SERVER_IP" --boot-server "$SERVER_IP" \
		--pool "$POOL_START-$POOL_END" --lease-time 1h --answer-non-pxe >/dev/null
	in_s "$BIN" token create --role agent --rack r1 -o json |
		sed -n 's/^ *"secret": *"\([^"]*\)".*/\1/p' >"$dir/agent.token"
	test -s "$dir/agent.token"
	head -c 4096 /dev/zero >"$dir/kernel"
	head -c 4096 /dev/zero >"$dir/ramdisk"
	in_s "$BIN" image create disc-kernel --kind kernel --url "file://$dir/kernel" \
		--sha256 "$(sha256sum "$dir/kernel" | cut -d' ' -f1)" >/dev/null
	in_s "$BIN" image create disc-ramdisk --kind ramdisk --url "file://$dir/ramdisk" \
		--sha256 "$(sha256sum "$dir/ramdisk" | cut -d' ' -f1)" >/dev/null
	in_s "$BIN" settings set discovery_enabled=true discovery_kernel=disc-kernel discovery_ramdisk=disc-ramdisk >/dev/null
	ip netns exec "$NS_S" "$BIN" rackagent --name a1 --rack r1 --data-dir "$dir/agent" --coordinator 127.0.0.1:7480 \
		--token-file "$dir/agent.token" --interface "$IF_S" --advertise-ip "$SERVER_IP" \
		--tftp-addr "$SERVER_IP:69" --http-addr "$SERVER_IP:8080" --log-level warn \
		>"$dir/agent.log" 2>&1 &
	PIDS+=($!)
	# Synced once it serves the discovery script for an unknown MAC.
	wait_for 20 "rack agent synced" in_s curl -sfI "http://$SERVER_IP:8080/boot/02:00:00:00:00:01.ipxe"
}

# The same agent with its coordinator stopped once it has synced: it
# serves from its saved boot state and only queues its reports, so this
# measures the agent's DHCP path without the coordinator's load. Not in
# the default SERVERS.
start_metalfleet-nocoord() {
	start_metalfleet "$1"
	stop_pid "${PIDS[0]}" # the coordinator
	PIDS=("${PIDS[@]:1}")
}

start_kea() {
	local dir=$1
	mkdir -p "$dir"
	cat >"$dir/kea-dhcp4.conf" <<-EOF
		{
		  "Dhcp4": {
		    "interfaces-config": { "interfaces": [ "$IF_S" ], "dhcp-socket-type": "udp" },
		    "lease-database": { "type": "memfile", "persist": true, "name": "$dir/kea-leases4.csv", "lfc-interval": 0 },
		    "valid-lifetime": 3600,
		    "authoritative": true,
		    "subnet4": [ {
		      "id": 1,
		      "subnet": "$SUBNET",
		      "pools": [ { "pool": "$POOL_START - $POOL_END" } ],
		      "option-data": [ { "name": "routers", "data": "$SERVER_IP" } ]
		    } ],
		    "loggers": [ {
		      "name": "kea-dhcp4",
		      "output_options": [ { "output": "$dir/kea.log" } ],
		      "severity": "WARN"
		    } ]
		  }
		}
	EOF
	KEA_PIDFILE_DIR=$dir KEA_LOCKFILE_DIR=$dir ip netns exec "$NS_S" kea-dhcp4 -c "$dir/kea-dhcp4.conf" >"$dir/kea.out" 2>&1 &
	PIDS+=($!)
	wait_for 20 "kea on port 67" port67_bound
}

start_dnsmasq() {
	local dir=$1
	mkdir -p "$dir"
	chmod 755 "$dir"
	ip netns exec "$NS_S" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --group=root \
		--pid-file="$dir/dnsmasq.pid" --interface="$IF_S" --bind-interfaces \
		--dhcp-range="$POOL_START,$POOL_END,$NETMASK,1h" --dhcp-option=option:router,"$SERVER_IP" \
		--dhcp-leasefile="$dir/dnsmasq.leases" --dhcp-lease-max=300000 \
		--no-ping --dhcp-authoritative --quiet-dhcp --log-facility="$dir/dnsmasq.log" \
		>"$dir/dnsmasq.out" 2>&1 &
	PIDS+=($!)
	wait_for 20 "dnsmasq on port 67" port67_bound
}

# --- perfdhcp ---------------------------------------------------------------
# run_perf SERVER RATE DIR: one perfdhcp run; appends a table row.
run_perf() {
	local server=$1 rate=$2 dir=$3 out rc=0
	out="$dir/perfdhcp.out"
	ip netns exec "$NS_C" timeout $((DURATION + 30)) \
		perfdhcp -4 -r "$rate" -p "$DURATION" -R "$CLIENTS" -W 1000000 -l "$CLIENT_IP" "$SERVER_IP" \
		>"$out" 2>&1 || rc=$?
	# Exit 3: some exchanges did not complete (counted below).
	if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
		echo "perfdhcp against $server at $rate/s failed (exit $rc):" >&2
		tail -20 "$out" >&2
		return 1
	fi
	awk -v server="$server" -v rate="$rate" -v dur="$DURATION" '
		/^\*\*\*Rate statistics/ { sect = "rate" }
		/^\*\*\*Statistics for: DISCOVER-OFFER/ { sect = "do" }
		/^\*\*\*Statistics for: REQUEST-ACK/ { sect = "ra" }
		/^sent packets:/ { if (sect == "do") d_sent = $3; if (sect == "ra") r_sent = $3 }
		/^received packets:/ { if (sect == "do") o_recv = $3; if (sect == "ra") a_recv = $3 }
		/^avg delay:/ { if (sect == "ra") a_delay = $3 }
		END {
			if (d_sent == "") { printf "%-18s | %7d | %10s | %7s | %9s | %s\n", server, rate, "-", "-", "-", "no report"; exit }
			# Completed exchanges (ACKs) over the sending period; an
			# exchange counts as dropped unless its ACK came.
			drop = d_sent > 0 ? 100 * (d_sent - a_recv) / d_sent : 0
			printf "%-18s | %7d | %10.0f | %6.2f%% | %9.2f | %d DISCOVER, %d OFFER, %d REQUEST, %d ACK\n", \
				server, rate, a_recv / dur, drop, a_delay, d_sent, o_recv, r_sent, a_recv
		}' "$out"
}

header=$(printf "%-18s | %7s | %10s | %7s | %9s | %s" server offered "DORA/s" drops "ACK ms" "perfdhcp counts")
echo "$header"
RESULTS+=("$header")
t0=$(date +%s)
for server in $SERVERS; do
	for rate in $RATES; do
		dir="$WORK/$server-$rate"
		"start_$server" "$dir"
		row=$(run_perf "$server" "$rate" "$dir")
		echo "$row"
		RESULTS+=("$row")
		stop_all
	done
done
echo
echo "DHCP DORA benchmark, $(date -u +%F), ${DURATION}s per rate, $CLIENTS clients, $(nproc) cores; took $(($(date +%s) - t0)) s:"
printf '%s\n' "${RESULTS[@]}"
