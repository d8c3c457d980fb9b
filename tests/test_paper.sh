#!/bin/sh
# scripts/paper.sh on tiny data: a 3-step, two-run subset writes results.csv
# with the documented columns and numbers in them, a second invocation skips
# both runs, and scripts/plot.py turns the csv into PNGs (SKIP, counted, when
# matplotlib is absent). Usage: sh tests/test_paper.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

"$BIN" shards synth "$T/s" 240 120 >/dev/null 2>&1 || bad "shards synth"
export BIN PAPER_OUT="$T/paper" PAPER_STEPS=3 PAPER_BENCH=0 PAPER_ONLY="dense-w64 tc1-w64-e16"
export PAPER_TRAIN="$T/s-{000000..000001}.tar" PAPER_TEST="$T/s-{000000..000001}.tar"
sh scripts/paper.sh >"$T/out1" 2>&1 || { bad "paper.sh"; cat "$T/out1"; }
csv="$PAPER_OUT/results.csv"
head -1 "$csv" | grep -q '^name,family,router,width,experts,slots,k,capacity,params,gflops_per_image,train_gflop,core_seconds,img_per_s,test_prec1,fewshot_10shot,test_loss,dropped$' &&
    ok || bad "results.csv header: $(head -1 "$csv")"
[ "$(wc -l <"$csv")" = 3 ] && ok || { bad "results.csv has $(wc -l <"$csv") lines"; cat "$csv"; }
# every measured column holds a number; the router's capacity and dropping figure for tc1
awk -F, 'NR > 1 { for (i = 9; i <= 16; i++) if ($i !~ /^[0-9.eE+-]+$/) { print "column " i " of " $1 ": " $i; bad = 1 } }
         END { exit bad }' "$csv" && ok || { bad "non-numeric results"; cat "$csv"; }
grep -q '^tc1-w64-e16,tokens_choice,tokens_choice,64,16,,1,[0-9][0-9]*,.*,[0-9.]*$' "$csv" && ok ||
    { bad "tc1 row lacks capacity or dropped"; cat "$csv"; }
grep -q '^dense-w64,dense,none,64,0,' "$csv" && ok || bad "dense row"
sh scripts/paper.sh >"$T/out2" 2>&1 || bad "second paper.sh"
[ "$(grep -c 'done, skipped' "$T/out2")" = 2 ] && ! grep -q "steps)" "$T/out2" && ok ||
    { bad "second invocation did not skip both runs"; cat "$T/out2"; }
[ "$(wc -l <"$csv")" = 3 ] && ok || bad "results.csv changed on the second invocation"
PAPER_STEPS=0 sh scripts/paper.sh >/dev/null 2>&1 && bad "PAPER_STEPS=0 accepted" || ok
# two runs at a time: both rows, the same columns, and a failed run reported
PAPER_JOBS=2 PAPER_OUT="$T/jobs" sh scripts/paper.sh >"$T/out3" 2>&1 || { bad "PAPER_JOBS=2"; cat "$T/out3"; }
[ "$(wc -l <"$T/jobs/results.csv")" = 3 ] && [ "$(head -1 "$T/jobs/results.csv")" = "$(head -1 "$csv")" ] &&
    ok || { bad "PAPER_JOBS=2 results"; cat "$T/jobs/results.csv"; }
PAPER_JOBS=2 PAPER_OUT="$T/jobsbad" PAPER_TRAIN="$T/missing-{000000..000001}.tar" \
    sh scripts/paper.sh >"$T/out4" 2>&1 && bad "PAPER_JOBS=2 with failing runs exited 0" ||
    { grep -q 'some runs failed' "$T/out4" && ok || { bad "no failure message"; cat "$T/out4"; }; }
PAPER_JOBS=x sh scripts/paper.sh >/dev/null 2>&1 && bad "PAPER_JOBS=x accepted" || ok

if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 scripts/plot.py paper "$csv" >"$T/plot" 2>&1 || { bad "plot.py paper"; cat "$T/plot"; }
    # the Markdown table: a header, a separator and one line per run
    [ "$(grep -c '^| ' "$PAPER_OUT/results.md" 2>/dev/null)" = 4 ] &&
        grep -q '^| dense-w64 | 64 |' "$PAPER_OUT/results.md" && grep -q '^| tc1-w64-e16 | 64 | 16 |' "$PAPER_OUT/results.md" &&
        ok || { bad "results.md"; cat "$PAPER_OUT/results.md"; }
    for png in pareto dropping; do
        [ -s "$PAPER_OUT/$png.png" ] && ok || bad "$png.png not written"
    done
    # no ablation run in this subset: said, not drawn empty
    grep -q "no ablation runs in the results; ablations.png not written" "$T/plot" &&
        [ ! -e "$PAPER_OUT/ablations.png" ] && ok || { bad "ablations without runs"; cat "$T/plot"; }
else
    skip "plot.py paper (python3-matplotlib missing)"
fi
finish "paper"
