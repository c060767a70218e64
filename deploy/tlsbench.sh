#!/usr/bin/env bash
# deploy/tlsbench.sh: what TLS costs smtpgate, in messages and handshakes
# per second and in smtpgate's CPU time.
#
# A benchmark, not a test: it prints figures; its exit status only says
# whether every run completed without errors (0) or not (1).
#
# Everything runs on 127.0.0.1 with ports picked free at run time:
#   backend    smtp-sink (Postfix), discards mail, counts it
#   gateway    one smtpgate (a copy of build/smtpgate) with four listeners:
#              plain, STARTTLS (RFC 3207) and implicit TLS with an ECDSA
#              P-256 certificate, and STARTTLS with an RSA-2048 one; the
#              default TLS settings (TLS 1.2 and up, default ciphers)
#   load       deploy/bench/smtpload.c, compiled here: smtp-source has no
#              TLS.  No certificate verification on the client side and
#              no session resumption (each connection a full handshake),
#              except in the "resumed" run.
# Runs, in each round:
#   msgs/s     plaintext, STARTTLS, implicit TLS; one message per
#              connection (every message pays a handshake), then -d (each
#              session sends its share of twice as many messages over one
#              connection: the cost of encrypting the traffic alone)
#   conns/s    handshakes only (-H: connect, EHLO, [STARTTLS, handshake,]
#              QUIT): plain (no TLS: the connection's own cost; four
#              times as many connections, being fast),
#              STARTTLS ECDSA, STARTTLS RSA, implicit ECDSA, and STARTTLS
#              ECDSA with session resumption
# The machine is shared and has few cores, and the load client runs on
# it too (a TLS client costs about as much CPU as the server), so msgs/s
# are noisy: ratios are taken within one round, and smtpgate's own CPU
# time per message or per connection (utime + stime from /proc/PID/stat)
# is the steadier figure.  "net TLS us/hs" is a handshake run's CPU per
# connection minus the plain run's, in the same round.
#
# Usage: deploy/tlsbench.sh       (from anywhere; run as root or not)
# Environment (defaults in brackets):
#   BENCH_MESSAGES    messages per msgs/s run [4000]
#   BENCH_HANDSHAKES  connections per handshake run [3000]
#   BENCH_SESSIONS    parallel sessions [20]
#   BENCH_SIZE        message size, bytes [2048]
#   BENCH_ROUNDS      rounds; figures are medians over rounds [3]
#   BENCH_WORKERS     smtpgate worker threads [2]
#   BENCH_CLIENT_THREADS  smtpload threads [2]
#   SMTPGATE          binary to test [<repo>/build/smtpgate]
#   BENCH_KEEP        1: keep the work directory (logs, configs) [0]
# Quick smoke run: BENCH_MESSAGES=500 BENCH_HANDSHAKES=300 BENCH_ROUNDS=1 deploy/tlsbench.sh

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
deploy=$here
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"

MESSAGES=${BENCH_MESSAGES:-4000}
HANDSHAKES=${BENCH_HANDSHAKES:-3000}
SESSIONS=${BENCH_SESSIONS:-20}
MSGSIZE=${BENCH_SIZE:-2048}
ROUNDS=${BENCH_ROUNDS:-3}
WORKERS=${BENCH_WORKERS:-2}
CTHREADS=${BENCH_CLIENT_THREADS:-2}
SMTPGATE_BIN=${SMTPGATE:-$top/build/smtpgate}
KEEP=${BENCH_KEEP:-0}

SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
CC=${CC:-cc}

HELO_NAME=bench.example.test
SENDER=bench@sender.example
RCPT=bench@rcpt.example

die() { echo "tlsbench: $*" >&2; exit 2; }
note() { echo "tlsbench: $*" >&2; }

for x in "$SMTP_SINK" "$SMTPGATE_BIN" "$CC" openssl python3; do
	command -v "$x" >/dev/null 2>&1 || die "missing: $x"
done

work=$(mktemp -d /tmp/smtpgate-tlsbench.XXXXXX) || die "mktemp failed"
cp "$SMTPGATE_BIN" "$work/smtpgate" || die "cannot copy $SMTPGATE_BIN"

# ---- process bookkeeping (deploy/lib.sh) -------------------------------------

pids=()                 # every background process we started
failures=0              # runs with errors

trap 'cleanup_pids "logs and configs"' EXIT
trap 'exit 130' INT TERM

# ---- the load client and the certificates ---------------------------------------

LOAD=$work/smtpload
"$CC" -O2 -Wall -Wextra -o "$LOAD" "$here/bench/smtpload.c" -lssl -lcrypto \
    -lpthread 2>"$work/cc.log" || die "cannot compile smtpload.c: $(cat "$work/cc.log")"

# Self-signed server certificates, one ECDSA P-256, one RSA-2048.  The
# client does not verify them; the handshake's cost is the same.
mkcert() {              # mkcert NAME OPENSSL-NEWKEY-ARGS...
	local name=$1
	shift
	openssl req -x509 "$@" -nodes -subj "/CN=gate.bench.test" -days 2 \
	    -addext "subjectAltName=DNS:gate.bench.test,IP:127.0.0.1" \
	    -keyout "$work/$name.key" -out "$work/$name.pem" \
	    >"$work/openssl-$name.log" 2>&1 ||
		die "openssl cannot make the $name certificate: $(cat "$work/openssl-$name.log")"
}
mkcert ecdsa -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
mkcert rsa -newkey rsa:2048

# ---- the processes ------------------------------------------------------------

read -r SINK_PORT PLAIN_PORT STLS_PORT IMPL_PORT RSA_PORT <<<"$(free_ports 5)"
[ -n "$RSA_PORT" ] || die "cannot pick free ports"
ticks=$(getconf CLK_TCK)

sink_start "$SINK_PORT" 4096 -c -m 4096 -t 300 || die "smtp-sink did not start: $(cat "$work/sink.err")"

cat >"$work/smtpgate.yaml" <<EOF
hostname: gate.bench.test
workers: $WORKERS
log_level: warning
listen:
  - address: 127.0.0.1:$PLAIN_PORT
  - address: 127.0.0.1:$STLS_PORT
    tls: starttls
    cert_file: $work/ecdsa.pem
    key_file: $work/ecdsa.key
  - address: 127.0.0.1:$IMPL_PORT
    tls: implicit
    cert_file: $work/ecdsa.pem
    key_file: $work/ecdsa.key
  - address: 127.0.0.1:$RSA_PORT
    tls: starttls
    cert_file: $work/rsa.pem
    key_file: $work/rsa.key
backend:
  servers: [127.0.0.1:$SINK_PORT]
  xclient: true
limits:
  max_connections: 20000
smtp:
  reverse_dns: false
EOF
"$work/smtpgate" -t -c "$work/smtpgate.yaml" >"$work/smtpgate-check.log" 2>&1 ||
	die "smtpgate rejects its config: $(cat "$work/smtpgate-check.log")"

GATE_LOG=$work/smtpgate.log
"$work/smtpgate" -c "$work/smtpgate.yaml" 2>"$GATE_LOG" &
GATE_PID=$!
pids+=("$GATE_PID")
for p in "$PLAIN_PORT" "$STLS_PORT" "$IMPL_PORT" "$RSA_PORT"; do
	wait_port "$p" "$GATE_PID" || die "smtpgate did not start: $(cat "$GATE_LOG")"
done
sleep 0.3

# ---- the runs --------------------------------------------------------------------

results=$work/results   # lines: "KIND TARGET ROUND RATE GATE-US CLIENT-US"

# run KIND TARGET ROUND: one smtpload run.  KIND: single (1 msg/conn),
# multi (-d 0) or hs (-H).  TARGET: plain, starttls, implicit, rsa
# (STARTTLS, RSA certificate) or resumed (STARTTLS, -r).
run() {
	local kind=$1 target=$2 round=$3 port opts=() n before after sink_n
	local cpu0 cpu1 log0 log1 rc out err="" tag=$1-$2-$3 got secs rate hs
	case $target in
	plain) port=$PLAIN_PORT ;;
	starttls) port=$STLS_PORT; opts=(-S) ;;
	implicit) port=$IMPL_PORT; opts=(-I) ;;
	rsa) port=$RSA_PORT; opts=(-S) ;;
	resumed) port=$STLS_PORT; opts=(-S -r) ;;
	esac
	# The fast runs send more, for enough clock ticks of smtpgate's CPU.
	case $kind in
	single) n=$MESSAGES ;;
	multi) n=$((2 * MESSAGES)); opts+=(-d 0) ;;
	hs) n=$HANDSHAKES; opts+=(-H) ;;
	esac
	[ "$kind $target" = "hs plain" ] && n=$((4 * HANDSHAKES))
	before=$(sink_msgs)
	log0=$(wc -l <"$GATE_LOG")
	cpu0=$(proc_cpu_ticks "$GATE_PID")
	"$LOAD" "${opts[@]}" -j "$CTHREADS" -s "$SESSIONS" -m "$n" -l "$MSGSIZE" \
	    -M "$HELO_NAME" -f "$SENDER" -t "$RCPT" "127.0.0.1:$port" \
	    >"$work/load-$tag.out" 2>"$work/load-$tag.err"
	rc=$?
	cpu1=$(proc_cpu_ticks "$GATE_PID")
	sleep 0.3       # let the sink's last counter update land
	after=$(sink_msgs)
	sink_n=$((after - before))
	out=$(cat "$work/load-$tag.out")
	# key=value figures of smtpload's one line.
	fig() { tr ' ' '\n' <<<"$out" | sed -n "s/^$1=//p"; }
	secs=$(fig elapsed)

	[ "$rc" = 0 ] || err="smtpload exit $rc: $(head -c 300 "$work/load-$tag.err")"
	if [ "$kind" = hs ]; then
		got=$(fig conns)
		hs=$(fig handshakes)
		[ -z "$err" ] && [ "$got" != "$n" ] && err="smtpload completed $got connections, expected $n"
		[ -z "$err" ] && [ "$target" != plain ] && [ "$hs" != "$n" ] &&
			err="smtpload made $hs handshakes, expected $n"
		[ -z "$err" ] && [ "$target" = resumed ] && [ "$(fig resumed)" -lt $((n - SESSIONS)) ] &&
			err="only $(fig resumed) of $n handshakes were resumed"
		[ -z "$err" ] && [ "$target" != resumed ] && [ "$(fig resumed)" != 0 ] &&
			err="$(fig resumed) handshakes were resumed, expected none"
		rate=$(fig conns_per_s)
	else
		got=$(fig msgs)
		[ -z "$err" ] && [ "$got" != "$n" ] && err="smtpload sent $got messages, expected $n"
		[ -z "$err" ] && [ "$sink_n" != "$n" ] &&
			err="smtp-sink received $sink_n messages, expected $n"
		rate=$(fig msgs_per_s)
	fi
	kill -0 "$GATE_PID" 2>/dev/null || err="smtpgate died"
	log1=$(wc -l <"$GATE_LOG")
	if [ "$log1" -gt "$log0" ]; then
		note "smtpgate logged $((log1 - log0)) line(s) during $tag, e.g.:"
		sed -n "$((log0 + 1)),$((log0 + 3))p" "$GATE_LOG" >&2
	fi
	if [ -n "$err" ]; then
		failures=$((failures + 1))
		echo "$kind $target $round ERROR ERROR ERROR" >>"$results"
		printf '  %-6s %-9s round %s: ERROR after %ss: %s\n' "$kind" "$target" "$round" "${secs:-?}" "$err"
		kill -0 "$GATE_PID" 2>/dev/null || die "smtpgate is gone; stopping (log: $GATE_LOG)"
		return
	fi
	awk -v k="$kind $target $round" -v r="$rate" -v c=$((cpu1 - cpu0)) \
	    -v t="$ticks" -v n="$n" -v cc="$(fig client_cpu_s)" \
	    'BEGIN { printf "%s %.0f %.1f %.1f\n", k, r, 1e6 * c / t / n, 1e6 * cc / n }' >>"$results"
	awk -v k="$kind" -v tg="$target" -v r="$round" -v n="$n" -v s="$secs" \
	    -v rate="$rate" -v c=$((cpu1 - cpu0)) -v t="$ticks" -v cc="$(fig client_cpu_s)" \
	    -v what="$([ "$kind" = hs ] && echo conns || echo msgs)" -v tls="$(fig tls)" \
	    'BEGIN { printf "  %-6s %-9s round %s: %6d %s in %7.3fs = %6.0f/s; smtpgate CPU %.2fs (%.0f%% of a core, %.0f us/%s), client %.0f us/%s; %s\n",
		k, tg, r, n, what, s, rate, c / t, 100 * c / t / s, 1e6 * c / t / n,
		substr(what, 1, length(what) - 1), 1e6 * cc / n, substr(what, 1, length(what) - 1), tls }'
}

echo "Runs (smtpload -j $CTHREADS -s $SESSIONS -l $MSGSIZE; smtpgate workers $WORKERS):"
for round in $(seq "$ROUNDS"); do
	# Even rounds run the targets in the reverse order, so that a drift
	# in the machine's load does not always favour the same one.
	order="plain starttls implicit"
	hsorder="plain starttls rsa implicit resumed"
	if [ $((round % 2)) = 0 ]; then
		order="implicit starttls plain"
		hsorder="resumed implicit rsa starttls plain"
	fi
	for kind in single multi; do
		for target in $order; do
			run "$kind" "$target" "$round"
		done
	done
	for target in $hsorder; do
		run hs "$target" "$round"
	done
done
echo

stop_pid "$GATE_PID" smtpgate 40 || failures=$((failures + 1))
if [ "$stop_rc" != 0 ]; then
	note "ERROR: smtpgate exited with status $stop_rc on SIGTERM (log: $GATE_LOG)"
	failures=$((failures + 1))
fi

# ---- summary -----------------------------------------------------------------------

# median KIND TARGET [COLUMN] -> median over the rounds of column 4 (rate),
# 5 (smtpgate CPU us) or 6 (client CPU us), or ERROR.
median() {
	awk -v k="$1" -v t="$2" -v c="${3:-4}" '$1 == k && $2 == t { print $c }' "$results" |
	    sort -n | awk '
		/ERROR/ { bad = 1 }
		{ v[NR] = $1 }
		END {
			if (bad || NR == 0) { print "ERROR"; exit }
			if (NR % 2) print v[(NR + 1) / 2]
			else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
		}'
}
# pair KIND A KIND2 B COLUMN OP -> median over the rounds of A OP B (OP:
# "/" the ratio, "-" the difference) of one column, each pair from the
# same round; n/a if a run failed.
pair() {
	awk -v ka="$1" -v a="$2" -v kb="$3" -v b="$4" -v c="$5" -v op="$6" '
		$1 == ka && $2 == a { x[$3] = $c }
		$1 == kb && $2 == b { y[$3] = $c }
		END {
			n = 0
			for (r in x) {
				if (x[r] == "ERROR" || y[r] == "ERROR" || !(r in y)) { print "n/a"; exit }
				if (op == "/" && y[r] == 0) { print "n/a"; exit }
				v[++n] = (op == "/") ? x[r] / y[r] : x[r] - y[r]
			}
			if (n == 0) { print "n/a"; exit }
			for (i = 2; i <= n; i++)        # insertion sort
				for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
					t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
				}
			m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
			printf (op == "/") ? "%.2f\n" : "%.0f\n", m
		}' "$results"
}
us() { awk -v v="$1" 'BEGIN { if (v == "ERROR") print v; else printf "%.0f", v }'; }

echo "Summary ($([ "$ROUNDS" -gt 1 ] && echo "medians of $ROUNDS rounds; ratios paired by round; ")smtpload -j $CTHREADS -s $SESSIONS -l $MSGSIZE; ECDSA P-256 unless said):"
printf '  %-14s %8s %9s %9s %10s %10s   %-24s %s\n' "msgs/s" plain STARTTLS implicit \
    STLS/plain impl/plain "smtpgate us/msg p/S/I" "client us/msg p/S/I"
for kind in single multi; do
	label="1 msg/conn"
	[ "$kind" = multi ] && label="-d $((2 * MESSAGES / SESSIONS))/conn"
	printf '  %-14s %8s %9s %9s %10s %10s   %-24s %s\n' "$label" \
	    "$(median "$kind" plain)" "$(median "$kind" starttls)" "$(median "$kind" implicit)" \
	    "$(pair "$kind" starttls "$kind" plain 4 /)" "$(pair "$kind" implicit "$kind" plain 4 /)" \
	    "$(us "$(median "$kind" plain 5)")/$(us "$(median "$kind" starttls 5)")/$(us "$(median "$kind" implicit 5)")" \
	    "$(us "$(median "$kind" plain 6)")/$(us "$(median "$kind" starttls 6)")/$(us "$(median "$kind" implicit 6)")"
done
printf '  %-26s %8s %10s %16s %14s %14s\n' "handshakes (-H)" "conns/s" "/plain" \
    "smtpgate us/conn" "net TLS us/hs" "client us/conn"
for target in plain starttls rsa implicit resumed; do
	case $target in
	plain) label="plain (no TLS)" ;;
	starttls) label="STARTTLS ECDSA P-256" ;;
	rsa) label="STARTTLS RSA-2048" ;;
	implicit) label="implicit ECDSA P-256" ;;
	resumed) label="STARTTLS ECDSA, resumed" ;;
	esac
	ratio=$(pair hs "$target" hs plain 4 /)
	net=$(pair hs "$target" hs plain 5 -)
	[ "$target" = plain ] && ratio=1.00 net=-
	printf '  %-26s %8s %10s %16s %14s %14s\n' "$label" "$(median hs "$target")" "$ratio" \
	    "$(us "$(median hs "$target" 5)")" "$net" "$(us "$(median hs "$target" 6)")"
done
printf '  RSA/ECDSA handshakes/s: %s (same round)\n' "$(pair hs rsa hs starttls 4 /)"
if [ "$failures" -gt 0 ]; then
	echo "  $failures run(s)/check(s) had errors: their figures are not reported"
	exit 1
fi
exit 0
