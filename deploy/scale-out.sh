#!/bin/bash
# scale-out.sh [run|start|stop|status]: two smtpgate instances behind
# haproxy, sharing one Redis and one Postfix, all on 127.0.0.1:
#   haproxy        deploy/haproxy.cfg: ports smtp and submission, each
#                  connection to the gateway with the fewest, with a PROXY
#                  protocol v2 header; a health check per gateway on its
#                  check port
#   gate1, gate2   smtpgate with deploy/smtpgate/smtpgate.yaml and the
#                  policy of deploy/policy/ (or POLICY_DIR), both
#                  listeners with proxy_protocol: true and proxy_from:
#                  haproxy's source address only, plus a check listener;
#                  one Redis, so every rate limit counts over both
#   Postfix        a private instance with deploy/postfix/'s configuration
#   redis-server   with deploy/redis/redis.conf
# The files are the compose deployment's own, changed as
# deploy/run-local.sh changes them (deploy/lib.sh), and smtpgate.yaml also
# as deploy/haproxy.cfg describes: its two listeners get proxy_protocol
# and proxy_from, and a check listener comes first.
#
#   run     (the default) prints where each listens, then runs until
#           Ctrl-C or SIGTERM; whatever it started is stopped when it
#           exits, and it exits non-zero if a process failed or if a
#           gateway or haproxy ended on its own.
#   start   the same in the background; its output and pid are kept in
#           $SCALEOUT_STATE [/tmp/smtpgate-scaleout.state]
#   stop    stops what "start" started and waits until all of it is gone
#   status  what "start" printed, and haproxy's view of each gateway
#
# Run as root (Postfix's master starts as root), from anywhere.
# Environment:
#   SMTPGATE_BIN        the binary (default: build/smtpgate, built if absent)
#   SMTP_PORT SUBMISSION_PORT
#                       haproxy's ports (default: free ones)
#   GATE1_PORTS GATE2_PORTS
#                       "SMTP SUBMISSION CHECK" ports of a gateway
#                       (default: free ones)
#   POSTFIX_PORT REDIS_PORT
#                       (default: free ones)
#   GATE1_METRICS_PORT GATE2_METRICS_PORT
#                       each gateway's metrics endpoint (default: free ones)
#   HAPROXY_SOURCE      haproxy's address toward the gateways, their
#                       proxy_from [127.0.10.1]; another /24 than the
#                       clients', so that rate limits per client_net do not
#                       count health checks with them
#   POLICY_DIR          the gateways' policy directory (policy.yaml in it)
#                       [deploy/policy]
#   REDIS_TIMEOUT       the gateways' redis.timeout [smtpgate.yaml's, 50ms];
#                       slower answers let mail through uncounted
#                       (on_error: allow), so a test that counts exactly on
#                       a busy machine wants more
#   SCALEOUT_PASSWORD   password of the AUTH account "local" (default: random)
#   SMTPGATE_KEEP_TMP=1 keep the work directory (configs, logs, Maildirs)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
deploy=$repo/deploy
self=$deploy/scale-out.sh
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"
state=${SCALEOUT_STATE:-/tmp/smtpgate-scaleout.state}

# haproxy_cmd SOCKET COMMAND: one command on haproxy's admin socket.
haproxy_cmd() {
	python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())' "$1" "$2"
}

# servers SOCKET: prints "BACKEND/SERVER STATUS" for each gateway, as
# haproxy sees it.
servers() {
	haproxy_cmd "$1" "show stat" |
		awk -F, '$1 ~ /_gates$/ && $2 != "BACKEND" { print $1 "/" $2, $18 }'
}

# --- start, stop, status -------------------------------------------------

running_pid() {          # the pid of the "start"ed run, if it still runs
	local pid out
	[ -f "$state" ] || return 1
	read -r pid out <"$state" || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid $out"
}

case "${1:-run}" in
run) ;;
start)
	if running_pid >/dev/null; then
		echo "scale-out.sh: already running ($state)" >&2
		exit 1
	fi
	out=$(mktemp /tmp/smtpgate-scaleout-out.XXXXXX)
	setsid "$self" run </dev/null >"$out" 2>&1 &
	pid=$!
	i=0
	until grep -q '^ready' "$out"; do
		if ! kill -0 "$pid" 2>/dev/null || [ $i -gt 1800 ]; then
			cat "$out" >&2
			kill -TERM "$pid" 2>/dev/null || true
			rm -f "$out"
			echo "scale-out.sh: did not start" >&2
			exit 1
		fi
		i=$((i + 1))
		sleep 0.05
	done
	echo "$pid $out" >"$state"
	grep -v '^ready' "$out"
	echo "started (pid $pid); '$0 stop' stops it"
	exit 0
	;;
stop)
	if ! r=$(running_pid); then
		echo "scale-out.sh: not running"
		rm -f "$state"
		exit 0
	fi
	read -r pid out <<<"$r"
	kill -TERM "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt 1800 ] && { echo "scale-out.sh: pid $pid does not stop" >&2; exit 1; }
		sleep 0.05
	done
	# The run's own complaints while stopping (a gateway that exited with
	# an error), then its last word.
	rc=0
	if grep -q '^scale-out.sh: .* exited' "$out"; then
		grep -A 50 '^scale-out.sh: .* exited' "$out" >&2
		rc=1
	else
		tail -n 1 "$out"
	fi
	rm -f "$state" "$out"
	exit "$rc"
	;;
status)
	if ! r=$(running_pid); then
		echo "scale-out.sh: not running"
		exit 3
	fi
	read -r pid out <<<"$r"
	grep -v '^ready' "$out"
	sock=$(awk '$1 == "stats" { print $2 }' "$out")
	echo "haproxy's view of the gateways:"
	servers "$sock" | sed 's/^/  /'
	exit 0
	;;
*)
	echo "usage: scale-out.sh [run|start|stop|status]" >&2
	exit 2
	;;
esac

# --- run -----------------------------------------------------------------

need_root scale-out.sh || exit 1
need_tools scale-out.sh postfix postconf redis-server redis-cli haproxy openssl python3 || exit 1

gate_bin || exit 1
policy=${POLICY_DIR:-$deploy/policy}
[ -f "$policy/policy.yaml" ] || {
	echo "scale-out.sh: no policy.yaml in $policy" >&2
	exit 1
}
policy=$(cd "$policy" && pwd)
src=${HAPROXY_SOURCE:-127.0.10.1}

work_dir scaleout || exit 1

redis_pid="" haproxy_pid="" tail_pid="" postfix_started=0 status=0
gate_pids=()

# Stops what was started, newest first: haproxy stops accepting (SIGUSR1:
# its sessions go on), the gateways drain (SIGTERM: idle sessions get 421,
# transactions in flight finish), haproxy exits with its last session,
# then Postfix and Redis.  A gateway that exits with an error (a sanitizer
# report, say) makes the script fail.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	local i rc
	trap - EXIT INT TERM
	if [ -n "$haproxy_pid" ]; then
		kill -USR1 "$haproxy_pid" 2>/dev/null || true
	fi
	for i in "${!gate_pids[@]}"; do
		kill -TERM "${gate_pids[$i]}" 2>/dev/null || true
	done
	for i in "${!gate_pids[@]}"; do
		rc=0
		stop_wait "${gate_pids[$i]}" 60 none || rc=$?
		if [ "$rc" -ne 0 ]; then
			echo "scale-out.sh: gate$((i + 1)) exited with status $rc; its log:" >&2
			tail -n 50 "$work/gate$((i + 1)).log" >&2 || true
			status=1
		fi
	done
	if [ -n "$haproxy_pid" ]; then
		stop_wait "$haproxy_pid" 10 none || true
	fi
	if [ "$postfix_started" -eq 1 ]; then
		postfix_stop "$work/postfix"
	fi
	if [ -n "$redis_pid" ]; then
		stop_wait "$redis_pid" 30 || true
	fi
	if [ -n "$tail_pid" ]; then
		kill -TERM "$tail_pid" 2>/dev/null || true
		wait "$tail_pid" 2>/dev/null || true
	fi
	work_done scale-out.sh
	echo "scale-out.sh: stopped"
	exit "$status"
}
trap 'status=$?; cleanup' EXIT
trap 'status=0; exit' INT TERM

fail() {
	echo "scale-out.sh: $*" >&2
	status=1
	exit 1
}

# Ports: the environment's, or free ones.
read -r -a free < <(free_ports 12)
smtp_port=${SMTP_PORT:-${free[0]}}
submission_port=${SUBMISSION_PORT:-${free[1]}}
postfix_port=${POSTFIX_PORT:-${free[2]}}
redis_port=${REDIS_PORT:-${free[3]}}
read -r -a g1 <<<"${GATE1_PORTS:-${free[4]} ${free[5]} ${free[6]}}"
read -r -a g2 <<<"${GATE2_PORTS:-${free[7]} ${free[8]} ${free[9]}}"
if [ "${#g1[@]}" -ne 3 ] || [ "${#g2[@]}" -ne 3 ]; then
	fail "GATE1_PORTS and GATE2_PORTS take three ports: SMTP SUBMISSION CHECK"
fi
g1[3]=${GATE1_METRICS_PORT:-${free[10]}}
g2[3]=${GATE2_METRICS_PORT:-${free[11]}}

# --- Redis, Postfix ----------------------------------------------------
redis_start "$work/redis" "$redis_port" || fail "Redis did not start"
redis_pid=$REDIS_PID
pf=$work/postfix
postfix_started=1
postfix_start "$pf" "$postfix_port" || fail "Postfix did not start"

# --- the gateways --------------------------------------------------------
sg=$work/smtpgate
password=${SCALEOUT_PASSWORD:-$(openssl rand -hex 12)}
gate_dir "$sg" "$policy" "$password"
# gate_config SMTP SUBMISSION CHECK METRICS: the config of one gateway, in
# $conf.
gate_config() {
	gate_conf_local "$1" "$2" "$4" "$postfix_port" "$redis_port" || return 1
	if [ -n "${REDIS_TIMEOUT:-}" ]; then
		gate_conf_replace "  timeout: 50ms" "  timeout: $REDIS_TIMEOUT" || return 1
	fi
	# Both listeners: PROXY from haproxy only.  First, the check listener.
	conf=$(awk -v src="$src" -v chk="$3" '
		/^listen:/ {
			print
			print "  # haproxy'\''s health checks (deploy/haproxy.cfg): no PROXY header."
			print "  - address: 127.0.0.1:" chk
			print "    quiet: true"
			next
		}
		/^  - address: / {
			print
			print "    proxy_protocol: true"
			print "    proxy_from: [" src "]"
			next
		}
		{ print }' <<<"$conf")
	[ "$(grep -c '^    proxy_protocol: true$' <<<"$conf")" -eq 2 ] || {
		echo "deploy/smtpgate/smtpgate.yaml: expected two listeners" >&2
		return 1
	}
}
for n in 1 2; do
	if [ "$n" = 1 ]; then ports=("${g1[@]}"); else ports=("${g2[@]}"); fi
	gate_config "${ports[@]}" || fail "cannot make the config of gate$n"
	printf '%s\n' "$conf" >"$sg/gate$n.yaml"
	"$bin" -t -c "$sg/gate$n.yaml" >/dev/null ||
		fail "smtpgate -t refused $sg/gate$n.yaml"
	# Its own session: a Ctrl-C on the terminal reaches this script,
	# which stops the gateways once, in order.
	setsid "$bin" -c "$sg/gate$n.yaml" 2>"$work/gate$n.log" &
	gate_pids+=($!)
done
for n in 1 2; do
	if [ "$n" = 1 ]; then ports=("${g1[@]}"); else ports=("${g2[@]}"); fi
	# Its PROXY listeners are up as well (bound before any is served);
	# a probe of ours there would only log a refused PROXY header.
	wait_greeting "${ports[2]}" "$work/gate$n.log" "${gate_pids[$((n - 1))]}" ||
		fail "gate$n does not greet on its check port"
done

# --- haproxy -------------------------------------------------------------
sock=$work/haproxy.sock
SMTP_BIND=127.0.0.1:$smtp_port \
SUBMISSION_BIND=127.0.0.1:$submission_port \
GATE1_SMTP=127.0.0.1:${g1[0]} GATE1_SUBMISSION=127.0.0.1:${g1[1]} \
GATE1_CHECK_PORT=${g1[2]} \
GATE2_SMTP=127.0.0.1:${g2[0]} GATE2_SUBMISSION=127.0.0.1:${g2[1]} \
GATE2_CHECK_PORT=${g2[2]} \
HAPROXY_SOURCE=$src HAPROXY_STATS_SOCKET=$sock \
	setsid haproxy -db -f "$deploy/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
wait_port "$smtp_port" "$haproxy_pid" ||
	{ cat "$work/haproxy.log" >&2; fail "haproxy did not start"; }
wait_port "$submission_port" "$haproxy_pid" ||
	{ cat "$work/haproxy.log" >&2; fail "haproxy did not start"; }
# Until haproxy's own checks have found both gateways up (a server starts
# "UP" with its first check pending; "UP" alone, after it, is what counts).
i=0
# The check listeners are quiet: haproxy's check_status (show stat's 37th
# field: L7OK after a passed tcp-check, INI before the first) tells.
until n=$(servers "$sock" 2>/dev/null | grep -c ' UP$') && [ "$n" -eq 4 ] &&
	n=$(haproxy_cmd "$sock" "show stat" 2>/dev/null |
		awk -F, '$1 == "smtp_gates" && $37 == "L7OK"' | wc -l) &&
	[ "$n" -eq 2 ]; do
	i=$((i + 1))
	if [ $i -gt 600 ] || ! kill -0 "$haproxy_pid" 2>/dev/null; then
		servers "$sock" >&2 || true
		tail -n 20 "$work/haproxy.log" >&2
		fail "haproxy does not see both gateways up"
	fi
	sleep 0.05
done

master=$(postfix_master "$pf")
cat <<EOF
smtp        127.0.0.1:$smtp_port (haproxy; STARTTLS)
submission  127.0.0.1:$submission_port (haproxy; STARTTLS, AUTH: user local, password $password)
gate1       127.0.0.1:${g1[0]} 127.0.0.1:${g1[1]} (PROXY from $src) check 127.0.0.1:${g1[2]}
gate2       127.0.0.1:${g2[0]} 127.0.0.1:${g2[1]} (PROXY from $src) check 127.0.0.1:${g2[2]}
postfix     127.0.0.1:$postfix_port
redis       127.0.0.1:$redis_port
metrics     http://127.0.0.1:${g1[3]}/metrics (gate1) http://127.0.0.1:${g2[3]}/metrics (gate2)
maildirs    $pf/mail/example.test/
logs        $work/gate1.log $work/gate2.log $work/haproxy.log $pf/maillog $work/redis/redis.log
config      $deploy/haproxy.cfg $sg/gate1.yaml $sg/gate2.yaml $pf/conf/main.cf
policy      $policy
stats       $sock
pids        haproxy=$haproxy_pid gate1=${gate_pids[0]} gate2=${gate_pids[1]} postfix=$master redis=$redis_pid
ready; Ctrl-C stops everything
EOF

if [ -t 1 ]; then
	tail -n 0 -F "$work/gate1.log" "$work/gate2.log" "$work/haproxy.log" "$pf/maillog" &
	tail_pid=$!
fi
# A trapped signal ends this wait at once; so does a gateway or haproxy
# exiting on its own, which is a failure.
wait -n "$haproxy_pid" "${gate_pids[@]}" || true
for n in 1 2; do
	kill -0 "${gate_pids[$((n - 1))]}" 2>/dev/null ||
		fail "gate$n exited; its log: $(tail -n 20 "$work/gate$n.log")"
done
fail "haproxy exited; its log: $(tail -n 20 "$work/haproxy.log")"
