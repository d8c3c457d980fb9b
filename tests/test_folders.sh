#!/bin/sh
# Folders by class name. A model trained on ROOT/<wnid>/ (synthetic
# gratings, 10 classes). An evaluation folder missing one class and holding
# a folder that is no training class (and sorts first, so numbering by
# position would shift every label) warns, listing both, and scores exactly
# the images of the classes present: prec@1 = (correct on the full folder -
# correct on the missing class) / (images - its images), the counts taken
# from the full evaluation and from predict. A flat folder with a labels
# file (one class per line in file order; a CSV file,wnid with a header, in
# another order; 1-based class numbers) scores as the full folder does. A
# flat folder without one says which key to set. Shards written by `softmoe
# shards folder` carry classes.txt, so a model trained on them maps an
# evaluation folder by name too.
# Usage: sh tests/test_folders.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
BIN=${1:-build/softmoe}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

"$BIN" shards synth "$T/s" 200 200 >/dev/null 2>&1 || bad "shards synth"
mkdir -p "$T/x" "$T/flat" && tar -xf "$T/s-000000.tar" -C "$T/x" || bad "tar -x"
for cls in "$T"/x/*.cls; do
    k=$(cat "$cls"); key=$(basename "$cls" .cls)
    mkdir -p "$T/train/n0$k"; cp "$T/x/$key.jpg" "$T/train/n0$k/$key.jpg"
    cp "$T/x/$key.jpg" "$T/flat/$key.jpg"
done
cat >"$T/c.ini" <<INI
[model]
width = 32
depth = 2
heads = 2
mlp_dim = 64
image_size = 16
patch = 4
channels = 3
classes = 10
[data]
source = folder
train = $T/train
pp_train = resize(16)|value_range(-1,1)
pp_eval = resize(16)|value_range(-1,1)
threads = 1
[optim]
lr = 3e-3
[schedule]
warmup_steps = 5
decay = cosine
[train]
batch_size = 32
steps = 40
log_every = 40
workdir = $T/w
[eval]
batch_size = 50
INI
"$BIN" train "$T/c.ini" >/dev/null 2>"$T/e" || { bad "training:"; cat "$T/e"; }
CK=$T/w/ckpt-00000040.h5
p1() { sed -n 's/.*"val\/prec@1": \([0-9.e-]*\).*/\1/p' "$1"; }

"$BIN" eval "$CK" data.val="$T/train" >"$T/full" 2>"$T/e" || { bad "eval full:"; cat "$T/e"; }
pfull=$(p1 "$T/full")
nfull=200
n3=$(find "$T/train/n03" -type f | wc -l)
c3=$("$BIN" predict "$CK" "$T/train/n03" --top 1 | awk '$3 == "n03"' | wc -l)

# the evaluation folder: without n03, with a first-sorting folder of class 5's images
mkdir -p "$T/val" && cp -R "$T"/train/n0* "$T/val/" && rm -rf "$T/val/n03" && cp -R "$T/train/n05" "$T/val/a_extra"
"$BIN" eval "$CK" data.val="$T/val" >"$T/miss" 2>"$T/e" || { bad "eval missing:"; cat "$T/e"; }
grep -q "warning: image folder '$T/val'.*1 of the 10 training classes have no folder here.*n03" "$T/e" && ok ||
    { bad "no warning naming the missing class:"; cat "$T/e"; }
grep -q "1 folders are not training classes (skipped): a_extra" "$T/e" && ok || { bad "no warning naming the extra folder:"; cat "$T/e"; }
got=$(p1 "$T/miss")
awk -v g="$got" -v p="$pfull" -v n="$nfull" -v c3="$c3" -v n3="$n3" \
    'BEGIN { w = (p * n - c3) / (n - n3); d = g - w; exit !(g != "" && d < 1e-5 && d > -1e-5) }' && ok ||
    bad "missing-class folder scored $got; the classes present score ($pfull*$nfull-$c3)/($nfull-$n3)"

# flat folder + labels list (sorted file order), CSV (header, other order), class numbers
ls "$T/flat" | sort | while read -r f; do cat "$T/x/${f%.jpg}.cls" | sed 's/^/n0/'; echo; done | sed '/^$/d' >"$T/list.txt"
{ echo "ImageId,PredictionString"
  ls "$T/flat" | sort -r | while read -r f; do printf '%s,n0%s 1 2 3 4\n' "${f%.jpg}" "$(cat "$T/x/${f%.jpg}.cls")"; done; } >"$T/sol.csv"
ls "$T/flat" | sort | while read -r f; do echo $(( $(cat "$T/x/${f%.jpg}.cls") + 1 )); done >"$T/ids.txt"
for lab in list.txt sol.csv ids.txt; do
    "$BIN" eval "$CK" data.val="$T/flat" data.val_labels="$T/$lab" >"$T/o" 2>"$T/e" || { bad "flat + $lab:"; cat "$T/e"; continue; }
    [ "$(p1 "$T/o")" = "$pfull" ] && ok || bad "flat + $lab scored $(p1 "$T/o"), the class folders $pfull"
done
"$BIN" eval "$CK" data.val="$T/flat" >/dev/null 2>"$T/e" && bad "flat folder without labels accepted"
grep -q "no class subfolders (for a flat ImageNet validation folder set data.val_labels" "$T/e" && ok ||
    { bad "flat folder hint:"; cat "$T/e"; }
head -n 5 "$T/list.txt" >"$T/short.txt"
"$BIN" eval "$CK" data.val="$T/flat" data.val_labels="$T/short.txt" >/dev/null 2>"$T/e" && bad "short labels list accepted"
grep -q "lists 5 labels for the 200 files" "$T/e" && ok || { bad "short labels message:"; cat "$T/e"; }
printf 'ImageId,PredictionString\n0000001,n99 1 2\n' >"$T/badlab.csv"
"$BIN" eval "$CK" data.val="$T/flat" data.val_labels="$T/badlab.csv" >/dev/null 2>"$T/e" && bad "unknown label accepted"
grep -q "badlab.csv:2: label 'n99' is neither a training class name" "$T/e" && ok || { bad "unknown label message:"; cat "$T/e"; }

# few-shot: the test folder is numbered by its train folder's names
"$BIN" eval "$CK" "fewshot.syn=$T/train|$T/val" fewshot.shots=1,5 fewshot.per_class=10 >"$T/o" 2>"$T/e" ||
    { bad "few-shot with a mismatched test folder:"; cat "$T/e"; }
grep -q '"fewshot/syn/5shot"' "$T/o" && grep -q "against the classes of '$T/train'" "$T/e" && ok ||
    { bad "few-shot folder mapping:"; cat "$T/o" "$T/e"; }

# shards folder -> classes.txt -> a shard-trained model maps folders by name
"$BIN" shards folder "$T/train" "$T/sh/s" 100 >/dev/null 2>"$T/e" || { bad "shards folder:"; cat "$T/e"; }
[ "$(sed -n 4p "$T/sh/classes.txt")" = "n03" ] && ok || bad "classes.txt line 4 is not n03"
"$BIN" train "$T/c.ini" data.source=shards "data.train=$T/sh/s-{000000..000001}.tar" data.val="$T/val" \
    train.steps=2 schedule.warmup_steps=1 train.workdir="$T/w2" >/dev/null 2>"$T/e" || { bad "train on shards:"; cat "$T/e"; }
grep -q "against the classes of '$T/sh/s-{000000..000001}.tar'.*n03" "$T/e" && ok ||
    { bad "shard-trained run does not map the val folder by classes.txt:"; cat "$T/e"; }

# without classes.txt the shards name no classes: the folder is numbered by position, with a warning
rm -f "$T/sh/classes.txt"
"$BIN" eval "$T/w2/ckpt-00000002.h5" >/dev/null 2>"$T/e" || { bad "eval without classes.txt:"; cat "$T/e"; }
grep -q "names no classes (no classes.txt beside its shards.*'$T/val' is numbered by its sorted subfolders" "$T/e" &&
    ok || { bad "no warning when the training data names no classes:"; cat "$T/e"; }

finish "folders"
