#!/usr/bin/env bash
# The long reliability suite (RELIABILITY.md): the randomised signal runs and
# the soaks at full size, and the proxies' fuzzing at 100,000 cases a
# property; then the figures the tests told go into RELIABILITY.md, between
# its `figures:begin` and `figures:end` marks.
#
#   scripts/reliability.sh            # everything: about 20 minutes on 2 cores
#   scripts/reliability.sh chaos      # only the tests whose names match
#
# The same tests run small in `.ci/run`; here BENCHWARDEN_RELIABILITY=long
# makes them run at full size, one at a time (their -j would fight each
# other for the cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

filters=("$@")
if ((${#filters[@]} == 0)); then
    filters=(chaos soak daytona_faults faults misbehaving ctrl_z state_dir retention)
fi

out=target/reliability
mkdir -p "$out"
figures="$out/figures-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$figures"
started=$(date +%s)

echo "--- fuzzing (the proxies, the Daytona model), 100,000 cases a property"
PROPTEST_CASES=${PROPTEST_CASES:-100000} scripts/test.sh --lib -- fuzz

echo "--- the long suite: ${filters[*]}"
BENCHWARDEN_RELIABILITY=long BENCHWARDEN_FIGURES="$PWD/$figures" \
    scripts/test.sh --test it -- "${filters[@]}" --test-threads 1

minutes=$((($(date +%s) - started) / 60))
echo "--- figures ($figures), ${minutes} min in all"
python3 scripts/lib/figures_table.py "$figures" RELIABILITY.md \
    "scripts/reliability.sh ${*:-} on $(date -u +%Y-%m-%d), ${minutes} min, $(nproc) cores"
