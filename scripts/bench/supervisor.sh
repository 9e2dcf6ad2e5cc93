#!/usr/bin/env bash
# Supervisor overhead and memory of `benchwarden run`.
#
#   scripts/bench/supervisor.sh [RUNS]
#
# 1. Overhead: `benchwarden run --skip-cleanup -- true` against plain `true`,
#    one hyperfine invocation (RUNS each, default 50); medians and the
#    difference. Includes everything a real run does for one task: ledger
#    open and run row, Docker connection, process group spawn, stop check,
#    teardown discovery (owner labels, networks, volumes), report.
# 2. Peak RSS of benchwarden (GNU time's maximum resident set size) while it
#    supervises 32 concurrent tasks that each sleep 3 s; median of 3 rounds.
#
# BASELINE=/path/to/benchwarden adds that binary as a third contender (with a
# state directory of its own) and to the same memory rounds (alternating which
# binary goes first), and prints its medians and the ratios
# benchwarden/baseline next to the others. The overhead is then measured in 6
# hyperfine rounds of RUNS/6 runs each, benchwarden and the baseline swapping
# places every round, and the times pooled: hyperfine runs its commands one
# after the other, so one invocation would give each binary the same place
# (and whatever drift goes with it) every time.
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

declare -A command_of=(
    [true]=true
    [benchwarden]="$bin -q --state-dir $work/state run --skip-cleanup -- true"
    [baseline]="$baseline -q --state-dir $work/state-baseline run --skip-cleanup -- true"
)
if [[ -n $baseline ]]; then rounds=6 warmup=2; else rounds=1 warmup=5; fi
per_round=$((runs / rounds > 1 ? runs / rounds : 1))
for ((r = 0; r < rounds; r++)); do
    # `true` first; with a baseline, benchwarden and the baseline swap places every round.
    if [[ -z $baseline ]]; then
        sides=(true benchwarden)
    elif ((r % 2)); then
        sides=(true baseline benchwarden)
    else
        sides=(true benchwarden baseline)
    fi
    commands=()
    for side in "${sides[@]}"; do
        commands+=(-n "$side" "${command_of[$side]}")
    done
    hyperfine -N --warmup "$warmup" --runs "$per_round" --export-json "$work/overhead-$r.json" "${commands[@]}" >/dev/null
done
python3 - "$work"/overhead-*.json <<'PY'
import json, statistics, sys
times = {}
for path in sys.argv[1:]:
    for result in json.load(open(path))["results"]:
        times.setdefault(result["command"], []).extend(result["times"])
median = {side: statistics.median(values) * 1000 for side, values in times.items()}
plain, supervised = median["true"], median["benchwarden"]
print(f"overhead: true {plain:.1f} ms, benchwarden run -- true {supervised:.1f} ms (medians of {len(times['true'])}), "
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
median_kib() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
median=$(median_kib "${rss[@]}")
echo "peak RSS: median $(mib "$median") MiB (32 concurrent tasks)"
if [[ -n $baseline ]]; then
    baseline_median=$(median_kib "${baseline_rss[@]}")
    echo "baseline peak RSS: median $(mib "$baseline_median") MiB; benchwarden/baseline" \
        "$(awk -v a="$median" -v b="$baseline_median" 'BEGIN { printf "%.3f", a / b }')"
fi
