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
#
# BASELINE=/path/to/benchwarden adds that binary as a third contender of the
# same hyperfine invocation (with a state directory of its own) and to the
# same memory rounds (alternating which binary goes first), and prints its
# medians and the ratios benchwarden/baseline next to the others.
set -euo pipefail
runs=${1:-50}
baseline=${BASELINE:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --release --quiet)
bin=$root/target/release/benchwarden
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }
if [[ -n $baseline ]]; then
    [[ -x $baseline ]] || { echo "BASELINE=$baseline is not an executable" >&2; exit 2; }
    echo "benchwarden: $bin; baseline: $baseline"
fi

contenders=(-n true 'true' -n benchwarden "$bin -q --state-dir $work/state run --skip-cleanup -- true")
if [[ -n $baseline ]]; then
    contenders+=(-n baseline "$baseline -q --state-dir $work/state-baseline run --skip-cleanup -- true")
fi
hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/overhead.json" "${contenders[@]}" >/dev/null
python3 - "$work/overhead.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
median = {result["command"]: result["median"] * 1000 for result in results}
plain, supervised = median["true"], median["benchwarden"]
print(f"overhead: true {plain:.1f} ms, benchwarden run -- true {supervised:.1f} ms (medians of {len(results[0]['times'])}), "
      f"difference {supervised - plain:.1f} ms")
if "baseline" in median:
    before = median["baseline"]
    print(f"baseline: baseline run -- true {before:.1f} ms, difference {before - plain:.1f} ms; "
          f"benchwarden/baseline: run {supervised / before:.3f}, difference {(supervised - plain) / (before - plain):.3f}")
PY

{
    echo "name: sleepers"
    echo "harness:"
    echo "  command: [sleep, \"3\"]"
    echo "tasks: [$(seq -s, -f 't%g' 1 32)]"
    echo "concurrency: 32"
} >"$work/sleepers.yaml"
# peak_rss BINARY STATE_DIR: KiB
peak_rss() {
    { /usr/bin/time -f '%M' "$1" -q --state-dir "$2" run "$work/sleepers.yaml" --skip-cleanup >/dev/null; } 2>&1 | tail -n 1
}
rss=()
baseline_rss=()
for round in 1 2 3; do
    if [[ -n $baseline ]] && ((round % 2 == 0)); then
        baseline_rss+=("$(peak_rss "$baseline" "$work/state-baseline")")
    fi
    kib=$(peak_rss "$bin" "$work/state")
    rss+=("$kib")
    if [[ -n $baseline ]] && ((round % 2)); then
        baseline_rss+=("$(peak_rss "$baseline" "$work/state-baseline")")
    fi
    if [[ -n $baseline ]]; then
        echo "round $round: peak RSS ${kib} KiB (baseline ${baseline_rss[-1]} KiB) while supervising 32 sleeping tasks"
    else
        echo "round $round: peak RSS ${kib} KiB while supervising 32 sleeping tasks"
    fi
done
mib() { printf '%s\n' "$@" | sort -n | sed -n 2p | awk '{ printf "%.1f", $1 / 1024 }'; }
median=$(mib "${rss[@]}")
echo "peak RSS: median $median MiB (32 concurrent tasks)"
if [[ -n $baseline ]]; then
    baseline_median=$(mib "${baseline_rss[@]}")
    echo "baseline peak RSS: median $baseline_median MiB; benchwarden/baseline $(awk -v a="$median" -v b="$baseline_median" 'BEGIN { printf "%.3f", a / b }')"
fi
