#!/usr/bin/env bash
# deploy/scale10k.sh: smtpgate holding 10,000 idle connections while mail
# keeps flowing through it.
#
# A measurement, not a test: it prints figures (and PASS/MISS against the
# target of 10,000 idle connections in under 100 MB RSS); its exit status
# only says whether every step completed (0) or not (1).
#
# Everything runs on 127.0.0.1 with ports picked free at run time:
#   smtp-sink   (Postfix) the backend: discards mail, counts it
#   smtpgate    a copy of build/smtpgate, max_connections raised
#   idle        deploy/bench/idle_clients.py: SCALE_IDLE connections, read
#               the greeting, then say nothing (source addresses spread
#               over 127.0.0.2-9, so one address's ephemeral ports do not
#               run out)
#   partial     then the same number of connections that each send the
#               start of a command line and stop there (slow clients)
#   mail        smtp-source, SCALE_MESSAGES messages over SCALE_SESSIONS
#               sessions, once with no idle connection and once while the
#               idle ones are held
# Figures: smtpgate's RSS with 0 connections and with the idle ones, RSS per
# idle connection, messages/s and CPU per message with and without them.
#
# Usage: deploy/scale10k.sh
# Environment (defaults in brackets):
#   SCALE_IDLE      idle connections [10000]
#   SCALE_MESSAGES  messages per mail run [5000]
#   SCALE_SESSIONS  parallel smtp-source sessions [10]
#   SCALE_SIZE      message payload bytes [2048]
#   SCALE_WORKERS   smtpgate worker threads [2]
#   SMTPGATE        the binary [build/smtpgate]
#   SCALE_KEEP=1    keep the work directory (configs, logs)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
helpers=$top/deploy/bench

IDLE=${SCALE_IDLE:-10000}
MESSAGES=${SCALE_MESSAGES:-5000}
SESSIONS=${SCALE_SESSIONS:-10}
MSGSIZE=${SCALE_SIZE:-2048}
WORKERS=${SCALE_WORKERS:-2}
SMTPGATE_BIN=${SMTPGATE:-$top/build/smtpgate}
KEEP=${SCALE_KEEP:-0}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
T_IDLE_MB=100           # target: RSS with the idle connections

die() { echo "scale10k: $*" >&2; exit 2; }
note() { echo "scale10k: $*" >&2; }

for x in "$SMTP_SINK" "$SMTP_SOURCE" "$SMTPGATE_BIN" python3; do
	command -v "$x" >/dev/null 2>&1 || die "missing: $x"
done
# A descriptor per idle connection in smtpgate and in the client script.
ulimit -n $((IDLE * 2 + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((IDLE + 1024)) ]; then
	die "ulimit -n is $nofile, need at least $((IDLE + 1024))"
fi

work=$(mktemp -d /tmp/smtpgate-scale.XXXXXX) || die "mktemp failed"
cp "$SMTPGATE_BIN" "$work/smtpgate" || die "cannot copy $SMTPGATE_BIN"
pids=()
failures=0

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	sleep 0.3
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [ "$KEEP" = 1 ] || [ "$failures" -gt 0 ]; then
		note "logs and configs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
	local p keep=()
	for p in "${pids[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	pids=("${keep[@]}")
}

# stop_pid PID NAME [TIMEOUT]: SIGTERM, SIGKILL after TIMEOUT seconds.
# Sets stop_rc to the exit status.
stop_pid() {
	local pid=$1 name=$2 t=${3:-15} wd
	kill -TERM "$pid" 2>/dev/null
	( sleep "$t"; kill -KILL "$pid" 2>/dev/null ) &
	wd=$!
	wait "$pid" 2>/dev/null
	stop_rc=$?
	if kill -0 "$wd" 2>/dev/null; then
		kill "$wd" 2>/dev/null
		wait "$wd" 2>/dev/null
	else
		note "ERROR: $name (pid $pid) did not exit within ${t}s; killed"
		failures=$((failures + 1))
	fi
	forget_pid "$pid"
}

free_ports() {
	python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))' "$1"
}

wait_port() {           # wait_port PORT PID
	for _ in $(seq 100); do
		kill -0 "$2" 2>/dev/null || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
sink_msgs() {
	tr '\r' '\n' <"$work/sink.out" | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'
}

read -r SINK_PORT GATE_PORT <<<"$(free_ports 2)"
[ -n "$GATE_PORT" ] || die "cannot pick free ports"
ticks=$(getconf CLK_TCK)

sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
"$SMTP_SINK" "${sink_user[@]}" -c -m 4096 -t 300 "127.0.0.1:$SINK_PORT" 4096 \
    >"$work/sink.out" 2>"$work/sink.err" &
SINK_PID=$!
pids+=("$SINK_PID")
wait_port "$SINK_PORT" "$SINK_PID" || die "smtp-sink did not start: $(cat "$work/sink.err")"

cat >"$work/smtpgate.yaml" <<EOF
hostname: gate.scale.test
workers: $WORKERS
log_level: warning
listen:
  - address: 127.0.0.1:$GATE_PORT
backend:
  servers: [127.0.0.1:$SINK_PORT]
  xclient: true
limits:
  max_connections: $((IDLE + 2000))
timeouts:
  command: 30m
smtp:
  reverse_dns: false
EOF
"$work/smtpgate" -c "$work/smtpgate.yaml" 2>"$work/smtpgate.log" &
GATE_PID=$!
pids+=("$GATE_PID")
wait_port "$GATE_PORT" "$GATE_PID" || die "smtpgate did not start: $(cat "$work/smtpgate.log")"
sleep 0.5

# mail TAG: one smtp-source run through smtpgate; sets rate_TAG, cpu_TAG.
mail() {
	local tag=$1 n0 n1 t0 t1 c0 c1 rate cpu
	n0=$(sink_msgs)
	c0=$(cpu_ticks "$GATE_PID")
	t0=$(date +%s.%N)
	"$SMTP_SOURCE" -c -d -s "$SESSIONS" -m "$MESSAGES" -l "$MSGSIZE" \
	    -M scale.example.test -f scale@sender.example -t scale@rcpt.example \
	    "127.0.0.1:$GATE_PORT" >"$work/source-$tag.out" 2>"$work/source-$tag.err" ||
		{ note "ERROR: smtp-source ($tag) failed: $(tail -3 "$work/source-$tag.err")"
		  failures=$((failures + 1)); }
	t1=$(date +%s.%N)
	c1=$(cpu_ticks "$GATE_PID")
	sleep 0.3       # the sink's last counter update
	n1=$(sink_msgs)
	if [ $((n1 - n0)) -ne "$MESSAGES" ]; then
		note "ERROR: the sink got $((n1 - n0)) messages of $MESSAGES ($tag)"
		failures=$((failures + 1))
	fi
	rate=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
	cpu=$(awk -v n="$MESSAGES" -v c=$((c1 - c0)) -v t="$ticks" \
	    'BEGIN { printf "%.1f", c / t * 1e6 / n }')
	eval "rate_$tag=\$rate; cpu_$tag=\$cpu"
}

echo "smtpgate $("$work/smtpgate" -V | awk '{ print $2 }'), $WORKERS workers; smtp-sink backend"
rss0=$(rss_kb "$GATE_PID")
mail base

python3 "$helpers/idle_clients.py" --sources 8 127.0.0.1 "$GATE_PORT" "$IDLE" 300 \
    >"$work/idle.out" 2>"$work/idle.err" &
IDLE_PID=$!
pids+=("$IDLE_PID")
for _ in $(seq 3000); do
	grep -q '^ready' "$work/idle.out" && break
	kill -0 "$IDLE_PID" 2>/dev/null || break
	sleep 0.1
done
ready=$(grep '^ready' "$work/idle.out")
[ "$ready" = "ready greeted=$IDLE failed=0" ] ||
	{ note "ERROR: idle clients: ${ready:-no ready line}; $(tail -3 "$work/idle.err")"
	  failures=$((failures + 1)); }
sleep 1
rss_idle=$(rss_kb "$GATE_PID")
fds=$(find "/proc/$GATE_PID/fd" -mindepth 1 2>/dev/null | wc -l)
mail idle
rss_mail=$(rss_kb "$GATE_PID")
stop_pid "$IDLE_PID" idle_clients 60
done_line=$(grep '^done' "$work/idle.out")
[ "$done_line" = "done greeted=$IDLE closed_by_server=0" ] ||
	{ note "ERROR: idle clients: ${done_line:-no done line}"; failures=$((failures + 1)); }
sleep 1
rss_after=$(rss_kb "$GATE_PID")

python3 "$helpers/idle_clients.py" --sources 8 --partial 127.0.0.1 "$GATE_PORT" "$IDLE" 300 \
    >"$work/partial.out" 2>"$work/partial.err" &
IDLE_PID=$!
pids+=("$IDLE_PID")
for _ in $(seq 3000); do
	grep -q '^ready' "$work/partial.out" && break
	kill -0 "$IDLE_PID" 2>/dev/null || break
	sleep 0.1
done
pready=$(grep '^ready' "$work/partial.out")
[ "$pready" = "ready greeted=$IDLE failed=0" ] ||
	{ note "ERROR: partial-line clients: ${pready:-no ready line}"; failures=$((failures + 1)); }
sleep 2
rss_partial=$(rss_kb "$GATE_PID")
stop_pid "$IDLE_PID" idle_clients 60
pdone=$(grep '^done' "$work/partial.out")
[ "$pdone" = "done greeted=$IDLE closed_by_server=0" ] ||
	{ note "ERROR: partial-line clients: ${pdone:-no done line}"; failures=$((failures + 1)); }

stop_pid "$GATE_PID" smtpgate 40
[ "$stop_rc" = 0 ] || { note "ERROR: smtpgate exited with $stop_rc"; failures=$((failures + 1)); }
stop_pid "$SINK_PID" smtp-sink 10

per=$(( (rss_idle - rss0) * 1024 / IDLE ))
verdict=MISS
[ "$rss_idle" -lt $((T_IDLE_MB * 1024)) ] && verdict=PASS
echo "  idle clients:  $ready / $done_line; smtpgate fds open: $fds"
echo "  mail:          smtp-source -d -s $SESSIONS -m $MESSAGES -l $MSGSIZE"
printf '  RSS, 0 connections:            %s MB\n' "$(mb "$rss0")"
printf '  RSS, %s idle connections:   %s MB  %s (< %s MB)\n' "$IDLE" "$(mb "$rss_idle")" \
    "$verdict" "$T_IDLE_MB"
printf '  RSS per idle connection:       %s bytes\n' "$per"
printf '  RSS after mail with them idle: %s MB; after they closed: %s MB\n' \
    "$(mb "$rss_mail")" "$(mb "$rss_after")"
printf '  RSS, %s clients each holding a partial command line: %s MB (%s)\n' "$IDLE" \
    "$(mb "$rss_partial")" "$pready / $pdone"
printf '  mail, no idle connections:     %s msgs/s, %s us CPU/msg\n' "$rate_base" "$cpu_base"
printf '  mail, %s idle connections:  %s msgs/s, %s us CPU/msg (%s x)\n' "$IDLE" \
    "$rate_idle" "$cpu_idle" "$(awk -v a="$rate_idle" -v b="$rate_base" 'BEGIN { printf "%.2f", a / b }')"
[ "$failures" = 0 ] || exit 1
exit 0
