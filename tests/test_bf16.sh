#!/bin/sh
# train.precision = bf16 as a user meets it: a bad value stops before any
# work naming the key; checkpoints stay fp32 and a run resumes across the
# modes (fp32 -> bf16 and bf16 -> fp32); bench says which path ran and that
# every product was planned at build; eval and the few-shot probe honour the
# key; the bf16 products pass their tests on a CPU without AVX512-BF16
# (oneDNN limited to AVX512_CORE: its own bf16 emulation) and without AVX-512
# (AVX2: oneDNN has no bf16 matmul there, so the rounded-sgemm path runs).
# Usage: sh tests/test_bf16.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
TESTS=$(dirname "$BIN")/tests

tiny_ini "$T/c.ini" experts=3 steps=12 ckpt_every=6   # tests/lib.sh

# a bad value: the key and the choices named, no workdir created
if "$BIN" train "$T/c.ini" train.precision=fp16 train.workdir="$T/bad" 2>"$T/err"; then
    bad "train.precision=fp16 exited 0"
else
    grep -q "train.precision" "$T/err" && grep -q "fp32|bf16" "$T/err" && ok \
        || { bad "bad precision message"; cat "$T/err"; }
fi
[ -e "$T/bad" ] && bad "bad precision: workdir created" || ok

# straight runs in each mode, and the two crossings: 6 steps in one mode,
# resumed for 6 more in the other
"$BIN" train "$T/c.ini" train.workdir="$T/f32" 2>"$T/err" || { bad "fp32 run"; cat "$T/err"; }
"$BIN" train "$T/c.ini" train.workdir="$T/b16" train.precision=bf16 2>"$T/err" \
    || { bad "bf16 run"; cat "$T/err"; }
for pair in "fp32 bf16" "bf16 fp32"; do
    set -- $pair
    W="$T/x_$1_$2"
    "$BIN" train "$T/c.ini" train.workdir="$W" train.steps=6 train.precision="$1" 2>"$T/err" \
        || { bad "$1 half"; cat "$T/err"; }
    "$BIN" train "$T/c.ini" train.workdir="$W" train.precision="$2" 2>"$T/err" \
        && grep -q "resuming from .*ckpt-00000006.h5" "$T/err" && [ -f "$W/ckpt-00000012.h5" ] \
        && ok || { bad "$1 checkpoint resumed in $2"; cat "$T/err"; }
    grep -q '"step": 12,' "$W/metrics.jsonl" && ok || bad "$1 -> $2: no step 12 in metrics"
done
if command -v h5diff >/dev/null; then
    # the crossed runs are neither the fp32 nor the bf16 run (both modes ran)
    for x in x_fp32_bf16 x_bf16_fp32; do
        h5diff -q "$T/f32/ckpt-00000012.h5" "$T/$x/ckpt-00000012.h5" /params >/dev/null 2>&1 \
            && bad "$x equals the fp32 run" || ok
        h5diff -q "$T/b16/ckpt-00000012.h5" "$T/$x/ckpt-00000012.h5" /params >/dev/null 2>&1 \
            && bad "$x equals the bf16 run" || ok
    done
    # the first six steps of a crossed run are the straight run's
    h5diff -d 0 "$T/f32/ckpt-00000006.h5" "$T/x_fp32_bf16/ckpt-00000006.h5" /params >/dev/null \
        && ok || bad "fp32 half differs from the fp32 run"
    h5diff -d 0 "$T/b16/ckpt-00000006.h5" "$T/x_bf16_fp32/ckpt-00000006.h5" /params >/dev/null \
        && ok || bad "bf16 half differs from the bf16 run (bf16 runs are not deterministic?)"
fi
# a bf16 run resumed in bf16 ends bit for bit as the straight one: the bf16
# weights Adam writes in its pass (the straight run) are the bits the resumed
# run's first forward converts from the checkpoint
W="$T/x_bf16_bf16"
"$BIN" train "$T/c.ini" train.workdir="$W" train.steps=6 train.precision=bf16 2>"$T/err" \
    || { bad "bf16 first 6 steps (for the bf16 resume)"; cat "$T/err"; }
"$BIN" train "$T/c.ini" train.workdir="$W" train.precision=bf16 2>"$T/err" \
    && grep -q "resuming from .*ckpt-00000006.h5" "$T/err" && ok \
    || { bad "bf16 resumed in bf16"; cat "$T/err"; }
if command -v h5diff >/dev/null; then
    h5diff -d 0 "$T/b16/ckpt-00000012.h5" "$W/ckpt-00000012.h5" /params >/dev/null \
        && ok || bad "bf16 resumed in bf16 differs from the straight bf16 run"
fi
# the memory estimate counts the bf16 weight copy in bf16 only (2 bytes a parameter)
"$BIN" params "$T/c.ini" train.precision=bf16 2>&1 | grep -q "Adam [0-9.]*, bf16 weights [0-9.]*, activations" \
    && ok || bad "params bf16: no bf16 weights in the memory estimate"
"$BIN" params "$T/c.ini" 2>&1 | grep -q "bf16 weights" && bad "params fp32 lists bf16 weights" || ok
# checkpoints of a bf16 run hold fp32 tensors
if command -v h5dump >/dev/null; then
    h5dump -H -d /params/head/kernel "$T/b16/ckpt-00000012.h5" 2>/dev/null | grep -q H5T_IEEE_F32LE \
        && ok || bad "bf16 checkpoint tensors are not fp32"
fi

# bench names the path and plans every product at build
"$BIN" bench "$T/c.ini" bench.steps=2 train.precision=bf16 >"$T/b" 2>&1 \
    || { bad "bench bf16"; cat "$T/b"; }
# (built without oneDNN there is no bf16 peak, and MFU is against sgemm's)
if grep -q "^precision: bf16 (oneDNN.*, 0 later" "$T/b"; then
    grep -q "^mfu: .*(against the bf16 peak)" "$T/b" && ok || { bad "bench bf16 MFU"; cat "$T/b"; }
else
    grep -q "^precision: bf16 (.*built without oneDNN.*, 0 later" "$T/b" \
        && grep -q "^mfu: .*(against the sgemm peak)" "$T/b" && ok || { bad "bench bf16 output"; cat "$T/b"; }
fi
grep -q "^precision: bf16 (oneDNN" "$T/b" && dnnl=1 || dnnl=0
"$BIN" bench "$T/c.ini" bench.steps=2 >"$T/b" 2>&1 || { bad "bench fp32"; cat "$T/b"; }
grep -q "^precision: fp32" "$T/b" && grep -q "^mfu: .*(against the sgemm peak)" "$T/b" \
    && ok || { bad "bench fp32 output"; cat "$T/b"; }
# fp32 through oneDNN's matmul on an AVX-512 CPU (planned at build), else sgemm
if [ "$dnnl" = 1 ] && grep -q avx512f /proc/cpuinfo; then
    grep -q "^precision: fp32 (oneDNN.*, 0 later, 0 through sgemm)" "$T/b" && ok || { bad "bench fp32 path"; cat "$T/b"; }
else
    grep -q "^precision: fp32 (sgemm" "$T/b" && ok || { bad "bench fp32 path"; cat "$T/b"; }
fi
# debug.fp32_sgemm = true forces sgemm (the A/B switch of the two fp32 paths)
"$BIN" bench "$T/c.ini" bench.steps=2 debug.fp32_sgemm=true >"$T/b" 2>&1 &&
    grep -q "^precision: fp32 (sgemm" "$T/b" && ok || { bad "bench debug.fp32_sgemm"; cat "$T/b"; }

# eval and few-shot in both modes on the bf16 checkpoint: close, not equal
"$BIN" shards synth "$T/syn/s" 80 40 >/dev/null 2>&1 || bad "shards synth"
EV="data.source=shards data.val=$T/syn/s-{000000..000001}.tar model.classes=4"
for p in fp32 bf16; do
    # shellcheck disable=SC2086
    "$BIN" eval "$T/b16/ckpt-00000012.h5" $EV "data.pp_eval=resize(8)|value_range(-1,1)" \
        "fewshot.syn=$T/syn/s-{000000..000001}.tar|$T/syn/s-{000000..000001}.tar" \
        fewshot.shots=2 fewshot.per_class=2 train.precision=$p >"$T/ev_$p" 2>"$T/err" \
        && grep -q '"fewshot/syn/2shot": ' "$T/ev_$p" && ok || { bad "eval $p"; cat "$T/err"; }
done
l32=$(sed -n 's/.*"val\/loss": \([-0-9.e]*\).*/\1/p' "$T/ev_fp32")
l16=$(sed -n 's/.*"val\/loss": \([-0-9.e]*\).*/\1/p' "$T/ev_bf16")
# bf16 perturbs the logits by ~1e-2 relative (test_reference): the losses
# agree to 5% and differ (the key was honoured)
awk -v a="$l32" -v b="$l16" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d > 0 && d < 0.05 * a) }' \
    && ok || bad "eval val/loss fp32 $l32 vs bf16 $l16"

# the product tests without AVX512-BF16 and without AVX-512
if [ -x "$TESTS/test_gemm" ]; then
    for isa in AVX512_CORE AVX2; do
        ONEDNN_MAX_CPU_ISA=$isa "$TESTS/test_gemm" >"$T/g" 2>&1 && grep -q "Failures: 0, Errors: 0" "$T/g" \
            && ok || { bad "test_gemm with ONEDNN_MAX_CPU_ISA=$isa"; cat "$T/g"; }
        grep "^oneDNN" "$T/g"
    done
    ONEDNN_MAX_CPU_ISA=AVX2 "$BIN" bench "$T/c.ini" bench.steps=1 train.precision=bf16 >"$T/b" 2>&1
    grep -q "^precision: bf16 (bf16-rounded inputs through sgemm" "$T/b" && ok \
        || { bad "bench bf16 on AVX2"; cat "$T/b"; }
else
    bad "$TESTS/test_gemm not built"
fi

finish "bf16"
