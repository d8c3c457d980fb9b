#!/bin/sh
# Size limits of the sources (STYLE.md: files under ~600 lines, functions
# that fit on a screen): every file in src/ has at most 600 lines and every
# function fewer than 80 (from the line its signature starts on to its
# closing brace at column 0). Fails naming the file, the line and the count.
# Usage: sh tests/test_sizes.sh [BIN] (BIN unused: run by scripts/run-tests.sh)
set -u
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1
for f in $(find src -name '*.[ch]' | sort); do
    n=$(wc -l <"$f")
    if [ "$n" -le 600 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $f has $n lines (at most 600)"; fi
done
# A function starts at a column-0 line with a '(' that is not a declaration
# (no ';' before the '{' that ends the signature) and ends at the next '}' at
# column 0. One-line definitions (`... { return x; }`) are short by sight.
FN='
    FNR == 1 { cand = 0; infn = 0 }
    infn { if ($0 ~ /^}/) { n = FNR - start + 1; if (n >= 80) printf "%s:%d: %d lines\n", FILENAME, start, n; infn = 0 }; next }
    /^[A-Za-z_]/ && /\(/ && !/^(typedef|#)/ { cand = FNR }
    cand && /;[ \t]*(\/\/.*)?$/ { cand = 0 }
    cand && /\{[ \t]*$/ { start = cand; infn = 1; cand = 0 }'
# shellcheck disable=SC2046
long=$(awk "$FN" $(find src -name '*.c' | sort))
if [ -z "$long" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "$long" | sed 's/^/FAIL: function at /'; fi
# the check itself: a 94-line function with a two-line signature is found
{ echo "static int f(int a,"; echo "             int b) {"; i=0; while [ $i -lt 90 ]; do echo "    a++;"; i=$((i + 1)); done; echo "    return a + b;"; echo "}"; } >"$T/x.c"
awk "$FN" "$T/x.c" | grep -q "x.c:1: 94 lines" && pass=$((pass + 1)) ||
    { fail=$((fail + 1)); echo "FAIL: the function-length check misses a 94-line function"; }
finish "sizes"
