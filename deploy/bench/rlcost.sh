#!/usr/bin/env bash
# deploy/bench/rlcost.sh: instructions per message that three Redis rate
# limits add to smtpgate, counted by callgrind (repeatable, unlike
# timings on a busy machine).
#
# One worker, under valgrind --tool=callgrind, behind smtp-sink and with
# its own redis-server, all on 127.0.0.1 (free ports).  smtp-source sends
# BENCH_MESSAGES messages through a gateway without rules and then through
# one with the three limits of deploy/bench.sh (MAIL, RCPT, final dot),
# once with one message per connection and once with -d.  Prints, per
# mode, smtpgate's instructions (Ir) per message for each and the
# difference, and Redis's usec_per_call of EVALSHA (INFO commandstats).
#
# Usage: deploy/bench/rlcost.sh   (BENCH_MESSAGES [2000], BENCH_SESSIONS
# [4], SMTPGATE [<repo>/build/smtpgate], RLCOST_KEEP=1 keeps the outputs)
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$(dirname "$here")")
N=${BENCH_MESSAGES:-2000}
S=${BENCH_SESSIONS:-4}
BIN=${SMTPGATE:-$top/build/smtpgate}
for x in valgrind callgrind_annotate smtp-sink smtp-source redis-server redis-cli; do
	command -v "$x" >/dev/null || PATH=$PATH:/usr/sbin
	command -v "$x" >/dev/null || { echo "rlcost: missing $x" >&2; exit 2; }
done
work=$(mktemp -d /tmp/rlcost.XXXXXX)
cp "$BIN" "$work/smtpgate"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	wait 2>/dev/null
	[ "${RLCOST_KEEP:-0}" = 1 ] && echo "rlcost: outputs in $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
read -r SINK GATE REDIS <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')"
wait_port() {
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" -c 127.0.0.1:"$SINK" 1000 >/dev/null 2>&1 &
pids+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$SINK" && wait_port "$REDIS" || { echo "rlcost: sink/redis did not start" >&2; exit 1; }
cat >"$work/plain.yaml" <<CFG
hostname: gate.bench.test
workers: 1
log_level: warning
listen:
  - address: 127.0.0.1:$GATE
backend:
  servers: [127.0.0.1:$SINK]
  xclient: true
smtp:
  reverse_dns: false
redis: { address: 127.0.0.1:$REDIS, timeout: 1s }
CFG
cat >"$work/rl-policy.yaml" <<CFG
rate_limits:
  - { name: m, key: client_ip, count: messages, limit: 100000000, window: 8760h }
  - { name: r, key: sender, count: recipients, limit: 100000000, window: 8760h }
  - { name: b, key: sender_domain, count: bytes, limit: 900000000000, window: 8760h }
CFG
cp "$work/plain.yaml" "$work/rl.yaml"
echo "policy: rl-policy.yaml" >>"$work/rl.yaml"

# run CONF MODE -> Ir per message
run() {
	local conf=$1 mode=$2 out=$work/cg.$1.$2 d=()
	[ "$mode" = multi ] && d=(-d)
	valgrind --tool=callgrind --callgrind-out-file="$out" \
	    "$work/smtpgate" -c "$work/$conf.yaml" 2>"$work/vg.$conf.$mode" &
	local pid=$!
	wait_port "$GATE" || { echo "rlcost: smtpgate did not start" >&2; exit 1; }
	sleep 1
	redis-cli -p "$REDIS" config resetstat >/dev/null
	smtp-source -c "${d[@]}" -s "$S" -m "$N" -l 2048 -M bench.example.test \
	    -f bench@sender.example -t bench@rcpt.example 127.0.0.1:"$GATE" >/dev/null
	local us
	us=$(redis-cli -p "$REDIS" info commandstats | tr -d '\r' |
	    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
	kill -TERM "$pid"; wait "$pid"
	local ir
	ir=$(sed -n 's/^summary: //p;s/^totals: //p' "$out" | head -1)
	awk -v ir="$ir" -v n="$N" -v us="$us" 'BEGIN { split(us, u);
	    printf "%.0f %s %s\n", ir / n, u[1] + 0, u[1] ? u[2] / u[1] : 0 }'
}
for mode in single multi; do
	read -r p _ _ <<<"$(run plain $mode)"
	read -r r calls us <<<"$(run rl $mode)"
	printf '%-6s Ir/msg: no limits %d, 3 limits %d, added %d (%.1f%%); EVALSHA %d calls (%.2f/msg), %.2f us/call in Redis\n' \
	    "$mode" "$p" "$r" $((r - p)) "$(awk -v a="$p" -v b="$r" 'BEGIN { print 100 * (b - a) / a }')" \
	    "$calls" "$(awk -v c="$calls" -v n="$N" 'BEGIN { print c / n }')" "$us"
done
if [ "${RLCOST_ANNOTATE:-0}" = 1 ]; then
	for mode in single multi; do
		echo "== $mode: functions, 3 limits minus none (Ir per message)"
		for c in plain rl; do
			callgrind_annotate --auto=no --inclusive=no --threshold=100 "$work/cg.$c.$mode" 2>/dev/null |
			    awk -v c="$c" '/^ *[0-9,]+ .*:/ && !/=>/ { g = $1; gsub(",", "", g); $1 = ""; sub(/^[^)]*\) +/, ""); sub(/ \[.*/, ""); print c "\t" g "\t" $0 }'
		done | awk -F'\t' -v n="$N" '{ v[$3] += ($1 == "rl" ? $2 : -$2) }
		    END { for (f in v) if (v[f] / n > 20 || v[f] / n < -20) printf "%9.0f %s\n", v[f] / n, f }' | sort -rn | head -40
	done
fi
