#!/bin/sh
# Every test, on a fresh Debian 12 machine: install what is missing, then
# build and run the whole suite twice: a normal build (-Werror) and an
# AddressSanitizer + UndefinedBehaviorSanitizer build. The fuzzers' seed
# corpora replay as ordinary tests in both.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh test
JOBS=$(nproc)
START=$(date +%s)
elapsed() { echo "$(($(date +%s) - START)) s"; }

run_suite() {
    dir=$1
    shift
    echo "== $dir: configure and build ($(elapsed) so far)"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXPL_WERROR=ON "$@" >/dev/null
    cmake --build "$dir" -j"$JOBS"
    echo "== $dir: tests ($(elapsed) so far)"
    (cd "$dir" && ctest --output-on-failure -j"$JOBS" --timeout 900)
}

# The quick start's build (scripts/demo.sh): Release at -O3 warns where
# -O2 does not, and -Werror makes that a broken quick start.
echo "== build-release: the quick start's build ($(elapsed) so far)"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DXPL_WERROR=ON -DXPL_TESTS=OFF \
    -DXPL_BENCH=OFF >/dev/null
cmake --build build-release -j"$JOBS"

run_suite build-test
# Sanitizer reports end the process with exit code 1 (abort_on_error=0):
# the daemon catches SIGABRT while it closes its CURVE sockets (a libzmq
# race, daemon/server.c), and that must never swallow a report.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_suite build-asan -DXPL_SANITIZE=ON -DXPL_BENCH=OFF
echo "== all tests passed (normal and ASan+UBSan builds) in $(elapsed)"
