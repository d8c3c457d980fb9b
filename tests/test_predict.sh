#!/bin/sh
# softmoe predict: a small model trained for a few steps on a folder of
# synthetic gratings (10 classes named by folder); predict's top-1 names on
# that folder agree image by image with the labels exactly as often as
# `softmoe eval` scores it (two paths, one answer), and above chance; --top
# and --json; an unreadable file is reported by name while the others are
# still classified; class names from classes.txt beside shards.
# Usage: sh tests/test_predict.sh build/softmoe
set -u
. "$(dirname "$0")/lib.sh"
[ -n "${TRACE:-}" ] && set -x
BIN=${1:-build/softmoe}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# ROOT/<class name>/<key>.jpg from synthetic shards: class k is "grating_k"
"$BIN" shards synth "$T/s" 200 200 >/dev/null 2>&1 || bad "shards synth"
mkdir -p "$T/x" && tar -xf "$T/s-000000.tar" -C "$T/x" || bad "tar -x"
for cls in "$T"/x/*.cls; do
    k=$(cat "$cls"); key=$(basename "$cls" .cls)
    mkdir -p "$T/f/grating_$k" && mv "$T/x/$key.jpg" "$T/f/grating_$k/$key.jpg"
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
train = $T/f
val = $T/f
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
steps = 60
log_every = 60
workdir = $T/w
[eval]
batch_size = 50
INI
"$BIN" train "$T/c.ini" >"$T/o" 2>"$T/e" || { bad "training the fixture model:"; cat "$T/e"; }
CK=$T/w/ckpt-00000060.h5
"$BIN" eval "$CK" >"$T/ev" 2>"$T/e" || { bad "eval:"; cat "$T/e"; }
p1=$(sed -n 's/.*"val\/prec@1": \([0-9.e-]*\).*/\1/p' "$T/ev")

"$BIN" predict "$CK" "$T/f" --top 1 >"$T/p" 2>"$T/e" || { bad "predict:"; cat "$T/e"; }
n=$(wc -l <"$T/p")
[ "$n" = 200 ] && ok || bad "predict printed $n lines for 200 images"
# "FILE:  K NAME PROB": right when NAME is the image's folder
right=$(awk '{ f = $1; sub(/:$/, "", f); n = split(f, parts, "/"); if (parts[n - 1] == $3) r++ } END { print r + 0 }' "$T/p")
awk -v r="$right" -v p="$p1" 'BEGIN { exit !(r == int(p * 200 + 0.5)) }' && ok ||
    bad "predict right on $right of 200, eval's prec@1 is $p1"
awk -v r="$right" 'BEGIN { exit !(r > 40) }' && ok || bad "predict right on only $right of 200 (chance: 20)"
grep -q "grating_[0-9] " "$T/p" && ok || bad "predict shows no class names"

# --top 3 --json on two files: one object each with 3 classes, sorted by prob
set -- "$T"/f/grating_3/*.jpg
"$BIN" predict "$CK" "$1" "$2" --top 3 --json >"$T/j" 2>"$T/e" || bad "predict --json"
[ "$(wc -l <"$T/j")" = 2 ] && ok || bad "--json: not one line per image"
/usr/bin/python3 - "$T/j" <<'PY' 2>/dev/null && ok || { bad "--json output:"; cat "$T/j"; }
import json, sys
for line in open(sys.argv[1]):
    o = json.loads(line)
    p = [t["prob"] for t in o["top"]]
    assert len(p) == 3 and p == sorted(p, reverse=True) and o["top"][0]["name"].startswith("grating_")
PY
[ -x /usr/bin/python3 ] || { grep -c '"top": \[{"class": [0-9], "name": "grating_[0-9]", "prob": [0-9.e-]*}, {' "$T/j" | grep -qx 2 && ok || bad "--json shape"; }

# an unreadable file: named, exit 1, the good image still classified
printf 'not an image' >"$T/bad.jpg"
"$BIN" predict "$CK" "$T/bad.jpg" "$1" >"$T/p2" 2>"$T/e"
[ $? = 1 ] && grep -q "image '$T/bad.jpg'" "$T/e" && grep -q "^$1:" "$T/p2" && ok ||
    { bad "bad image handling:"; cat "$T/e" "$T/p2"; }
"$BIN" predict "$CK" >/dev/null 2>"$T/e"; [ $? = 2 ] && grep -q "usage: softmoe predict" "$T/e" && ok || bad "predict without images"

# shards with a classes.txt beside them name the classes
mkdir -p "$T/sh" && cp "$T/s-000000.tar" "$T/sh/" &&
    printf 'zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n' >"$T/sh/classes.txt"
"$BIN" train "$T/c.ini" data.source=shards data.train="$T/sh/s-000000.tar" data.val= train.steps=2 \
    schedule.warmup_steps=1 train.workdir="$T/w2" >/dev/null 2>"$T/e" || { bad "train on shards:"; cat "$T/e"; }
"$BIN" predict "$T/w2/ckpt-00000002.h5" "$1" --top 10 >"$T/p3" 2>"$T/e" || bad "predict (shards)"
for w in zero five nine; do grep -q " $w " "$T/p3" && ok || { bad "classes.txt name '$w' not shown:"; cat "$T/p3"; }; done

finish "predict"
