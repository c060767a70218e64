#!/usr/bin/env bash
# deploy/bench.sh: throughput and memory benchmark of smtpgate.
#
# A benchmark, not a test: it prints figures, and PASS/MISS against the
# reference targets, but its exit status only says whether every run
# completed without errors (0) or not (1).
#
# Everything runs on 127.0.0.1 with ports picked free at run time:
#   backend    smtp-sink (Postfix), discards mail, counts it
#   gateway    smtpgate (a copy of build/smtpgate, so a concurrent rebuild
#              does not change the binary under test)
#   baseline   haproxy in TCP mode: a plain L4 proxy in front of the sink
#   policy     a second smtpgate, the same config plus a generated policy
#              of 1,000 rules (deploy/bench/genpolicy.py: CIDRs, domains,
#              exact names and addresses, 100 PCRE2 regexes) that the
#              benchmark traffic passes without matching any of them, so
#              every rule of every stage runs for every message
#   ratelimit  a third smtpgate, the same config plus redis: (a redis-server
#              of its own, started here) and a policy of three rate limits:
#              messages per client_ip (checked at MAIL), recipients per
#              sender (RCPT) and bytes per sender_domain (the final dot),
#              with limits far above what the run sends, so every message
#              costs one Redis round trip per stage and none is refused;
#              Redis's own figures (INFO commandstats, the counters' TATs)
#              show that every message was counted by all three
# Load: smtp-source, one message per connection and then -d (many messages
# per connection), against the sink directly, through smtpgate, through
# smtpgate with the policy, through smtpgate with the rate limits and
# through haproxy, always with the same HELO name, sender and recipient.
# Ratios are measured within one run, since the machine is noisy.
# Then smtpgate's RSS: peak under load, with N idle connections, and while
# one very large message passes.
#
# Usage: deploy/bench.sh          (from anywhere; run as root or not)
# Environment (defaults in brackets):
#   BENCH_MESSAGES  messages per load run [20000]
#   BENCH_SESSIONS  parallel smtp-source sessions [20]
#   BENCH_SIZE      message payload bytes [2048]
#   BENCH_ROUNDS    load rounds; figures are medians over rounds [3]
#   BENCH_IDLE      idle connections for the RSS test [5000]
#   BENCH_BIG_MB    size of the large message, MiB [200]
#   BENCH_WORKERS   smtpgate worker threads (and haproxy nbthread) [2]
#   SMTPGATE        binary to test [<repo>/build/smtpgate]
#   BENCH_REDIS_UNIX 1: the rate-limit gateway reaches Redis on its Unix
#                   socket (redis: socket:) instead of 127.0.0.1 [0]
#   BENCH_KEEP      1: keep the work directory (logs, configs) [0]
# Quick smoke run: BENCH_MESSAGES=2000 BENCH_IDLE=500 BENCH_BIG_MB=20 deploy/bench.sh

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
deploy=$here
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"
helpers=$here/bench

MESSAGES=${BENCH_MESSAGES:-20000}
SESSIONS=${BENCH_SESSIONS:-20}
MSGSIZE=${BENCH_SIZE:-2048}
ROUNDS=${BENCH_ROUNDS:-3}
IDLE=${BENCH_IDLE:-5000}
BIG_MB=${BENCH_BIG_MB:-200}
WORKERS=${BENCH_WORKERS:-2}
SMTPGATE_BIN=${SMTPGATE:-$top/build/smtpgate}
KEEP=${BENCH_KEEP:-0}
REDIS_UNIX=${BENCH_REDIS_UNIX:-0}

SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
REDIS_SERVER=${REDIS_SERVER:-/usr/bin/redis-server}
REDIS_CLI=${REDIS_CLI:-/usr/bin/redis-cli}

# What smtp-source says (-M, -f, -t): the same for every target; the
# generated policy lets exactly this through.
HELO_NAME=bench.example.test
SENDER=bench@sender.example
RCPT=bench@rcpt.example
POLICY_RULES=1000       # rules in the generated policy ...
POLICY_REGEXES=100      # ... of which PCRE2 regexes
CANARY=canary@policy-probe.invalid      # the policy's last rule: a sender
CANARY_REPLY="550 5.7.1 bench policy canary"
# The rate limits: a window of a year and limits 10 times what the whole
# run can send (every round, both modes, the warm-up), so none is ever
# refused.  Each event moves its key's TAT (theoretical arrival time, in
# Redis, microseconds) by exactly cost x T, T = window / limit: as long as
# the TAT stays ahead of the clock, which a year's window guarantees, the
# TAT's move over a run divided by T is what was counted in that run.
RL_WINDOW_H=8760
RL_WARMUP=5             # messages sent through it before the rounds
RL_STAGES=3             # stages with a limit per message (1 rcpt/msg)

# Reference targets (printed as PASS/MISS, never asserted).
T_RATIO=0.90            # smtpgate msgs/s >= 0.9 x haproxy, both modes
T_POLICY=0.95           # with the policy >= 0.95 x without, both modes
T_RL=0.85               # with the 3 rate limits >= 0.85 x without, both modes
T_PEAK_MB=20            # peak RSS under load
T_IDLE_MB=50            # RSS with IDLE idle connections
T_BIG_MB=2              # RSS growth while the large message passes

die() { echo "bench: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

for x in "$SMTP_SINK" "$SMTP_SOURCE" "$HAPROXY" "$REDIS_SERVER" "$REDIS_CLI" \
    "$SMTPGATE_BIN" python3; do
	command -v "$x" >/dev/null 2>&1 || die "missing: $x"
done

# Idle connections need a file descriptor each in smtpgate and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((IDLE + 256)) ]; then
	die "ulimit -n is $nofile, need at least $((IDLE + 256)) for BENCH_IDLE=$IDLE"
fi

work=$(mktemp -d /tmp/smtpgate-bench.XXXXXX) || die "mktemp failed"
cp "$SMTPGATE_BIN" "$work/smtpgate" || die "cannot copy $SMTPGATE_BIN"

# ---- process bookkeeping ----------------------------------------------------

pids=()                 # every background process we started
failures=0              # runs with errors

trap 'cleanup_pids "logs and configs"' EXIT
trap 'exit 130' INT TERM

# Resets the peak RSS (VmHWM) of PID to its current RSS, if allowed.
reset_hwm() {
	echo 5 2>/dev/null >"/proc/$1/clear_refs"
}

# ---- the processes ------------------------------------------------------------

read -r SINK_PORT GATE_PORT HAP_PORT POL_PORT RL_PORT REDIS_PORT <<<"$(free_ports 6)"
[ -n "$REDIS_PORT" ] || die "cannot pick free ports"
ticks=$(getconf CLK_TCK)

# -c: running counters (sessions, QUITs, messages), one update per event;
# the last one says how many messages the sink received.  PIPELINING,
# XCLIENT and 8BITMIME stay announced (the defaults).
sink_start "$SINK_PORT" 4096 -c -m 4096 -t 300 || die "smtp-sink did not start: $(cat "$work/sink.err")"

cat >"$work/smtpgate.yaml" <<EOF
hostname: gate.bench.test
workers: $WORKERS
log_level: warning
listen:
  - address: 127.0.0.1:$GATE_PORT
backend:
  servers: [127.0.0.1:$SINK_PORT]
  xclient: true
limits:
  max_connections: 20000
  max_message_size: 300M     # the large message test sends ${BIG_MB}M
smtp:
  reverse_dns: false
EOF
"$work/smtpgate" -t -c "$work/smtpgate.yaml" >"$work/smtpgate-check.log" 2>&1 ||
	die "smtpgate rejects its config: $(cat "$work/smtpgate-check.log")"

GATE_PID=
gate_n=0
start_gate() {
	gate_n=$((gate_n + 1))
	GATE_LOG=$work/smtpgate.$gate_n.log
	"$work/smtpgate" -c "$work/smtpgate.yaml" 2>"$GATE_LOG" &
	GATE_PID=$!
	pids+=("$GATE_PID")
	wait_port "$GATE_PORT" "$GATE_PID" || die "smtpgate did not start: $(cat "$GATE_LOG")"
	sleep 0.3
}
stop_gate() {
	stop_pid "$GATE_PID" smtpgate 40 || failures=$((failures + 1))
	if [ "$stop_rc" != 0 ]; then
		note "ERROR: smtpgate exited with status $stop_rc on SIGTERM (log: $GATE_LOG)"
		failures=$((failures + 1))
	fi
	GATE_PID=
}

# The policy: generated into the work directory, and a second config that
# is the first one with it (and its own port).  log_level stays warning:
# nothing is logged per message, with or without the policy.
python3 "$helpers/genpolicy.py" --rules "$POLICY_RULES" \
    --regexes "$POLICY_REGEXES" --client 127.0.0.1 --helo "$HELO_NAME" \
    --sender "$SENDER" --rcpt "$RCPT" --canary "$CANARY" \
    --canary-reply "$CANARY_REPLY" "$work/policy.yaml" \
    2>"$work/genpolicy.out" || die "genpolicy.py failed: $(cat "$work/genpolicy.out")"
sed -e "s/^\(  - address: 127.0.0.1:\)$GATE_PORT\$/\1$POL_PORT/" \
    "$work/smtpgate.yaml" >"$work/smtpgate-policy.yaml"
echo "policy: policy.yaml" >>"$work/smtpgate-policy.yaml"
grep -q "127.0.0.1:$POL_PORT" "$work/smtpgate-policy.yaml" || die "cannot write the policy config"
"$work/smtpgate" -t -c "$work/smtpgate-policy.yaml" >"$work/smtpgate-policy-check.log" 2>&1 ||
	die "smtpgate rejects the policy config: $(cat "$work/smtpgate-policy-check.log")"
# What the policy decides for the benchmark traffic (smtp-source's header
# lines; Date and Message-Id vary): every stage must pass, no rule match,
# not even a warn.  A non-local recipient must be refused (relay on).
"$work/smtpgate" -c "$work/smtpgate-policy.yaml" --explain client=127.0.0.1 \
    helo="$HELO_NAME" from="$SENDER" rcpt="$RCPT" rcpt=probe@not-local.invalid \
    header="From: <$SENDER>" header="To: <$RCPT>" \
    header="Date: Sun, 22 Nov 2026 05:54:00 +0000 (UTC)" \
    header="Message-Id: <2c65.0003.0000@$HELO_NAME>" \
    >"$work/explain.out" 2>&1 || die "--explain failed: $(cat "$work/explain.out")"
explain_ok=$(awk -v p="$work/policy.yaml" '
	NR == 1 && $0 != "policy: " p { bad = 1 }
	/^stage / { stage = $0 }
	# A filter line: "  NAME   VERDICT[ (rule R...)][: reply]".
	/^  [a-z_]+ +[a-z]+/ && stage != "stage rcpt: <probe@not-local.invalid>" &&
	    ($2 != "continue" || /matched: warn/) { bad = 1 }
	/^  relay +reject: .*Relay access denied/ { relay = 1 }
	/^  => / { n++ }
	END { print (!bad && relay && n == 9) }' "$work/explain.out")
[ "$explain_ok" = 1 ] ||
	die "the policy does not pass the benchmark traffic as it should (--explain):
$(cat "$work/explain.out")"

# The rate limits, and a third config: the first one with redis: and them.
rl_total=$((2 * ROUNDS * MESSAGES + RL_WARMUP + 100))   # at most sent
rl_window_us=$((RL_WINDOW_H * 3600 * 1000000))
rl_lim_n=$((10 * rl_total))                     # messages, recipients
rl_lim_b=$((10 * rl_total * (MSGSIZE + 1024)))  # bytes
rl_t_n=$((rl_window_us / rl_lim_n))             # T, as flt_ratelimit.c
rl_t_b=$((rl_window_us / rl_lim_b))
[ "$rl_t_b" -gt 0 ] || rl_t_b=1
RL_NAMES=(bench-msgs-per-ip bench-rcpts-per-sender bench-bytes-per-sender-domain)
# Their Redis keys: key_prefix, "rl:", the name, the key's value.
RL_KEYS=("smtpgate:rl:${RL_NAMES[0]}:127.0.0.1" "smtpgate:rl:${RL_NAMES[1]}:$SENDER"
    "smtpgate:rl:${RL_NAMES[2]}:${SENDER#*@}")
cat >"$work/ratelimits.yaml" <<EOF
# Never refuses the benchmark traffic, counts all of it.
rate_limits:
  - name: ${RL_NAMES[0]}
    key: client_ip
    count: messages
    limit: $rl_lim_n
    window: ${RL_WINDOW_H}h
  - name: ${RL_NAMES[1]}
    key: sender
    count: recipients
    limit: $rl_lim_n
    window: ${RL_WINDOW_H}h
  - name: ${RL_NAMES[2]}
    key: sender_domain
    count: bytes
    limit: $rl_lim_b
    window: ${RL_WINDOW_H}h
EOF
redis_at="address: 127.0.0.1:$REDIS_PORT"
[ "$REDIS_UNIX" = 1 ] && redis_at="socket: $work/redis.sock"
sed -e "s/^\(  - address: 127.0.0.1:\)$GATE_PORT\$/\1$RL_PORT/" \
    "$work/smtpgate.yaml" >"$work/smtpgate-ratelimit.yaml"
cat >>"$work/smtpgate-ratelimit.yaml" <<EOF
redis: { $redis_at, timeout: 50ms }
policy: ratelimits.yaml
EOF
grep -q "127.0.0.1:$RL_PORT" "$work/smtpgate-ratelimit.yaml" || die "cannot write the rate-limit config"
"$work/smtpgate" -t -c "$work/smtpgate-ratelimit.yaml" >"$work/smtpgate-ratelimit-check.log" 2>&1 ||
	die "smtpgate rejects the rate-limit config: $(cat "$work/smtpgate-ratelimit-check.log")"
# --explain: every filter passes, the first limit is at MAIL, the second at
# RCPT (the third, at the final dot, is a stage --explain does not show).
"$work/smtpgate" -c "$work/smtpgate-ratelimit.yaml" --explain client=127.0.0.1 \
    helo="$HELO_NAME" from="$SENDER" rcpt="$RCPT" \
    >"$work/explain-ratelimit.out" 2>&1 ||
	die "--explain (rate limits) failed: $(cat "$work/explain-ratelimit.out")"
explain_ok=$(awk -v m="${RL_NAMES[0]}:" -v r="${RL_NAMES[1]}:" '
	/^stage / { stage = $2 }
	/^  rate limit / { seen[stage $3] = 1; n++; next }
	/^  [a-z_]+ +[a-z]+/ && $2 != "continue" { bad = 1 }
	/^  => / { stages++ }
	END { print (!bad && n == 2 && seen["mail:" m] && seen["rcpt:" r] && stages == 4) }' \
    "$work/explain-ratelimit.out")
[ "$explain_ok" = 1 ] ||
	die "the rate limits are not where they should be (--explain):
$(cat "$work/explain-ratelimit.out")"

# Redis: its own, on a free port, nothing saved; stopped on exit.
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$work" --unixsocket "$work/redis.sock" \
    --unixsocketperm 700 >"$work/redis.log" 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
rcli() { "$REDIS_CLI" -p "$REDIS_PORT" "$@"; }
for _ in $(seq 100); do
	kill -0 "$REDIS_PID" 2>/dev/null || break
	[ "$(rcli PING 2>/dev/null)" = PONG ] && break
	sleep 0.1
done
[ "$(rcli PING 2>/dev/null)" = PONG ] || die "redis-server did not start: $(tail -5 "$work/redis.log")"

# redis_snap -> "CALLS USEC NOW TAT1 TAT2 TAT3 TICKS": EVALSHA + EVAL calls
# so far and Redis's time in them (us), Redis's clock (us), the three
# counters' TATs (us, 0: no key), Redis's CPU (clock ticks).
redis_snap() {
	local evals now tats=() k
	evals=$(rcli INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
		/^cmdstat_eval(sha)?:/ { for (i = 2; i < NF; i += 2) {
			if ($i == "calls") n += $(i + 1)
			if ($i == "usec") u += $(i + 1) } }
		END { printf "%.0f %.0f", n, u }')
	now=$(rcli TIME | awk 'NR == 1 { s = $1 } NR == 2 { printf "%.0f", s * 1e6 + $1 }')
	for k in "${RL_KEYS[@]}"; do
		tats+=("$(rcli GET "$k" | awk '$1 != "" { v = $1 } END { printf "%.0f", v + 0 }')")
	done
	echo "$evals ${now:-0} ${tats[*]} $(proc_cpu_ticks "$REDIS_PID")"
}

RL_PID=
rlg_n=0
start_rl_gate() {
	local s0 s1 warm
	rlg_n=$((rlg_n + 1))
	RL_LOG=$work/smtpgate-ratelimit.$rlg_n.log
	"$work/smtpgate" -c "$work/smtpgate-ratelimit.yaml" 2>"$RL_LOG" &
	RL_PID=$!
	pids+=("$RL_PID")
	wait_port "$RL_PORT" "$RL_PID" || die "smtpgate (ratelimit) did not start: $(cat "$RL_LOG")"
	sleep 0.3
	# Warm-up: a few messages, one EVALSHA per stage each, leaving the
	# three counters in Redis with their TATs well ahead of the clock.
	s0=$(redis_snap)
	"$SMTP_SOURCE" -c -s 1 -m "$RL_WARMUP" -l "$MSGSIZE" -M "$HELO_NAME" \
	    -f "$SENDER" -t "$RCPT" "127.0.0.1:$RL_PORT" >"$work/rl-warmup.out" 2>&1 ||
		die "smtpgate (ratelimit): the warm-up failed: $(cat "$work/rl-warmup.out")"
	sleep 0.2
	s1=$(redis_snap)
	warm=$(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x); split(b, y)
		ahead = (y[4] > y[3]) && (y[5] > y[3]) && (y[6] > y[3])
		printf "%.0f %d", y[1] - x[1], ahead }')
	[ "$warm" = "$((RL_WARMUP * RL_STAGES)) 1" ] ||
		die "smtpgate (ratelimit): $RL_WARMUP warm-up messages: (EVALSHA calls, counters ahead) = ($warm), want ($((RL_WARMUP * RL_STAGES)) 1); keys: $(rcli --scan --pattern 'smtpgate:*' | head -5 | tr '\n' ' ')"
	rl_warm_note="warm-up: $RL_WARMUP msgs, ${warm% *} EVALSHA calls; keys $(rcli --scan --pattern 'smtpgate:rl:*' | sort | paste -sd' ')"
}
stop_rl_gate() {
	stop_pid "$RL_PID" "smtpgate (ratelimit)" 40 || failures=$((failures + 1))
	if [ "$stop_rc" != 0 ]; then
		note "ERROR: smtpgate (ratelimit) exited with status $stop_rc on SIGTERM (log: $RL_LOG)"
		failures=$((failures + 1))
	fi
	RL_PID=
}

POL_PID=
pol_n=0
start_policy_gate() {
	pol_n=$((pol_n + 1))
	POL_LOG=$work/smtpgate-policy.$pol_n.log
	"$work/smtpgate" -c "$work/smtpgate-policy.yaml" 2>"$POL_LOG" &
	POL_PID=$!
	pids+=("$POL_PID")
	wait_port "$POL_PORT" "$POL_PID" || die "smtpgate (policy) did not start: $(cat "$POL_LOG")"
	sleep 0.3
	# The running process enforces this policy: its relay check and its
	# last rule answer as generated (one session, no message).
	python3 "$helpers/policy_probe.py" 127.0.0.1 "$POL_PORT" "$HELO_NAME" \
	    "$SENDER" "$RCPT" "$CANARY" "$CANARY_REPLY" >"$work/probe.out" 2>&1 ||
		die "smtpgate (policy): $(cat "$work/probe.out")"
}
stop_policy_gate() {
	stop_pid "$POL_PID" "smtpgate (policy)" 40 || failures=$((failures + 1))
	if [ "$stop_rc" != 0 ]; then
		note "ERROR: smtpgate (policy) exited with status $stop_rc on SIGTERM (log: $POL_LOG)"
		failures=$((failures + 1))
	fi
	POL_PID=
}

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend smtp
    bind 127.0.0.1:$HAP_PORT
    maxconn 8000
    default_backend sink

backend sink
    server sink 127.0.0.1:$SINK_PORT
EOF
"$HAPROXY" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
HAP_PID=$!
pids+=("$HAP_PID")
wait_port "$HAP_PORT" "$HAP_PID" || die "haproxy did not start: $(cat "$work/haproxy.log")"

start_gate
start_policy_gate
start_rl_gate

echo "smtpgate benchmark: $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(uname -r)"
echo "  smtpgate $("$work/smtpgate" -V 2>&1 | awk '{ print $NF }') ($SMTPGATE_BIN), workers $WORKERS; $("$HAPROXY" -v | head -1 | cut -d' ' -f1-3), nbthread $WORKERS"
echo "  ports: sink $SINK_PORT, smtpgate $GATE_PORT, haproxy $HAP_PORT, smtpgate+policy $POL_PORT, smtpgate+ratelimit $RL_PORT, redis $REDIS_PORT; work dir $work"
echo "  load: smtp-source -s $SESSIONS -m $MESSAGES -l $MSGSIZE -M $HELO_NAME -f $SENDER -t $RCPT, $ROUNDS round(s)"
echo "  policy: $(cat "$work/genpolicy.out")"
echo "  $(cat "$work/probe.out")"
echo "  rate limits: ${RL_NAMES[0]} ($rl_lim_n messages/${RL_WINDOW_H}h per client_ip, at MAIL), ${RL_NAMES[1]} ($rl_lim_n recipients/${RL_WINDOW_H}h per sender, RCPT), ${RL_NAMES[2]} ($rl_lim_b bytes/${RL_WINDOW_H}h per sender_domain, final dot); $("$REDIS_SERVER" --version | cut -d' ' -f1-3), $redis_at, timeout 50ms"
echo "  $rl_warm_note"
echo

# ---- 1-4: throughput ---------------------------------------------------------

results=$work/results       # mode target round rate|ERROR
: >"$results"
cpufile=$work/cpu           # mode target round us/msg (the proxy's CPU)
: >"$cpufile"
gate_peak_kb=0              # sampled VmRSS max over the smtpgate runs
gate_hwm_kb=0               # VmHWM over the smtpgate runs
pol_peak_kb=0               # the same, smtpgate with the policy
pol_hwm_kb=0
rl_peak_kb=0                # the same, smtpgate with the rate limits
rl_hwm_kb=0
rtfile=$work/redis-rt       # mode ratelimit round EVALSHA calls per message
: >"$rtfile"
rcpufile=$work/redis-cpu    # mode ratelimit round Redis's CPU us/msg
: >"$rcpufile"
rl_sum_n=0                  # counted in Redis over the ratelimit runs:
rl_sum_r=0                  # messages, recipients, bytes
rl_sum_b=0

# sampler_wait FILE PID: until rss_sampler.py (PID) wrote "started" to
# FILE, so that stopping it soon after still gets its summary.
sampler_wait() {
	local i
	for i in $(seq 100); do
		grep -q '^started$' "$1" 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.02
	done
	return 1
}

# load TARGET MODE ROUND: one smtp-source run; appends to $results.
load() {
	local target=$1 mode=$2 round=$3 port pid="" dflag=() tag
	local before after t0 t1 rc src_n sink_n secs rate err="" cpu0=0 cpu1=0 spid=""
	local log0=0 log1 cpu_note='' glog='' rs0='' rs1='' rl=''
	local rl_c rl_rt rl_us rl_n rl_r rl_b rl_exact rl_cpu
	case $target in
	direct)   port=$SINK_PORT ;;
	smtpgate) port=$GATE_PORT; pid=$GATE_PID; glog=$GATE_LOG ;;
	policy)   port=$POL_PORT; pid=$POL_PID; glog=$POL_LOG ;;
	ratelimit) port=$RL_PORT; pid=$RL_PID; glog=$RL_LOG ;;
	haproxy)  port=$HAP_PORT; pid=$HAP_PID ;;
	esac
	[ "$mode" = multi ] && dflag=(-d)
	tag="$mode-$target-$round"

	before=$(sink_msgs)
	if [ -n "$pid" ]; then
		cpu0=$(proc_cpu_ticks "$pid")
	fi
	if [ -n "$glog" ]; then
		log0=$(wc -l <"$glog")
		reset_hwm "$pid"
		python3 "$helpers/rss_sampler.py" "$pid" 0.2 >"$work/rss-$tag" &
		spid=$!
		pids+=("$spid")
		sampler_wait "$work/rss-$tag" "$spid"
	fi
	[ "$target" = ratelimit ] && rs0=$(redis_snap)

	t0=$(date +%s.%N)
	"$SMTP_SOURCE" -c "${dflag[@]}" -s "$SESSIONS" -m "$MESSAGES" \
	    -l "$MSGSIZE" -M "$HELO_NAME" -f "$SENDER" -t "$RCPT" "127.0.0.1:$port" \
	    >"$work/source-$tag.out" 2>"$work/source-$tag.err"
	rc=$?
	t1=$(date +%s.%N)
	sleep 0.3       # let the sink's last counter update land
	[ "$target" = ratelimit ] && rs1=$(redis_snap)

	if [ -n "$pid" ]; then
		cpu1=$(proc_cpu_ticks "$pid")
	fi
	if [ -n "$spid" ]; then
		kill -TERM "$spid"
		wait "$spid"
		forget_pid "$spid"
		local peak hwm
		peak=$(sed -n 's/.*max_kb=\([0-9]*\).*/\1/p' "$work/rss-$tag")
		hwm=$(proc_status_kb "$pid" VmHWM)
		if [ "$target" = policy ]; then
			[ "${peak:-0}" -gt "$pol_peak_kb" ] && pol_peak_kb=$peak
			[ "${hwm:-0}" -gt "$pol_hwm_kb" ] && pol_hwm_kb=$hwm
		elif [ "$target" = ratelimit ]; then
			[ "${peak:-0}" -gt "$rl_peak_kb" ] && rl_peak_kb=$peak
			[ "${hwm:-0}" -gt "$rl_hwm_kb" ] && rl_hwm_kb=$hwm
		else
			[ "${peak:-0}" -gt "$gate_peak_kb" ] && gate_peak_kb=$peak
			[ "${hwm:-0}" -gt "$gate_hwm_kb" ] && gate_hwm_kb=$hwm
		fi
		log1=$(wc -l <"$glog")
		if [ "$log1" -gt "$log0" ]; then
			note "smtpgate ($target) logged $((log1 - log0)) line(s) during $tag, e.g.:"
			sed -n "$((log0 + 1)),$((log0 + 3))p" "$glog" >&2
		fi
	fi

	after=$(sink_msgs)
	sink_n=$((after - before))
	src_n=$(tr '\r' '\n' <"$work/source-$tag.out" | awk 'NF { n = $1 } END { print n + 0 }')
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')

	[ "$rc" = 0 ] || err="smtp-source exit $rc: $(head -c 300 "$work/source-$tag.err")"
	[ -z "$err" ] && [ "$src_n" != "$MESSAGES" ] &&
		err="smtp-source counted $src_n messages, expected $MESSAGES"
	[ -z "$err" ] && [ "$sink_n" != "$MESSAGES" ] &&
		err="smtp-sink received $sink_n messages, expected $MESSAGES"
	[ -z "$err" ] && [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null &&
		err="$target died"
	# The rate limits: Redis's side of the run.  rl: "CALLS RT/MSG
	# US/CALL MSGS RCPTS BYTES EXACT REDIS-CPU-S", counted from the moves
	# of the TATs; EXACT is 0 if a TAT was behind the clock at the start.
	if [ "$target" = ratelimit ]; then
		rl=$(awk -v a="$rs0" -v b="$rs1" -v n="$MESSAGES" -v t="$ticks" \
		    -v tn="$rl_t_n" -v tb="$rl_t_b" 'BEGIN {
			split(a, x); split(b, y); c = y[1] - x[1]; exact = 1
			for (i = 4; i <= 6; i++) {
				base[i] = x[i]
				if (x[i] <= x[3]) { base[i] = x[3]; exact = 0 }
			}
			printf "%.0f %.2f %.1f %.0f %.0f %.0f %d %.2f", c, c / n,
			    c ? (y[2] - x[2]) / c : 0, (y[4] - base[4]) / tn,
			    (y[5] - base[5]) / tn, (y[6] - base[6]) / tb, exact,
			    (y[7] - x[7]) / t }')
		read -r rl_c rl_rt rl_us rl_n rl_r rl_b rl_exact rl_cpu <<<"$rl"
		[ -z "$err" ] && { [ "$rl_n" != "$MESSAGES" ] || [ "$rl_r" != "$MESSAGES" ]; } &&
			err="Redis counted $rl_n messages and $rl_r recipients, expected $MESSAGES (TATs exact: $rl_exact)"
	fi

	if [ -n "$pid" ]; then
		cpu_note=$(awk -v c=$((cpu1 - cpu0)) -v t="$ticks" -v s="$secs" \
		    -v n="$MESSAGES" -v who="$target" 'BEGIN { printf "; %s CPU %.2fs (%.0f%% of a core, %.0f us/msg)", who, c / t, 100 * c / t / s, 1e6 * c / t / n }')
	fi
	if [ -n "$err" ]; then
		failures=$((failures + 1))
		echo "$mode $target $round ERROR" >>"$results"
		printf '  %-6s %-9s round %s: ERROR after %ss: %s\n' "$mode" "$target" "$round" "$secs" "$err"
		[ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && die "$target is gone; stopping"
		return
	fi
	rate=$(awk -v n="$MESSAGES" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
	echo "$mode $target $round $rate" >>"$results"
	if [ -n "$pid" ]; then
		awk -v c=$((cpu1 - cpu0)) -v t="$ticks" -v n="$MESSAGES" \
		    -v k="$mode $target $round" 'BEGIN { printf "%s %.1f\n", k, 1e6 * c / t / n }' >>"$cpufile"
	fi
	printf '  %-6s %-9s round %s: %6s msgs in %7ss = %6s msgs/s%s\n' \
	    "$mode" "$target" "$round" "$MESSAGES" "$secs" "$rate" "$cpu_note"
	if [ -n "$rl" ]; then
		echo "$mode $target $round $rl_rt" >>"$rtfile"
		awk -v c="$rl_cpu" -v n="$MESSAGES" -v k="$mode $target $round" \
		    'BEGIN { printf "%s %.1f\n", k, 1e6 * c / n }' >>"$rcpufile"
		rl_sum_n=$((rl_sum_n + rl_n))
		rl_sum_r=$((rl_sum_r + rl_r))
		rl_sum_b=$((rl_sum_b + rl_b))
		awk -v c="$rl_c" -v rt="$rl_rt" -v us="$rl_us" -v r="$rl_r" \
		    -v b="$rl_b" -v cpu="$rl_cpu" -v s="$secs" -v n="$MESSAGES" -v cn="$rl_n" \
		    'BEGIN { printf "  %27s redis: %d EVALSHA (%s/msg, %.0f us each in Redis), Redis CPU %.2fs (%.0f%% of a core, %.0f us/msg); counted %d msgs, %d rcpts, %.0f bytes/msg\n",
			"", c, rt, us, cpu, 100 * cpu / s, 1e6 * cpu / n, cn, r, b / n }'
	fi
}

echo "Throughput (each line: one smtp-source run; sink counts checked):"
for round in $(seq "$ROUNDS"); do
	# Even rounds run the targets in the reverse order, so that a drift
	# in the machine's load does not always favour the same one.
	# smtpgate runs right next to policy and to ratelimit, for their
	# ratios.
	order="direct ratelimit smtpgate policy haproxy"
	[ $((round % 2)) = 0 ] && order="haproxy policy smtpgate ratelimit direct"
	for mode in single multi; do
		for target in $order; do
			load "$target" "$mode" "$round"
		done
	done
done
echo

# median MODE TARGET [FILE [FORMAT]] -> median msgs/s (or, from $cpufile,
# CPU us/msg) over the rounds, or ERROR.  FORMAT: of a mean of two [%.0f].
median() {
	awk -v m="$1" -v t="$2" '$1 == m && $2 == t { print $4 }' "${3:-$results}" |
	    sort -n | awk -v f="${4:-%.0f}" '
		/ERROR/ { bad = 1 }
		{ v[NR] = $1 }
		END {
			if (bad || NR == 0) { print "ERROR"; exit }
			if (NR % 2) print v[(NR + 1) / 2]
			else printf f "\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
		}'
}
# pratio MODE A B -> median over the rounds of (A's msgs/s / B's msgs/s in
# the same round), or n/a if any run of A or B failed.  Pairing by round
# keeps the ratio meaningful when the machine's load drifts between rounds.
pratio() {
	awk -v m="$1" -v a="$2" -v b="$3" '
		$1 == m && $2 == a { x[$3] = $4 }
		$1 == m && $2 == b { y[$3] = $4 }
		END {
			n = 0
			for (r in x) {
				if (x[r] == "ERROR" || y[r] == "ERROR" || !(r in y)) { print "n/a"; exit }
				v[++n] = x[r] / y[r]
			}
			if (n == 0) { print "n/a"; exit }
			for (i = 2; i <= n; i++)        # insertion sort
				for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
					t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
				}
			printf "%.2f\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		}' "$results"
}
verdict() {             # verdict OK-CONDITION-RESULT (1/0/n/a)
	case $1 in 1) echo PASS ;; 0) echo MISS ;; *) echo "n/a" ;; esac
}

# maxval MODE TARGET FILE -> the largest value over the rounds, or ERROR.
maxval() {
	awk -v m="$1" -v t="$2" '$1 == m && $2 == t { n++; if (n == 1 || $4 > v) v = $4 }
		END { if (n) print v; else print "ERROR" }' "$3"
}

stop_gate
stop_policy_gate
stop_rl_gate
# What Redis holds afterwards: the three counters, nothing else.
rl_keys_after=$(rcli --scan --pattern 'smtpgate:*' | sort | paste -sd' ')
stop_pid "$REDIS_PID" redis-server 15 || failures=$((failures + 1))

# ---- 5: idle connections -------------------------------------------------------

echo "Idle connections:"
start_gate
idle_base_kb=$(proc_status_kb "$GATE_PID" VmRSS)
python3 "$helpers/idle_clients.py" 127.0.0.1 "$GATE_PORT" "$IDLE" 180 \
    >"$work/idle.out" 2>"$work/idle.err" &
IDLE_PID=$!
pids+=("$IDLE_PID")
idle_ok=0
for _ in $(seq 2000); do
	grep -q '^ready' "$work/idle.out" && break
	kill -0 "$IDLE_PID" 2>/dev/null || break
	sleep 0.1
done
sleep 1
idle_kb=$(proc_status_kb "$GATE_PID" VmRSS)
idle_fds=$(find "/proc/$GATE_PID/fd" -mindepth 1 2>/dev/null | wc -l)
stop_pid "$IDLE_PID" idle_clients 30
ready=$(grep '^ready' "$work/idle.out")
done_line=$(grep '^done' "$work/idle.out")
echo "  $IDLE clients: ${ready:-no ready line} ${done_line:+/ $done_line}; smtpgate fds open: $idle_fds"
case "$ready $done_line" in
"ready greeted=$IDLE failed=0 done greeted=$IDLE closed_by_server=0") idle_ok=1 ;;
esac
if [ "$idle_ok" = 1 ]; then
	idle_per=$(( (idle_kb - idle_base_kb) * 1024 / IDLE ))
	echo "  smtpgate VmRSS: $(mb "$idle_base_kb") MB before, $(mb "$idle_kb") MB with $IDLE idle connections ($idle_per bytes/conn)"
else
	failures=$((failures + 1))
	echo "  ERROR: not every idle connection was greeted and held (see $work/idle.out, $work/idle.err)"
fi
kill -0 "$GATE_PID" 2>/dev/null || die "smtpgate died during the idle test (log: $GATE_LOG)"
stop_gate
echo

# ---- 6: one large message --------------------------------------------------------

echo "Large message:"
start_gate
big_bytes=$((BIG_MB * 1024 * 1024))
before=$(sink_msgs)
big_base_kb=$(proc_status_kb "$GATE_PID" VmRSS)
reset_hwm "$GATE_PID"
python3 "$helpers/rss_sampler.py" "$GATE_PID" 0.1 >"$work/rss-big" &
spid=$!
pids+=("$spid")
sampler_wait "$work/rss-big" "$spid"
python3 "$helpers/bigmsg.py" 127.0.0.1 "$GATE_PORT" "$big_bytes" >"$work/big.out" 2>&1
big_rc=$?
kill -TERM "$spid"
wait "$spid"
forget_pid "$spid"
sleep 0.3
big_sink=$(( $(sink_msgs) - before ))
big_max_kb=$(sed -n 's/.*max_kb=\([0-9]*\).*/\1/p' "$work/rss-big")
big_hwm_kb=$(proc_status_kb "$GATE_PID" VmHWM)
big_samples=$(sed -n 's/.*samples=\([0-9]*\).*/\1/p' "$work/rss-big")
echo "  ${BIG_MB} MiB through smtpgate: $(cat "$work/big.out"); sink received $big_sink message(s)"
big_ok=0
if [ "$big_rc" = 0 ] && [ "$big_sink" = 1 ]; then
	big_ok=1
	echo "  smtpgate VmRSS: $(mb "$big_base_kb") MB before, max $(mb "$big_max_kb") MB during ($big_samples samples at 0.1s); VmHWM $(mb "$big_hwm_kb") MB"
	# The peak: the larger of the sampled maximum and VmHWM (reset just
	# before the message when /proc/PID/clear_refs allows).
	[ "${big_hwm_kb:-0}" -gt "$big_max_kb" ] && big_max_kb=$big_hwm_kb
else
	failures=$((failures + 1))
	echo "  ERROR: the large message did not get through as expected"
fi
kill -0 "$GATE_PID" 2>/dev/null || die "smtpgate died during the large message (log: $GATE_LOG)"
stop_gate
echo

# ---- summary -----------------------------------------------------------------------

echo "Summary ($([ "$ROUNDS" -gt 1 ] && echo "medians of $ROUNDS rounds; ratios paired by round; ")msgs/s; smtp-source -s $SESSIONS -m $MESSAGES -l $MSGSIZE):"
printf '  %-14s %8s %9s %8s %13s %12s\n' mode direct smtpgate haproxy gate/haproxy gate/direct
for mode in single multi; do
	d=$(median "$mode" direct)
	g=$(median "$mode" smtpgate)
	h=$(median "$mode" haproxy)
	gh=$(pratio "$mode" smtpgate haproxy)
	gd=$(pratio "$mode" smtpgate direct)
	v=n/a
	[ "$gh" != n/a ] &&
		v=$(verdict "$(awk -v r="$gh" -v t="$T_RATIO" 'BEGIN { print (r >= t) }')")
	label="1 msg/conn"
	[ "$mode" = multi ] && label="-d (multi)"
	printf '  %-14s %8s %9s %8s %13s %12s  %s (gate >= %s x haproxy)\n' \
	    "$label" "$d" "$g" "$h" "$gh" "$gd" "$v" "$T_RATIO"
done
# The policy's cost: msgs/s as above, and smtpgate's own CPU per message
# (medians), a steadier figure than msgs/s on a busy machine.
printf '  %-14s %8s %9s %13s %20s\n' "policy ($POLICY_RULES)" smtpgate "+policy" policy/gate "CPU us/msg gate/+pol"
for mode in single multi; do
	g=$(median "$mode" smtpgate)
	p=$(median "$mode" policy)
	pg=$(pratio "$mode" policy smtpgate)
	cg=$(median "$mode" smtpgate "$cpufile")
	cp=$(median "$mode" policy "$cpufile")
	cpu=n/a
	[ "$g" != ERROR ] && [ "$p" != ERROR ] &&
		cpu=$(awk -v a="$cg" -v b="$cp" 'BEGIN { printf "%.0f/%.0f (%+.0f%%)", a, b, (a > 0) ? 100 * (b - a) / a : 0 }')
	v=n/a
	[ "$pg" != n/a ] &&
		v=$(verdict "$(awk -v r="$pg" -v t="$T_POLICY" 'BEGIN { print (r >= t) }')")
	label="1 msg/conn"
	[ "$mode" = multi ] && label="-d (multi)"
	printf '  %-14s %8s %9s %13s %20s  %s (policy >= %s x smtpgate)\n' \
	    "$label" "$g" "$p" "$pg" "$cpu" "$v" "$T_POLICY"
done
# The rate limits' cost, the same way, and Redis's side: EVALSHA calls per
# message (the largest over the rounds; one per stage with a limit at
# most) and Redis's own CPU per message (median).
printf '  %-14s %8s %9s %13s %20s %12s %12s\n' "3 rate limits" smtpgate "+limits" limits/gate "CPU us/msg gate/+rl" "Redis RT/msg" "Redis us/msg"
for mode in single multi; do
	g=$(median "$mode" smtpgate)
	r=$(median "$mode" ratelimit)
	rg=$(pratio "$mode" ratelimit smtpgate)
	cg=$(median "$mode" smtpgate "$cpufile")
	cr=$(median "$mode" ratelimit "$cpufile")
	rt=$(maxval "$mode" ratelimit "$rtfile")
	rc=$(median "$mode" ratelimit "$rcpufile")
	cpu=n/a
	[ "$g" != ERROR ] && [ "$r" != ERROR ] &&
		cpu=$(awk -v a="$cg" -v b="$cr" 'BEGIN { printf "%.0f/%.0f (%+.0f%%)", a, b, (a > 0) ? 100 * (b - a) / a : 0 }')
	v=n/a
	[ "$rg" != n/a ] &&
		v=$(verdict "$(awk -v r="$rg" -v t="$T_RL" 'BEGIN { print (r >= t) }')")
	vrt=n/a
	[ "$rt" != ERROR ] &&
		vrt=$(verdict "$(awk -v r="$rt" -v t="$RL_STAGES" 'BEGIN { print (r <= t) }')")
	label="1 msg/conn"
	[ "$mode" = multi ] && label="-d (multi)"
	printf '  %-14s %8s %9s %13s %20s %12s %12s  %s (limits >= %s x smtpgate), %s (Redis RT <= %s/msg)\n' \
	    "$label" "$g" "$r" "$rg" "$cpu" "$rt" "$rc" "$v" "$T_RL" "$vrt" "$RL_STAGES"
done
printf '  Redis counted %s messages, %s recipients, %s bytes over the rate-limit runs (%s messages sent); keys after: %s\n' \
    "$rl_sum_n" "$rl_sum_r" "$rl_sum_b" "$(grep -c ' ratelimit [0-9]* [0-9]' "$results" | awk -v m="$MESSAGES" '{ print $1 * m }')" "${rl_keys_after:-none}"
peak_kb=$gate_peak_kb
[ "${gate_hwm_kb:-0}" -gt "$peak_kb" ] && peak_kb=$gate_hwm_kb
printf '  smtpgate peak RSS under load: %s MB (sampled max %s MB, VmHWM %s MB)  %s (< %s MB)\n' \
    "$(mb "$peak_kb")" "$(mb "$gate_peak_kb")" "$(mb "${gate_hwm_kb:-0}")" \
    "$(verdict "$(awk -v k="$peak_kb" -v t="$T_PEAK_MB" 'BEGIN { print (k < t * 1024) }')")" "$T_PEAK_MB"
pol_kb=$pol_peak_kb
[ "${pol_hwm_kb:-0}" -gt "$pol_kb" ] && pol_kb=$pol_hwm_kb
printf '  smtpgate+policy peak RSS under load: %s MB (sampled max %s MB, VmHWM %s MB)\n' \
    "$(mb "$pol_kb")" "$(mb "$pol_peak_kb")" "$(mb "${pol_hwm_kb:-0}")"
rl_kb=$rl_peak_kb
[ "${rl_hwm_kb:-0}" -gt "$rl_kb" ] && rl_kb=$rl_hwm_kb
printf '  smtpgate+ratelimit peak RSS under load: %s MB (sampled max %s MB, VmHWM %s MB)\n' \
    "$(mb "$rl_kb")" "$(mb "$rl_peak_kb")" "$(mb "${rl_hwm_kb:-0}")"
if [ "$idle_ok" = 1 ]; then
	printf '  RSS with %s idle connections: %s MB (%s bytes/conn over %s MB at start)  %s (< %s MB)\n' \
	    "$IDLE" "$(mb "$idle_kb")" "$idle_per" "$(mb "$idle_base_kb")" \
	    "$(verdict "$(awk -v k="$idle_kb" -v t="$T_IDLE_MB" 'BEGIN { print (k < t * 1024) }')")" "$T_IDLE_MB"
else
	printf '  RSS with %s idle connections: ERROR (see above)\n' "$IDLE"
fi
if [ "$big_ok" = 1 ]; then
	growth_kb=$((big_max_kb - big_base_kb))
	printf '  RSS growth during a %s MB message: %s MB (%s -> max %s MB)  %s (< %s MB)\n' \
	    "$BIG_MB" "$(mb "$growth_kb")" "$(mb "$big_base_kb")" "$(mb "$big_max_kb")" \
	    "$(verdict "$(awk -v k="$growth_kb" -v t="$T_BIG_MB" 'BEGIN { print (k < t * 1024) }')")" "$T_BIG_MB"
else
	printf '  RSS growth during a %s MB message: ERROR (see above)\n' "$BIG_MB"
fi
if [ "$failures" -gt 0 ]; then
	echo "  $failures run(s)/check(s) had errors: their figures are not reported"
	exit 1
fi
exit 0
