#!/bin/sh
# Builds smtpgate and runs it with deploy/example.yaml in front of a local
# backend (Postfix's smtp-sink on 127.0.0.1:10025, the example's first
# server), sends one message through it with swaks and prints the dialogue.
# Then the gateway keeps serving on 127.0.0.1:2525 until Ctrl-C; with
# --once it stops right after the message.
set -eu
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
build/smtpgate -t -c deploy/example.yaml

tmp=$(mktemp -d)
pids=""
cleanup() {
	# shellcheck disable=SC2086
	[ -n "$pids" ] && kill $pids 2>/dev/null
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

user=""
[ "$(id -u)" -eq 0 ] && user="-u nobody"
# shellcheck disable=SC2086
/usr/sbin/smtp-sink $user 127.0.0.1:10025 100 >/dev/null &
pids="$!"
build/smtpgate -c deploy/example.yaml 2>"$tmp/smtpgate.log" &
pids="$pids $!"

# Wait for the greeting, not for a fixed time.
i=0
until swaks --server 127.0.0.1:2525 --quit-after CONNECT >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -gt 100 ] && { cat "$tmp/smtpgate.log"; exit 1; }
	sleep 0.1
done

echo "== one message through smtpgate (127.0.0.1:2525 -> 127.0.0.1:10025)"
swaks --server 127.0.0.1:2525 --from sender@example.test \
	--to rcpt@example.test --header "Subject: smtpgate demo" \
	--body "Hello through smtpgate."
echo "== smtpgate's log"
cat "$tmp/smtpgate.log"
[ $once -eq 1 ] && exit 0
echo "== smtpgate is serving on 127.0.0.1:2525; Ctrl-C stops it"
tail -f "$tmp/smtpgate.log"
