#!/bin/sh
# The flake hunt: run the suite (or the tests a ctest regex picks) many
# times in one or more build directories, optionally with every core busy,
# and print how often each test failed. The logs of failing runs are kept.
#
#   scripts/stress-tests.sh [-n RUNS] [-R REGEX] [-E REGEX] [-b BUILD]... [-j JOBS]
#                           [--hog] [--logs DIR] [--stop-on-fail]
#
#   -n RUNS        runs per build directory (default 10)
#   -R REGEX       only the tests whose name matches (ctest -R); default all.
#                  C unit tests are named test_<module>, Python cases by
#                  their pytest node id (e2e/test_e2e_curve.py::test_curve),
#                  so a file's name picks all its cases
#   -E REGEX       leave out the tests whose name matches (ctest -E)
#   -b BUILD       a configured and built build directory (repeatable;
#                  default build); for the sanitizer build the ASan/UBSan
#                  options of scripts/test.sh are set
#   -j JOBS        tests run in parallel within a run (ctest -j; default 1)
#   --hog          a busy loop on every core (nproc), at the tests' own
#                  priority, for the whole hunt: the tests then compete
#                  for the CPU as on a loaded CI machine
#   --logs DIR     where the logs of failing runs go (default
#                  stress-logs/<date> under the first build directory)
#   --stop-on-fail stop at the first failing run
#
# Exit status 0 when every run of every test passed. Examples:
#   scripts/stress-tests.sh -n 50 -R 'test_client_curve|test_e2e_curve'
#   scripts/stress-tests.sh -n 3 -b build -b build-asan --hog -j2
set -eu

RUNS=10
REGEX=
EXCLUDE=
BUILDS=
JOBS=1
HOG=0
LOGS=
STOP=0
while [ $# -gt 0 ]; do
    case "$1" in
    -n) RUNS=$2; shift 2 ;;
    -R) REGEX=$2; shift 2 ;;
    -E) EXCLUDE=$2; shift 2 ;;
    -b) BUILDS="$BUILDS $2"; shift 2 ;;
    -j) JOBS=$2; shift 2 ;;
    -j[0-9]*) JOBS=${1#-j}; shift ;;
    -n[0-9]*) RUNS=${1#-n}; shift ;;
    --hog) HOG=1; shift ;;
    --logs) LOGS=$2; shift 2 ;;
    --stop-on-fail) STOP=1; shift ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "stress-tests.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$BUILDS" ] || BUILDS=build
case "$RUNS" in ''|*[!0-9]*) echo "stress-tests.sh: -n needs a number" >&2; exit 2 ;; esac
for b in $BUILDS; do
    [ -f "$b/CTestTestfile.cmake" ] || {
        echo "stress-tests.sh: $b is not a configured build directory" >&2
        exit 2
    }
done
first=${BUILDS# }
first=${first%% *}
[ -n "$LOGS" ] || LOGS="$first/stress-logs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
TALLY="$LOGS/tally"     # lines: build test status
: >"$TALLY"

HOGS=
stop_hogs() {
    for p in $HOGS; do kill "$p" 2>/dev/null || true; done
    for p in $HOGS; do wait "$p" 2>/dev/null || true; done
    HOGS=
}
trap 'stop_hogs' EXIT
trap 'stop_hogs; exit 130' INT TERM
if [ "$HOG" = 1 ]; then
    for _ in $(seq "$(nproc)"); do
        sh -c 'while :; do :; done' &
        HOGS="$HOGS $!"
    done
    echo "== hog: a busy loop on each of $(nproc) cores (pids$HOGS)"
fi

failed_runs=0
for b in $BUILDS; do
    sanitized=0
    grep -Eq '^XPL_SANITIZE:BOOL=(ON|TRUE|1)$' "$b/CMakeCache.txt" && sanitized=1
    i=1
    while [ "$i" -le "$RUNS" ]; do
        log="$LOGS/$(basename "$b")-run$i.log"
        set -- ctest --output-on-failure -j"$JOBS" --timeout 900
        [ -z "$REGEX" ] || set -- "$@" -R "$REGEX"
        [ -z "$EXCLUDE" ] || set -- "$@" -E "$EXCLUDE"
        start=$(date +%s)
        rc=0
        if [ "$sanitized" = 1 ]; then
            (cd "$b" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
                UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "$@") >"$log" 2>&1 || rc=$?
        else
            (cd "$b" && "$@") >"$log" 2>&1 || rc=$?
        fi
        # "  3/35 Test  #4: test_client_curve ....   Passed   9.95 sec"
        sed -n 's/^ *[0-9]*\/[0-9]* *Test *#[0-9]*: \([^ ]*\) \.*[ *]*\([A-Za-z][A-Za-z ]*[a-z]\).*/\1 \2/p' "$log" |
            while read -r name status; do
                echo "$(basename "$b") $name $status"
            done >>"$TALLY"
        n=$(grep -c 'Test *#' "$log" || true)
        bad=$(grep 'Test *#' "$log" | grep -vc ' Passed ' || true)
        if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ] || [ "$n" -eq 0 ]; then
            failed_runs=$((failed_runs + 1))
            echo "== $b run $i/$RUNS: FAILED ($bad of $n tests, $(($(date +%s) - start)) s), log kept: $log"
            grep 'Test *#' "$log" | grep -v ' Passed ' | sed 's/^/   /' || true
            [ "$STOP" = 0 ] || break
        else
            echo "== $b run $i/$RUNS: $n tests passed ($(($(date +%s) - start)) s)"
            rm -f "$log"
        fi
        i=$((i + 1))
    done
    [ "$STOP" = 0 ] || [ "$failed_runs" -eq 0 ] || break
done
stop_hogs

echo
echo "== failures per test ($RUNS runs per build; hog: $([ "$HOG" = 1 ] && echo on || echo off))"
awk '{ key = $1 " " $2; runs[key]++; if ($3 != "Passed") { fails[key]++; how[key] = how[key] " " $3 } }
     END {
         printf "%-12s %-64s %5s %5s  %s\n", "build", "test", "runs", "fails", "how"
         for (k in runs) {
             split(k, p, " ")
             printf "%-12s %-64s %5d %5d %s\n", p[1], p[2], runs[k], fails[k], how[k]
         }
     }' "$TALLY" | { read -r head; echo "$head"; sort -k4,4nr -k1,1 -k2,2; }
echo
if [ "$failed_runs" -eq 0 ]; then
    echo "== every run passed"
    rm -rf "$LOGS"
else
    echo "== $failed_runs failing run(s); logs in $LOGS"
    exit 1
fi
