#!/bin/sh
# Replays the fuzz corpus and every past crash input (tests/fuzz/corpus/<t>/,
# tests/fuzz/crashes/<t>/) through each fuzz harness, linked without libFuzzer
# (build/tests/replay_<t>, built by make test). One check per target: all its
# inputs ran without a crash, a failed harness property (the config round
# trip, shard invariants, ...) or, in a DEBUG=1 build, a sanitizer report.
# Usage: sh tests/test_fuzz.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
D=$(dirname "$BIN")/tests
# In a DEBUG=1 build: libhdf5's own allocations kept on malformed files are
# not ours (tests/fuzz/lsan.supp says which); everything else is fatal.
export LSAN_OPTIONS="suppressions=$(pwd)/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
for t in config shards image ckpt; do
    if [ ! -x "$D/replay_$t" ]; then echo "FAIL: $D/replay_$t not built (make test builds it)"; fail=$((fail + 1)); continue; fi
    if "$D/replay_$t" "$t" "tests/fuzz/corpus/$t" "tests/fuzz/crashes/$t" 2>"$D/replay_$t.err"; then
        pass=$((pass + 1))
    else
        echo "FAIL: replay $t (rerun with REPLAY_VERBOSE=1 to see the input):"; tail -20 "$D/replay_$t.err"
        fail=$((fail + 1))
    fi
done
finish "fuzz replay"
