#!/bin/sh
# Adding a router is one file (src/model/moe.h): a copy of the project with
# one new file src/model/router_mirror.c (the identity router under another
# name) builds, lists `mirror` among the moe.router choices, trains with it,
# saves and evaluates its checkpoint, while an unknown router is refused
# naming the key. Nothing else in the copy is edited.
# Usage: sh tests/test_router_file.sh build/softmoe (the binary is not used:
# the copy builds its own)
set -u
. "$(dirname "$0")/lib.sh"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

mkdir -p "$T/repo"
cp -r Makefile src scripts "$T/repo/"
sed -e 's/moe_router_identity/moe_router_mirror/' -e 's/\.name = "identity"/.name = "mirror"/' \
    src/model/router_identity.c >"$T/repo/src/model/router_mirror.c"
grep -q '^const MoeRouter moe_router_mirror = {' "$T/repo/src/model/router_mirror.c" && ok ||
    bad "the copied router file does not define moe_router_mirror"
# a plain build of the copy, whatever make this test runs under (the CI's
# sanitizer pass sets BUILD and DEBUG through MAKEFLAGS, and make exports
# command-line variables to the environment too)
if env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS -u BUILD -u DEBUG make -C "$T/repo" -j2 build/softmoe >"$T/build.log" 2>&1; then
    ok
else
    bad "the copy with router_mirror.c does not build"; tail -20 "$T/build.log"
fi
B="$T/repo/build/softmoe"
[ -x "$B" ] || { echo "router_file: $pass passed, $((fail + 1)) failed, 0 skipped"; exit 1; }

"$B" keys >"$T/keys" 2>&1
grep '^moe.router ' "$T/keys" | grep -q 'mirror' && ok || { bad "keys: no mirror choice"; grep '^moe.router' "$T/keys"; }

cat >"$T/tiny.ini" <<'INI'
[model]
width = 32
depth = 2
heads = 2
mlp_dim = 64
image_size = 16
patch = 4
channels = 1
classes = 4
[moe]
experts = 4
slots = 4
router = mirror
layers = last_half
[train]
batch_size = 8
steps = 4
ckpt_every = 4
log_every = 2
[schedule]
warmup_steps = 2
INI
"$B" params "$T/tiny.ini" >"$T/params" 2>&1 && grep -q '^moe: router mirror, 4 experts x 4 rows' "$T/params" &&
    ok || { bad "params with moe.router = mirror"; cat "$T/params"; }
"$B" train "$T/tiny.ini" train.workdir="$T/w" >"$T/train" 2>&1 && [ -s "$T/w/ckpt-00000004.h5" ] &&
    ok || { bad "train with moe.router = mirror"; tail -5 "$T/train"; }
grep -q '"loss"' "$T/w/metrics.jsonl" 2>/dev/null && ok || bad "no metrics from the mirror run"
"$B" eval "$T/w/ckpt-00000004.h5" >"$T/eval" 2>&1 && ok || { bad "eval of the mirror checkpoint"; tail -3 "$T/eval"; }
# the router's own check still applies (identity's: experts x slots = tokens)
"$B" params "$T/tiny.ini" moe.slots=2 >"$T/err" 2>&1 && bad "mirror with 4 x 2 slots accepted" ||
    { grep -q 'moe.router = identity sends token i\|moe.experts x moe.slots' "$T/err" && ok || { bad "mirror check message"; cat "$T/err"; }; }
"$B" params "$T/tiny.ini" moe.router=nosuch >"$T/err" 2>&1 && bad "moe.router = nosuch accepted" ||
    { grep -q 'moe.router' "$T/err" && grep -q 'mirror' "$T/err" && ok || { bad "unknown router message"; cat "$T/err"; }; }
finish "router_file"
