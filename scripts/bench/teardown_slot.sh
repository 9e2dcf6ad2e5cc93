#!/usr/bin/env bash
# Teardown off the critical path: the wall time of a run whose tasks each
# create containers, under `benchwarden run` against the same harness under
# `xargs -P` with a `docker rm -f` after each task, the loop people write.
#
#   scripts/bench/teardown_slot.sh [TASKS] [JOBS]      # default 40 tasks, 8 at once
#
# Each task runs `harness.sh <task>`: two `docker run -d ... sleep 3600`,
# then `sleep 1` (it holds them for a second), then exits, leaving both
# running. Under benchwarden (`run -j JOBS`, pre-run sweep included, as a
# user runs it) the harness's docker CLI goes through the task's proxy and
# benchwarden tears the two down after the task. Under xargs
# (`xargs -P JOBS`), each task is followed by one `docker rm -f` of its two
# containers (found by a label of the task), as the loop would do it.
#
# Each of ROUNDS rounds (default 5) times both, the odd rounds benchwarden
# first, and checks that nothing of the round is left. Prints each round,
# the medians, the ratio benchwarden/xargs and the overhead in percent.
#
# STOP=DUR makes each teardown wait, as a graceful stop or a Daytona delete
# does, instead of using CPU: the benchmark file gets `docker.stop_timeout:
# DUR` (the containers' `sleep` is PID 1 and ignores SIGTERM, so each stop
# waits the whole DUR), and the xargs loop runs `docker stop -t DUR` before
# its `docker rm -f`.
#
# BASELINE=/path/to/benchwarden adds that binary as a third contender in
# each round (benchwarden and the baseline swap places every round), with
# its medians and the ratio benchwarden/baseline: how a change moved the
# figure. Uses target/release/benchwarden (built if missing or older than
# src/; BENCHWARDEN overrides) and the image of scripts/test-image.sh.
set -euo pipefail

tasks=${1:-40}
jobs=${2:-8}
rounds=${ROUNDS:-5}
stop=${STOP:-}
baseline=${BASELINE:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
benchwarden=${BENCHWARDEN:-$root/target/release/benchwarden}
image="benchwarden-test:busybox"
bench_id="slot-$$-$(date +%s)"

if [[ -z ${BENCHWARDEN:-} ]] && [[ ! -x $benchwarden || -n $(find "$root/src" "$root/Cargo.toml" -newer "$benchwarden" -print -quit) ]]; then
    echo "building $benchwarden" >&2
    (cd "$root" && cargo build --release --quiet)
fi
if [[ -n $baseline && ! -x $baseline ]]; then
    echo "BASELINE=$baseline is not an executable" >&2
    exit 2
fi
"$root/scripts/test-image.sh" >/dev/null

work=$(mktemp -d)
cleanup() {
    local left
    left=$(docker ps -aq --filter "label=bench=$bench_id")
    [[ -z $left ]] || docker rm -f $left >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/harness.sh" <<EOF
#!/bin/sh
# One task: two containers, held for a second, left running.
docker run -d --label bench=$bench_id --label "bench.round=\$ROUND" --label "bench.task=\$1" $image sleep 3600 >/dev/null
docker run -d --label bench=$bench_id --label "bench.round=\$ROUND" --label "bench.task=\$1" $image sleep 3600 >/dev/null
sleep 1
EOF
{
    echo "name: teardown-slot"
    echo "harness:"
    echo "  command: [sh, $work/harness.sh, \"{task}\"]"
    echo "tasks: [$(seq -s ', ' -f 't%g' 1 "$tasks")]"
    [[ -z $stop ]] || printf 'docker:\n  stop_timeout: %s\n' "$stop"
} >"$work/benchmark.yaml"
stop_seconds=$(sed -e 's/s$//' <<<"${stop:-0}")

since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.3f", now - start }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# check_clean ROUND WHO: nothing of the round may be left.
check_clean() {
    local left
    left=$(docker ps -aq --filter "label=bench=$bench_id" --filter "label=bench.round=$1")
    if [[ -n $left ]]; then
        echo "error: $2 left $(wc -w <<<"$left") container(s) in round $1" >&2
        exit 1
    fi
}

# time_benchwarden BINARY ROUND: sets took.
time_benchwarden() {
    local began rc=0
    began=$EPOCHREALTIME
    ROUND=$2 "$1" -q --state-dir "$work/state-$(basename "$1")-$2" run "$work/benchmark.yaml" -j "$jobs" \
        --report "$work/report-$2.json" >"$work/out" 2>&1 || rc=$?
    took=$(since "$began")
    if ((rc != 0)); then
        echo "error: $1 exited $rc:" >&2
        cat "$work/out" >&2
        exit 1
    fi
    check_clean "$2" "$1"
}

# time_xargs ROUND: sets took.
time_xargs() {
    local began
    began=$EPOCHREALTIME
    seq -f 't%g' 1 "$tasks" | ROUND=$1 BENCH=$bench_id STOP_SECONDS=$stop_seconds xargs -P "$jobs" -I '{}' sh -c \
        'sh "$0" "$1"; ids=$(docker ps -aq --filter "label=bench=$BENCH" --filter "label=bench.task=$1" --filter "label=bench.round=$ROUND"); if [ "$STOP_SECONDS" != 0 ]; then docker stop -t "$STOP_SECONDS" $ids >/dev/null; fi; docker rm -f $ids >/dev/null' \
        "$work/harness.sh" '{}'
    took=$(since "$began")
    check_clean "$1" xargs
}

echo "$tasks tasks at -j $jobs, each: 2 containers held 1 s${stop:+, stopped with a timeout of $stop}; $rounds rounds"
echo "$(nproc) cores, Docker $(docker version --format '{{.Server.Version}}'), load $(cut -d' ' -f1-3 /proc/loadavg)"
b_times=() x_times=() l_times=()
for round in $(seq "$rounds"); do
    order=(benchwarden xargs)
    [[ -z $baseline ]] || order=(benchwarden baseline xargs)
    if ((round % 2 == 0)); then
        order=(xargs benchwarden)
        [[ -z $baseline ]] || order=(xargs baseline benchwarden)
    fi
    line="round $round:"
    for who in "${order[@]}"; do
        case $who in
            benchwarden) time_benchwarden "$benchwarden" "$round" && b_times+=("$took") ;;
            baseline) time_benchwarden "$baseline" "$round" && l_times+=("$took") ;;
            xargs) time_xargs "$round" && x_times+=("$took") ;;
        esac
        line+=" $who $took s"
    done
    echo "$line"
done
b=$(printf '%s\n' "${b_times[@]}" | median)
x=$(printf '%s\n' "${x_times[@]}" | median)
printf 'median: benchwarden %.3f s   xargs + docker rm -f %.3f s   ratio %.4f (%+.1f %%)\n' "$b" "$x" \
    "$(awk -v a="$b" -v b="$x" 'BEGIN { print a / b }')" "$(awk -v a="$b" -v b="$x" 'BEGIN { print (a / b - 1) * 100 }')"
if [[ -n $baseline ]]; then
    l=$(printf '%s\n' "${l_times[@]}" | median)
    printf 'median: baseline %.3f s   ratio benchwarden/baseline %.4f   baseline/xargs %.4f (%+.1f %%)\n' "$l" \
        "$(awk -v a="$b" -v b="$l" 'BEGIN { print a / b }')" "$(awk -v a="$l" -v b="$x" 'BEGIN { print a / b }')" \
        "$(awk -v a="$l" -v b="$x" 'BEGIN { print (a / b - 1) * 100 }')"
fi
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
