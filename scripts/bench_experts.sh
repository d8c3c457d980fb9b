#!/bin/sh
# The paper's Figure 6 analogue: training throughput as the number of
# experts grows from 8 to 1024 at a fixed number of expert rows (slots) per
# token, for every router, on synthetic data.
# Model: width 32, depth 1 (its one block an MoE layer), 128 px images, patch
# 4: N = 1024 tokens per image, so one slot per token allows E = 1024 experts
# of one slot each; batch 64, so every expert gets 64*1024/E >= 64 rows.
#   soft           P = 1024/E slots per expert (S = N)
#   tokens_choice  k = 1, capacity ceil(1024 * 1.0 / E) (groups of one image)
#   tokens_choice  k = 2, capacity factor 0.5: the same 1024 rows per image
#   experts_choice capacity round(1024 * 1.0 / E)
# Per row: the training step (forward, backward, Adam), img/s, and the MoE
# block alone (forward + backward, from `softmoe bench`): its time, its
# experts' time and the routing overhead (the difference).
# Usage: scripts/bench_experts.sh [build/softmoe] [experts ...]
#   (or EXPERTS="8 16" in the environment; ROUTERS="soft" narrows the routers;
#   STEPS=3 timed steps per point; BATCH=64 images per step, smaller for a smoke test)
set -eu
BIN=${1:-build/softmoe}
[ $# -gt 0 ] && shift
EXPERTS=${*:-${EXPERTS:-8 16 32 64 128 256 512 1024}}
ARGS="model.variant= model.image_size=128 model.patch=4 model.width=32 model.heads=2
      model.mlp_dim=128 model.depth=1 moe.layers=0 model.classes=10 model.loss=softmax_xent
      train.batch_size=${BATCH:-64} data.source=synthetic"
printf '%-16s %6s %5s %8s %9s %8s %8s %8s %8s %9s %9s %9s %9s\n' router experts P rows/exp \
    params_M step_ms fwd_ms bwd_ms adam_ms img_per_s block_ms expert_ms routing_ms
for R in ${ROUTERS:-soft tokens_choice:1 tokens_choice:2 experts_choice}; do
    for E in $EXPERTS; do
        P=$((1024 / E)); [ "$P" -lt 1 ] && P=1
        case $R in
            soft) X="moe.router=soft moe.slots=$P" ;;
            tokens_choice:1) X="moe.router=tokens_choice moe.k=1 moe.capacity_factor=1.0" ;;
            tokens_choice:2) X="moe.router=tokens_choice moe.k=2 moe.capacity_factor=0.5" ;;
            experts_choice) X="moe.router=experts_choice moe.capacity_factor=1.0" ;;
        esac
        # shellcheck disable=SC2086
        out=$("$BIN" bench configs/vit_s16_softmoe.ini bench.steps="${STEPS:-3}" $ARGS \
              moe.experts=$E $X)
        params=$(echo "$out" | sed -n 's/.*, \([0-9.]*\)M params.*/\1/p')
        line=$(echo "$out" | grep '^step:')
        ms() { awk -v x="$1" 'BEGIN{printf "%.1f", x * 1000}'; }
        step=$(ms "$(echo "$line" | sed -n 's/^step: \([0-9.]*\) s.*/\1/p')")
        fwd=$(ms "$(echo "$line" | sed -n 's/.*forward \([0-9.]*\).*/\1/p')")
        bwd=$(ms "$(echo "$line" | sed -n 's/.*backward \([0-9.]*\).*/\1/p')")
        upd=$(ms "$(echo "$line" | sed -n 's/.*adam \([0-9.]*\)).*/\1/p')")
        ips=$(echo "$out" | sed -n 's/^img_per_s: //p')
        blk=$(echo "$out" | grep '^block fwd+bwd:')
        bm=$(echo "$blk" | sed -n 's/^block fwd+bwd: [a-z_]* \([0-9.]*\) ms.*/\1/p')
        em=$(echo "$blk" | sed -n 's/.*| experts \([0-9.]*\) ms.*/\1/p')
        om=$(echo "$blk" | sed -n 's/.*| routing overhead \([-0-9.]*\) ms.*/\1/p')
        rows=$(echo "$blk" | sed -n 's/.*P=\([0-9]*\), \([0-9]*\) expert rows.*/\2/p')
        printf '%-16s %6d %5s %8s %9s %8s %8s %8s %8s %9s %9s %9s %9s\n' "$R" "$E" \
            "$(echo "$blk" | sed -n 's/.*(E=[0-9]* P=\([0-9]*\),.*/\1/p')" "$((rows / E))" \
            "$params" "$step" "$fwd" "$bwd" "$upd" "$ips" "$bm" "$em" "$om"
    done
done
