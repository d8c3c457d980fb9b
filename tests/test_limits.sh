#!/bin/sh
# Mistakes caught before any work: sizes that would overflow or not fit in
# memory, and every data source (train, val, each few-shot set, train.init)
# checked before anything is allocated or written, each within seconds and
# naming the key or file; softmoe params prints the memory estimate; eval of
# a checkpoint with a garbled stored config names the checkpoint; few-shot
# labels far outside any class count are skipped, not allocated for.
# Usage: sh tests/test_limits.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
EDIT=$(dirname "$BIN")/tests/h5edit
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

cat >"$T/c.ini" <<'INI'
[model]
width = 32
depth = 2
heads = 2
mlp_dim = 64
image_size = 16
patch = 4
channels = 1
classes = 4
[train]
batch_size = 8
steps = 5
[schedule]
warmup_steps = 2
INI

# early NAME PATTERN OVERRIDES...: train fails within 5 s, before step 1 and
# before the workdir exists, with stderr matching PATTERN
early() {
    name=$1; pat=$2; shift 2
    rm -rf "$T/w"
    if timeout 5 "$BIN" train "$T/c.ini" train.workdir="$T/w" "$@" >"$T/out" 2>"$T/err"; then
        bad "$name: exited 0"; return
    fi
    rc=$?
    [ "$rc" = 124 ] && { bad "$name: not refused within 5 s"; return; }
    grep -q -- "$pat" "$T/err" || { bad "$name: stderr lacks '$pat'"; cat "$T/err"; return; }
    grep -q "^step 1/" "$T/err" && { bad "$name: training started"; return; }
    [ ! -e "$T/w" ] && ok || bad "$name: the workdir was created"
}

early "a million experts" "needs about .* GB per rank (params .*it would not fit" moe.experts=1000000
early "width 16384" "it would not fit.*train.allow_oversubscribe_memory=true" model.width=16384 model.heads=16
early "a million channels" "model.channels is 1e+06, more than the 64" model.channels=1000000
early "image 100000 / patch 1" "number of patches (model.image_size / model.patch)^2 is 1e+10" \
    model.image_size=100000 model.patch=1
early "width 1e9" "model.width is 1e+09" model.width=1000000000 model.heads=1
early "batch x tokens x width" "one batch's tokens .* (train.batch_size, model.width)" \
    train.batch_size=4000000 model.width=2048 model.heads=2
early "missing train shards" "shard '$T/none-0.tar' .* does not exist (data.train)" \
    data.source=shards "data.train=$T/none-{0..1}.tar"

# Real shards for the train split; then a wrong val / few-shot path / init file.
"$BIN" shards synth "$T/syn/s" 40 20 >/dev/null 2>&1 || bad "shards synth"
SH="data.source=shards data.train=$T/syn/s-{000000..000001}.tar model.channels=3 model.classes=10"
PP="data.pp_train=resize(16)|value_range(-1,1) data.pp_eval=resize(16)|value_range(-1,1)"
# shellcheck disable=SC2086
early "missing data.val" "(data.val)" $SH $PP "data.val=$T/nope-{0..1}.tar"
# shellcheck disable=SC2086
early "missing few-shot test split" "(fewshot.mine)" $SH $PP "fewshot.mine=$T/syn/s-000000.tar|$T/nofolder"
# shellcheck disable=SC2086
early "missing train.init" "checkpoint '$T/none.h5' cannot be read.*(train.init)" $SH $PP train.init="$T/none.h5"
printf 'not hdf5' >"$T/junk.h5"
# shellcheck disable=SC2086
early "junk train.init" "is not an HDF5 file.*(train.init)" $SH $PP train.init="$T/junk.h5"
# shellcheck disable=SC2086
early "channels for decoded images" "model.channels = 2: images are decoded as gray (1) or RGB (3)" \
    $SH $PP model.channels=2

# softmoe params: the same estimate, without allocating.
"$BIN" params configs/vit_b16_softmoe.ini >"$T/out" 2>&1 &&
    grep -q "^memory: .* GB per rank (params .*at train.batch_size 4096, micro-batch 4096, on one rank" "$T/out" && ok ||
    { bad "params memory line"; cat "$T/out"; }
# train.microbatch sizes the activations: 256 of 4096 images per forward take
# a 16th of them (more than an 8th would mean they are not sized by it).
"$BIN" params configs/vit_b16_softmoe.ini train.microbatch=256 >"$T/out2" 2>&1 &&
    grep -q "micro-batch 256, on one rank" "$T/out2" &&
    a1=$(sed -n 's/^memory: .*activations \([0-9.]*\),.*/\1/p' "$T/out") &&
    a2=$(sed -n 's/^memory: .*activations \([0-9.]*\),.*/\1/p' "$T/out2") &&
    awk -v a="$a1" -v b="$a2" 'BEGIN { exit !(b > 0 && b < a / 8) }' && ok ||
    { bad "params memory line with train.microbatch"; cat "$T/out2"; }
"$BIN" params configs/vit_b16_softmoe.ini train.microbatch=100 >"$T/out2" 2>&1
[ $? != 0 ] && grep -q "train.microbatch = 100 must divide the images per rank (train.batch_size 4096 / 1 rank = 4096)" "$T/out2" &&
    ok || { bad "params with a microbatch that does not divide the batch"; cat "$T/out2"; }

# The start-up line names the estimate.
"$BIN" train "$T/c.ini" train.workdir="$T/ok" train.steps=1 schedule.warmup_steps=0 2>"$T/err" &&
    grep -q "memory .* MB per rank" "$T/err" && ok || { bad "start-up memory line"; cat "$T/err"; }

# eval of a checkpoint whose stored config is garbled names the checkpoint.
cp "$T/ok/ckpt-00000001.h5" "$T/g.h5"
"$EDIT" "$T/g.h5" config "$(printf '[model]\nwidth = 32\nbogus = 1\n')" || bad "h5edit config"
"$BIN" eval "$T/g.h5" >/dev/null 2>"$T/err"
grep -q "checkpoint '$T/g.h5', dataset /config:3: unknown key 'model.bogus'" "$T/err" && ok ||
    { bad "garbled stored config"; cat "$T/err"; }

# A few-shot label of 2147483647 is skipped and counted, not sized for.
mkdir -p "$T/big"
(cd "$T/syn" && tar xf s-000000.tar)
i=0
for f in "$T"/syn/*.cls; do printf '%d' $((i % 4)) >"$f"; i=$((i + 1)); done
k=$(ls "$T/syn" | grep '\.cls$' | head -1 | sed 's/\.cls$//')
printf '2147483647' >"$T/syn/$k.cls"
(cd "$T/syn" && tar cf "$T/big/b-000000.tar" $(ls | grep -v '\.tar$' | sort))
# shellcheck disable=SC2086
timeout 60 "$BIN" eval "$T/ok/ckpt-00000001.h5" $PP \
    "fewshot.big=$T/big/b-000000.tar|$T/big/b-000000.tar" fewshot.shots=1 fewshot.per_class=1 \
    >"$T/out" 2>"$T/err"
rc=$?
[ "$rc" = 0 ] && grep -q '"fewshot/big/1shot"' "$T/out" && ok || { bad "huge few-shot label: exit $rc"; cat "$T/err"; }

finish "limits"
