#!/usr/bin/env bash
# run-all.sh - the full comparison: parley's embedded relay (the release daemon, see
# run-parley.sh), coturn and the minirelay "limit" (and any TURN servers you started
# yourself) side by side, INTERLEAVED: for every rep
# and scenario each server runs back to back (order rotated per rep), so slow
# drifts in background load hit all of them alike. Then summarize.py.
#
# usage: run-all.sh [--reps N] [--out FILE] [SCENARIO...]     (default: 3 reps, all)
# env:   EXTRA='LABEL HOST:PORT AUTH [udponly][;LABEL HOST:PORT AUTH...]'   e.g.
#          EXTRA='ours 127.0.0.1:3500 secret=benchsecret udponly' ./run-all.sh
#        (server PID found via ss on that UDP port; it must already be running;
#         udponly: skip the TCP scenarios for it)
#        COTURN_THREADS=N   coturn --relay-threads (default: coturn's, 1 per CPU)
#        LIMIT_THREADS=N    minirelay threads (default 1)
#        NO_LIMIT=1 / NO_COTURN=1 / NO_PARLEY=1  leave one of them out
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPS=3
mkdir -p /tmp/turnbench
OUT=/tmp/turnbench/results-$(date +%Y%m%d-%H%M%S).txt
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) REPS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
	*) break ;;
	esac
done
SCENS=($("$HERE/turn-bench.sh" names "$@")) || exit 2

# server functions (the scripts only run their main part when executed directly)
source "$HERE/run-coturn.sh"
source "$HERE/run-limit.sh"
source "$HERE/run-parley.sh"
THREADS=${COTURN_THREADS:-}
LIMIT_THREADS=${LIMIT_THREADS:-1}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

LABELS=() ADDRS=() AUTHS=() SPIDS=() UDPONLY=()
add() { LABELS+=("$1"); ADDRS+=("$2"); AUTHS+=("$3"); SPIDS+=("${4:-}"); UDPONLY+=("${5:-}"); }
scen_proto() {
	case "$1" in
	custom=tcp*) echo tcp ;;
	custom=*) echo udp ;;
	*) "$HERE/turn-bench.sh" list | awk -v n="$1" '$1==n{print $2}' ;;
	esac
}
if [ -z "${NO_PARLEY:-}" ]; then
	parley_start || exit 1
	pp=$PARLEY_PID
	PIDS+=("$pp")
	add parley "127.0.0.1:$PARLEY_BENCH_PORT" secret=benchsecret "$pp"
fi
if [ -z "${NO_COTURN:-}" ]; then
	coturn_start || exit 1
	cp=$COTURN_PID
	PIDS+=("$cp")
	add "coturn${THREADS:+-t$THREADS}" "127.0.0.1:$(awk -F= '/^listening-port=/{print $2}' "$WORK/coturn.conf")" \
		"secret=$(awk -F= '/^static-auth-secret=/{print $2}' "$WORK/coturn.conf")" "$cp"
fi
if [ -z "${NO_LIMIT:-}" ]; then
	limit_start || exit 1
	lp=$LIMIT_PID
	PIDS+=("$lp")
	add "limit-t$LIMIT_THREADS" "127.0.0.1:$LIMIT_PORT" none "$lp" udponly # minirelay has no TCP listener
fi
IFS=';' read -ra extras <<<"${EXTRA:-}"
for e in "${extras[@]}"; do
	read -r l a au flag <<<"$e"
	[ -n "${au:-}" ] && add "$l" "$a" "$au" "" "$([ "${flag:-}" = udponly ] && echo udponly)"
done
[ ${#LABELS[@]} -gt 0 ] || { echo "run-all: no servers" >&2; exit 2; }

{
	echo "# run-all $(date -Is) host=$(hostname) cpus=$(nproc) kernel=$(uname -r) reps=$REPS"
	echo "# servers: ${LABELS[*]} ; coturn $(turnserver --version 2>/dev/null | head -1)"
	echo "# scenarios: ${SCENS[*]}"
} | tee -a "$OUT"
n=${#LABELS[@]}
for rep in $(seq "$REPS"); do
	for s in "${SCENS[@]}"; do
		proto=$(scen_proto "$s")
		for k in $(seq 0 $((n - 1))); do
			i=$(( (k + rep - 1) % n )) # rotate who goes first
			[ "$proto" = tcp ] && [ -n "${UDPONLY[$i]}" ] && continue
			"$HERE/turn-bench.sh" --label "${LABELS[$i]}" ${SPIDS[$i]:+--server-pid "${SPIDS[$i]}"} \
				--first-rep "$rep" --out "$OUT" "${ADDRS[$i]}" "${AUTHS[$i]}" "$s"
		done
	done
done
echo "# results: $OUT"
REF=${LABELS[0]}
for l in "${LABELS[@]}"; do case "$l" in coturn*) REF=$l ;; esac; done
python3 "$HERE/summarize.py" "$OUT" ${REF:+--ref "$REF"}
