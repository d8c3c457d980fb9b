#!/bin/sh
# Faults and hostile files around checkpoints, as an unlucky user meets them:
# - every write (and every fsync, and the rename) of one checkpoint failed in
#   turn with ENOSPC or EIO (build/tests/faultinj.so, an LD_PRELOAD shim): the
#   run exits non-zero naming the file, the previous checkpoint stays the
#   newest and intact, no temp file is left, and a resume ends bit-identical
#   to an uninterrupted run; a disk that stays full does the same, no crash;
# - a symlink planted at the temp name is never written through;
# - a second run in a locked workdir stops at once naming the holder's PID;
# - a NaN reaching Adam's moments stops the run before a checkpoint holds it;
# - loading refuses NaN, a checksum mismatch, a step that is negative or
#   disagrees with the file name, and a changed recipe (train.resume =
#   latest_valid falls back past such files).
# Usage: sh tests/test_faults.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
DIR=$(dirname "$BIN")/tests
SHIM=$(cd "$DIR" && pwd)/faultinj.so
EDIT=$DIR/h5edit
# Hundreds of tiny runs: one thread each (idle OpenMP threads spin between steps).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

tiny_ini "$T/c.ini" experts=3 steps=4 ckpt_every=2   # tests/lib.sh
run() { "$BIN" train "$T/c.ini" "$@"; }
same() {  # same A B: params and Adam state bit-identical
    h5diff -d 0 "$1" "$2" /params >/dev/null 2>&1 && h5diff -d 0 "$1" "$2" /opt >/dev/null 2>&1
}

run train.workdir="$T/straight" 2>"$T/err" || { bad "straight run"; cat "$T/err"; }
cp "$T/straight/ckpt-00000002.h5" "$T/ckpt2.ref"

if ldd "$BIN" 2>/dev/null | grep -q libasan; then
    # an ASan build must be first in the library list; the shim cannot be preloaded
    skip "fault injection (sanitizer build)"
    nw=0; nf=0
else
    # How many writes / fsyncs ckpt-4 takes (the shim counts only that file).
    SM_FAULT_MATCH=ckpt-00000004.h5.tmp SM_FAULT_COUNT="$T/counts" LD_PRELOAD="$SHIM" \
        run train.workdir="$T/count" 2>/dev/null
    nw=$(awk '{print $2}' "$T/counts"); nf=$(awk '{print $4}' "$T/counts")
    [ "$nw" -gt 50 ] && [ "$nf" -ge 1 ] && ok || bad "counting writes: $nw writes, $nf fsyncs in ckpt-4"
fi

# A metrics line that cannot be written (a full disk: metrics.jsonl is
# /dev/full; stdio's writes are libc-internal, out of the shim's reach) stops
# the run at that step naming the file; the checkpoint before it stays, and
# with the file writable again the run resumes to the same end. The first line
# is logged at step 3, after ckpt-2.
mkdir -p "$T/mfull" && ln -s /dev/full "$T/mfull/metrics.jsonl"
run train.workdir="$T/mfull" train.log_every=3 >/dev/null 2>"$T/err"
rc=$?
[ "$rc" != 0 ] && [ "$rc" -lt 128 ] && grep -q "writing a line to '.*mfull/metrics.jsonl' failed: No space left" "$T/err" &&
    ok || { bad "metrics.jsonl write failure: exit $rc"; cat "$T/err"; }
rm -f "$T/mfull/metrics.jsonl"
[ ! -e "$T/mfull/ckpt-00000004.h5" ] && [ -e "$T/mfull/ckpt-00000002.h5" ] && run train.workdir="$T/mfull" train.log_every=3 >/dev/null 2>"$T/err" &&
    same "$T/mfull/ckpt-00000004.h5" "$T/straight/ckpt-00000004.h5" &&
    ok || { bad "metrics.jsonl write failure: not stopped at once, or no resume"; ls "$T/mfull"; cat "$T/err"; }

# inject OP N ERRNO [STICKY]: fail the Nth OP of the checkpoint files; check
# exit code, message, the previous checkpoint, no temp file, and the resume.
inject() {
    op=$1; n=$2; e=$3; sticky=${4:-0}
    w="$T/f-$op-$n-$e-$sticky"
    SM_FAULT_MATCH=ckpt-00000004.h5.tmp SM_FAULT_OP=$op SM_FAULT_N=$n SM_FAULT_ERRNO=$e \
        SM_FAULT_STICKY=$sticky LD_PRELOAD="$SHIM" run train.workdir="$w" >/dev/null 2>"$T/err"
    rc=$?
    what="$op #$n $e"
    [ "$rc" != 0 ] && [ "$rc" -lt 128 ] || { bad "$what: exit $rc"; cat "$T/err"; return; }
    grep -q "error: .*ckpt-00000004.h5" "$T/err" || { bad "$what: message lacks the file"; cat "$T/err"; return; }
    [ ! -e "$w/ckpt-00000004.h5" ] && [ -z "$(ls "$w" | grep tmp)" ] || { bad "$what: ckpt-4 or a temp file left: $(ls "$w")"; return; }
    same "$w/ckpt-00000002.h5" "$T/ckpt2.ref" || { bad "$what: ckpt-2 damaged"; return; }
    run train.workdir="$w" >/dev/null 2>"$T/err" || { bad "$what: resume failed"; cat "$T/err"; return; }
    grep -q "resuming from .*ckpt-00000002.h5" "$T/err" || { bad "$what: did not resume from ckpt-2"; return; }
    same "$w/ckpt-00000004.h5" "$T/straight/ckpt-00000004.h5" || { bad "$what: resume not bit-identical"; return; }
    ok
    rm -rf "$w"
}

# Every write of one checkpoint (ENOSPC; every 7th also as EIO), every fsync,
# the rename, and a disk that stays full from the middle of the write on.
n=1
while [ "$n" -le "$nw" ]; do
    inject write $n ENOSPC
    [ $((n % 7)) = 0 ] && inject write $n EIO
    n=$((n + 1))
done
n=1
while [ "$n" -le "$nf" ]; do inject fsync $n EIO; n=$((n + 1)); done
if [ "$nw" -gt 0 ]; then
    inject rename 1 EIO
    inject write $((nw / 2)) ENOSPC 1
    inject write 1 ENOSPC 1
fi
echo "faults: $nw writes and $nf fsyncs of one checkpoint each failed in turn"

# A symlink planted at the temp name: its target is untouched, the checkpoint is a plain file.
mkdir -p "$T/sym"
echo precious >"$T/target"
ln -s "$T/target" "$T/sym/ckpt-00000004.h5.tmp"
run train.workdir="$T/sym" >/dev/null 2>"$T/err" || { bad "symlink run"; cat "$T/err"; }
[ "$(cat "$T/target")" = precious ] && ok || bad "the symlink's target was overwritten"
[ -f "$T/sym/ckpt-00000004.h5" ] && [ ! -L "$T/sym/ckpt-00000004.h5" ] && ok || bad "ckpt-4 is not a plain file"

# The workdir lock: a second run stops at once, naming the first one's PID.
"$BIN" train "$T/c.ini" train.workdir="$T/lock" train.steps=100000000 train.ckpt_every=0 \
    train.log_every=1000000 >/dev/null 2>"$T/err1" &
first=$!
i=0
while [ ! -s "$T/lock/.lock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if run train.workdir="$T/lock" >/dev/null 2>"$T/err"; then
    bad "a second run in a locked workdir started"
else
    grep -q "in use by another run (PID $first holds" "$T/err" && ok || { bad "lock message"; cat "$T/err"; }
fi
kill "$first" 2>/dev/null; wait "$first" 2>/dev/null
grep -q "signal 15: checkpoint" "$T/err1" && ok || { bad "the locked run did not stop cleanly"; cat "$T/err1"; }
run train.workdir="$T/lock" train.resume=none train.steps=1 schedule.warmup_steps=0 >/dev/null 2>"$T/err" && ok || { bad "the lock was not released"; cat "$T/err"; }

# A NaN in Adam's v after step 4: ckpt-4 is refused, naming the step and tensor.
run train.workdir="$T/nan" debug.poison_at_step=4 >/dev/null 2>"$T/err"
rc=$?
[ "$rc" = 1 ] && grep -q "step 4: /opt/v/embedding/kernel holds a non-finite value" "$T/err" && ok || { bad "NaN moments: exit $rc"; cat "$T/err"; }
[ ! -e "$T/nan/ckpt-00000004.h5" ] && [ -f "$T/nan/ckpt-00000002.h5" ] && ok || bad "NaN moments: ckpt-4 written or ckpt-2 lost"

# Damaged newest checkpoints: refused with file and dataset named; latest_valid falls back.
damaged() {  # damaged NAME PATTERN EDIT-ARGS...
    name=$1; pat=$2; shift 2
    w="$T/dmg-$name"
    mkdir -p "$w"
    cp "$T/straight/ckpt-00000002.h5" "$T/straight/ckpt-00000004.h5" "$T/straight/config.ini" "$w/"
    "$EDIT" "$w/ckpt-00000004.h5" "$@" || { bad "$name: h5edit"; return; }
    if run train.workdir="$w" train.steps=6 >/dev/null 2>"$T/err"; then bad "$name: resumed"; return; fi
    grep -q -- "$pat" "$T/err" && ok || { bad "$name: message lacks '$pat'"; cat "$T/err"; }
    run train.workdir="$w" train.steps=6 train.resume=latest_valid >/dev/null 2>"$T/err" &&
        grep -q "resuming from .*ckpt-00000002.h5" "$T/err" && ok || { bad "$name: latest_valid did not fall back"; cat "$T/err"; }
}
damaged nan "ckpt-00000004.h5': dataset /params/head/bias holds non-finite values" nan /params/head/bias
damaged flip "dataset /opt/m/embedding/kernel does not match its checksum" flip /opt/m/embedding/kernel
damaged negstep "has step -5 and world_size" step -5
damaged bigstep "holds step 99999, not the step 4 of its name" step 99999

# A resume with another recipe stops, listing what changed; allowed on request.
w="$T/recipe"
mkdir -p "$w"
cp "$T/straight/ckpt-00000004.h5" "$w/"
if run train.workdir="$w" train.steps=6 optim.lr=0.01 >/dev/null 2>"$T/err"; then
    bad "resumed with another lr"
else
    grep -q "optim.lr: 0.001 -> 0.01" "$T/err" && ok || { bad "recipe change message"; cat "$T/err"; }
fi
run train.workdir="$w" train.steps=6 optim.lr=0.01 train.allow_config_change=true >/dev/null 2>"$T/err" && ok || { bad "allow_config_change"; cat "$T/err"; }
run train.workdir="$w" train.steps=8 optim.lr=0.01 train.allow_config_change=true eval.every=0 >/dev/null 2>"$T/err" &&
    grep -q "note: resuming .* with changed keys" "$T/err" && ok || { bad "a steps change is noted"; cat "$T/err"; }

finish "faults"
