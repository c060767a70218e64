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
deploy=$top/deploy
helpers=$deploy/bench
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"

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

trap 'cleanup_pids "logs and configs"' EXIT
trap 'exit 130' INT TERM

read -r SINK_PORT GATE_PORT <<<"$(free_ports 2)"
[ -n "$GATE_PORT" ] || die "cannot pick free ports"
ticks=$(getconf CLK_TCK)

sink_start "$SINK_PORT" 4096 -c -m 4096 -t 300 || die "smtp-sink did not start: $(cat "$work/sink.err")"

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

# mail TAG: one smtp-source run through smtpgate; sets rate (msgs/s) and
# cpu (us of smtpgate's CPU per message).
mail() {
	local tag=$1 n0 n1 t0 t1 c0 c1
	n0=$(sink_msgs)
	c0=$(proc_cpu_ticks "$GATE_PID")
	t0=$(date +%s.%N)
	"$SMTP_SOURCE" -c -d -s "$SESSIONS" -m "$MESSAGES" -l "$MSGSIZE" \
	    -M scale.example.test -f scale@sender.example -t scale@rcpt.example \
	    "127.0.0.1:$GATE_PORT" >"$work/source-$tag.out" 2>"$work/source-$tag.err" ||
		{ note "ERROR: smtp-source ($tag) failed: $(tail -3 "$work/source-$tag.err")"
		  failures=$((failures + 1)); }
	t1=$(date +%s.%N)
	c1=$(proc_cpu_ticks "$GATE_PID")
	sleep 0.3       # the sink's last counter update
	n1=$(sink_msgs)
	if [ $((n1 - n0)) -ne "$MESSAGES" ]; then
		note "ERROR: the sink got $((n1 - n0)) messages of $MESSAGES ($tag)"
		failures=$((failures + 1))
	fi
	rate=$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
	cpu=$(awk -v n="$MESSAGES" -v c=$((c1 - c0)) -v t="$ticks" \
	    'BEGIN { printf "%.1f", c / t * 1e6 / n }')
}

# idle_start TAG [ARG...]: starts deploy/bench/idle_clients.py (IDLE
# connections, with ARGs) as IDLE_PID, output in work/TAG.out and TAG.err;
# waits (5 min at most) for its "ready" line or its exit.
idle_start() {
	local tag=$1
	shift
	python3 "$helpers/idle_clients.py" --sources 8 "$@" 127.0.0.1 "$GATE_PORT" "$IDLE" 300 \
	    >"$work/$tag.out" 2>"$work/$tag.err" &
	IDLE_PID=$!
	pids+=("$IDLE_PID")
	for _ in $(seq 3000); do
		grep -q '^ready' "$work/$tag.out" && break
		kill -0 "$IDLE_PID" 2>/dev/null || break
		sleep 0.1
	done
}

echo "smtpgate $("$work/smtpgate" -V | awk '{ print $2 }'), $WORKERS workers; smtp-sink backend"
rss0=$(proc_status_kb "$GATE_PID" VmRSS)
mail base
rate_base=$rate cpu_base=$cpu

idle_start idle
ready=$(grep '^ready' "$work/idle.out")
[ "$ready" = "ready greeted=$IDLE failed=0" ] ||
	{ note "ERROR: idle clients: ${ready:-no ready line}; $(tail -3 "$work/idle.err")"
	  failures=$((failures + 1)); }
sleep 1
rss_idle=$(proc_status_kb "$GATE_PID" VmRSS)
fds=$(find "/proc/$GATE_PID/fd" -mindepth 1 2>/dev/null | wc -l)
mail idle
rate_idle=$rate cpu_idle=$cpu
rss_mail=$(proc_status_kb "$GATE_PID" VmRSS)
stop_pid "$IDLE_PID" idle_clients 60 || failures=$((failures + 1))
done_line=$(grep '^done' "$work/idle.out")
[ "$done_line" = "done greeted=$IDLE closed_by_server=0" ] ||
	{ note "ERROR: idle clients: ${done_line:-no done line}"; failures=$((failures + 1)); }
sleep 1
rss_after=$(proc_status_kb "$GATE_PID" VmRSS)

idle_start partial --partial
pready=$(grep '^ready' "$work/partial.out")
[ "$pready" = "ready greeted=$IDLE failed=0" ] ||
	{ note "ERROR: partial-line clients: ${pready:-no ready line}"; failures=$((failures + 1)); }
sleep 2
rss_partial=$(proc_status_kb "$GATE_PID" VmRSS)
stop_pid "$IDLE_PID" idle_clients 60 || failures=$((failures + 1))
pdone=$(grep '^done' "$work/partial.out")
[ "$pdone" = "done greeted=$IDLE closed_by_server=0" ] ||
	{ note "ERROR: partial-line clients: ${pdone:-no done line}"; failures=$((failures + 1)); }

stop_pid "$GATE_PID" smtpgate 40 || failures=$((failures + 1))
[ "$stop_rc" = 0 ] || { note "ERROR: smtpgate exited with $stop_rc"; failures=$((failures + 1)); }
stop_pid "$SINK_PID" smtp-sink 10 || failures=$((failures + 1))

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
