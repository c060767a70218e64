#!/bin/sh
# Installs what smtpgate needs to build and to run its tests on Debian 12,
# skipping what is already there.  Run as root.
set -eu

pkgs="build-essential cmake pkg-config python3 libuv1-dev libssl-dev
      libpcre2-dev libhiredis-dev libyaml-dev libcrypt-dev redis-server postfix
      swaks libnet-ssleay-perl haproxy libmicrohttpd-dev"
# tests/fuzz: clang and libFuzzer (-fsanitize=fuzzer).
pkgs="$pkgs clang libclang-rt-14-dev"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: missing:$missing; run me as root" >&2
	exit 1
fi
# Postfix asks no questions with this answer preset.
echo "postfix postfix/main_mailer_type select No configuration" |
	debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
# The packaged services are not used: tests start private instances.
for svc in postfix redis-server haproxy; do
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
	fi
done
