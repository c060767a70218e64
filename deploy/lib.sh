# shellcheck shell=bash
# deploy/lib.sh: shell helpers of the deploy/ scripts (bash; source it).
# run-local.sh, scale-out.sh and loadtest.sh run the files of the compose
# deployment natively on 127.0.0.1 with them: a redis-server, a private
# Postfix with deploy/postfix/'s configuration and smtpgate with
# deploy/smtpgate/smtpgate.yaml.  The measurement scripts (bench.sh,
# tlsbench.sh, testssl.sh, scale10k.sh)
# use the ports, process and /proc helpers and the background process
# bookkeeping at the end.  None of them exits: each returns non-zero with
# a message on stderr and leaves the decision to its caller.
#
# Needs: deploy, the deploy/ directory.
: "${deploy:?deploy/lib.sh needs \$deploy, the deploy/ directory}"

# free_ports N: prints N distinct ports of 127.0.0.1 free right now (bound
# together, so distinct).  They are picked at random below the kernel's
# ephemeral range (32768-60999 by default): a port that bind(0) handed out
# and we released can be taken by any outgoing connection before our
# server binds it.
free_ports() {
	python3 -c '
import random, socket, sys
rng = random.SystemRandom()
ss = []
while len(ss) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", rng.randint(15000, 32767)))
    except OSError:
        s.close()
        continue
    ss.append(s)
print(*[s.getsockname()[1] for s in ss])' "$1"
}

# wait_greeting PORT LOG [PID]: waits (20 s at most) until 127.0.0.1:PORT
# greets with 220, then says QUIT; on failure shows the end of LOG.
# Connection refused means the server is not listening yet: there is
# nothing to await but time.  With PID, gives up as soon as PID is gone.
wait_greeting() {
	local port=$1 log=$2 pid=${3:-} i=0 line
	while ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 400 ] || { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; }; then
			tail -n 30 "$log" >&2
			echo "nothing listens on 127.0.0.1:$port" >&2
			return 1
		fi
		sleep 0.05
	done
	IFS= read -r -t 20 line <&3 || line=""
	printf 'QUIT\r\n' >&3 2>/dev/null || true
	exec 3>&-
	case "$line" in
	220*) return 0 ;;
	esac
	tail -n 30 "$log" >&2
	echo "127.0.0.1:$port greeted with '$line'" >&2
	return 1
}

# wait_port PORT PID: waits (20 s at most) until something accepts on
# 127.0.0.1:PORT, without a word to it; gives up when PID is gone.
wait_port() {
	local i=0
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		kill -0 "$2" 2>/dev/null || return 1
		i=$((i + 1))
		[ $i -gt 400 ] && return 1
		sleep 0.05
	done
}

# stop_wait PID [SECONDS [SIGNAL]]: SIGNAL [TERM] to PID (a child of this
# shell; SIGNAL "none": no signal, it was sent before), then waits for it,
# SIGKILL after SECONDS [30].  Returns PID's exit status.
stop_wait() {
	local pid=$1 t=${2:-30} sig=${3:-TERM} i=0 st rc=0
	[ "$sig" = none ] || kill -"$sig" "$pid" 2>/dev/null || true
	# Exited: gone, or a zombie until the wait below.
	while st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) &&
		[ "${st%% *}" != Z ]; do
		i=$((i + 1))
		if [ $i -gt $((t * 20)) ]; then
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

# --- Script set-up -----------------------------------------------------

# need_root PROG: fails, with a word from PROG, unless run as root (the
# master of a private Postfix starts as root).
need_root() {
	[ "$(id -u)" -eq 0 ] && return 0
	echo "$1: run me as root (Postfix's master starts as root)" >&2
	return 1
}

# need_tools PROG TOOL...: adds /usr/sbin and /sbin to PATH (Postfix's
# commands), then fails naming the first TOOL that is not found.
need_tools() {
	local prog=$1 tool
	shift
	PATH=$PATH:/usr/sbin:/sbin
	for tool; do
		command -v "$tool" >/dev/null && continue
		echo "$prog: $tool is missing; deploy/install-deps.sh installs it" >&2
		return 1
	done
}

# gate_bin: sets bin to $SMTPGATE_BIN, or to build/smtpgate, which is built
# (RelWithDebInfo) when absent.
gate_bin() {
	local top
	top=$(dirname "$deploy")
	bin=${SMTPGATE_BIN:-$top/build/smtpgate}
	if [ -z "${SMTPGATE_BIN:-}" ] && [ ! -x "$bin" ]; then
		cmake -S "$top" -B "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
			>/dev/null || return 1
		cmake --build "$top/build" -j "$(nproc)" --target smtpgate \
			>/dev/null || return 1
	fi
}

# work_dir NAME: sets work to a new directory /tmp/smtpgate-NAME.XXXXXX,
# mode 0755: Postfix takes a maillog_file only under /tmp, and its
# unprivileged processes reach their directories in it.
work_dir() {
	work=$(mktemp -d "/tmp/smtpgate-$1.XXXXXX") || return 1
	chmod 0755 "$work"
}

# work_done PROG: removes $work, or keeps it, saying so, when
# SMTPGATE_KEEP_TMP is 1.
work_done() {
	if [ "${SMTPGATE_KEEP_TMP:-}" = 1 ]; then
		echo "$1: kept $work"
	else
		rm -rf "$work"
	fi
}

# --- Redis -------------------------------------------------------------

# redis_start DIR PORT: redis-server with deploy/redis/redis.conf on
# 127.0.0.1:PORT, its files and log (DIR/redis.log) in DIR; sets REDIS_PID
# and waits until it answers PING.
redis_start() {
	local dir=$1 port=$2 i=0
	mkdir -p "$dir"
	redis-server "$deploy/redis/redis.conf" --port "$port" \
		--bind 127.0.0.1 --dir "$dir" --daemonize no \
		>"$dir/redis.log" 2>&1 &
	REDIS_PID=$!
	until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
		if ! kill -0 "$REDIS_PID" 2>/dev/null; then
			cat "$dir/redis.log" >&2
			echo "redis-server exited" >&2
			return 1
		fi
		i=$((i + 1))
		if [ $i -gt 400 ]; then
			echo "redis-server does not answer PING" >&2
			return 1
		fi
		sleep 0.05
	done
}

# --- Postfix -----------------------------------------------------------

# postfix_start DIR PORT [PARAM=VALUE ...]: a private Postfix with
# deploy/postfix/'s main.cf, master.cf and vmailbox, in DIR (conf/,
# queue/, data/, mail/ for the Maildirs, maillog), its SMTP server on
# 127.0.0.1:PORT; waits for its greeting.  Only what cannot be the same
# outside a container differs (postconf -e): its directories, 127.0.0.1
# for listening and as the XCLIENT host, the uid mail is delivered as,
# logging to DIR/maillog, and defer_transports = smtp (nothing is sent
# out); then the PARAM=VALUE arguments, if any.  DIR must be under /tmp
# (Postfix takes a maillog_file only under maillog_file_prefixes).
# Run as root.
postfix_start() {
	local pf=$1 port=$2 out
	shift 2
	mkdir -p "$pf/conf" "$pf/queue" "$pf/data" "$pf/mail"
	cp "$deploy/postfix/main.cf" "$deploy/postfix/master.cf" \
		"$deploy/postfix/vmailbox" "$pf/conf/"
	chown postfix: "$pf/data"
	chmod 0700 "$pf/data"
	chown nobody: "$pf/mail"
	local overrides=(
		"config_directory = $pf/conf"
		"queue_directory = $pf/queue"
		"data_directory = $pf/data"
		"inet_interfaces = 127.0.0.1"
		"smtpd_authorized_xclient_hosts = 127.0.0.1"
		"virtual_mailbox_base = $pf/mail"
		"virtual_uid_maps = static:$(id -u nobody)"
		"virtual_gid_maps = static:$(id -g nobody)"
		"maillog_file = $pf/maillog"
		"maillog_file_prefixes = /tmp"
		"syslog_name = postfix-$(basename "$(dirname "$pf")")"
		# A local run never sends mail out: relayed mail stays queued.
		"defer_transports = smtp"
		"$@"
	)
	postconf -c "$pf/conf" -e "${overrides[@]}"
	postconf -c "$pf/conf" -M \
		"smtp/inet=127.0.0.1:$port inet n - n - - smtpd"
	if ! out=$(postfix -c "$pf/conf" start 2>&1); then
		echo "$out" >&2
		cat "$pf/maillog" >&2 2>/dev/null
		echo "postfix start failed" >&2
		return 1
	fi
	wait_greeting "$port" "$pf/maillog"
}

# postfix_master DIR: the pid of the master of the Postfix in DIR, or "".
postfix_master() {
	tr -d ' ' 2>/dev/null <"$1/queue/pid/master.pid" || true
}

# postfix_stop DIR: stops the Postfix in DIR and waits (15 s, then
# SIGKILL) for its master to exit: "postfix stop" returns before.
postfix_stop() {
	local master i=0
	master=$(postfix_master "$1")
	postfix -c "$1/conf" stop >/dev/null 2>&1 || true
	while [ -n "$master" ] && kill -0 "$master" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 300 ]; then
			kill -KILL "$master" 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
}

# --- smtpgate ----------------------------------------------------------

# gate_conf_load: reads deploy/smtpgate/smtpgate.yaml into $conf, for
# gate_conf_replace.
gate_conf_load() {
	conf=$(cat "$deploy/smtpgate/smtpgate.yaml")
}

# gate_conf_replace FROM TO: replaces FROM in $conf, where it must be
# exactly once.
gate_conf_replace() {
	local n
	n=$(grep -cF -- "$1" <<<"$conf" || true)
	if [ "$n" -ne 1 ]; then
		echo "deploy/smtpgate/smtpgate.yaml holds '$1' $n times, not once" >&2
		return 1
	fi
	conf=${conf/"$1"/"$2"}
}

# gate_conf_local SMTP SUBMISSION METRICS POSTFIX REDIS: $conf, the config
# the compose setup mounts, with its listeners (25, 587, metrics), its
# backend and its Redis moved to those ports on 127.0.0.1.
gate_conf_local() {
	gate_conf_load
	gate_conf_replace "0.0.0.0:25 " "127.0.0.1:$1 " &&
	    gate_conf_replace "0.0.0.0:587 " "127.0.0.1:$2 " &&
	    gate_conf_replace "0.0.0.0:9425 " "127.0.0.1:$3 " &&
	    gate_conf_replace "172.30.25.25:25]" "127.0.0.1:$4]" &&
	    gate_conf_replace "172.30.25.63:6379 " "127.0.0.1:$5 "
}

# gate_dir DIR POLICY [PASSWORD]: DIR/ as smtpgate's configuration
# directory, for a config made from $conf: tls/ with a fresh self-signed
# certificate, policy/ a link to the directory POLICY, users from
# deploy/smtpgate/users (plus the account "local" with PASSWORD when given).
gate_dir() {
	local dir=$1 policy=$2 password=${3:-}
	mkdir -p "$dir"
	ln -s "$policy" "$dir/policy"
	"$deploy/smtpgate/gen-cert.sh" "$dir/tls" gate.example.test >/dev/null
	(umask 077
	 { cat "$deploy/smtpgate/users"
	   [ -z "$password" ] ||
		printf 'local:%s\n' "$(openssl passwd -6 "$password")"
	 } >"$dir/users")
}

# proc_cpu_ticks PID: utime + stime of PID in clock ticks ("" when gone).
proc_cpu_ticks() {
	sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}

# proc_status_kb PID FIELD: FIELD (VmRSS, VmHWM, ...) of /proc/PID/status
# in kB ("" when gone).
proc_status_kb() {
	awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

# mb KB: KB in MB, one decimal.
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- Background processes of the measurement scripts --------------------
#
# The script keeps the pid of every background process it starts in the
# array pids (pids+=("$!")) and counts errors in failures, and defines
# note MESSAGE, which prints MESSAGE with the script's name on stderr.

# forget_pid PID: drops PID from pids (it was stopped or waited for).
forget_pid() {
	local p keep=()
	for p in "${pids[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	pids=("${keep[@]}")
}

# stop_pid PID NAME [TIMEOUT]: SIGTERM to PID, then waits for it, SIGKILL
# after TIMEOUT [15] seconds; forgets it.  Sets stop_rc to its exit status;
# returns 1 (with a note) when it had to be killed.
stop_pid() {
	local pid=$1 name=$2 t=${3:-15} wd hung=0
	kill -TERM "$pid" 2>/dev/null
	( sleep "$t"; kill -KILL "$pid" 2>/dev/null ) &
	wd=$!
	wait "$pid" 2>/dev/null
	# shellcheck disable=SC2034  # for the caller
	stop_rc=$?
	if kill -0 "$wd" 2>/dev/null; then
		kill "$wd" 2>/dev/null
		wait "$wd" 2>/dev/null
	else
		hung=1
		note "ERROR: $name (pid $pid) did not exit within ${t}s of SIGTERM; killed"
	fi
	forget_pid "$pid"
	return "$hung"
}

# sink_start PORT BACKLOG [OPTION...]: $SMTP_SINK (Postfix's smtp-sink)
# with OPTIONs on 127.0.0.1:PORT, as nobody when run as root, its output
# in $work/sink.out and sink.err; sets SINK_PID, adds it to pids and waits
# until it accepts.
sink_start() {
	local port=$1 backlog=$2 user=()
	shift 2
	[ "$(id -u)" = 0 ] && user=(-u nobody)
	"$SMTP_SINK" "${user[@]}" "$@" "127.0.0.1:$port" "$backlog" \
	    >"$work/sink.out" 2>"$work/sink.err" &
	SINK_PID=$!
	pids+=("$SINK_PID")
	wait_port "$port" "$SINK_PID"
}

# sink_msgs: the messages the sink has received so far (its last -c
# counter line).
sink_msgs() {
	tr '\r' '\n' <"$work/sink.out" | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'
}

# cleanup_pids WHAT: the EXIT trap: SIGTERM to every process left in pids,
# SIGKILL 0.3 s later, waits for them; then removes the work directory
# $work, unless KEEP is 1 or there were failures: then it notes that WHAT
# (e.g. "logs and configs") are kept there.
cleanup_pids() {
	local p
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	sleep 0.3
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	# shellcheck disable=SC2153,SC2154  # the caller's
	if [ "$KEEP" = 1 ] || [ "$failures" -gt 0 ]; then
		note "$1 kept in $work"
	else
		rm -rf "$work"
	fi
}
