#!/bin/sh
# Builds the libFuzzer targets of tests/fuzz with clang into build-fuzz
# and runs each for FUZZ_SECONDS seconds (default 60), one after the other,
# starting from its seeds in tests/fuzz/corpus/<name>/ with its dictionary
# tests/fuzz/<name>.dict when there is one.  New inputs go to a scratch
# corpus under build-fuzz, never into the seeds.  Prints the executions of
# each target; fails when any target crashes, leaks, times out or breaks a
# contract (the input is then saved under build-fuzz/crashes/<name>/).
#
#   FUZZ_SECONDS=600 tests/fuzz/run.sh              # every target
#   FUZZ_SECONDS=600 tests/fuzz/run.sh dscan reply  # some of them
#
# Reproduce a crash with: build-fuzz/tests/fuzz/fuzz_<name> FILE
set -eu
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}
jobs=$(nproc 2>/dev/null || echo 2)
out=build-fuzz

CC=clang cmake -S . -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DSMTPGATE_FUZZ=ON >/dev/null
cmake --build "$out" -j "$jobs" --target fuzz >/dev/null

names=$*
if [ -z "$names" ]; then
	for f in tests/fuzz/fuzz_*.c; do
		f=${f##*/fuzz_}
		names="$names ${f%.c}"
	done
fi

# The loaders' targets write their input to a file for each run: in
# memory when /dev/shm is there, it costs a tenth of what a disk does.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
	TMPDIR=$(mktemp -d /dev/shm/smtpgate-fuzz.XXXXXX)
else
	TMPDIR=$(mktemp -d "$PWD/$out/tmp.XXXXXX")
fi
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

failed=""
for name in $names; do
	bin=$out/tests/fuzz/fuzz_$name
	if [ ! -x "$bin" ]; then
		echo "fuzz: no target $name" >&2
		exit 2
	fi
	work=$out/corpus/$name
	crashes=$out/crashes/$name
	log=$out/logs/$name.log
	mkdir -p "$work" "$crashes" "$out/logs"
	dict=""
	[ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
	rc=0
	# shellcheck disable=SC2086
	ASAN_OPTIONS=detect_leaks=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		"$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$crashes/" $dict \
		"$work" "tests/fuzz/corpus/$name" </dev/null >"$log" 2>&1 ||
		rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" |
		tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
	if [ "$rc" -eq 0 ]; then
		printf 'fuzz %-11s ok     %10s execs in %ss (%s)\n' "$name" \
			"${execs:-?}" "$secs" "${cov:-cov: ?}"
	else
		printf 'fuzz %-11s FAILED %10s execs, exit %s, log %s\n' \
			"$name" "${execs:-?}" "$rc" "$log"
		grep -E 'ERROR|SUMMARY|contract broken|Test unit written' \
			"$log" | head -n 8 >&2 || true
		failed="$failed $name"
	fi
done
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed" >&2
	exit 1
fi
