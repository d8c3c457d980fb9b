# Shared by the shell tests, sourced first: . "$(dirname "$0")/lib.sh"
#   ok / bad "what" / skip "what"   count a check; bad prints FAIL, skip SKIP
#   finish NAME                     "NAME: P passed, F failed, K skipped"
#                                   (the line scripts/run-tests.sh sums); its
#                                   status is the test's (non-zero on a failure)
#   $T                              a temporary directory, removed at exit
#   tiny_ini FILE [key=value ...]   a small Soft MoE model (width 16, 2 blocks,
#                                   4 experts x 2 slots, 8 px) on synthetic
#                                   data, batch 8, 20 steps, checkpoints every
#                                   10, logged every step; key=value replaces
#                                   one of its lines (experts=3 steps=12)
#   metric DIR STEP KEY             KEY of step STEP's training line in
#                                   DIR/metrics.jsonl ("" when absent), by jq
#   last_eval DIR KEY               KEY of the last evaluation line there
pass=0; fail=0; skipped=0
ok()   { pass=$((pass + 1)); }
bad()  { fail=$((fail + 1)); echo "FAIL: $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP: $*"; }
finish() { echo "$1: $pass passed, $fail failed, $skipped skipped"; [ "$fail" = 0 ]; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

tiny_ini() {
    f=$1; shift
    cat >"$f" <<'INI'
[model]
width = 16
depth = 2
heads = 2
mlp_dim = 32
image_size = 8
patch = 4
channels = 1
classes = 4
[moe]
experts = 4
slots = 2
[schedule]
warmup_steps = 2
[train]
batch_size = 8
steps = 20
ckpt_every = 10
log_every = 1
INI
    for kv in "$@"; do
        k=${kv%%=*}
        grep -q "^$k = " "$f" || { echo "tiny_ini: no key '$k' in the tiny config" >&2; return 1; }
        sed -i "s|^$k = .*|$k = ${kv#*=}|" "$f"
    done
}

metric() {
    jq -r --argjson s "$2" --arg k "$3" \
        'select(.step == $s and has("loss") and has($k)) | .[$k]' "$1/metrics.jsonl" 2>/dev/null | tail -1
}

last_eval() {
    jq -r --arg k "$2" 'select(has("val/loss")) | .[$k]' "$1/metrics.jsonl" 2>/dev/null | tail -1
}
