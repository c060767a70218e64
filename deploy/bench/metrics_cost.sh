#!/usr/bin/env bash
# deploy/bench/metrics_cost.sh BASE_BIN [NEW_BIN]: what the metrics cost.
#
# A benchmark, not a test: it prints figures.  Two gateways run side by
# side in front of one smtp-sink, on 127.0.0.1 with free ports: BASE_BIN
# (a build without the metrics hooks, e.g. of the commit before them) and
# NEW_BIN (default build/smtpgate) with metrics: on and scraped every
# 0.2 s during the load (a Prometheus scrapes every 15 s or so).  The
# rounds alternate between the two, so both see the same machine; each
# round is one smtp-source run, and the gateway's CPU time (utime + stime
# from /proc) per message is its cost.  The medians and their ratio are
# printed; on a shared machine only the ratio means much.
#
# Environment: BENCH_MESSAGES [20000] BENCH_SESSIONS [20] BENCH_SIZE [2048]
#              BENCH_ROUNDS [5] BENCH_WORKERS [1]
set -eu
[ $# -ge 1 ] || { echo "usage: metrics_cost.sh BASE_BIN [NEW_BIN]" >&2; exit 2; }
top=$(cd "$(dirname "$0")/../.." && pwd)
deploy=$top/deploy
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"
base_src=$1
new_src=${2:-$top/build/smtpgate}
MESSAGES=${BENCH_MESSAGES:-20000}
SESSIONS=${BENCH_SESSIONS:-20}
MSGSIZE=${BENCH_SIZE:-2048}
ROUNDS=${BENCH_ROUNDS:-5}
WORKERS=${BENCH_WORKERS:-1}

work=$(mktemp -d /tmp/smtpgate-mcost.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
# Copies: a rebuild during the run does not change what is measured.
cp "$base_src" "$work/base"
cp "$new_src" "$work/new"

read -r SINK GATE_B GATE_N METRICS < <(free_ports 4)

SMTP_SINK=/usr/sbin/smtp-sink
sink_start "$SINK" 4096 -m 4096 -t 300 ||
	{ echo "smtp-sink did not start: $(cat "$work/sink.err")" >&2; exit 1; }

gateway() {             # NAME PORT [metrics port]: starts one; pid in gw_pid
	{
		printf 'hostname: gate.bench.test\nworkers: %s\nlog_level: warning\n' "$WORKERS"
		printf 'listen:\n  - address: 127.0.0.1:%s\n' "$2"
		printf 'backend:\n  servers: [127.0.0.1:%s]\n' "$SINK"
		printf 'limits:\n  max_connections: 20000\nsmtp:\n  reverse_dns: false\n'
		if [ -n "${3:-}" ]; then
			printf 'metrics:\n  address: 127.0.0.1:%s\n' "$3"
		fi
	} >"$work/$1.yaml"
	"$work/$1" -c "$work/$1.yaml" 2>"$work/$1.log" &
	gw_pid=$!
	pids+=("$gw_pid")
}
gateway base "$GATE_B"
PID_B=$gw_pid
gateway new "$GATE_N" "$METRICS"
PID_N=$gw_pid
wait_port "$GATE_B" "$PID_B" || { echo "base gateway did not start" >&2; exit 1; }
wait_port "$GATE_N" "$PID_N" || { echo "new gateway did not start" >&2; exit 1; }

# round NAME PORT PID: one smtp-source run; prints microseconds of the
# gateway's CPU per message.
ticks=$(getconf CLK_TCK)
round() {
	local c0 c1 spid=""
	c0=$(proc_cpu_ticks "$3")
	if [ "$1" = new ]; then
		python3 - "$METRICS" <<'EOF' &
import sys, time, urllib.request
url = "http://127.0.0.1:%s/metrics" % sys.argv[1]
while True:
    urllib.request.urlopen(url, timeout=5).read()
    time.sleep(0.2)
EOF
		spid=$!
	fi
	/usr/sbin/smtp-source -c -s "$SESSIONS" -m "$MESSAGES" -l "$MSGSIZE" \
	    -M bench.example.test -f bench@sender.example -t bench@rcpt.example \
	    "127.0.0.1:$2" >/dev/null 2>"$work/source.err" ||
		{ cat "$work/source.err" >&2; exit 1; }
	c1=$(proc_cpu_ticks "$3")
	if [ -n "$spid" ]; then
		kill -TERM "$spid"
		wait "$spid" 2>/dev/null || true
	fi
	awk -v c=$((c1 - c0)) -v t="$ticks" -v n="$MESSAGES" \
	    'BEGIN { printf "%.1f\n", c / t * 1e6 / n }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "metrics_cost: $ROUNDS rounds of smtp-source -s $SESSIONS -m $MESSAGES -l $MSGSIZE, workers: $WORKERS"
round base "$GATE_B" "$PID_B" >/dev/null       # warm-up
round new "$GATE_N" "$PID_N" >/dev/null
: >"$work/b"
: >"$work/n"
for r in $(seq "$ROUNDS"); do
	b=$(round base "$GATE_B" "$PID_B")
	n=$(round new "$GATE_N" "$PID_N")
	echo "round $r: base $b us/msg, with metrics $n us/msg"
	echo "$b" >>"$work/b"
	echo "$n" >>"$work/n"
done
mb=$(median <"$work/b")
mn=$(median <"$work/n")
echo "median CPU per message: base $mb us, with metrics $mn us, ratio $(awk -v a="$mn" -v b="$mb" 'BEGIN { printf "%.3f", a / b }')"
curl_out=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1]).read().decode())' "$METRICS" |
	grep -E '^smtpgate_(transactions_total\{outcome="accepted"\}|backend_data_bytes_total) ')
echo "counted by the new gateway: $(echo "$curl_out" | tr '\n' ' ')"
