#!/bin/sh
# The softmoe command as a user meets it: config errors stop before any work
# with the file, line and key named; params reproduces the paper's ViT-S/16
# count; a diverging run stops naming the step. Usage: sh tests/test_cli.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}


# expect_fail NAME PATTERN CMD...: CMD exits non-zero and stderr matches PATTERN
expect_fail() {
    name=$1; pat=$2; shift 2
    if "$@" >"$T/out" 2>"$T/err"; then bad "$name: exited 0"; return; fi
    if grep -q -- "$pat" "$T/err"; then ok; else bad "$name: stderr lacks '$pat':"; cat "$T/err"; fi
}

cat >"$T/base.ini" <<'INI'
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
printf 'include = base.ini\n[model]\nwidht = 48\n' >"$T/typo.ini"
printf 'include = base.ini\n[model]\npool = avg\n' >"$T/badval.ini"
printf 'include = missing.ini\n' >"$T/noinc.ini"
printf 'include = base.ini\n[modle]\nwidth = 1\n' >"$T/badsec.ini"

expect_fail "unknown key" "typo.ini:3: unknown key 'model.widht' (did you mean 'model.width'?)" \
    "$BIN" train "$T/typo.ini" train.workdir="$T/w1"
[ -e "$T/w1" ] && bad "unknown key: workdir was created before the error" || ok
expect_fail "bad value" "badval.ini:3.*model.pool" "$BIN" params "$T/badval.ini"
expect_fail "missing include" "noinc.ini:1.*missing.ini" "$BIN" params "$T/noinc.ini"
expect_fail "unknown section" "badsec.ini:2.*modle" "$BIN" params "$T/badsec.ini"
expect_fail "bad override" "model.depth" "$BIN" params "$T/base.ini" model.depth=two
expect_fail "unknown override" "optim.lrr" "$BIN" params "$T/base.ini" optim.lrr=1
expect_fail "no config" "needs a config" "$BIN" train
expect_fail "missing config" "nope.ini" "$BIN" params "$T/nope.ini"

# ViT-S/16 with JFT's 29,593 classes: 33,058,201 parameters (the paper's count)
"$BIN" params configs/vit_s16.ini model.classes=29593 model.loss=sigmoid_xent >"$T/p" 2>&1
if grep -qx "params: 33058201" "$T/p"; then ok; else bad "ViT-S/16 params:"; cat "$T/p"; fi

# the paper's models (Soft MoE paper, Table 9 sizes with JFT's 29,593 classes)
while read -r cfg want; do
    got=$("$BIN" params "configs/$cfg.ini" 2>&1 | sed -n 's/^params: //p')
    if [ "$got" = "$want" ]; then ok; else bad "$cfg params: got '$got', want $want"; fi
done <<'LIST'
vit_s16 33058201
vit_b16 108554137
vit_l16 333632409
vit_h14 668670873
vit_s16_softmoe 933707935
vit_s14_softmoe 1841400991
vit_b16_softmoe 3707637151
vit_l16_softmoe 13127246757
vit_h14_softmoe 54177401769
LIST
# forward GFLOP per image within 2% of the paper's Table 1
while read -r cfg want; do
    got=$("$BIN" params "configs/$cfg.ini" 2>&1 | sed -n 's/^gflops_per_image: //p')
    if awk -v g="$got" -v w="$want" 'BEGIN { d = (g - w) / w; exit !(g != "" && d < 0.02 && d > -0.02) }'
    then ok; else bad "$cfg gflops: got '$got', want $want +- 2%"; fi
done <<'LIST'
vit_h14 334.2
vit_b16_softmoe 32.0
vit_l16_softmoe 111.1
LIST

# a diverging run stops with the step named, and says so on stderr
expect_fail "divergence" "at step [0-9]" "$BIN" train "$T/base.ini" optim.lr=1e30 optim.clip=0 \
    schedule.warmup_steps=0 train.workdir="$T/w2"

# a short real run writes config.ini and metrics.jsonl
if "$BIN" train "$T/base.ini" train.workdir="$T/w3" >"$T/out" 2>"$T/err" \
   && [ -s "$T/w3/config.ini" ] && [ "$(grep -c '"loss"' "$T/w3/metrics.jsonl")" -ge 1 ]; then ok
else bad "short run"; cat "$T/err"; fi

# data: a shard pattern that matches no file stops before any work, naming it
expect_fail "missing shards" "nothing-000000.tar" "$BIN" train "$T/base.ini" data.source=shards \
    "data.train=$T/nothing-{000000..000003}.tar" data.pp_train="resize(16)" train.workdir="$T/w4"
[ -e "$T/w4" ] && bad "missing shards: workdir was created before the error" || ok

# data: an image folder -> shards -> a short training run that reads them
mkdir -p "$T/imgs/cat" "$T/imgs/dog"
for i in 0 1 2 3 4 5; do
    printf 'P5\n16 16\n255\n' >"$T/x.pgm"   # not a PNG/JPEG: the writer skips it
    cp "$T/x.pgm" "$T/imgs/cat/$i.pgm"
done
"$BIN" shards folder "$T/imgs" "$T/sh/f" 4 >"$T/out" 2>"$T/err" && bad "folder without images: exited 0" || ok

# a dataset with no usable sample stops with a clear error instead of training
printf 'not an image' >"$T/imgs/cat/0.png"
printf 'not an image' >"$T/imgs/dog/1.png"
if "$BIN" shards folder "$T/imgs" "$T/sh/f" 4 >"$T/out" 2>"$T/err"; then ok; else bad "shards folder"; cat "$T/err"; fi
expect_fail "no usable sample" "no usable sample" "$BIN" train "$T/base.ini" data.source=shards \
    "data.train=$T/sh/f-{000000..000000}.tar" "data.pp_train=resize(16)|value_range(-1,1)" \
    train.workdir="$T/w5"

# the environment variables that were test hooks are refused, naming the key that replaced them
SOFTMOE_BENCH_STEPS=3 "$BIN" bench configs/vit_s16.ini >"$T/out" 2>&1
[ $? != 0 ] && grep -q "SOFTMOE_BENCH_STEPS is no longer read: pass bench.steps=3 as an override" "$T/out" &&
    ok || { bad "an old hook variable"; cat "$T/out"; }
SOFTMOE_STOP_AT_STEP=2 "$BIN" train "$T/base.ini" >"$T/out" 2>&1
[ $? != 0 ] && grep -q "pass debug.stop_at_step=2 as an override" "$T/out" &&
    ok || { bad "SOFTMOE_STOP_AT_STEP"; cat "$T/out"; }
finish "cli"
