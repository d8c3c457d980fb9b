#!/bin/sh
# Runs every test executable and shell test, then prints one closing line
# "tests: N passed, M failed, K skipped" summed over all of them (a shell
# test may end "x: N passed, M failed, K skipped"). Exit 1 on any failure.
# Usage: scripts/run-tests.sh BIN TEST_EXE...
set -u
BIN=$1; shift
passed=0; failed=0; skipped=0; status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One BLAS thread per process keeps runs repeatable; OpenMP uses both cores.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=2 CK_DEFAULT_TIMEOUT=600
for t in "$@"; do
    echo "== $t"
    if ! "$t" >"$log" 2>&1; then status=1; fi
    cat "$log"
    # Check's summary: "100%: Checks: 12, Failures: 0, Errors: 0"
    line=$(grep -E 'Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+' "$log" | tail -1)
    if [ -z "$line" ]; then failed=$((failed + 1)); status=1; echo "no summary from $t"; continue; fi
    n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
    f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
    e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
    passed=$((passed + n - f - e)); failed=$((failed + f + e))
done
for s in tests/test_*.sh; do
    echo "== $s"
    # Sanitizer builds (DEBUG=1): Open MPI keeps allocations (its dlopen'ed
    # components among them) at exit, which LeakSanitizer would report in
    # every rank, so leak checking is off under mpirun; memory errors and
    # undefined behaviour stay fatal there too.
    case $s in
    */test_mpi.sh) opts="ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" ;;
    *) opts="ASAN_OPTIONS=${ASAN_OPTIONS:-}" ;;
    esac
    if ! env "$opts" sh "$s" "$BIN" >"$log" 2>&1; then status=1; fi
    cat "$log"
    line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [ -z "$line" ]; then failed=$((failed + 1)); status=1; continue; fi
    p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/; s/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    k=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + ${k:-0}))
done
[ "$failed" -gt 0 ] && status=1
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
