#!/bin/sh
# The sparse routers through the commands a user runs after training: for a
# Tokens Choice (k = 2, BPR, groups of 8) and an Experts Choice checkpoint,
# `softmoe eval` (held-out prec@1 and loss, 10-shot) gives finite numbers
# and the same numbers twice (evaluation routes without noise), `softmoe
# params` counts capacity rows, and `train.init` fine-tunes from the
# checkpoint with a new head for another number of classes (router and
# experts loaded, head re-initialised).
# Usage: sh tests/test_sparse_cli.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

"$BIN" shards synth "$T/s" 400 200 >/dev/null 2>&1 || bad "shards synth"
S="$T/s-{000000..000001}.tar"
COMMON="model.width=32 model.heads=2 model.mlp_dim=64 moe.experts=8 train.batch_size=16
        train.steps=4 schedule.warmup_steps=1 train.log_every=2 train.ckpt_every=4 data.threads=1"
tc="moe.router=tokens_choice moe.k=2 moe.bpr=true moe.group_size=8 moe.capacity_factor=1.0"
ec="moe.router=experts_choice moe.group_size=1 moe.capacity_factor=1.0"
for r in tc ec; do
    eval "opts=\$$r"
    w="$T/$r"
    # shellcheck disable=SC2086
    "$BIN" train configs/paper_fmnist.ini $COMMON $opts "data.train=$S" train.workdir="$w" \
        >"$T/$r.train" 2>&1 && [ -s "$w/ckpt-00000004.h5" ] && ok || { bad "$r: train"; tail -5 "$T/$r.train"; continue; }
    ck="$w/ckpt-00000004.h5"
    for i in 1 2; do
        "$BIN" eval "$ck" "data.val=$S" "fewshot.syn=$S|$S" fewshot.shots=10 >"$T/$r.eval$i" 2>"$T/$r.err" ||
            { bad "$r: eval"; tail -3 "$T/$r.err"; }
    done
    grep -q "\"val/prec@1\": [0-9.]*" "$T/$r.eval1" && grep -q "\"val/loss\": [0-9.]*" "$T/$r.eval1" &&
        grep -q '"fewshot/syn/10shot": [0-9.]*' "$T/$r.eval1" && ok ||
        { bad "$r: eval lacks prec@1, loss or 10-shot"; cat "$T/$r.eval1"; }
    grep -qi 'nan\|inf' "$T/$r.eval1" && bad "$r: non-finite evaluation" || ok
    # wall-clock figures aside, two evaluations of one checkpoint agree exactly
    strip() { sed -E 's/"[a-z_/]*(time|img_per_s|seconds)[a-z_/]*": [0-9.e+-]+,? ?//g' "$1"; }
    [ "$(strip "$T/$r.eval1")" = "$(strip "$T/$r.eval2")" ] && ok ||
        { bad "$r: two evaluations differ"; cat "$T/$r.eval1" "$T/$r.eval2"; }
    "$BIN" params "$w/config.ini" >"$T/$r.params" 2>&1 && grep -q 'rows per group.*(capacity)' "$T/$r.params" &&
        ok || { bad "$r: params"; cat "$T/$r.params"; }
    # fine-tuning: 5 classes instead of 10, from the sparse checkpoint
    # shellcheck disable=SC2086
    "$BIN" train configs/paper_fmnist.ini $COMMON $opts "data.train=$S" train.workdir="$w-ft" \
        model.classes=5 train.steps=2 train.init="$ck" >"$T/$r.ft" 2>&1 &&
        grep -q 'initialised from' "$T/$r.ft" && [ -s "$w-ft/ckpt-00000002.h5" ] && ok ||
        { bad "$r: train.init fine-tuning"; tail -5 "$T/$r.ft"; }
    grep -qi 'head.*re-\?init\|new head\|head/kernel' "$T/$r.ft" && ok || { bad "$r: no word on the new head"; cat "$T/$r.ft"; }
done
finish "sparse_cli"
