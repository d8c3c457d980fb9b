#!/bin/sh
# Training-step time of a small Soft MoE ViT as the number of experts grows
# at a fixed 128 slots per image (P = 128/E; from 256 experts on, P = 1 and
# the slots grow with E). The paper's claim: the cost stays nearly flat,
# since every slot is processed by exactly one expert.
# Model: width 128, depth 4 (blocks 2-3 Soft MoE), 224 px, patch 16, batch 8.
# Random images (data.source=synthetic): the config's JFT shards are not needed.
# Usage: scripts/bench_experts.sh [build/softmoe]
#   EXPERTS="8 16" and STEPS=5 (timed steps per point) narrow the sweep.
set -eu
BIN=${1:-build/softmoe}
ARGS="model.variant= model.patch=16 model.width=128 model.heads=4 model.mlp_dim=512 model.depth=4
      model.classes=1000 model.loss=softmax_xent train.batch_size=8 data.source=synthetic"
EXPERTS=${EXPERTS:-8 16 32 64 128 256 512 1024}
STEPS=${STEPS:-5}
printf '%8s %6s %6s %10s %8s %8s %8s %8s %10s %8s\n' experts slots total params_M step_ms \
    fwd_ms bwd_ms adam_ms img_per_s rss_mb
for E in $EXPERTS; do
    P=$((128 / E)); [ "$P" -lt 1 ] && P=1
    # shellcheck disable=SC2086
    out=$(SOFTMOE_BENCH_STEPS=$STEPS "$BIN" bench configs/vit_s16_softmoe.ini $ARGS \
          moe.experts=$E moe.slots=$P)
    params=$(echo "$out" | sed -n 's/.*, \([0-9.]*\)M params.*/\1/p')
    line=$(echo "$out" | grep '^step:')
    ms() { awk -v x="$1" 'BEGIN{printf "%.1f", x * 1000}'; }
    step=$(ms "$(echo "$line" | sed -n 's/^step: \([0-9.]*\) s.*/\1/p')")
    fwd=$(ms "$(echo "$line" | sed -n 's/.*forward \([0-9.]*\).*/\1/p')")
    bwd=$(ms "$(echo "$line" | sed -n 's/.*backward \([0-9.]*\).*/\1/p')")
    upd=$(ms "$(echo "$line" | sed -n 's/.*adam \([0-9.]*\)).*/\1/p')")
    ips=$(echo "$out" | sed -n 's/^img_per_s: //p')
    rss=$(echo "$out" | sed -n 's/^peak_rss_mb: //p')
    printf '%8d %6d %6d %10s %8s %8s %8s %8s %10s %8s\n' "$E" "$P" $((E * P)) "$params" \
        "$step" "$fwd" "$bwd" "$upd" "$ips" "$rss"
done
