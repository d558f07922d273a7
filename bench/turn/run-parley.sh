#!/usr/bin/env bash
# run-parley.sh - start the real `parley` daemon (release build) with its embedded relay on
# loopback:3500 (UDP+TCP), REST secret `benchsecret` and loopback peers allowed, for the
# relay benchmark. Sourced by run-all.sh (parley_start); run directly it benchmarks parley
# alone: run-parley.sh [turn-bench.sh options] [SCENARIO...]
# env: PARLEY_BIN (default: <repo>/target/release/parley), PARLEY_BENCH_PORT (default 3500)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
PARLEY_BIN=${PARLEY_BIN:-$HERE/../../target/release/parley}
PARLEY_BENCH_PORT=${PARLEY_BENCH_PORT:-3500}
PARLEY_WORK=${PARLEY_WORK:-/tmp/turnbench-parley}

parley_start() { # starts parley as a child of this shell, sets PARLEY_PID
	if [ ! -x "$PARLEY_BIN" ]; then
		echo "run-parley: $PARLEY_BIN is missing: build it with cargo build --release -p parleyd" >&2
		return 1
	fi
	if ss -Hlun "sport = :$PARLEY_BENCH_PORT" | grep -q .; then
		echo "run-parley: UDP port $PARLEY_BENCH_PORT is already in use" >&2
		return 1
	fi
	rm -rf "$PARLEY_WORK" && mkdir -p "$PARLEY_WORK"
	local http_port=$((PARLEY_BENCH_PORT + 1))
	# Same relay port range size as coturn.conf; per-user quota off because uclient -W
	# sends bare-expiry usernames (all clients count as one user).
	cat >"$PARLEY_WORK/parley.toml" <<-CONF
	[http]
	listen = "127.0.0.1:$http_port"
	[storage]
	data_dir = "$PARLEY_WORK/data"
	[turn]
	listen = "127.0.0.1:$PARLEY_BENCH_PORT"
	tls_listen = ""
	secret = "benchsecret"
	relay_ports = "57000-57999"
	allowed_peer_ranges = ["127.0.0.0/8"]
	max_allocations_per_user = 0
	[log]
	level = "warn"
	CONF
	${TURNBENCH_NICE:+nice -n "$TURNBENCH_NICE"} env -u NOTIFY_SOCKET "$PARLEY_BIN" --config "$PARLEY_WORK/parley.toml" serve >"$PARLEY_WORK/stdout.log" 2>&1 &
	PARLEY_PID=$!
	for _ in $(seq 100); do
		curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
		sleep 0.1
	done
	kill -0 "$PARLEY_PID" 2>/dev/null || { echo "run-parley: parley died, see $PARLEY_WORK/stdout.log" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	parley_start || exit 1
	PID=$PARLEY_PID
	trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null' EXIT
	trap 'exit 130' INT TERM
	"$HERE/turn-bench.sh" --server-pid "$PID" --label parley "127.0.0.1:$PARLEY_BENCH_PORT" secret=benchsecret "$@"
fi
