#!/bin/sh
# Builds smtpgate twice (optimised, then with AddressSanitizer and
# UndefinedBehaviorSanitizer) and runs the whole test suite with ctest on
# each build.  The last lines are ctest's summary of the sanitizer run.
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSMTPGATE_SANITIZE=ON \
	>/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ctest --test-dir build-asan --output-on-failure -j "$jobs"

# The libFuzzer targets of tests/fuzz (clang), 20 seconds each by default:
# about 3 minutes.
FUZZ_SECONDS=${FUZZ_SECONDS:-20} tests/fuzz/run.sh
