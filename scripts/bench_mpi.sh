#!/bin/sh
# Distributed step on this machine: 1 rank with all cores against 2 ranks
# with half the cores each, same global batch, synthetic data. Prints
# throughput and rank 0's step split (compute, all-to-all, allreduce), and
# the all-to-all bytes rank 0 handed to MPI against the minimum that
# `softmoe params` computes (each slot must reach its expert's owner and
# come back, forward and backward).
# Usage: sh scripts/bench_mpi.sh BIN CONFIG [overrides...]   (STEPS=30 by default)
set -eu
BIN=${1:-build/softmoe}
CONFIG=${2:-configs/fmnist_softmoe.ini}
[ $# -ge 2 ] && shift 2 || shift $#
STEPS=${STEPS:-30}
CORES=$(nproc)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
COMMON="data.source=synthetic schedule.warmup_steps=0 schedule.cooldown_steps=0 train.steps=$STEPS train.log_every=$STEPS train.ckpt_every=0 train.keep_ckpts=1"

ips() { sed -n "s/.*\"step\": $STEPS, \"loss\".*\"img_per_s\": \([^,]*\),.*/\1/p" "$1/metrics.jsonl"; }

# shellcheck disable=SC2086
OMP_NUM_THREADS=$CORES "$BIN" train "$CONFIG" train.workdir="$T/w1" $COMMON "$@" 2>"$T/e1" || { cat "$T/e1"; exit 1; }
# shellcheck disable=SC2086
OMP_NUM_THREADS=$((CORES / 2)) mpirun --oversubscribe --mca btl self,vader -np 2 \
    -x OMP_NUM_THREADS "$BIN" train "$CONFIG" train.workdir="$T/w2" $COMMON "$@" 2>"$T/e2" || { cat "$T/e2"; exit 1; }

line=$(grep "rank 0 per training step" "$T/e2")
# "... X ms in N all-to-alls (Y MB sent to other ranks), Z ms in M allreduces (R MB payload), step S ms"
a2a=$(echo "$line" | sed -E 's/.*: ([0-9.]+) ms in [0-9]+ all-to-alls.*/\1/')
mb=$(echo "$line" | sed -E 's/.*all-to-alls \(([0-9.]+) MB sent.*/\1/')
ar=$(echo "$line" | sed -E 's/.*, ([0-9.]+) ms in [0-9]+ allreduces.*/\1/')
arp=$(echo "$line" | sed -E 's/.*allreduces \(([0-9.]+) MB payload.*/\1/')
step=$(echo "$line" | sed -E 's/.*step ([0-9.]+) ms.*/\1/')
# shellcheck disable=SC2086
minimum=$("$BIN" params "$CONFIG" "$@" | awk '$1 == 2 && NF == 5 { print $4 }')
i1=$(ips "$T/w1"); i2=$(ips "$T/w2")
echo "config: $CONFIG $*  ($STEPS steps, synthetic data)"
awk -v i1="$i1" -v i2="$i2" -v a2a="$a2a" -v ar="$ar" -v step="$step" -v mb="$mb" \
    -v arp="$arp" -v min="$minimum" -v c="$CORES" 'BEGIN {
    printf "1 rank x %d threads: %.1f img/s\n", c, i1
    printf "2 ranks x %d threads: %.1f img/s (%.2fx)\n", c / 2, i2, i2 / i1
    comp = step - a2a - ar
    printf "rank 0 step %.1f ms: compute %.1f ms (%.1f%%), all-to-all %.1f ms (%.1f%%), allreduce %.1f ms (%.1f%%)\n",
        step, comp, 100 * comp / step, a2a, 100 * a2a / step, ar, 100 * ar / step
    printf "all-to-all sent per step: %.4f MB, minimum %.4f MB; allreduce payload %.3f MB\n", mb, min, arp
}'
