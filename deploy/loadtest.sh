#!/bin/bash
# loadtest.sh [--soak MINUTES]: smtpgate in front of a real Postfix, under
# Postfix's smtp-source, against that same Postfix without smtpgate.
#
# A measurement, not a test: it prints figures and PASS/MISS against the
# targets; its exit status says only whether every run went without an
# error and every message was accounted for (0) or not (1).
#
# Everything runs on 127.0.0.1, ports free, as root (Postfix's master
# starts as root):
#   Postfix    deploy/postfix/'s configuration as run-local.sh runs it
#              (deploy/lib.sh), except that mail for example.test goes to
#              the discard transport (virtual_transport = discard), queue
#              ids are long (never reused within a run) and its processes
#              live on (max_idle, max_use) so that their CPU time can be
#              read
#   Redis      deploy/redis/redis.conf
#   smtpgate   deploy/smtpgate/smtpgate.yaml as run-local.sh makes it,
#              with max_connections_per_client 0 (smtp-source's sessions all
#              come from 127.0.0.1), and the policy of deploy/policy/ with
#              every rate limit 10,000 times higher: each message is
#              checked and counted in Redis at connect, MAIL and the final
#              dot, and never refused
#
# Normal mode: LOADTEST_ROUNDS rounds, each of four smtp-source runs:
# 1 message per connection and then -d (many per connection), each
# straight to Postfix ("direct") and through smtpgate ("smtpgate"), the
# order of the two swapped every other round.  Per run: msgs/s (messages /
# smtp-source's wall time), what Postfix's log says it took in and
# delivered for that run's sender, and the CPU time per message of
# smtpgate, Redis and each kind of Postfix process.  A run counts as an
# error unless smtp-source exits 0, prints nothing on stderr and counted
# every message, and Postfix accepted and delivered exactly that many with
# no Message-ID twice.  Summary: medians over the rounds, the
# smtpgate/direct ratio paired by round, the message accounting and CPU
# ms per message.
#
# --soak MINUTES: smtp-source through smtpgate only, runs back to back
# (1 message per connection and -d in turn) for MINUTES, smtpgate's VmRSS
# sampled every 10 s; prints the median of the first and the last third of
# the samples and FLAT (growth at most 1 MiB or 5 %) or GROWING, and the
# same message accounting.
#
# Environment (defaults in brackets):
#   LOADTEST_MESSAGES  messages per smtp-source run [4000]
#   LOADTEST_SESSIONS  parallel smtp-source sessions [20]
#   LOADTEST_SIZE      message size, bytes (smtp-source -l) [2048]
#   LOADTEST_ROUNDS    rounds [3]
#   SMTPGATE_BIN       the binary (default: build/smtpgate, built if absent)
#   SMTPGATE_KEEP_TMP=1 keep the work directory (configs, logs)
#   LOADTEST_PIN=1     Postfix's processes on CPU 0 only; smtp-source,
#                      smtpgate and Redis on CPU 1: Postfix has the same
#                      CPU in both targets, as when the gateway runs on
#                      hosts of its own, so the ratio shows what smtpgate
#                      costs Postfix (its extra XCLIENT/EHLO work, latency)
#                      rather than the CPU they share [0]
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
deploy=$repo/deploy
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"
stat=$deploy/bench/loadstat.py

MESSAGES=${LOADTEST_MESSAGES:-4000}
SESSIONS=${LOADTEST_SESSIONS:-20}
SIZE=${LOADTEST_SIZE:-2048}
ROUNDS=${LOADTEST_ROUNDS:-3}
T_RATIO=0.90            # target: smtpgate >= 0.9 x direct msgs/s
RCPT=user@example.test  # in deploy/postfix/vmailbox
HELO=client.example.test
soak=0
case "${1:-}" in
"") ;;
--soak)
	soak=${2:-}
	case "$soak" in
	'' | *[!0-9]* | 0) echo "usage: loadtest.sh [--soak MINUTES]" >&2; exit 2 ;;
	esac
	;;
*) echo "usage: loadtest.sh [--soak MINUTES]" >&2; exit 2 ;;
esac

need_root loadtest.sh || exit 1
need_tools loadtest.sh postfix postconf postqueue smtp-source redis-server redis-cli openssl python3 || exit 1
gate_bin || exit 1

work_dir loadtest || exit 1
# A copy: a rebuild during the run does not change the binary under test.
cp "$bin" "$work/smtpgate.bin"

redis_pid="" gate_pid="" rss_pid="" postfix_started=0 status=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$rss_pid" ]; then
		stop_wait "$rss_pid" 5 || true
	fi
	if [ -n "$gate_pid" ]; then
		rc=0
		stop_wait "$gate_pid" 60 || rc=$?
		if [ "$rc" -ne 0 ]; then
			echo "loadtest.sh: smtpgate exited with status $rc" >&2
			tail -n 20 "$work/smtpgate.log" >&2
			status=1
		fi
	fi
	if [ "$postfix_started" -eq 1 ]; then
		postfix_stop "$work/postfix"
	fi
	if [ -n "$redis_pid" ]; then
		stop_wait "$redis_pid" 30 || true
	fi
	if [ "${SMTPGATE_KEEP_TMP:-}" = 1 ] || [ "$status" -ne 0 ]; then
		echo "loadtest.sh: logs and configs kept in $work" >&2
	else
		rm -rf "$work"
	fi
	exit "$status"
}
trap 'status=$?; cleanup' EXIT
trap 'status=1; exit' INT TERM

fail() {
	echo "loadtest.sh: $*" >&2
	status=1
	exit 1
}

read -r smtp_port submission_port postfix_port redis_port metrics_port < <(free_ports 5)

# --- Redis, Postfix ----------------------------------------------------------
redis_start "$work/redis" "$redis_port" || fail "Redis did not start"
redis_pid=$REDIS_PID
pin=${LOADTEST_PIN:-0}
client_cpu=()
if [ "$pin" = 1 ]; then
	command -v taskset >/dev/null || fail "LOADTEST_PIN=1 needs taskset"
	taskset -a -p -c 1 "$redis_pid" >/dev/null
	client_cpu=(taskset -c 1)
fi
pf=$work/postfix
postfix_started=1
postfix_start "$pf" "$postfix_port" \
	"virtual_transport = discard" \
	"enable_long_queue_ids = yes" \
	"max_idle = 3600s" \
	"max_use = 1000000" ||
	fail "Postfix did not start"
master=$(postfix_master "$pf")
if [ "$pin" = 1 ]; then
	# Its children to come inherit the master's CPU set.
	for p in $master $(pgrep -P "$master"); do
		taskset -a -p -c 0 "$p" >/dev/null
	done
fi

# --- smtpgate ------------------------------------------------------------------
policy=$work/policy
mkdir "$policy"
cp "$deploy/policy/"*.yaml "$policy/"
# Every "limit: N" (or "NG") of the rate limits, times 10,000.
awk '
	/^[ \t]*limit:[ \t]*[0-9]+[KMG]?[ \t]*(#.*)?$/ {
		match($0, /[0-9]+[KMG]?/)
		v = substr($0, RSTART, RLENGTH)
		u = (v ~ /[KMG]$/) ? substr(v, length(v)) : ""
		n = (u == "") ? v : substr(v, 1, length(v) - 1)
		$0 = substr($0, 1, RSTART - 1) (n * 10000) u substr($0, RSTART + RLENGTH)
		raised++
	}
	{ print }
	END { if (raised == 0) exit 1 }' "$deploy/policy/ratelimits.yaml" >"$policy/ratelimits.yaml" ||
	fail "no limit: found in deploy/policy/ratelimits.yaml"
sg=$work/smtpgate
gate_dir "$sg" "$policy"
gate_conf_local "$smtp_port" "$submission_port" "$metrics_port" "$postfix_port" \
	"$redis_port" || fail "bad config"
gate_conf_replace "max_connections_per_client: 20" "max_connections_per_client: 0" ||
	fail "bad config"
printf '%s\n' "$conf" >"$sg/smtpgate.yaml"
"$work/smtpgate.bin" -t -c "$sg/smtpgate.yaml" >/dev/null ||
	fail "smtpgate -t refused $sg/smtpgate.yaml"
"$work/smtpgate.bin" -c "$sg/smtpgate.yaml" 2>"$work/smtpgate.log" &
gate_pid=$!
wait_greeting "$smtp_port" "$work/smtpgate.log" "$gate_pid" || fail "smtpgate does not greet"
[ "$pin" = 1 ] && taskset -a -p -c 1 "$gate_pid" >/dev/null

echo "loadtest: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE per run; Postfix $(postconf -c "$pf/conf" -h mail_version) (discard transport), smtpgate workers: $(awk '/^workers:/ { print $2 }' "$sg/smtpgate.yaml") (0: one per core), $(nproc) cores"
[ "$pin" = 1 ] && echo "pinned (LOADTEST_PIN=1): Postfix on CPU 0; smtp-source, smtpgate, Redis on CPU 1"
echo "work directory: $work"

# --- one run ---------------------------------------------------------------------

results=$work/results    # "TARGET MODE ROUND MSGS_PER_S" or "... ERROR"
cpufile=$work/cpu        # "TARGET MODE ROUND LABEL MS_PER_MSG"
: >"$results"
: >"$cpufile"
sent_total=0 accepted_total=0 delivered_total=0 other_total=0 dup_total=0 errors=0

# run TARGET MODE ROUND: one smtp-source run, its figures appended to
# $results and $cpufile, one line printed.
run() {
	local target=$1 mode=$2 round=$3 port dflag=() sender offset t0 t1 rc
	local secs sent acc del oth dup i prev err="" rate cpu
	port=$postfix_port
	[ "$target" = smtpgate ] && port=$smtp_port
	[ "$mode" = multi ] && dflag=(-d)
	sender="load-$target-$mode-r$round@client.example.test"
	offset=$(stat -c %s "$pf/maillog")
	python3 "$stat" cpu "$master" "$gate_pid" "$redis_pid" >"$work/cpu0"
	t0=$(date +%s.%N)
	rc=0
	"${client_cpu[@]}" smtp-source -c "${dflag[@]}" -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
		-M "$HELO" -f "$sender" -t "$RCPT" "127.0.0.1:$port" \
		>"$work/source.out" 2>"$work/source.err" || rc=$?
	t1=$(date +%s.%N)
	# Until Postfix has delivered all it took in for this sender (the
	# count stops moving and the queue is empty), 120 s at most.
	prev="" i=0
	while :; do
		read -r acc del oth dup < <(python3 "$stat" maillog "$pf/maillog" "$offset" "$sender")
		if [ "$acc $del $oth" = "$prev" ] && [ $((del + oth)) -ge "$acc" ] &&
			postqueue -c "$pf/conf" -p 2>/dev/null | grep -q 'Mail queue is empty'; then
			break
		fi
		prev="$acc $del $oth"
		i=$((i + 1))
		[ $i -gt 240 ] && { err="Postfix still busy after 120 s"; break; }
		sleep 0.5
	done
	python3 "$stat" cpu "$master" "$gate_pid" "$redis_pid" >"$work/cpu1"
	sent=$(tr '\r' '\n' <"$work/source.out" | awk 'NF { n = $1 } END { print n + 0 }')
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	[ "$rc" = 0 ] || err="smtp-source exit status $rc"
	[ -s "$work/source.err" ] && err="smtp-source: $(head -c 300 "$work/source.err")"
	[ -z "$err" ] && [ "$sent" != "$MESSAGES" ] && err="smtp-source counted $sent of $MESSAGES"
	[ -z "$err" ] && [ "$acc" != "$sent" ] && err="Postfix accepted $acc, smtp-source sent $sent"
	[ -z "$err" ] && [ "$del" != "$acc" ] && err="Postfix delivered $del of $acc"
	[ -z "$err" ] && [ "$oth" != 0 ] && err="$oth deliveries not sent"
	[ -z "$err" ] && [ "$dup" != 0 ] && err="$dup Message-IDs accepted twice"
	kill -0 "$gate_pid" 2>/dev/null || err="smtpgate died"
	if [ "$target" = smtpgate ]; then
		sent_total=$((sent_total + sent))
		accepted_total=$((accepted_total + acc))
		delivered_total=$((delivered_total + del))
		other_total=$((other_total + oth))
		dup_total=$((dup_total + dup))
	fi
	cpu=$(python3 "$stat" cpudiff "$work/cpu0" "$work/cpu1" "$MESSAGES")
	awk -v k="$target $mode $round" '{ print k, $0 }' <<<"$cpu" >>"$cpufile"
	if [ -n "$err" ]; then
		errors=$((errors + 1))
		echo "$target $mode $round ERROR" >>"$results"
		printf '  r%s %-6s %-8s ERROR after %ss: %s\n' "$round" "$mode" "$target" "$secs" "$err"
		[ "$err" = "smtpgate died" ] && fail "smtpgate died; its log: $work/smtpgate.log"
		return 0
	fi
	rate=$(awk -v n="$MESSAGES" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
	echo "$target $mode $round $rate" >>"$results"
	printf '  r%s %-6s %-8s %6s msgs in %6ss = %5s msgs/s; Postfix accepted %s, delivered %s; CPU ms/msg: %s\n' \
		"$round" "$mode" "$target" "$sent" "$secs" "$rate" "$acc" "$del" \
		"$(awk '$2 > 0 { printf "%s%s %s", n++ ? ", " : "", $1, $2 }' <<<"$cpu")"
}

# accounting: the message counts over every run through smtpgate, and
# how often Redis was slower than smtpgate's redis.timeout (the mail then
# passed unchecked and uncounted: on_error: allow).
accounting() {
	local ok=OK outages
	outages=$(grep -c 'unavailable:' "$work/smtpgate.log" || true)
	echo "Redis slower than redis.timeout ($(awk '$1 == "timeout:" { print $2 }' "$sg/smtpgate.yaml")): $outages time(s) (with on_error: allow, the checks then waiting passed uncounted)"
	[ "$errors" -eq 0 ] && [ "$accepted_total" -eq "$sent_total" ] &&
		[ "$delivered_total" -eq "$sent_total" ] && [ "$dup_total" -eq 0 ] &&
		[ "$other_total" -eq 0 ] || ok=ERROR
	echo "Messages through smtpgate: smtp-source sent $sent_total; Postfix accepted $accepted_total, delivered $delivered_total (other status: $other_total), Message-IDs accepted twice: $dup_total; runs with errors: $errors  $ok"
	[ "$ok" = OK ]
}

# --- soak ------------------------------------------------------------------------

if [ "$soak" -gt 0 ]; then
	echo "Soak: $soak min through smtpgate, VmRSS every 10 s:"
	python3 "$stat" rss "$gate_pid" 10 >"$work/rss" &
	rss_pid=$!
	end=$(( $(date +%s) + soak * 60 ))
	n=0 t_start=$(date +%s.%N)
	while [ "$(date +%s)" -lt "$end" ]; do
		n=$((n + 1))
		mode=single
		[ $((n % 2)) = 0 ] && mode=multi
		run smtpgate "$mode" "$n"
	done
	t_end=$(date +%s.%N)
	stop_wait "$rss_pid" 5 || true
	rss_pid=""
	read -r samples first last growth verdict < <(python3 "$stat" rsssummary "$work/rss")
	echo
	awk -v n="$sent_total" -v a="$t_start" -v b="$t_end" -v r="$n" \
		'BEGIN { printf "Soak: %d runs, %d messages in %.0f s (%.0f msgs/s overall)\n", r, n, b - a, n / (b - a) }'
	echo "smtpgate VmRSS: $samples samples; median of the first third $first kB, of the last third $last kB (growth $growth kB): $verdict"
	echo "  a sample a minute (s kB): $(awk 'NR % 6 == 1 { printf "%s%s %s", (NR > 1) ? ", " : "", $1, $2 }' "$work/rss")"
	accounting || { status=1; exit 1; }
	exit 0
fi

# --- normal mode -------------------------------------------------------------------

echo "Runs:"
for round in $(seq "$ROUNDS"); do
	order="direct smtpgate"
	[ $((round % 2)) = 0 ] && order="smtpgate direct"
	for mode in single multi; do
		for target in $order; do
			run "$target" "$mode" "$round"
		done
	done
done
echo

# median TARGET MODE -> the median msgs/s over the rounds, or ERROR.
median() {
	awk -v t="$1" -v m="$2" '$1 == t && $2 == m { print $4 }' "$results" |
		sort -n | awk '
		/ERROR/ { bad = 1 }
		{ v[NR] = $1 }
		END {
			if (bad || NR == 0) { print "ERROR"; exit }
			print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		}'
}
# ratio MODE -> the median over the rounds of smtpgate/direct within a round.
ratio() {
	awk -v m="$1" '
		$2 == m && $1 == "smtpgate" { g[$3] = $4 }
		$2 == m && $1 == "direct" { d[$3] = $4 }
		END {
			n = 0
			for (r in g) {
				if (g[r] == "ERROR" || d[r] == "ERROR" || !(r in d)) { print "n/a"; exit }
				v[++n] = g[r] / d[r]
			}
			if (n == 0) { print "n/a"; exit }
			for (i = 2; i <= n; i++)
				for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
			printf "%.2f\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		}' "$results"
}
# cpu_median TARGET MODE LABEL -> median ms/msg over the rounds.
cpu_median() {
	awk -v t="$1" -v m="$2" -v l="$3" '$1 == t && $2 == m && $4 == l { print $5 }' "$cpufile" |
		sort -n | awk '{ v[NR] = $1 } END {
			if (NR == 0) { print "0"; exit }
			printf "%.3f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "Summary (medians of $ROUNDS rounds; the ratio is the median of each round's smtpgate/direct):"
printf '  %-12s %8s %9s %7s\n' mode direct smtpgate ratio
for mode in single multi; do
	d=$(median direct "$mode")
	g=$(median smtpgate "$mode")
	r=$(ratio "$mode")
	v=n/a
	[ "$r" != n/a ] && v=$(awk -v r="$r" -v t="$T_RATIO" 'BEGIN { print (r >= t) ? "PASS" : "MISS" }')
	label="1 msg/conn"
	[ "$mode" = multi ] && label="-d"
	printf '  %-12s %8s %9s %7s  %s (smtpgate >= %s x direct)\n' "$label" "$d" "$g" "$r" "$v" "$T_RATIO"
done
accounting || status=1
# The labels with any CPU time at all.
labels=$(awk '$5 > 0 { print $4 }' "$cpufile" | sort -u |
	awk '$1 != "smtpgate" && $1 != "redis" { l = l " " $1 } END { print "smtpgate redis" l }')
echo "CPU ms per message (medians; Postfix's processes by name, \"exited\": its reaped children):"
printf '  %-18s' "mode target"
for l in $labels; do printf ' %9s' "$l"; done
printf ' %9s\n' total
for mode in single multi; do
	for target in direct smtpgate; do
		printf '  %-18s' "$mode $target"
		total=0
		for l in $labels; do
			v=$(cpu_median "$target" "$mode" "$l")
			total=$(awk -v a="$total" -v b="$v" 'BEGIN { print a + b }')
			printf ' %9s' "$v"
		done
		printf ' %9.3f\n' "$total"
	done
done
exit "$status"
