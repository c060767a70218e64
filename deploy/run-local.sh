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
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"
once=0
case "${1:-}" in
--once) once=1 ;;
"") ;;
*) echo "usage: run-local.sh [--once]" >&2; exit 2 ;;
esac

need_root run-local.sh || exit 1
need_tools run-local.sh postfix postconf redis-server redis-cli openssl swaks python3 || exit 1

gate_bin || exit 1

work_dir local || exit 1

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
		postfix_stop "$work/postfix"
	fi
	if [ -n "$redis_pid" ]; then
		kill -TERM "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	if [ -n "$tail_pid" ]; then
		kill -TERM "$tail_pid" 2>/dev/null || true
		wait "$tail_pid" 2>/dev/null || true
	fi
	work_done run-local.sh
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

# Ports: the environment's, or free ones.
read -r free1 free2 free3 free4 free5 < <(free_ports 5)
smtp_port=${SMTP_PORT:-$free1}
submission_port=${SUBMISSION_PORT:-$free2}
postfix_port=${POSTFIX_PORT:-$free3}
redis_port=${REDIS_PORT:-$free4}
metrics_port=${METRICS_PORT:-$free5}

# --- Redis -------------------------------------------------------------
redis_start "$work/redis" "$redis_port" || fail "Redis did not start"
redis_pid=$REDIS_PID

# --- Postfix -----------------------------------------------------------
pf=$work/postfix
postfix_started=1
postfix_start "$pf" "$postfix_port" || fail "Postfix did not start"

# --- smtpgate ----------------------------------------------------------
sg=$work/smtpgate
password=${RUN_LOCAL_PASSWORD:-$(openssl rand -hex 12)}
gate_dir "$sg" "$deploy/policy" "$password"
gate_conf_local "$smtp_port" "$submission_port" "$metrics_port" "$postfix_port" \
	"$redis_port" || fail "bad config"
printf '%s\n' "$conf" >"$sg/smtpgate.yaml"
"$bin" -t -c "$sg/smtpgate.yaml" >/dev/null ||
	fail "smtpgate -t refused $sg/smtpgate.yaml"
"$bin" -c "$sg/smtpgate.yaml" 2>"$work/smtpgate.log" &
gate_pid=$!
wait_greeting "$smtp_port" "$work/smtpgate.log" "$gate_pid" ||
	fail "smtpgate does not greet"
wait_greeting "$submission_port" "$work/smtpgate.log" "$gate_pid" ||
	fail "smtpgate does not greet"

master=$(postfix_master "$pf")
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
