#!/usr/bin/env bash
# A real task, run directly and under benchwarden: how much longer the
# fixture task `hello` of tests/harnesses takes, solved by `--agent oracle`,
# when `benchwarden run` supervises the harness than when the harness runs
# by itself.
#
#   scripts/bench/real_harness.sh [terminal-bench|harbor|both]   # default both
#
# Each of ROUNDS rounds (default 5) per harness times two runs of the same
# harness command line, each in a fresh temporary working directory (tb
# writes runs/ there, harbor jobs/):
#
#   direct       env LITELLM_LOCAL_MODEL_COST_MAP=True DOCKER_CONFIG=... PATH=<venv>/bin:$PATH \
#                    tb run --dataset-path <tasks> --task-id hello --run-id <id>-hello --n-concurrent 1 --agent oracle
#   benchwarden  env DOCKER_CONFIG=... PATH=<venv>/bin:$PATH \
#                    benchwarden --state-dir <dir> run <benchmark.yaml> --report <file> -- --agent oracle
#
# The benchmark file is a copy of benchmarks/<harness>.yaml made the way
# tests/it/harnesses.rs `benchmark_yaml` makes it: `--dataset <name>` becomes
# `--dataset-path <tasks dir>` (Terminal-Bench) or `--path <tasks dir>`
# (Harbor), `{benchmark_dir}` the absolute path of benchmarks/, and `tasks:
# [hello]`. The direct command line is the harness command of that same file,
# with its `env:`, `{task}` = hello and `{run_id}` a lowercase id of its own
# per run, except that for Harbor the pair `--extra-docker-compose
# <benchmarks/harbor-owner-labels.yaml>` is dropped: that override needs the
# BENCHWARDEN_* variables only benchwarden sets (compose refuses to start
# without them). So under benchwarden Harbor's compose reads one file more.
# One state directory per harness serves all its benchwarden runs, as a
# user's would; each run still does the pre-run sweep.
#
# The odd rounds run direct first, the even ones benchwarden first. A run
# counts only if it succeeded: direct, exit 0 and the harness's result file
# says resolved (tb: runs/<id>/results.json, `is_resolved`) or reward 1
# (harbor: jobs/<job>/hello__*/result.json); under benchwarden, exit 0 and
# its summary shows the task `resolved`. A failed run stops the benchmark and
# prints its output. After each run nothing of it may be left on the engine:
# no container, network or volume whose name holds the run's unique id (tb:
# its run id; harbor: its trial name, `hello__<7 random>`). Images: tb
# removes `tb__hello__client` itself (`down --rmi all`); harbor 0.26 removes
# `hello__<random>__env-main` itself too (`down --rmi local`); whatever image
# of a run's trial is still there after the round is removed (and said), so
# that every round builds from the same start.
#
# Prints each round's wall times (EPOCHREALTIME), the medians, the ratio
# benchwarden/direct, the difference of the medians and the median of the
# per-round differences. With each time: `trial`, the span the harness
# itself records for the trial (tb: trial_started_at..trial_ended_at; harbor:
# the trial's started_at..finished_at), so wall - trial is the harness's
# Python start-up and exit; and for benchwarden `task`, its report's
# `seconds` (harness process start to exit), and `teardown`, its
# `teardown_seconds`; wall - task is what benchwarden spends outside the
# harness (start, ledger, Docker ping, pre-run sweep, teardown, summary).
#
# Then, unless RSS=0, one more (untimed) benchwarden run per harness, whose
# peak RSS (VmHWM of /proc/<pid>/status, read every 0.1 s) is printed: GNU
# time would report the harness's Python instead, the largest of the
# process and its waited-for children.
#
# Needs: the harness environment of scripts/harness-env.sh (prepared if
# missing: about 5 minutes the first time), the docker CLI, and
# target/release/benchwarden (built if missing or older than src/;
# BENCHWARDEN overrides). About 35 s per tb run and 25 s per harbor run on a
# 2-core machine: ROUNDS=5 with both harnesses takes about 10 minutes.
set -euo pipefail

which=${1:-both}
case $which in
    terminal-bench | harbor) harnesses=("$which") ;;
    both) harnesses=(terminal-bench harbor) ;;
    *)
        echo "usage: $0 [terminal-bench|harbor|both]" >&2
        exit 2
        ;;
esac
rounds=${ROUNDS:-5}
rss=${RSS:-1}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
benchwarden=${BENCHWARDEN:-$root/target/release/benchwarden}
bench_id="rh$(date +%s)-$$" # lowercase: tb's compose project names hold the run id

if [[ -z ${BENCHWARDEN:-} ]] && [[ ! -x $benchwarden || -n $(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -newer "$benchwarden" -print -quit) ]]; then
    echo "building $benchwarden" >&2
    (cd "$root" && cargo build --release --quiet)
fi
[[ -x $benchwarden ]] || {
    echo "BENCHWARDEN=$benchwarden is not an executable" >&2
    exit 2
}
eval "$("$root/scripts/harness-env.sh" --print)"
venv_bin=$BENCHWARDEN_HARNESS_BIN
docker_config=$BENCHWARDEN_HARNESS_DOCKER_CONFIG
py=$venv_bin/python # has PyYAML (the system python3 may not)

work=$(mktemp -d)
# Every run's id (tb run ids, harbor trial names) goes here as soon as it is
# known, so that an interrupted benchmark can remove what its runs left.
ids_file=$work/ids
touch "$ids_file"

# remove_leftovers ID: removes containers, networks, volumes and images whose
# name holds ID; prints what it removed, one line each.
remove_leftovers() {
    local id=$1 found=()
    mapfile -t found < <(docker ps -aq --filter "name=$id")
    ((${#found[@]} == 0)) || { docker rm -f "${found[@]}" >/dev/null && echo "container(s) ${found[*]}"; }
    mapfile -t found < <(docker network ls -q --filter "name=$id")
    ((${#found[@]} == 0)) || { docker network rm "${found[@]}" >/dev/null && echo "network(s) ${found[*]}"; }
    mapfile -t found < <(docker volume ls -q --filter "name=$id")
    ((${#found[@]} == 0)) || { docker volume rm "${found[@]}" >/dev/null && echo "volume(s) ${found[*]}"; }
    mapfile -t found < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -F "$id" || true)
    ((${#found[@]} == 0)) || { docker rmi -f "${found[@]}" >/dev/null && echo "image(s) ${found[*]}"; }
}

cleanup() {
    local id
    while read -r id; do
        [[ -z $id ]] || remove_leftovers "$id" >&2 || true
    done <"$ids_file"
    rm -rf "$work"
}
trap cleanup EXIT

# seconds since an EPOCHREALTIME value
since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.2f", now - start }'; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# prepare HARNESS DIR: writes DIR/benchmark.yaml (for benchwarden) and
# DIR/direct (the direct command's words, NUL-separated, `{run_id}` still in).
prepare() {
    local harness=$1 dir=$2 tasks
    tasks=$root/tests/harnesses/$harness/tasks
    "$py" - "$root/benchmarks/$harness.yaml" "$tasks" "$root/benchmarks" "$dir" <<'PYTHON'
import sys, yaml
shipped, tasks, benchmark_dir, out = sys.argv[1:5]
benchmark = yaml.safe_load(open(shipped))
command = benchmark["harness"]["command"]
at = command.index("--dataset")
command[at] = "--dataset-path" if benchmark["name"] == "terminal-bench" else "--path"
command[at + 1] = tasks
command = [word.replace("{benchmark_dir}", benchmark_dir) for word in command]
benchmark["harness"]["command"] = command
benchmark["tasks"] = ["hello"]
with open(f"{out}/benchmark.yaml", "w") as f:
    yaml.safe_dump(benchmark, f, sort_keys=False)
# The direct run: the same command without the owner-label override, which only benchwarden can fill.
if "--extra-docker-compose" in command:
    at = command.index("--extra-docker-compose")
    del command[at:at + 2]
env = [f"{k}={v}" for k, v in (benchmark["harness"].get("env") or {}).items()]
words = env + [word.replace("{task}", "hello") for word in command] + ["--agent", "oracle"]
with open(f"{out}/direct", "w") as f:
    f.write("\0".join(words) + "\0")
PYTHON
}

# trial_of HARNESS DIR RUN: checks the harness's result file in working
# directory DIR for run (tb run id / harbor job name) RUN; prints the trial's
# unique id (tb: the run id; harbor: the trial name, lowercased) and the
# trial's own span in seconds; exits 1 with a reason when not resolved.
trial_of() {
    "$py" - "$@" <<'PYTHON'
import glob, json, sys
from datetime import datetime
harness, workdir, run = sys.argv[1:4]
span = lambda a, b: (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
try:
    if harness == "terminal-bench":
        result = json.load(open(f"{workdir}/runs/{run}/results.json"))["results"][0]
        if not result["is_resolved"]:
            sys.exit(f"not resolved: failure_mode {result['failure_mode']}")
        print(run, f"{span(result['trial_started_at'], result['trial_ended_at']):.2f}")
    else:
        [path] = glob.glob(f"{workdir}/jobs/{run}/hello__*/result.json")
        result = json.load(open(path))
        reward = ((result.get("verifier_result") or {}).get("rewards") or {}).get("reward")
        if reward != 1 or result.get("exception_info"):
            sys.exit(f"reward {reward}, exception {result.get('exception_info')}")
        print(result["trial_name"].lower(), f"{span(result['started_at'], result['finished_at']):.2f}")
except (OSError, KeyError, IndexError, ValueError) as error:
    sys.exit(f"no result: {error!r}")
PYTHON
}

# fail WHAT OUTPUT: the benchmark stops, with the run's output.
fail() {
    echo "error: $1; its output:" >&2
    cat "$2" >&2
    exit 1
}

# check_clean ID OUTPUT: nothing named after ID may be left on the engine
# (images are handled by the round).
check_clean() {
    local left
    left=$(
        docker ps -a --format 'container {{.Names}}' --filter "name=$1"
        docker network ls --format 'network {{.Name}}' --filter "name=$1"
        docker volume ls --format 'volume {{.Name}}' --filter "name=$1"
    )
    [[ -z $left ]] || fail "left on the engine after the run: $left" "$2"
}

# direct HARNESS DIR ROUND: one direct run; sets d_took, d_trial, d_id.
direct() {
    local harness=$1 dir=$2 run="$bench_id-$3" placeholder='{run_id}' rc=0 began words=() out
    mapfile -d '' -t words <"$dir/direct"
    words=("${words[@]//"$placeholder"/$run}")
    run+=-hello
    out=$(mktemp -d "$work/direct-XXXX")
    echo "$run" >>"$ids_file"
    began=$EPOCHREALTIME
    (cd "$out" && env DOCKER_CONFIG="$docker_config" PATH="$venv_bin:$PATH" "${words[@]}" </dev/null >output 2>&1) || rc=$?
    d_took=$(since "$began")
    ((rc == 0)) || fail "direct $harness exited $rc" "$out/output"
    read -r d_id d_trial < <(trial_of "$harness" "$out" "$run" 2>"$out/why") || fail "direct $harness: $(cat "$out/why")" "$out/output"
    echo "$d_id" >>"$ids_file"
    check_clean "$d_id" "$out/output"
}

# supervise HARNESS DIR OUT: `benchwarden run` of the benchmark in working
# directory OUT, output in OUT/output, report in OUT/report.json. Run it in a
# subshell: that becomes benchwarden (exec).
supervise() {
    cd "$3"
    exec env DOCKER_CONFIG="$docker_config" PATH="$venv_bin:$PATH" \
        "$benchwarden" --state-dir "$2/state" run "$2/benchmark.yaml" --report "$3/report.json" -- --agent oracle \
        </dev/null >output 2>&1
}

# supervised_result HARNESS OUT RC: checks a benchwarden run; sets b_id,
# b_trial, b_task, b_teardown.
supervised_result() {
    local harness=$1 out=$2 run
    (($3 == 0)) || fail "benchwarden ($harness) exited $3" "$out/output"
    grep -Eq '^hello +passed +0 +[^ ]+ +resolved ' "$out/output" || fail "benchwarden's summary does not show hello resolved" "$out/output"
    read -r run b_task b_teardown < <("$py" -c '
import json, sys
report = json.load(open(sys.argv[1]))
task = report["tasks"][0]
print(report["run_id"] + "-hello", "%.2f" % task["seconds"], "%.3f" % task["teardown_seconds"])' "$out/report.json")
    echo "$run" >>"$ids_file"
    read -r b_id b_trial < <(trial_of "$harness" "$out" "$run" 2>"$out/why") || fail "benchwarden ($harness): $(cat "$out/why")" "$out/output"
    echo "$b_id" >>"$ids_file"
    check_clean "$b_id" "$out/output"
}

# supervised HARNESS DIR: one timed benchwarden run; sets b_took and what
# supervised_result sets.
supervised() {
    local out rc=0 began
    out=$(mktemp -d "$work/bw-XXXX")
    began=$EPOCHREALTIME
    (supervise "$1" "$2" "$out") || rc=$?
    b_took=$(since "$began")
    supervised_result "$1" "$out" "$rc"
}

# images_left HARNESS ID: removes what image of run ID the round left, and
# says so. tb's image name holds no run id: `tb__hello__client`.
images_left() {
    local removed
    removed=$(remove_leftovers "$2")
    if [[ $1 == terminal-bench ]] && docker image inspect tb__hello__client >/dev/null 2>&1; then
        docker rmi -f tb__hello__client >/dev/null
        removed+=" image tb__hello__client"
    fi
    [[ -z $removed ]] || echo "  removed after the round: $removed"
}

# peak_rss HARNESS DIR: one untimed benchwarden run; prints its peak RSS.
peak_rss() {
    local out pid peak=0 key value rc=0
    out=$(mktemp -d "$work/rss-XXXX")
    supervise "$1" "$2" "$out" &
    pid=$!
    while [[ -r /proc/$pid/status ]]; do
        while read -r key value _; do
            if [[ $key == VmHWM: ]] && ((value > peak)); then peak=$value; fi
        done 2>/dev/null </proc/"$pid"/status || true
        sleep 0.1
    done
    wait "$pid" || rc=$?
    supervised_result "$1" "$out" "$rc"
    images_left "$1" "$b_id"
    : >"$ids_file"
    echo "  peak RSS of benchwarden ($1, one task; VmHWM every 0.1 s): $(awk -v kib="$peak" 'BEGIN { printf "%.1f", kib / 1024 }') MiB"
}

echo "one real task (hello, --agent oracle), direct and under benchwarden; $rounds rounds per harness"
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Docker $(docker version --format '{{.Server.Version}}'), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" -c 'import importlib.metadata as m; print("terminal-bench", m.version("terminal-bench"), "harbor", m.version("harbor"))'
echo "benchwarden: $benchwarden"

for harness in "${harnesses[@]}"; do
    dir=$(mktemp -d "$work/$harness-XXXX")
    prepare "$harness" "$dir"
    echo
    echo "$harness: $(tr '\0' ' ' <"$dir/direct")"
    d_times=() b_times=() diffs=() outside=()
    for round in $(seq "$rounds"); do
        if ((round % 2)); then
            first=direct
            direct "$harness" "$dir" "$round"
            supervised "$harness" "$dir"
        else
            first=benchwarden
            supervised "$harness" "$dir"
            direct "$harness" "$dir" "$round"
        fi
        d_times+=("$d_took")
        b_times+=("$b_took")
        diffs+=("$(awk -v a="$b_took" -v b="$d_took" 'BEGIN { printf "%.2f", a - b }')")
        outside+=("$(awk -v a="$b_took" -v b="$b_task" 'BEGIN { printf "%.2f", a - b }')")
        printf 'round %d (%s first): direct %6.2f s (trial %5.2f)   benchwarden %6.2f s (trial %5.2f, task %5.2f, teardown %.3f, outside the task %.2f)   difference %+.2f s\n' \
            "$round" "$first" "$d_took" "$d_trial" "$b_took" "$b_trial" "$b_task" "$b_teardown" "${outside[-1]}" "${diffs[-1]}"
        images_left "$harness" "$d_id"
        images_left "$harness" "$b_id"
        : >"$ids_file" # all checked and clean
    done
    d_median=$(printf '%s\n' "${d_times[@]}" | median)
    b_median=$(printf '%s\n' "${b_times[@]}" | median)
    printf '%s median: direct %.2f s   benchwarden %.2f s   ratio %.3fx   difference of the medians %+.2f s   median of the differences %+.2f s   median outside the task %.2f s\n' \
        "$harness" "$d_median" "$b_median" \
        "$(awk -v a="$b_median" -v b="$d_median" 'BEGIN { print a / b }')" \
        "$(awk -v a="$b_median" -v b="$d_median" 'BEGIN { print a - b }')" \
        "$(printf '%s\n' "${diffs[@]}" | median)" \
        "$(printf '%s\n' "${outside[@]}" | median)"
    if [[ $rss != 0 ]]; then
        peak_rss "$harness" "$dir"
    fi
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
