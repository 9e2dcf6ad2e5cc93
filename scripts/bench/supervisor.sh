#!/usr/bin/env bash
# Supervisor overhead and memory of `benchwarden run`.
#
#   scripts/bench/supervisor.sh [RUNS]
#
# 1. Overhead: `benchwarden run --skip-cleanup -- true` against plain `true`,
#    interleaved by hyperfine in one run (RUNS each, default 50); medians and
#    the difference. Includes everything a real run does for one task: ledger
#    open and run row, Docker connection, process group spawn, stop check,
#    teardown discovery (owner labels, networks, volumes), report.
# 2. Peak RSS of benchwarden (GNU time's maximum resident set size) while it
#    supervises 32 concurrent tasks that each sleep 3 s; median of 3 rounds.
set -euo pipefail
runs=${1:-50}
root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --release --quiet)
bin=$root/target/release/benchwarden
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }

hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/overhead.json" \
    'true' "$bin -q --state-dir $work/state run --skip-cleanup -- true" >/dev/null
python3 - "$work/overhead.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
plain, supervised = (result["median"] * 1000 for result in results)
print(f"overhead: true {plain:.1f} ms, benchwarden run -- true {supervised:.1f} ms (medians of {len(results[0]['times'])}), "
      f"difference {supervised - plain:.1f} ms")
PY

{
    echo "name: sleepers"
    echo "harness:"
    echo "  command: [sleep, \"3\"]"
    echo "tasks: [$(seq -s, -f 't%g' 1 32)]"
    echo "concurrency: 32"
} >"$work/sleepers.yaml"
rss=()
for round in 1 2 3; do
    kib=$( { /usr/bin/time -f '%M' "$bin" -q --state-dir "$work/state" run "$work/sleepers.yaml" --skip-cleanup >/dev/null; } 2>&1 | tail -n 1)
    rss+=("$kib")
    echo "round $round: peak RSS ${kib} KiB while supervising 32 sleeping tasks"
done
median=$(printf '%s\n' "${rss[@]}" | sort -n | sed -n 2p)
echo "peak RSS: median $(awk -v k="$median" 'BEGIN { printf "%.1f", k / 1024 }') MiB (32 concurrent tasks)"
