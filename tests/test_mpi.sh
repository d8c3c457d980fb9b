#!/bin/sh
# Distributed training under mpirun (2 cores are enough: --oversubscribe, one
# thread per rank). A small Soft MoE model (4 experts x 2 slots) on synthetic
# data, global batch 8, 20 steps:
#   - 1 rank against 2 ranks, 4 ranks and 4 ranks with dist.expert_parallel=2
#     (experts replicated over 2 groups): the same losses and parameters;
#   - every rank allocates only its share of the experts;
#   - a checkpoint written by 4 ranks resumes on 2 and on 1 rank and ends
#     where the uninterrupted 1-rank run ends;
#   - train.init on 2 ranks loads each rank's experts from a 1-rank checkpoint;
#   - SIGTERM reaching one rank checkpoints all of them at the same step;
#   - a fatal error on one rank ends the whole job, non-zero, within seconds;
#   - bad dist settings stop before any work, naming the key;
#   - with shards, a checkpoint from 2 ranks resumes on 1 at the next epoch;
#   - evaluation split over 2 ranks equals evaluation on 1;
#   - other commands under mpirun run once, on rank 0;
#   - Tokens Choice and Experts Choice: 1, 2 and 4 ranks alike, and a
#     stopped-and-resumed run bit-identical to an uninterrupted one;
#   - train.microbatch (gradient accumulation) on 1 and 2 ranks, every router
#     here, ends like the run without it; resumed, bit-identical;
#   - train.precision = bf16 on 2 and 4 ranks ends like 1 rank in bf16.
#
# Tolerances. The ranks compute the same sums in another order (per-rank
# batch means averaged by an allreduce, expert GEMMs over all ranks' rows),
# so values agree to float rounding: every parameter and Adam moment within
# 1e-5 absolute (measured: 1.2e-7 at most, a few ulps of values near 1).
# The one exception is SelfAttention/key/bias: its gradient is exactly zero
# in exact arithmetic (softmax over keys ignores a per-query constant), so
# what it receives is rounding noise, and Adam normalises that noise into
# steps of size ~lr. It is compared against the bound 20 steps x lr = 2e-2
# (measured: 2.3e-5).
# Usage: sh tests/test_mpi.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}

if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$BIN" | grep -q libmpi; then
    # Only a NO_MPI=1 build gets here; `make` on a machine with MPI links it.
    echo "mpi: skipped ($BIN built without MPI, or no mpirun)"
    skip "mpi"; finish "mpi"
    exit 0
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# vader (shared memory) + self; ranks yield the core when idle (oversubscribed)
# (a hang would be a bug: every run is bounded)
MPI="timeout 120 mpirun --oversubscribe --mca btl self,vader --mca mpi_yield_when_idle 1"

tiny_ini "$T/c.ini"   # tests/lib.sh: 4 experts x 2 slots, batch 8, 20 steps, checkpoints at 10 and 20
CK=ckpt-00000020.h5
# (paths relative to the compared group)
KB="--exclude-path /Encoder/encoderblock_0/SelfAttention/key/bias --exclude-path /Encoder/encoderblock_1/SelfAttention/key/bias"

# the loss of step 20 in a workdir's metrics
loss20() { metric "$1" 20 loss; }
# same params (key biases and Adam moments apart) and moments as the 1-rank run,
# within a tolerance (the crc32 attributes of values equal to 1e-5 differ: excluded)
same_as_one() { same_as "$T/w1" "$1" "$2"; }
# same_as BASE DIR NAME: DIR's run against BASE's
same_as() {
    b=$1; shift
    # shellcheck disable=SC2086
    h5diff -d 1e-5 $KB --exclude-attribute /params "$b/$CK" "$1/$CK" /params /params >"$T/diff" 2>&1 \
        && h5diff -d 1e-5 $KB --exclude-attribute /opt/m "$b/$CK" "$1/$CK" /opt/m /opt/m >>"$T/diff" 2>&1 \
        && h5diff -d 1e-5 $KB --exclude-attribute /opt/v "$b/$CK" "$1/$CK" /opt/v /opt/v >>"$T/diff" 2>&1 \
        && h5diff -d 2e-2 --exclude-attribute /params/Encoder/encoderblock_0/SelfAttention/key/bias "$b/$CK" "$1/$CK" /params/Encoder/encoderblock_0/SelfAttention/key/bias >>"$T/diff" 2>&1 \
        && h5diff -d 2e-2 --exclude-attribute /params/Encoder/encoderblock_1/SelfAttention/key/bias "$b/$CK" "$1/$CK" /params/Encoder/encoderblock_1/SelfAttention/key/bias >>"$T/diff" 2>&1 \
        && ok || { bad "$2: parameters differ from the 1-rank run"; head -30 "$T/diff"; }
    # the final evaluation (1024 held-out images, split over the ranks)
    v1="$(last_eval "$b" val/prec@1) $(last_eval "$b" val/loss)"
    v2="$(last_eval "$1" val/prec@1) $(last_eval "$1" val/loss)"
    echo "$v1 $v2" | awk '{ d = $2 - $4; if (d < 0) d = -d; exit !(NF == 4 && $1 == $3 && d < 1e-5) }' \
        && ok || bad "$2: final val '$v2', 1 rank '$v1'"
    a=$(loss20 "$b"); b=$(loss20 "$1")
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; exit !(a != "" && d < 1e-5 && d > -1e-5) }' \
        && ok || bad "$2: step-20 loss $b, 1 rank $a"
}

"$BIN" train "$T/c.ini" train.workdir="$T/w1" 2>"$T/err" || { bad "1-rank run"; cat "$T/err"; }
total=$("$BIN" params "$T/c.ini" | sed -n 's/^params: //p')
per_expert=$((16 * 32 + 32 + 32 * 16 + 16))   # Dense_0 kernel+bias, Dense_1 kernel+bias

for run in "2 0" "4 0" "4 2"; do
    set -- $run
    W=$1; EPAR=$2; name="$W ranks, expert_parallel $EPAR"
    dir="$T/w$W-$EPAR"
    # shellcheck disable=SC2086
    $MPI -np "$W" "$BIN" train "$T/c.ini" train.workdir="$dir" dist.expert_parallel="$EPAR" \
        >"$T/out" 2>"$T/err" || { bad "$name: run failed"; cat "$T/err"; continue; }
    same_as_one "$dir" "$name"
    # each rank holds the dense parameters and E/ep experts of the block
    ep=$([ "$EPAR" = 0 ] && echo "$W" || echo "$EPAR")
    want=$((total - 4 * per_expert + 4 / ep * per_expert))
    n=$(grep -c "experts $((4 / ep)) of 4 per Soft MoE block.* $want of $total parameters held" "$T/err")
    [ "$n" = "$W" ] && ok || { bad "$name: $n of $W ranks report $want of $total parameters"; grep held "$T/err"; }
done

# train.precision = bf16 under MPI: 2 and 4 ranks (experts split over the
# ranks, their products on all ranks' rows) end like 1 rank in bf16, within
# the fp32 tolerances above (measured: no parameter differs by 1e-7); the
# bf16 run itself differs from the fp32 one (10 tensors by more than 1e-3).
"$BIN" train "$T/c.ini" train.workdir="$T/bf1" train.precision=bf16 >/dev/null 2>"$T/err" ||
    { bad "bf16 1-rank run"; cat "$T/err"; }
for W in 2 4; do
    $MPI -np "$W" "$BIN" train "$T/c.ini" train.workdir="$T/bf$W" train.precision=bf16 \
        >"$T/out" 2>"$T/err" || { bad "bf16 on $W ranks: run failed"; cat "$T/err"; continue; }
    same_as "$T/bf1" "$T/bf$W" "bf16 on $W ranks"
done
h5diff -d 1e-3 "$T/w1/$CK" "$T/bf1/$CK" /params /params >/dev/null 2>&1 &&
    bad "bf16 run equal to the fp32 run within 1e-3: bf16 did not run" || ok

# train.microbatch: the 8-image step as 4 micro-steps of 2 on 1 rank, and as
# 2 ranks of 4 micro-steps of 1 image: gradients accumulated over the
# micro-steps, then synced and applied once, end like the 1-rank run (the
# tolerances above: the sums differ in order only)
for run in "1 2" "2 1"; do
    set -- $run
    dir="$T/mb$1-$2"
    $MPI -np "$1" "$BIN" train "$T/c.ini" train.workdir="$dir" train.microbatch="$2" \
        >"$T/out" 2>"$T/err" || { bad "train.microbatch $2 on $1 rank(s): run failed"; cat "$T/err"; continue; }
    same_as_one "$dir" "$1 rank(s), train.microbatch $2"
done

# the 4-rank checkpoint: whole (E, ...) expert datasets, world_size 4
h5ls "$T/w4-0/$CK/params/Encoder/encoderblock_1/Moe/Mlp/Dense_0/kernel" | grep -q '{4, 16, 32}' \
    && ok || bad "expert kernel stored whole as (4,16,32)"
h5dump -a world_size "$T/w4-0/$CK" | grep -q '(0): 4' && ok || bad "world_size attribute 4"

# resume the 4-rank step-10 checkpoint on 2 ranks and on 1 rank
for W in 2 1; do
    mkdir -p "$T/r$W" && cp "$T/w4-0/ckpt-00000010.h5" "$T/r$W/"
    if [ "$W" = 1 ]; then
        "$BIN" train "$T/c.ini" train.workdir="$T/r$W" >"$T/out" 2>"$T/err"
    else
        $MPI -np "$W" "$BIN" train "$T/c.ini" train.workdir="$T/r$W" >"$T/out" 2>"$T/err"
    fi || { bad "resume on $W ranks"; cat "$T/err"; continue; }
    grep -q "resuming from .*ckpt-00000010.h5" "$T/err" && ok || bad "resume on $W ranks: no resume"
    same_as_one "$T/r$W" "4-rank checkpoint resumed on $W"
done

# train.init on 2 ranks: each rank reads its experts' slice of the 1-rank
# checkpoint (one step at lr 0 leaves the parameters exactly as loaded)
$MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/init" train.init="$T/w1/$CK" train.steps=1 \
    schedule.warmup_steps=0 optim.lr=0 >"$T/out" 2>"$T/err" \
    && h5diff "$T/w1/$CK" "$T/init/ckpt-00000001.h5" /params /params >"$T/diff" \
    && ok || { bad "train.init on 2 ranks"; cat "$T/err" "$T/diff" | head -20; }

# SIGTERM that reaches one rank only (rank 2 of 4, during step 7): all ranks
# agree, checkpoint step 7 and exit 0; re-running resumes and ends like the
# uninterrupted run
$MPI -np 4 "$BIN" train "$T/c.ini" debug.stop_rank=2 debug.stop_at_step=7 \
    train.workdir="$T/sig" >"$T/out" 2>"$T/err" && [ -e "$T/sig/ckpt-00000007.h5" ] \
    && ok || { bad "signal on one rank"; cat "$T/err"; }
$MPI -np 4 "$BIN" train "$T/c.ini" train.workdir="$T/sig" >"$T/out" 2>"$T/err" \
    || { bad "resume after the signal"; cat "$T/err"; }
same_as_one "$T/sig" "resumed after a signal on one rank"

# a fatal error on rank 1 of 4 at step 3 ends the job, non-zero, promptly
t0=$(date +%s)
$MPI -np 4 "$BIN" train "$T/c.ini" debug.fail_rank=1 debug.fail_at_step=3 \
    train.workdir="$T/f" >"$T/out" 2>"$T/err"
rc=$?
t1=$(date +%s)
[ "$rc" != 0 ] && [ "$rc" != 124 ] && ok || bad "failing rank: exit $rc (124 = hung)"
[ $((t1 - t0)) -lt 30 ] && ok || bad "failing rank: the job took $((t1 - t0)) s to end"
grep -q "error: rank 1 of 4: test hook" "$T/err" && ok || { bad "the error names the rank"; cat "$T/err"; }

# bad distributed settings stop before any work
$MPI -np 4 "$BIN" train "$T/c.ini" train.workdir="$T/b1" dist.expert_parallel=3 >"$T/out" 2>"$T/err"
[ $? != 0 ] && grep -q "dist.expert_parallel = 3 must divide the number of ranks (4)" "$T/err" \
    && [ ! -e "$T/b1" ] && ok || { bad "expert_parallel 3 of 4 ranks"; cat "$T/err"; }
$MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/b2" moe.experts=3 >"$T/out" 2>"$T/err"
[ $? != 0 ] && grep -q "must divide moe.experts = 3" "$T/err" && [ ! -e "$T/b2" ] \
    && ok || { bad "3 experts over 2 ranks"; cat "$T/err"; }
$MPI -np 3 "$BIN" train "$T/c.ini" train.workdir="$T/b3" dist.expert_parallel=1 >"$T/out" 2>"$T/err"
[ $? != 0 ] && grep -q "train.batch_size = 8 is the global batch and must be divisible by the number of ranks (3)" "$T/err" \
    && ok || { bad "batch 8 over 3 ranks"; cat "$T/err"; }

# shards: 2 ranks read disjoint shards; their checkpoint keeps both loader
# positions, and 1 rank resumes from it at the next epoch boundary
"$BIN" shards synth "$T/syn/s" 160 40 >/dev/null 2>&1 || bad "shards synth"
SH="data.source=shards data.train=$T/syn/s-{000000..000003}.tar data.val=$T/syn/s-{000000..000000}.tar model.classes=10 data.pp_train=resize(8)|value_range(-1,1) data.pp_eval=resize(8)|value_range(-1,1) data.threads=1 train.steps=6 train.ckpt_every=6"
# shellcheck disable=SC2086
$MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/s2" $SH >"$T/out" 2>"$T/err" \
    && ok || { bad "2 ranks on shards"; cat "$T/err"; }
h5dump -d /state/loader_taken "$T/s2/ckpt-00000006.h5" | grep -q '(0): 24, 24' \
    && ok || { bad "loader position per rank"; h5dump -d /state/loader_taken "$T/s2/ckpt-00000006.h5"; }
# shellcheck disable=SC2086
"$BIN" train "$T/c.ini" train.workdir="$T/s2" $SH train.steps=8 >"$T/out" 2>"$T/err" \
    && grep -q "written by 2 ranks, this run has 1: the data restarts at the next epoch boundary (epoch 1)" "$T/err" \
    && ok || { bad "2-rank shard checkpoint resumed on 1 rank"; cat "$T/err"; }

# evaluation split over the ranks: the same parameters (train.init, steps at
# lr 0) evaluated by 1 rank and by 2 ranks reading half the shards each give
# the same prec@1 and loss over the same 160 images (not 320: no image counted
# twice); few-shot features gathered from both ranks give a result
EV="data.val=$T/syn/s-{000000..000003}.tar train.init=$T/s2/ckpt-00000006.h5 train.steps=2 schedule.warmup_steps=0 optim.lr=0 eval.every=1 fewshot.syn=$T/syn/s-{000000..000001}.tar|$T/syn/s-{000002..000003}.tar fewshot.shots=1 fewshot.per_class=2"
# shellcheck disable=SC2086
"$BIN" train "$T/c.ini" train.workdir="$T/e1" $SH $EV >"$T/out" 2>"$T/err1" || { bad "eval, 1 rank"; cat "$T/err1"; }
# shellcheck disable=SC2086
$MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/e2" $SH $EV >"$T/out" 2>"$T/err2" || { bad "eval, 2 ranks"; cat "$T/err2"; }
v1=$(grep "step 1: val prec@1" "$T/err1"); v2=$(grep "step 1: val prec@1" "$T/err2")
echo "$v1 | $v2" | awk '{ split($0, h, "|"); split(h[1], a, " "); split(h[2], b, " ");
    # softmoe: step 1: val prec@1 P, val loss L (N images)
    d = a[9] - b[9]; if (d < 0) d = -d
    exit !(a[6] == b[6] && d < 1e-4 && a[10] == "(160" && b[10] == "(160") }' \
    && ok || bad "split evaluation: '$v1' against '$v2'"
grep -q "\"fewshot/syn/1shot\": " "$T/e2/metrics.jsonl" && ok || { bad "few-shot on 2 ranks"; cat "$T/e2/metrics.jsonl"; }

# The sparse routers use the same exchange: Tokens Choice (k=2, groups of 2
# images, noisy gates, importance + load losses) and Experts Choice on 1, 2
# and 4 ranks end alike (same tolerances as above); the loss and aux_loss of
# step 20 agree. A run stopped at step 7 and resumed is bit-identical to the
# uninterrupted one, noise included (h5diff without tolerance).
same_as() {  # ref dir name
    # shellcheck disable=SC2086
    # (the per-tensor crc32 attributes differ with the data: compare values only)
    h5diff -d 1e-5 $KB --exclude-attribute /params "$1/$CK" "$2/$CK" /params /params >"$T/diff" 2>&1 \
        && h5diff -d 1e-5 $KB --exclude-attribute /opt/m "$1/$CK" "$2/$CK" /opt/m /opt/m >>"$T/diff" 2>&1 \
        && ok || { bad "$3: parameters differ from the 1-rank run"; head -20 "$T/diff"; }
    x=$(metric "$1" 20 aux_loss); y=$(metric "$2" 20 aux_loss)   # none for experts_choice: 0
    a="$(metric "$1" 20 loss) ${x:-0}"; b="$(metric "$2" 20 loss) ${y:-0}"
    echo "$a $b" | awk '{ d = $1 - $3; e = $2 - $4; exit !(NF == 4 && d < 1e-5 && d > -1e-5 && e < 1e-6 && e > -1e-6) }' \
        && ok || bad "$3: step-20 loss/aux '$b', 1 rank '$a'"
    # the experts' load extremes are the global batch's, not per-rank figures
    a="$(metric "$1" 20 moe/1/load_min) $(metric "$1" 20 moe/1/load_max)"
    b="$(metric "$2" 20 moe/1/load_min) $(metric "$2" 20 moe/1/load_max)"
    echo "$a $b" | awk '{ d = $1 - $3; e = $2 - $4; exit !(NF == 4 && $2 > 0 && d < 1e-4 && d > -1e-4 && e < 1e-4 && e > -1e-4) }' \
        && ok || bad "$3: step-20 load min/max '$b', 1 rank '$a'"
}
for R in "tokens_choice moe.k=2 moe.group_size=2" "experts_choice moe.capacity_factor=1.5"; do
    set -- $R
    name=$1; shift
    # shellcheck disable=SC2086
    "$BIN" train "$T/c.ini" train.workdir="$T/$name-1" moe.router=$name "$@" 2>"$T/err" \
        || { bad "$name: 1-rank run"; cat "$T/err"; continue; }
    for W in 2 4; do
        # shellcheck disable=SC2086
        $MPI -np "$W" "$BIN" train "$T/c.ini" train.workdir="$T/$name-$W" moe.router=$name "$@" \
            >"$T/out" 2>"$T/err" || { bad "$name: $W ranks"; cat "$T/err"; continue; }
        same_as "$T/$name-1" "$T/$name-$W" "$name on $W ranks"
    done
    # shellcheck disable=SC2086
    "$BIN" train "$T/c.ini" debug.stop_at_step=7 train.workdir="$T/$name-s" moe.router=$name "$@" \
        >"$T/out" 2>"$T/err" && "$BIN" train "$T/c.ini" train.workdir="$T/$name-s" \
        moe.router=$name "$@" >"$T/out" 2>>"$T/err" \
        && h5diff "$T/$name-1/$CK" "$T/$name-s/$CK" /params /params >"$T/diff" 2>&1 \
        && h5diff "$T/$name-1/$CK" "$T/$name-s/$CK" /opt /opt >>"$T/diff" 2>&1 \
        && ok || { bad "$name: stopped at step 7 and resumed differs"; cat "$T/err" "$T/diff" | head -20; }
    # train.microbatch=2 (groups of 2 stay whole): 2 ranks of 2 micro-steps
    # end like the 1-rank run without it; on 1 rank, stopped at step 7 and
    # resumed, bit-identical to the uninterrupted run with it
    # shellcheck disable=SC2086
    $MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/$name-m2" moe.router=$name "$@" \
        train.microbatch=2 >"$T/out" 2>"$T/err" || { bad "$name: microbatch on 2 ranks"; cat "$T/err"; continue; }
    same_as "$T/$name-1" "$T/$name-m2" "$name on 2 ranks, train.microbatch 2"
    # shellcheck disable=SC2086
    "$BIN" train "$T/c.ini" train.workdir="$T/$name-m1" moe.router=$name "$@" train.microbatch=2 \
        >"$T/out" 2>"$T/err" && "$BIN" train "$T/c.ini" debug.stop_at_step=7 \
        train.workdir="$T/$name-ms" moe.router=$name "$@" train.microbatch=2 >"$T/out" 2>>"$T/err" \
        && "$BIN" train "$T/c.ini" train.workdir="$T/$name-ms" moe.router=$name "$@" \
        train.microbatch=2 >"$T/out" 2>>"$T/err" \
        && h5diff "$T/$name-m1/$CK" "$T/$name-ms/$CK" /params /params >"$T/diff" 2>&1 \
        && h5diff "$T/$name-m1/$CK" "$T/$name-ms/$CK" /opt /opt >>"$T/diff" 2>&1 \
        && ok || { bad "$name: microbatch, stopped at step 7 and resumed differs"; cat "$T/err" "$T/diff" | head -20; }
done
grep -q '"aux_loss": ' "$T/tokens_choice-4/metrics.jsonl" && grep -q '"moe/1/dropped": ' "$T/tokens_choice-4/metrics.jsonl" \
    && grep -q '"moe/1/unprocessed": ' "$T/experts_choice-2/metrics.jsonl" \
    && ok || bad "router metrics in metrics.jsonl"

# commands other than train run once, on rank 0, as a world of one
$MPI -np 2 "$BIN" params "$T/c.ini" >"$T/out" 2>"$T/err" \
    && [ "$(grep -c '^params: ' "$T/out")" = 1 ] && grep -q "^params: $total$" "$T/out" \
    && grep -q "rank 0 runs this command alone" "$T/err" \
    && ok || { bad "params under mpirun"; cat "$T/out" "$T/err"; }

finish "mpi"
