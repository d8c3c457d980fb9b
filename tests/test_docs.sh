#!/bin/sh
# Every command that README.md, the usage text (softmoe --help) and the
# Makefile show, run as a user with a fresh clone would run it. The test runs
# in a copy of the tracked files without data/ or runs/ (the build directory
# is shared, so nothing recompiles). Only step counts are made tiny (and the
# Fashion-MNIST idx files are a 200/100-image cut of Debian's); everything
# else runs as written. A command the docs gain that this file does not
# handle fails the test, so the docs and this list cannot drift apart.
# Usage: sh tests/test_docs.sh build/softmoe
set -u
ROOT=$(pwd)
BIN=$(cd "$(dirname "${1:-build/softmoe}")" && pwd)/$(basename "${1:-build/softmoe}")
BUILD=$(dirname "$BIN")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# Results go to a file, so that the slow independent commands can run in
# background groups (2 cores) and still be counted.
R=$T/results
: >"$R"
ok()  { echo ok >>"$R"; }
bad() { echo "FAIL: $*" | tee -a "$R"; }
O=$T/g0   # output files of the current group
# One thread: these runs are tiny, and on a loaded 2-core machine two OpenMP
# threads spinning against other jobs made them several times slower.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# ---------------------------------------------------------------- a fresh clone
C=$T/clone
mkdir -p "$C"
# cp -p keeps modification times, so the shared build stays up to date
for f in Makefile README.md; do cp -p "$f" "$C/"; done
for d in src configs scripts tests; do cp -pR "$d" "$C/"; done
ln -s "$BUILD" "$C/build"
# Fashion-MNIST idx files cut to 600 train and 100 test images, written 100
# per shard: the default config's 6 train shards and 1 test shard
IDX=$T/idx
mkdir -p "$IDX"
cut_idx() {  # cut_idx SPLIT N: big-endian headers rewritten for N items
    n=$2; be=$(printf '\\%03o\\%03o\\%03o\\%03o' 0 0 $((n / 256)) $((n % 256)))
    { printf '\000\000\010\003'; printf "$be"; printf '\000\000\000\034\000\000\000\034'
      zcat "/usr/share/datasets/fashion-mnist/$1-images-idx3-ubyte.gz" | tail -c +17 | head -c $((n * 784)); } \
        >"$IDX/$1-images-idx3-ubyte"
    { printf '\000\000\010\001'; printf "$be"
      zcat "/usr/share/datasets/fashion-mnist/$1-labels-idx1-ubyte.gz" | tail -c +9 | head -c "$n"; } \
        >"$IDX/$1-labels-idx1-ubyte"
}
cut_idx train 600
cut_idx t10k 100

# run NAME CMD: runs the shell text CMD in the clone; exit 0 expected
run() {
    _t0=$(date +%s.%N)
    name=$1; shift
    if (cd "$C" && eval "$1") >"$O.out" 2>"$O.err"; then ok
    else bad "$name: '$1' failed:"; tail -n 5 "$O.out" "$O.err"; fi
    # DOCS_TIME=1: the seconds each command took (to keep this test fast)
    [ -n "${DOCS_TIME:-}" ] && awk -v a="$_t0" -v b="$(date +%s.%N)" -v c="$1" 'BEGIN { printf "time %.1f s: %s\n", b - a, c }'
    return 0
}
# tiny STRING: the command with only step counts made small
tiny() {
    printf '%s\n' "$1" | sed -e "s/train\.steps=[0-9]*/train.steps=1/g" \
        -e 's/schedule\.warmup_steps=[0-9]*/schedule.warmup_steps=1/g' \
        -e 's/schedule\.cooldown_steps=[0-9]*/schedule.cooldown_steps=1/g' \
        -e "s/ckpt-00003500/ckpt-00000001/g"
}
# -o: the shared build is taken as it is, never rebuilt from the copy
MAKEVARS="-o build/softmoe FMNIST_IDX=$IDX FMNIST_PER_SHARD=100"
# The default config's 3500 steps (and 200 warmup) become 1 (and 1).
FMNIST_STEPS="train.steps=1 schedule.warmup_steps=1"

# ---------------------------------------------------------------- README.md
# Each command line of a README code block: handled below, or a template
# (placeholders in capitals, or data and machines a clone cannot have).
# (continued lines joined)
awk '/^```/ { inb = !inb; next }
     inb { if (sub(/\\$/, "")) { cont = cont $0; next } print cont $0; cont = "" }' README.md |
    grep -E '^(build/softmoe|make|mpirun|scripts/|OMP_NUM_THREADS|sh |softmoe |mkdir |tar )' |
    sed -e 's/[[:space:]]*#.*$//' -e 's/[[:space:]]*$//' >"$T/readme_cmds"

handled() {  # handled LINE: prints how this test treats a README line
    case "$1" in
    "make train") echo run-default ;;
    "make test") echo "self: this test is part of it" ;;
    "make bench") echo bench ;;
    "make bench-mpi") echo bench-mpi ;;
    "make train CONFIG=vit_s16 "*) echo run ;;
    "build/softmoe eval configs/fmnist_softmoe.ini"*) echo run ;;
    "build/softmoe eval runs/fmnist_softmoe/"*) echo run ;;
    "make train ARGS=\"train.precision=bf16\"") echo run-bf16 ;;
    "build/softmoe bench configs/vit_s16.ini "*"train.precision=bf16") echo run-bench ;;
    "make bench-peer"|"make bench-gemm") echo "timed: minutes of S/16 steps and products (PyTorch for bench-peer); their parts are tested by test_bf16.sh and test_gemm" ;;
    "build/softmoe inspect runs/fmnist_softmoe/"*) echo run ;;
    "build/softmoe predict runs/fmnist_softmoe/"*) echo run ;;
    "build/softmoe export runs/fmnist_softmoe/"*) echo run ;;
    "build/softmoe train configs/finetune_fmnist.ini "*) echo run-steps ;;
    "mkdir -p data/fmnist-png && tar -xf data/fmnist/"*) echo run ;;
    "build/softmoe keys"|"build/softmoe train --help") echo run ;;
    "build/softmoe shards fmnist /usr/share/datasets/fashion-mnist "*) echo run-idx ;;
    "build/softmoe shards synth "*) echo run-tmp ;;
    "scripts/plot.py "*) echo plot ;;
    "make paper") echo "paper: run below, narrowed to one small run" ;;
    "PAPER_JOBS=2 make paper") echo "paper: the same grid two runs at a time (tests/test_paper.sh runs PAPER_JOBS=2)" ;;
    "PAPER_STEPS="*"make paper") echo run-paper ;;
    "build/softmoe train configs/paper_fmnist.ini ...") echo "template: the grid's recipe, run by make paper" ;;
    *CONFIG.ini*|*CKPT.h5*|*WORKDIR*|*"fmnist|folder|synth ..."*) echo "template: placeholders" ;;
    *"/data/"*|*"runs/b16"*|*"/shared/"*) echo "template: names the user's own data or cluster" ;;
    *) echo none ;;
    esac
}
while IFS= read -r line; do
    how=$(handled "$line")
    case "$how" in
    none) bad "README command not covered by tests/test_docs.sh: $line" ;;
    run-default)
        # make train on a fresh clone writes data/fmnist, then trains
        run "make train" "make $MAKEVARS train ARGS='$FMNIST_STEPS'"
        [ -e "$C/data/fmnist/test-000000.tar" ] && [ -e "$C/runs/fmnist_softmoe/ckpt-00000001.h5" ] &&
            ok || bad "make train: no data/fmnist shards or checkpoint in the clone"
        grep -q 'val/prec@1' "$C/runs/fmnist_softmoe/metrics.jsonl" 2>/dev/null && ok ||
            bad "make train: no final evaluation in metrics.jsonl" ;;
    # the paper grid, as the README's quick subset shows, with 1 step and one run
    run-paper) run "README" "PAPER_OUT=runs/paper PAPER_STEPS=1 PAPER_ONLY=dense-w64 make $MAKEVARS paper"
               grep -q "dense-w64" "$C/runs/paper/results.csv" 2>/dev/null && ok || bad "make paper wrote no results.csv row" ;;
    # the default run in bf16, with the default run's steps made small
    run-bf16) run "README" "make $MAKEVARS train ARGS='train.precision=bf16 $FMNIST_STEPS'" ;;
    # a bench line: one timed step (slow and independent: beside the rest)
    run-bench) (O=$T/g2; run "README" "$line bench.steps=1") & ;;
    # a whole config's run: its step counts (in the file) made small
    run-steps) run "README" "$line $FMNIST_STEPS" ;;
    run) cmd=$(tiny "$line"); cmd=$(printf '%s' "$cmd" | sed "s|^make |make $MAKEVARS |")
         case "$line" in
         *CONFIG=vit_s16*) (O=$T/g1; run "README" "$cmd") & ;;  # slow and independent: beside the rest
         *) run "README" "$cmd" ;;
         esac ;;
    run-idx) run "README" "$(printf '%s' "$line" | sed -e "s|/usr/share/datasets/fashion-mnist|$IDX|" -e 's/ 10000$/ 100/')" ;;
    # (and 200 of its 2000 images)
    run-tmp) run "README" "$(printf '%s' "$line" | sed -e "s| /tmp/| $T/|" -e 's/ 2000 500$/ 200 100/')" ;;
    bench|bench-mpi|plot|self*|template*|paper*|timed*) ;;  # below, or not runnable from a clone
    esac
done <"$T/readme_cmds"

# make bench: on a fresh clone (no data/fmnist) it first writes the shards its
# last line reads; each bench line resolves its config (as `params`, without
# the big allocations). `softmoe bench` itself is run by test_usage.sh.
(cd "$C" && make -n $MAKEVARS FMNIST="$T/no-data" bench) >"$T/bench_n" 2>&1
grep -q "shards fmnist .* $T/no-data " "$T/bench_n" && ok || bad "make bench does not write the Fashion-MNIST shards it needs"
for target in bench bench-mpi; do
    # (any build directory: under `make BUILD=build-debug test` MAKEFLAGS carries it here)
    (cd "$C" && make -n $MAKEVARS "$target") 2>/dev/null | grep -E "^[^ ]*softmoe bench|bench_mpi.sh" |
    while IFS= read -r l; do
        cfg=$(printf '%s\n' "$l" | sed -E 's/.* (configs\/[a-z0-9_]+\.ini)(.*)$/\1 \2/')
        # shellcheck disable=SC2086
        if (cd "$C" && "$BIN" params $cfg >/dev/null 2>"$T/err"); then echo ok
        else echo "bad make $target: '$l' does not resolve: $(cat "$T/err")"; fi
    done >"$T/lines"
    [ -s "$T/lines" ] || echo "bad make $target: no bench command found in make -n" >>"$T/lines"
    while IFS= read -r r; do case "$r" in ok) ok ;; *) bad "${r#bad }" ;; esac; done <"$T/lines"
done
# make bench-experts: synthetic data, narrowed to one point of the sweep (beside the rest)
(O=$T/g2
 run "make bench-experts" "EXPERTS=8 ROUTERS=soft STEPS=1 BATCH=4 make $MAKEVARS bench-experts"
 grep -qE '^soft +8 ' "$O.out" && ok || { bad "bench-experts printed no row for 8 experts:"; cat "$O.out"; }) &
run "make deps" "make $MAKEVARS deps"

# scripts/plot.py needs python3-matplotlib (WITH_PYTHON=1 make deps)
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    run "plot.py curves" "scripts/plot.py curves runs/fmnist_softmoe runs/finetune_npz -o $T/curves.png"
    [ -s "$T/curves.png" ] && ok || bad "plot.py curves wrote no image"
else
    echo "SKIP: scripts/plot.py (python3-matplotlib not installed)"; echo skip >>"$R"
fi

# ---------------------------------------------------------------- usage text
"$BIN" --help >"$T/usage" 2>&1 || bad "softmoe --help exited non-zero"
n=0
while IFS= read -r ex; do
    n=$((n + 1))
    run "usage example" "$(tiny "build/$ex") train.workdir=runs/usage"
done <<EOF
$(sed -n 's/^ *example: //p' "$T/usage")
EOF
[ "$n" -gt 0 ] && ok || bad "softmoe --help shows no example"

# ---------------------------------------------------------------- docs
# A clone holds everything the docs point to: no DESIGN.md or ../ paths, and
# every relative link of README.md and docs/*.md resolves to a file here.
for md in README.md docs/*.md; do
    grep -n 'DESIGN\.md\|\.\./shared' "$md" && bad "$md points outside the repository" || ok
    grep -o '](\([^)#:]*\)[)#]' "$md" | sed 's/^](//; s/[)#]$//' | while IFS= read -r l; do
        [ -z "$l" ] && continue
        [ -e "$(dirname "$md")/$l" ] || echo "$md: link '$l' does not resolve"
    done >"$T/links"
    [ -s "$T/links" ] && bad "$(cat "$T/links")" || ok
done
for f in maths.md formats.md contributing.md; do [ -s "docs/$f" ] && ok || bad "docs/$f missing"; done

# ---------------------------------------------------------------- Makefile
# Every phony target is run above or named here with the reason it is not.
for t in $(sed -n 's/^\.PHONY://p' Makefile); do
    case "$t" in
    all|found|deps|train|bench|bench-experts|bench-mpi|paper) ;;   # run or resolved above
    bench-peer|bench-gemm) ;;  # timed: minutes; their parts are tested by test_bf16.sh and test_gemm
    test) ;;      # this suite
    clean) ;;     # removes the shared build: checked with -n only
    fuzz|fuzz-bins|fuzz-seeds) ;;  # libFuzzer: tests/test_fuzz.sh builds and replays; a fuzzing run is open-ended
    *) bad "Makefile target '$t' not covered by tests/test_docs.sh" ;;
    esac
done
(cd "$C" && make -n $MAKEVARS clean) | grep -q "rm -rf build" && ok || bad "make clean does not remove the build"

wait
pass=$(grep -c '^ok$' "$R"); fail=$(grep -c '^FAIL' "$R"); skip=$(grep -c '^skip$' "$R")
echo "test_docs: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
