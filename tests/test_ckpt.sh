#!/bin/sh
# Checkpoints as a user meets them: a crash between writing and renaming a
# checkpoint leaves the previous one usable and the run resumes from it to
# the same result as an uninterrupted run; SIGTERM checkpoints and exits 0;
# a corrupt newest checkpoint stops resume unless train.resume=latest_valid;
# the file reads with the documented names in h5ls; inspect prints them.
# Usage: sh tests/test_ckpt.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}

tiny_ini "$T/c.ini" experts=3 steps=12 ckpt_every=4   # tests/lib.sh

"$BIN" train "$T/c.ini" train.workdir="$T/straight" 2>"$T/err" || { bad "straight run"; cat "$T/err"; }

# crash (exit 3) after ckpt-8 is written but before it is renamed
"$BIN" train "$T/c.ini" train.workdir="$T/crash" debug.crash_before_rename=8 2>"$T/err"
rc=$?
[ "$rc" = 3 ] && ok || bad "crash hook: exit $rc"
[ -f "$T/crash/ckpt-00000004.h5" ] && [ ! -f "$T/crash/ckpt-00000008.h5" ] && ok || bad "after the crash: ckpt-4 present, ckpt-8 absent"
"$BIN" inspect "$T/crash/ckpt-00000004.h5" >"$T/insp" 2>&1 && grep -q "^step: 4$" "$T/insp" && ok || bad "ckpt-4 usable after the crash"
"$BIN" train "$T/c.ini" train.workdir="$T/crash" 2>"$T/err" && grep -q "resuming from .*ckpt-00000004.h5" "$T/err" && ok || { bad "resume after the crash"; cat "$T/err"; }
if command -v h5diff >/dev/null; then
    h5diff -d 0 "$T/straight/ckpt-00000012.h5" "$T/crash/ckpt-00000012.h5" /params >/dev/null && ok || bad "resumed params differ from the uninterrupted run"
    h5diff -d 0 "$T/straight/ckpt-00000012.h5" "$T/crash/ckpt-00000012.h5" /opt >/dev/null && ok || bad "resumed Adam state differs"
fi

# documented names and shapes, read by HDF5's own tools
if command -v h5ls >/dev/null; then
    h5ls -r "$T/straight/ckpt-00000012.h5" >"$T/ls"
    for want in "/params/Encoder/encoderblock_1/Moe/Router/mu Dataset {16, 3, 2}" \
                "/params/Encoder/encoderblock_1/Moe/Mlp/Dense_0/kernel Dataset {3, 16, 32}" \
                "/params/Encoder/encoderblock_0/SelfAttention/query/kernel Dataset {16, 2, 8}" \
                "/params/head/kernel Dataset {16, 4}" "/opt/m/embedding/kernel Dataset {4, 4, 1, 16}" \
                "/config Dataset {SCALAR}" "/state/loader_taken Dataset {1}"; do
        grep -q "^$(echo "$want" | sed 's/ Dataset/ *Dataset/')" "$T/ls" && ok || bad "h5ls lacks: $want"
    done
fi
"$BIN" inspect "$T/straight/ckpt-00000012.h5" >"$T/insp" 2>&1
grep -q "format: softmoe version 1" "$T/insp" && grep -q "Moe/Router/scale *() *1" "$T/insp" && grep -q "^tensors: " "$T/insp" && ok || { bad "inspect"; cat "$T/insp"; }

# SIGTERM: finish the step, checkpoint, exit 0; re-running resumes
"$BIN" train "$T/c.ini" train.workdir="$T/term" train.steps=100000 train.ckpt_every=0 2>"$T/err" &
pid=$!
# wait (at most 20 s) until it is training, then ask it to stop
i=0
while [ $i -lt 200 ] && ! grep -q '"loss"' "$T/term/metrics.jsonl" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -TERM "$pid"
wait "$pid"
rc=$?
[ "$rc" = 0 ] && ls "$T/term"/ckpt-*.h5 >/dev/null 2>&1 && ok || bad "SIGTERM: exit $rc, checkpoint $(ls "$T/term")"

# a corrupt newest checkpoint: resume stops naming it and changes nothing ...
cp "$T/straight/ckpt-00000012.h5" "$T/keep.h5"
head -c 3000 "$T/keep.h5" >"$T/straight/ckpt-00000012.h5"
before=$(ls "$T/straight" | tr '\n' ' ')
if "$BIN" train "$T/c.ini" train.workdir="$T/straight" train.steps=16 2>"$T/err"; then bad "corrupt checkpoint: exited 0"
else grep -q "ckpt-00000012.h5" "$T/err" && grep -q "latest_valid" "$T/err" && ok || { bad "corrupt checkpoint message"; cat "$T/err"; }; fi
[ "$(ls "$T/straight" | tr '\n' ' ')" = "$before" ] && ok || bad "files changed after a failed resume"
# ... unless asked to fall back to the newest checkpoint that loads
"$BIN" train "$T/c.ini" train.workdir="$T/straight" train.steps=16 train.resume=latest_valid 2>"$T/err" \
    && grep -q "resuming from .*ckpt-00000008.h5" "$T/err" && ok || { bad "latest_valid fallback"; cat "$T/err"; }

# train.init: parameters from another run's checkpoint, step count from 0
"$BIN" train "$T/c.ini" train.workdir="$T/init" train.steps=4 train.init="$T/keep.h5" 2>"$T/err" \
    && grep -q "initialised from" "$T/err" && ok || { bad "train.init"; cat "$T/err"; }

# fine-tuning: more classes re-initialise the head, a larger image resizes
# the learned position embedding (2x2 -> 3x3 patches); a width change fails
"$BIN" train "$T/c.ini" train.workdir="$T/ft" train.steps=2 train.init="$T/keep.h5" \
    model.classes=6 model.image_size=12 2>"$T/err" \
    && grep -q "head/kernel has 4 classes, the config 6: head re-initialised" "$T/err" \
    && grep -q "position embedding resized from 2x2 to 3x3" "$T/err" && ok || { bad "fine-tune init"; cat "$T/err"; }
"$BIN" train "$T/c.ini" train.workdir="$T/ft2" train.steps=2 train.init="$T/keep.h5" \
    model.width=32 model.heads=2 2>"$T/err" && bad "width change: exited 0" \
    || { grep -q "embedding/kernel has shape (4,4,1,16), which does not fit" "$T/err" && ok || { bad "width change message"; cat "$T/err"; }; }

# softmoe eval on a checkpoint and on a fresh config: val prec@1/loss and
# few-shot accuracy as JSON lines (synthetic JPEG shards, 10 classes)
"$BIN" shards synth "$T/syn/s" 80 40 >/dev/null 2>&1 || bad "shards synth"
EV="data.source=shards data.val=$T/syn/s-{000000..000001}.tar model.classes=4"
for src in "$T/keep.h5" "$T/c.ini"; do
    # shellcheck disable=SC2086
    "$BIN" eval "$src" $EV "data.pp_eval=resize(8)|value_range(-1,1)" \
        "fewshot.syn=$T/syn/s-{000000..000001}.tar|$T/syn/s-{000000..000001}.tar" \
        fewshot.shots=1,2 fewshot.per_class=2 >"$T/ev" 2>"$T/err"
    grep -q '"val/prec@1": ' "$T/ev" && grep -q '"fewshot/syn/1shot": ' "$T/ev" \
        && grep -q '"fewshot/syn/2shot": ' "$T/ev" && ok || { bad "eval $src"; cat "$T/ev" "$T/err"; }
done
grep -q '"step": 0,' "$T/ev" && ok || bad "eval of a config reports step 0"

finish "ckpt"
