#!/usr/bin/env bash
# Teardown benchmark: how long removing N running containers takes with
# `benchwarden cleanup docker --label ...` and with `docker rm -f <ids>`.
#
#   scripts/bench/teardown.sh [N]        # N containers per removal (default 100)
#
# Each of ROUNDS rounds (default 5) starts N labelled running containers and
# times `benchwarden cleanup docker --label <round label> -q`, then starts N
# fresh ones and times one `docker rm -f` of all their ids, the way a user
# would. Creating containers is not timed. Prints each round, the medians and
# the ratio benchwarden/docker. Uses target/release/benchwarden (built if
# missing; BENCHWARDEN overrides) and the image of scripts/test-image.sh.
# Extra benchwarden flags: BENCHWARDEN_FLAGS="--parallel 32".
#
# BASELINE=/path/to/benchwarden adds a third removal to each round: N more
# fresh containers removed by that binary (same flags, a state directory of
# its own). benchwarden and the baseline swap places every other round; the
# docker CLI stays last. Prints its times, its median and the ratio
# benchwarden/baseline too.
set -euo pipefail

n=${1:-100}
rounds=${ROUNDS:-5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
benchwarden=${BENCHWARDEN:-$root/target/release/benchwarden}
baseline=${BASELINE:-}
read -r -a extra_flags <<<"${BENCHWARDEN_FLAGS:-}"
image="benchwarden-test:busybox"
bench_id="bench-$$-$(date +%s)"

if [[ ! -x $benchwarden ]]; then
    echo "building $benchwarden" >&2
    (cd "$root" && cargo build --release --quiet)
fi
if [[ -n $baseline && ! -x $baseline ]]; then
    echo "BASELINE=$baseline is not an executable" >&2
    exit 2
fi
"$root/scripts/test-image.sh" >/dev/null

state_dir=$(mktemp -d)
baseline_state_dir=$(mktemp -d)
ids_file=$(mktemp)
cleanup() {
    # Whatever an interrupted round left behind.
    docker ps -aq --filter "label=benchwarden.bench=$bench_id" | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$state_dir" "$baseline_state_dir" "$ids_file"
}
trap cleanup EXIT

# start LABEL: N running containers carrying LABEL; their ids into $ids_file.
start() {
    seq "$n" | xargs -P 8 -I{} docker run -d --label "$1" --label "benchwarden.bench=$bench_id" \
        "$image" sleep 3600 >"$ids_file"
    local running
    running=$(docker ps -q --filter "label=$1" | wc -l)
    if ((running != n)); then
        echo "error: $running of $n containers are running" >&2
        exit 1
    fi
    sleep 2 # let the engine settle after the burst of creations
}

# left LABEL: how many containers with LABEL still exist.
left() { docker ps -aq --filter "label=$1" | wc -l; }

# seconds since an EPOCHREALTIME value
since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.2f", now - start }'; }

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# remove NAME BINARY STATE_DIR ROUND: starts N containers, removes them with
# BINARY's `cleanup docker`, checks none is left; the seconds it took on stdout.
remove() {
    local label="benchwarden.bench.round=$bench_id-$4-$1" began took
    start "$label"
    began=$EPOCHREALTIME
    "$2" --state-dir "$3" cleanup docker --label "$label" -q "${extra_flags[@]}" >/dev/null
    took=$(since "$began")
    if (($(left "$label") != 0)); then
        echo "error: $1 left $(left "$label") containers" >&2
        exit 1
    fi
    echo "$took"
}

echo "teardown of $n running containers, $rounds rounds; $(nproc) cores, Docker $(docker version --format '{{.Server.Version}}')"
echo "benchwarden: $benchwarden ${extra_flags[*]}"
[[ -z $baseline ]] || echo "baseline: $baseline ${extra_flags[*]}"
bw_times=()
baseline_times=()
docker_times=()
for round in $(seq "$rounds"); do
    if [[ -n $baseline ]] && ((round % 2 == 0)); then
        base=$(remove baseline "$baseline" "$baseline_state_dir" "$round")
    fi
    bw=$(remove bw "$benchwarden" "$state_dir" "$round")
    if [[ -n $baseline ]] && ((round % 2)); then
        base=$(remove baseline "$baseline" "$baseline_state_dir" "$round")
    fi

    label="benchwarden.bench.round=$bench_id-$round-docker"
    start "$label"
    mapfile -t ids <"$ids_file"
    began=$EPOCHREALTIME
    docker rm -f "${ids[@]}" >/dev/null
    dk=$(since "$began")
    if (($(left "$label") != 0)); then
        echo "error: docker rm -f left $(left "$label") containers" >&2
        exit 1
    fi

    bw_times+=("$bw")
    docker_times+=("$dk")
    if [[ -n $baseline ]]; then
        baseline_times+=("$base")
        printf 'round %d: benchwarden %6.2f s   baseline %6.2f s   docker rm -f %6.2f s\n' "$round" "$bw" "$base" "$dk"
    else
        printf 'round %d: benchwarden %6.2f s   docker rm -f %6.2f s\n' "$round" "$bw" "$dk"
    fi
done

bw_median=$(printf '%s\n' "${bw_times[@]}" | median)
docker_median=$(printf '%s\n' "${docker_times[@]}" | median)
ratio=$(awk -v a="$bw_median" -v b="$docker_median" 'BEGIN { printf "%.2f", a / b }')
printf 'median:  benchwarden %6.2f s   docker rm -f %6.2f s   ratio %sx\n' "$bw_median" "$docker_median" "$ratio"
if [[ -n $baseline ]]; then
    baseline_median=$(printf '%s\n' "${baseline_times[@]}" | median)
    printf 'median:  baseline    %6.2f s   ratio baseline/docker %sx   benchwarden/baseline %sx\n' "$baseline_median" \
        "$(awk -v a="$baseline_median" -v b="$docker_median" 'BEGIN { printf "%.2f", a / b }')" \
        "$(awk -v a="$bw_median" -v b="$baseline_median" 'BEGIN { printf "%.2f", a / b }')"
fi
