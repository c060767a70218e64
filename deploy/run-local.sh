#!/bin/bash
# run-local.sh [--once]: the compose deployment (deploy/docker-compose.yml)
# without Docker.  Starts, all on 127.0.0.1:
#   redis-server   with deploy/redis/redis.conf
#   Postfix        a private instance with deploy/postfix/{main,master}.cf
#                  and vmailbox
#   smtpgate       with deploy/smtpgate/smtpgate.yaml, its users file and
#                  the policy of deploy/policy/
# prints where each listens, then runs until Ctrl-C (or SIGTERM).  With
# --once it sends two messages with swaks instead (port 25 with STARTTLS,
# port 587 with STARTTLS and AUTH), checks that both arrived in Postfix's
# Maildir, and stops.  Whatever it started is stopped when it exits.
#
# The files are the compose deployment's own.  They are copied to a work
# directory and only what cannot be the same outside a container changes:
#   smtpgate.yaml  the five addresses marked "run-local" (listeners, the
#                  backend, Redis, metrics), each replaced where written exactly as
#                  in the file; tls/ holds a certificate made by
#                  deploy/smtpgate/gen-cert.sh; policy/ is a link to
#                  deploy/policy/; users gets one more account, "local".
#   Postfix        postconf -e of the parameters in postfix_overrides below
#                  (directories, 127.0.0.1, the uid mail is delivered as,
#                  logging to a file, no mail sent out) and the first
#                  master.cf line listening on 127.0.0.1:POSTFIX_PORT.
#   Redis          --port, --bind 127.0.0.1 and --dir on the command line.
#
# Run as root (Postfix's master starts as root), from anywhere.
# Environment:
#   SMTPGATE_BIN        the binary (default: build/smtpgate, built if absent)
#   SMTP_PORT SUBMISSION_PORT POSTFIX_PORT REDIS_PORT METRICS_PORT
#                       ports (default: free ones)
#   RUN_LOCAL_PASSWORD  password of the account "local" (default: random)
#   SMTPGATE_KEEP_TMP=1 keep the work directory (configs, logs, Maildirs)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
deploy=$repo/deploy
once=0
case "${1:-}" in
--once) once=1 ;;
"") ;;
*) echo "usage: run-local.sh [--once]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
	echo "run-local.sh: run me as root (Postfix's master starts as root)" >&2
	exit 1
fi
PATH=$PATH:/usr/sbin:/sbin
for tool in postfix postconf redis-server redis-cli openssl swaks python3; do
	command -v "$tool" >/dev/null || {
		echo "run-local.sh: $tool is missing; deploy/install-deps.sh installs it" >&2
		exit 1
	}
done

bin=${SMTPGATE_BIN:-$repo/build/smtpgate}
if [ -z "${SMTPGATE_BIN:-}" ] && [ ! -x "$bin" ]; then
	cmake -S "$repo" -B "$repo/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$repo/build" -j "$(nproc)" --target smtpgate >/dev/null
fi

# Postfix accepts a maillog_file only under maillog_file_prefixes: /tmp.
work=$(mktemp -d /tmp/smtpgate-local.XXXXXX)
chmod 0755 "$work"

redis_pid="" gate_pid="" tail_pid="" postfix_started=0 status=0

# Stops what was started, newest first; smtpgate drains on SIGTERM.  An
# smtpgate that exits with an error (a sanitizer report, say) makes the
# script fail, its log shown.
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$gate_pid" ]; then
		kill -TERM "$gate_pid" 2>/dev/null || true
		gate_status=0
		wait "$gate_pid" || gate_status=$?
		if [ "$gate_status" -ne 0 ]; then
			echo "run-local.sh: smtpgate exited with status $gate_status; its log:" >&2
			tail -n 50 "$work/smtpgate.log" >&2 || true
			status=1
		fi
	fi
	if [ "$postfix_started" -eq 1 ]; then
		master=$(tr -d ' ' 2>/dev/null <"$work/postfix/queue/pid/master.pid") || master=""
		postfix -c "$work/postfix/conf" stop >/dev/null 2>&1 || true
		# "postfix stop" returns before master has gone.
		i=0
		while [ -n "$master" ] && kill -0 "$master" 2>/dev/null; do
			i=$((i + 1))
			if [ $i -gt 300 ]; then
				kill -KILL "$master" 2>/dev/null || true
				break
			fi
			sleep 0.05
		done
	fi
	if [ -n "$redis_pid" ]; then
		kill -TERM "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	if [ -n "$tail_pid" ]; then
		kill -TERM "$tail_pid" 2>/dev/null || true
		wait "$tail_pid" 2>/dev/null || true
	fi
	if [ "${SMTPGATE_KEEP_TMP:-}" = 1 ]; then
		echo "run-local.sh: kept $work"
	else
		rm -rf "$work"
	fi
	echo "run-local.sh: stopped"
	exit "$status"
}
trap 'status=$?; cleanup' EXIT
trap 'status=0; exit' INT TERM

fail() {
	echo "run-local.sh: $*" >&2
	status=1
	exit 1
}

# Ports: the environment's, or free ones (bound together, so distinct).
read -r free1 free2 free3 free4 free5 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
smtp_port=${SMTP_PORT:-$free1}
submission_port=${SUBMISSION_PORT:-$free2}
postfix_port=${POSTFIX_PORT:-$free3}
redis_port=${REDIS_PORT:-$free4}
metrics_port=${METRICS_PORT:-$free5}

# wait_greeting PORT LOG: waits (20 s at most) until 127.0.0.1:PORT
# greets with 220, then says QUIT.  Connection refused means the server
# is not listening yet: there is nothing to await but time.
wait_greeting() {
	local port=$1 log=$2 i=0 line
	while ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt 400 ] && { tail -n 30 "$log" >&2; fail "nothing listens on $port"; }
		sleep 0.05
	done
	IFS= read -r -t 20 line <&3 || line=""
	printf 'QUIT\r\n' >&3 2>/dev/null || true
	exec 3>&-
	case "$line" in
	220*) ;;
	*) tail -n 30 "$log" >&2; fail "127.0.0.1:$port greeted with '$line'" ;;
	esac
}

# --- Redis -------------------------------------------------------------
mkdir "$work/redis"
redis-server "$deploy/redis/redis.conf" --port "$redis_port" \
	--bind 127.0.0.1 --dir "$work/redis" --daemonize no \
	>"$work/redis/redis.log" 2>&1 &
redis_pid=$!
i=0
until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
	kill -0 "$redis_pid" 2>/dev/null ||
		{ cat "$work/redis/redis.log" >&2; fail "redis-server exited"; }
	i=$((i + 1))
	[ $i -gt 400 ] && fail "redis-server does not answer PING"
	sleep 0.05
done

# --- Postfix -----------------------------------------------------------
pf=$work/postfix
mkdir -p "$pf/conf" "$pf/queue" "$pf/data" "$pf/mail"
cp "$deploy/postfix/main.cf" "$deploy/postfix/master.cf" \
	"$deploy/postfix/vmailbox" "$pf/conf/"
chown postfix: "$pf/data"
chmod 0700 "$pf/data"
chown nobody: "$pf/mail"
nobody_uid=$(id -u nobody)
nobody_gid=$(id -g nobody)
# The parameters that differ from the container, nothing else.
postfix_overrides=(
	"config_directory = $pf/conf"
	"queue_directory = $pf/queue"
	"data_directory = $pf/data"
	"inet_interfaces = 127.0.0.1"
	"smtpd_authorized_xclient_hosts = 127.0.0.1"
	"virtual_mailbox_base = $pf/mail"
	"virtual_uid_maps = static:$nobody_uid"
	"virtual_gid_maps = static:$nobody_gid"
	"maillog_file = $pf/maillog"
	"maillog_file_prefixes = /tmp"
	"syslog_name = postfix-$(basename "$work")"
	# A local run never sends mail out: relayed mail stays queued.
	"defer_transports = smtp"
)
postconf -c "$pf/conf" -e "${postfix_overrides[@]}"
postconf -c "$pf/conf" -M \
	"smtp/inet=127.0.0.1:$postfix_port inet n - n - - smtpd"
out=$(postfix -c "$pf/conf" start 2>&1) ||
	{ echo "$out" >&2; cat "$pf/maillog" >&2 2>/dev/null; fail "postfix start failed"; }
postfix_started=1
wait_greeting "$postfix_port" "$pf/maillog"

# --- smtpgate ----------------------------------------------------------
sg=$work/smtpgate
mkdir "$sg"
ln -s "$deploy/policy" "$sg/policy"
"$deploy/smtpgate/gen-cert.sh" "$sg/tls" gate.example.test >/dev/null
password=${RUN_LOCAL_PASSWORD:-$(openssl rand -hex 12)}
(umask 077
 { cat "$deploy/smtpgate/users"
   printf 'local:%s\n' "$(openssl passwd -6 "$password")"; } >"$sg/users")
# replace_once FROM TO: FROM must be in the config exactly once.
conf=$(cat "$deploy/smtpgate/smtpgate.yaml")
replace_once() {
	local n
	n=$(grep -cF -- "$1" <<<"$conf" || true)
	[ "$n" -eq 1 ] ||
		fail "deploy/smtpgate/smtpgate.yaml holds '$1' $n times, not once"
	conf=${conf/"$1"/"$2"}
}
replace_once "0.0.0.0:25 " "127.0.0.1:$smtp_port "
replace_once "0.0.0.0:587 " "127.0.0.1:$submission_port "
replace_once "172.30.25.25:25]" "127.0.0.1:$postfix_port]"
replace_once "172.30.25.63:6379 " "127.0.0.1:$redis_port "
replace_once "0.0.0.0:9425 " "127.0.0.1:$metrics_port "
printf '%s\n' "$conf" >"$sg/smtpgate.yaml"
"$bin" -t -c "$sg/smtpgate.yaml" >/dev/null ||
	fail "smtpgate -t refused $sg/smtpgate.yaml"
"$bin" -c "$sg/smtpgate.yaml" 2>"$work/smtpgate.log" &
gate_pid=$!
wait_greeting "$smtp_port" "$work/smtpgate.log"
wait_greeting "$submission_port" "$work/smtpgate.log"

master=$(tr -d ' ' <"$pf/queue/pid/master.pid")
cat <<EOF
smtp        127.0.0.1:$smtp_port (STARTTLS)
submission  127.0.0.1:$submission_port (STARTTLS, AUTH: user local, password $password)
postfix     127.0.0.1:$postfix_port
redis       127.0.0.1:$redis_port
metrics     127.0.0.1:$metrics_port (http://127.0.0.1:$metrics_port/metrics)
maildirs    $pf/mail/example.test/
logs        $work/smtpgate.log $pf/maillog $work/redis/redis.log
config      $sg/smtpgate.yaml $pf/conf/main.cf
pids        smtpgate=$gate_pid postfix=$master redis=$redis_pid
EOF

if [ $once -eq 0 ]; then
	echo "ready; Ctrl-C stops everything"
	if [ -t 1 ]; then
		tail -n 0 -F "$work/smtpgate.log" "$pf/maillog" &
		tail_pid=$!
	fi
	# A trapped signal ends this wait at once; so does smtpgate exiting.
	wait "$gate_pid" || true
	gate_pid=""
	fail "smtpgate exited; its log: $(tail -n 20 "$work/smtpgate.log")"
fi

# --- --once: one message on each port ------------------------------------
# delivered ID: waits (20 s at most) for the Maildir file holding
# Message-ID <ID> and prints its name.
delivered() {
	local i=0 f
	while :; do
		f=$(grep -rliF -- "Message-ID: <$1>" "$pf/mail/example.test/user/new" 2>/dev/null || true)
		[ -n "$f" ] && { echo "$f"; return 0; }
		i=$((i + 1))
		[ $i -gt 400 ] && return 1
		sleep 0.05
	done
}
tag=$(basename "$work")
id25="$tag.25@client.example.test"
id587="$tag.587@client.example.test"
swaks --server 127.0.0.1 --port "$smtp_port" --tls \
	--helo client.example.test --from sender@client.example.test \
	--to user@example.test --header "Message-ID: <$id25>" \
	--header "Subject: run-local, port 25" --body "Through smtpgate, port 25." \
	>"$work/swaks-25.log" 2>&1 ||
	{ cat "$work/swaks-25.log" >&2; fail "swaks on port 25 failed"; }
swaks --server 127.0.0.1 --port "$submission_port" --tls \
	--auth PLAIN --auth-user local --auth-password "$password" \
	--helo client.example.test --from local@example.test \
	--to user@example.test --header "Message-ID: <$id587>" \
	--header "Subject: run-local, port 587" --body "Through smtpgate, port 587." \
	>"$work/swaks-587.log" 2>&1 ||
	{ cat "$work/swaks-587.log" >&2; fail "swaks on port 587 failed"; }
for id in "$id25" "$id587"; do
	f=$(delivered "$id") || {
		tail -n 30 "$pf/maillog" >&2
		fail "message <$id> not delivered"
	}
	echo "delivered   <$id> in $f"
done
