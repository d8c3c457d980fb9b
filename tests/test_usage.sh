#!/bin/sh
# The command line as a newcomer meets it: `softmoe CMD --help` for every
# command, `softmoe keys`, a wrong config name listing the configs that
# exist, `fewshot.<name>=` removing a set, fewshot.shots validated, errors
# without the source location (kept under SOFTMOE_DEBUG=1), evaluation
# progress on a terminal, bench's MFU warning, and an MPI error that every
# rank meets printed once.
# Usage: sh tests/test_usage.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# --help for each command the usage lists, and for an unknown one an error
"$BIN" --help >"$T/usage" || bad "softmoe --help exited non-zero"
cmds=$(sed -n 's/^  softmoe \([a-z]*\).*/\1/p' "$T/usage")
[ "$(echo "$cmds" | wc -w)" -ge 7 ] && ok || bad "usage lists too few commands: $cmds"
for c in $cmds; do
    if "$BIN" "$c" --help >"$T/h" 2>&1 && grep -q "^usage: softmoe $c" "$T/h" && [ "$(wc -l <"$T/h")" -ge 2 ]
    then ok; else bad "softmoe $c --help:"; cat "$T/h"; fi
done
"$BIN" help train | grep -q "^usage: softmoe train" && ok || bad "softmoe help train"
"$BIN" nosuch --help >/dev/null 2>"$T/e" && bad "unknown command --help exited 0" ||
    { grep -q "unknown command 'nosuch'" "$T/e" && ok || bad "unknown command message"; }

# softmoe keys: every key once, with type, default and doc
"$BIN" keys >"$T/keys" || bad "softmoe keys exited non-zero"
grep -qE '^model\.width +int +64 +D, the token width' "$T/keys" && ok || bad "keys: model.width line"
grep -qE '^model\.pool +enum +gap .*\[gap\|tok\|map\]' "$T/keys" && ok || bad "keys: enum choices"
grep -q "(undocumented)" "$T/keys" && bad "keys: an undocumented key" || ok
n=$(grep -c '^[a-z]*\.[a-z0-9_<>]* ' "$T/keys")
[ "$n" -ge 55 ] && ok || bad "keys lists only $n keys"
"$BIN" keys moe | grep -v '^moe\.' && bad "keys moe shows other sections" || ok
"$BIN" keys nosection >/dev/null 2>&1 && bad "keys of an unknown section exited 0" || ok

# a wrong config name lists the configs that exist
"$BIN" train configs/vit_s61.ini >/dev/null 2>"$T/e" && bad "missing config exited 0"
grep -q "configs/vit_s61.ini' cannot be read" "$T/e" && grep -q "configs in configs/:.* vit_s16 " "$T/e" &&
    ok || { bad "missing config does not list configs:"; cat "$T/e"; }
make -s train CONFIG=vit_s61 >/dev/null 2>"$T/e" && bad "make train CONFIG=vit_s61 exited 0"
grep -q "fmnist_softmoe" "$T/e" && ok || { bad "make train CONFIG=vit_s61 lists no configs:"; cat "$T/e"; }

# fewshot.<name>= removes a set; fewshot.shots is validated
printf '[model]\nwidth = 16\ndepth = 1\nheads = 2\nmlp_dim = 32\nimage_size = 8\npatch = 4\nclasses = 4\n[schedule]\nwarmup_steps = 1\n[train]\nsteps = 2\nbatch_size = 4\n[fewshot]\nmissing = /nonexistent/a.tar|/nonexistent/b.tar\n' >"$T/c.ini"
"$BIN" train "$T/c.ini" train.workdir="$T/w1" fewshot.missing= >"$T/o" 2>"$T/e" && ok ||
    { bad "fewshot.missing= did not remove the set:"; cat "$T/e"; }
grep -q "^missing" "$T/w1/config.ini" && bad "removed set written to config.ini" || ok
"$BIN" params "$T/c.ini" fewshot.shots=ten >/dev/null 2>"$T/e" && bad "fewshot.shots=ten accepted"
grep -q "fewshot.shots = 'ten' is not a comma-separated list of positive integers" "$T/e" && ok ||
    { bad "fewshot.shots=ten message:"; cat "$T/e"; }

# errors name what failed, not where in the source; SOFTMOE_DEBUG=1 adds it
"$BIN" train "$T/c.ini" train.workdir="$T/w2" data.source=shards data.train="$T/none-{000000..000001}.tar" \
    >/dev/null 2>"$T/e" && bad "missing shards exited 0"
grep -q "does not exist" "$T/e" && ok || { bad "missing shards message:"; cat "$T/e"; }
grep -q "(at src/" "$T/e" && bad "user-facing error shows the source location" || ok
SOFTMOE_DEBUG=1 "$BIN" train "$T/c.ini" train.workdir="$T/w2" data.source=shards \
    data.train="$T/none-{000000..000001}.tar" >/dev/null 2>"$T/e"
grep -q "(at src/.*\.c:[0-9]*)" "$T/e" && ok || { bad "SOFTMOE_DEBUG=1 lacks the location:"; cat "$T/e"; }

# evaluation progress on a terminal (script(1) gives the command a pty), none otherwise
"$BIN" shards synth "$T/s" 96 96 >/dev/null 2>&1 || bad "shards synth"
EV="$T/c.ini fewshot.missing= model.channels=3 model.classes=10 data.source=shards data.train=$T/s-000000.tar data.val=$T/s-000000.tar data.pp_eval=resize(8)|value_range(-1,1) eval.batch_size=16"
if command -v script >/dev/null 2>&1; then
    printf '#!/bin/sh\nexec "%s" eval %s\n' "$BIN" "$(printf '%s' "$EV" | sed "s/ data.pp_eval=\([^ ]*\)/ 'data.pp_eval=\\1'/")" >"$T/ev.sh"
    script -qec "sh $T/ev.sh" /dev/null >"$T/tty" 2>&1
    grep -q "evaluating $T/s-000000.tar: [0-9]* images" "$T/tty" && ok || { bad "no progress on a terminal:"; cat "$T/tty"; }
    # the final evaluation of a synthetic run too
    script -qec "$BIN train $T/c.ini fewshot.missing= train.workdir=$T/wtty eval.synthetic_images=32" /dev/null >"$T/tty" 2>&1
    grep -q "evaluating synthetic: 32 of 32 images" "$T/tty" && ok || { bad "no synthetic evaluation progress:"; cat "$T/tty"; }
else
    skip "evaluation progress (no script(1) for a terminal)"
fi
# shellcheck disable=SC2086
"$BIN" eval $EV >"$T/o" 2>"$T/e" || bad "eval on shards failed"
grep -q "evaluating" "$T/e" && bad "progress printed to a non-terminal" || ok
grep -q '"val/prec@1"' "$T/o" && ok || bad "eval printed no val/prec@1"

# bench: a peak measured on a busy machine (test hook) gives MFU > 100% and a warning
SOFTMOE_BENCH_PEAK=0.001 "$BIN" bench "$T/c.ini" bench.steps=1 >"$T/o" 2>&1
grep -q "^warning: mfu above 100% means the sgemm peak was measured while the machine was busy" "$T/o" &&
    ok || { bad "no MFU warning:"; cat "$T/o"; }
"$BIN" bench "$T/c.ini" bench.steps=2 >"$T/o" 2>&1
grep -q "best of 4 measured between the steps" "$T/o" && ok || { bad "peak not interleaved:"; cat "$T/o"; }
# which BLAS kernels ran, and who chose them
OPENBLAS_CORETYPE=Haswell "$BIN" bench "$T/c.ini" bench.steps=1 >"$T/o2" 2>&1
grep -q "^blas: OpenBLAS, Haswell kernels (OPENBLAS_CORETYPE=Haswell in the environment" "$T/o2" &&
    ok || { bad "bench blas line with OPENBLAS_CORETYPE:"; grep blas "$T/o2"; }
env -u OPENBLAS_CORETYPE "$BIN" bench "$T/c.ini" bench.steps=1 >"$T/o2" 2>&1
grep -q "^blas: OpenBLAS, [A-Za-z0-9]* kernels (its choice for this CPU)" "$T/o2" &&
    ok || { bad "bench blas line without OPENBLAS_CORETYPE:"; grep blas "$T/o2"; }
mfu=$(sed -n 's/^mfu: \([0-9.]*\)%.*/\1/p' "$T/o")
if awk -v m="$mfu" 'BEGIN { exit !(m > 100) }'; then
    grep -q "^warning: mfu above 100%" "$T/o" && ok || bad "mfu $mfu% without a warning"
else ok; fi

# train.init = big_vision .npz (the test_npz fixture): head re-initialised for
# other classes, position embedding resized for another resolution; export
# writes an .npz that numpy reads with the checkpoint's values
BV="model.width=32 model.depth=2 model.heads=2 model.mlp_dim=64 model.patch=4 model.channels=3 model.pool=tok train.batch_size=4 train.steps=2 schedule.warmup_steps=1"
# shellcheck disable=SC2086
"$BIN" train "$T/c.ini" $BV model.classes=5 model.image_size=12 train.init=tests/data/bv_vit_tiny.npz \
    train.workdir="$T/bv" fewshot.missing= >/dev/null 2>"$T/e" || { bad "train.init = .npz:"; cat "$T/e"; }
grep -q "head/kernel has 10 classes, the config 5: head re-initialised" "$T/e" && ok || { bad "npz head:"; cat "$T/e"; }
grep -q "position embedding resized from 2x2 to 3x3" "$T/e" && ok || { bad "npz posemb:"; cat "$T/e"; }
grep -q "initialised from tests/data/bv_vit_tiny.npz" "$T/e" && ok || bad "npz init message"
"$BIN" export "$T/bv/ckpt-00000002.h5" "$T/bv.npz" >"$T/o" 2>"$T/e" || { bad "export:"; cat "$T/e"; }
grep -q "^wrote 40 arrays" "$T/o" && ok || { bad "export output:"; cat "$T/o"; }
if /usr/bin/python3 -c 'import numpy, h5py' 2>/dev/null; then
    /usr/bin/python3 - "$T/bv.npz" "$T/bv/ckpt-00000002.h5" <<'PY' && ok || bad "numpy/h5py disagree with the export"
import sys, numpy as np, h5py
z, f = np.load(sys.argv[1]), h5py.File(sys.argv[2], "r")
assert len(z.files) == 40 and all(np.array_equal(z[k], f["params/" + k][()]) for k in z.files)
PY
else
    skip "reading the export with numpy (python3-numpy/h5py not installed)"
fi
"$BIN" train "$T/c.ini" $BV model.classes=5 model.image_size=12 train.init="$T/nonexistent.npz" \
    train.workdir="$T/bv2" fewshot.missing= >/dev/null 2>"$T/e" && bad "missing npz accepted"
grep -q "nonexistent.npz' as .npz" "$T/e" && ok || { bad "missing npz message:"; cat "$T/e"; }

# an MPI error that every rank meets is printed once
if command -v mpirun >/dev/null 2>&1 && ldd "$BIN" | grep -q libmpi; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    MPI="timeout 60 mpirun --oversubscribe --mca btl self,vader --mca mpi_yield_when_idle 1"
    $MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/m1" data.source=shards \
        data.train="$T/none-{000000..000001}.tar" >/dev/null 2>"$T/e"
    n=$(grep -c "softmoe: error:.*does not exist" "$T/e")
    [ "$n" = 1 ] && ok || { bad "a data error on both ranks printed $n times:"; cat "$T/e"; }
    $MPI -np 2 "$BIN" train "$T/c.ini" train.workdir="$T/m2" model.widht=3 >/dev/null 2>"$T/e"
    n=$(grep -c "softmoe: error:.*model.widht" "$T/e")
    [ "$n" = 1 ] && ok || { bad "a config error on both ranks printed $n times:"; cat "$T/e"; }
else
    skip "MPI error printed once (no MPI build)"
fi

finish "usage"
