#!/usr/bin/env bash
# Teardown of Daytona sandboxes against the contract server: benchwarden
# against a sequential delete loop (the old cleanup scripts' approach).
#
#   scripts/bench/daytona_teardown.sh [SANDBOXES [ROUNDS]]     # defaults 500 3
#
# Each round starts a fresh contract server (`daytona-contract-server`, the
# program of the workspace crate crates/daytona-contract, release build) with
# 20 ms latency on every call, a `sandbox-lifecycle` limit of 6,000 a minute
# (which the server also enforces as 100 a second), and deletes that take
# DESTROY_MS (default 500) to finish server-side, seeded with
# SANDBOXES sandboxes that carry benchwarden's owner labels of this host and a
# run id that no ledger knows and no process owns (so they are candidates of
# a plain `cleanup daytona`). Then it times, on that server, one of:
#
# - benchwarden: `benchwarden cleanup daytona --no-dry-run` (list, parallel
#   deletes paced by the rate-limit headers, then polling until every
#   sandbox answers 404), with a fresh state directory;
# - loop: the old scripts' way, in Python with `requests` and one keep-alive
#   session: list every page, then DELETE one by one, never waiting for 404.
#
# Rounds alternate which side goes first. Printed: per-round times and the
# server's counters, the medians, the ratio loop/benchwarden, and for
# benchwarden the 429 answers as a share of all its requests, against the
# target of issue 10: the best round within 10 % of the bound, with no 429.
# The bound is the earliest moment the last sandbox can be seen gone:
# (ceil(SANDBOXES / 100) - 1) windows of 1 s until the last window opens,
# plus the destroy delay, plus one round trip (4.52 s for 500). Exit 1 when
# missed.
#
# Needs: python3 with `requests` (target/py-venv from scripts/test.sh has it;
# else the system python3).
#
# BASELINE=/path/to/benchwarden adds a third side, "baseline": the same
# `cleanup daytona` by that binary, on a fresh server of its own, in the same
# rounds. With three sides the order rotates every round (with the default 3
# rounds each side goes first, second and third once). Its median, 429 share
# and the ratio benchwarden/baseline are printed too; the exit status still
# judges benchwarden alone.
set -euo pipefail
sandboxes=${1:-500}
rounds=${2:-3}
baseline=${BASELINE:-}
latency_ms=20
lifecycle_limit=6000
destroy_ms=${DESTROY_MS:-500}
root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --release --quiet --bin benchwarden && cargo build --release --quiet -p daytona-contract)
bin=$root/target/release/benchwarden
server=$root/target/release/daytona-contract-server
python=$root/target/py-venv/bin/python
[[ -x $python ]] || python=python3
if [[ -n $baseline && ! -x $baseline ]]; then
    echo "BASELINE=$baseline is not an executable" >&2
    exit 2
fi
"$python" -c 'import requests' 2>/dev/null || {
    echo "needs python3 with requests: run scripts/test.sh (creates target/py-venv) or pip install requests" >&2
    exit 2
}
host=$(hostname)
key="bench-key-$RANDOM$RANDOM"

work=$(mktemp -d)
server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# Starts a fresh seeded server; sets $url.
servers=0
start_server() {
    # A file of its own per server, so a stale URL is never read.
    servers=$((servers + 1))
    local out=$work/server-$servers.out err=$work/server-$servers.err
    "$server" --key "$key" --latency-ms "$latency_ms" --lifecycle-limit "$lifecycle_limit" --destroy-delay-ms "$destroy_ms" \
        --seed "$sandboxes" --label benchwarden.run=20200101-0000-gone --label benchwarden.task=bench \
        --label "benchwarden.host=$host" >"$out" 2>"$err" &
    server_pid=$!
    url=
    for _ in $(seq 1 200); do
        url=$(head -n 1 "$out" 2>/dev/null || true)
        [[ $url == http* ]] && return 0
        sleep 0.05
    done
    echo "the contract server did not start: $(cat "$err")" >&2
    exit 2
}

stats() { curl -sf "${url%/api}/__contract/stats"; }

# Milliseconds since the epoch.
now_ms() { date +%s%3N; }

# run_benchwarden ROUND [BINARY [NAME]]: milliseconds of one cleanup.
run_benchwarden() {
    local binary=${2:-$bin} name=${3:-bw}
    local state=$work/state-$name-$1
    local started ended
    started=$(now_ms)
    DAYTONA_API_URL=$url DAYTONA_API_KEY=$key "$binary" -q --state-dir "$state" cleanup daytona --no-dry-run \
        >"$work/$name-$1.out" 2>"$work/$name-$1.err" || {
        echo "$binary failed in round $1:" >&2
        cat "$work/$name-$1.out" "$work/$name-$1.err" >&2
        exit 1
    }
    ended=$(now_ms)
    echo $((ended - started))
}

run_loop() {
    local started ended
    started=$(now_ms)
    DAYTONA_API_URL=$url DAYTONA_API_KEY=$key "$python" - >"$work/loop-$1.out" 2>&1 <<'PY' || {
import os, requests
url, key = os.environ["DAYTONA_API_URL"], os.environ["DAYTONA_API_KEY"]
session = requests.Session()
session.headers["Authorization"] = f"Bearer {key}"
ids, cursor = [], None
while True:
    params = {"limit": 200}
    if cursor:
        params["cursor"] = cursor
    page = session.get(f"{url}/sandbox", params=params)
    page.raise_for_status()
    body = page.json()
    ids += [s["id"] for s in body["items"]]
    cursor = body.get("nextCursor")
    if not cursor:
        break
failed = 0
for sandbox_id in ids:
    if session.delete(f"{url}/sandbox/{sandbox_id}").status_code != 200:
        failed += 1
print(f"{len(ids)} listed, {failed} deletes failed")
PY
        echo "the loop failed in round $1:" >&2
        cat "$work/loop-$1.out" >&2
        exit 1
    }
    ended=$(now_ms)
    echo $((ended - started))
}

echo "$sandboxes sandboxes, ${latency_ms} ms latency per call, lifecycle limit $lifecycle_limit/min, deletes finish after ${destroy_ms} ms; $rounds rounds"
sides=(benchwarden loop)
if [[ -n $baseline ]]; then
    echo "benchwarden: $bin; baseline: $baseline"
    sides=(benchwarden baseline loop)
fi
: >"$work/results"
for ((r = 1; r <= rounds; r++)); do
    # Rotate the sides: round 1 starts with the first, round 2 with the second, ...
    # (with two sides: benchwarden first in odd rounds, the loop in even ones).
    by=$(((r - 1) % ${#sides[@]}))
    order=("${sides[@]:by}" "${sides[@]:0:by}")
    for side in "${order[@]}"; do
        start_server
        case $side in
        benchwarden) ms=$(run_benchwarden "$r") ;;
        baseline) ms=$(run_benchwarden "$r" "$baseline" baseline) ;;
        loop) ms=$(run_loop "$r") ;;
        esac
        counters=$(stats)
        left=$(curl -sf -H "Authorization: Bearer $key" "$url/sandbox?limit=200" | "$python" -c \
            'import json,sys; print(sum(1 for s in json.load(sys.stdin)["items"] if s.get("state") != "destroying"))')
        stop_server
        echo "$side $r $ms $left $counters" >>"$work/results"
        printf '  round %d %-11s %6.3f s  (%s not being deleted at the end) %s\n' "$r" "$side" \
            "$(echo "$ms" | awk '{print $1/1000}')" "$left" "$counters"
    done
done

"$python" - "$work/results" "$sandboxes" "$(uname -srm)" "$destroy_ms" "$latency_ms" <<'PY'
import json, math, statistics, sys
path, sandboxes, machine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
destroy, latency = int(sys.argv[4]) / 1000, int(sys.argv[5]) / 1000
runs = {}
for line in open(path):
    side, rnd, ms, left, counters = line.split(" ", 4)
    runs.setdefault(side, []).append((int(ms) / 1000, int(left), json.loads(counters)))
bound = (math.ceil(sandboxes / 100) - 1) + destroy + latency
best = {side: min(t for t, _, _ in values) for side, values in runs.items()}
med = {side: statistics.median(t for t, _, _ in values) for side, values in runs.items()}

def throttling(side):
    requests = sum(c["requests"] for _, _, c in runs[side])
    throttled = sum(c["throttled_429"] for _, _, c in runs[side])
    return throttled, requests, (throttled / requests if requests else 0.0)

def per_round(side, key):
    return "/".join(str(c["by_route"].get(key, 0)) for _, _, c in runs[side])

bw = runs["benchwarden"]
throttled, requests, share = throttling("benchwarden")
print()
print("| side | best | median | rounds | best vs bound |")
print("|---|---|---|---|---|")
for side in ("benchwarden", "baseline", "loop"):
    if side in runs:
        times = ", ".join(f"{t:.3f}" for t, _, _ in runs[side])
        print(f"| {side} | {best[side]:.3f} s | {med[side]:.3f} s | {times} | {best[side] / bound:.3f}x |")
print()
print(f"bound: {bound:.2f} s = ({math.ceil(sandboxes / 100)} - 1) windows + {destroy:.2f} s destroy + {latency:.2f} s round trip;"
      f" target: the best benchwarden round <= {bound * 1.10:.2f} s with no 429")
print(f"loop / benchwarden: {med['loop'] / med['benchwarden']:.2f}x")
for side in ("benchwarden", "baseline"):
    if side not in runs:
        continue
    t, n, sh = throttling(side)
    target = "; target: none" if side == "benchwarden" else ""
    print(f"{side} 429s: {t} of {n} requests ({sh:.2%}){target}")
    print(f"{side} requests per round: DELETE {per_round(side, 'DELETE /api/sandbox/{idOrName}')}, "
          f"GET one {per_round(side, 'GET /api/sandbox/{idOrName}')}, list {per_round(side, 'GET /api/sandbox')}")
if "baseline" in runs:
    print(f"benchwarden / baseline: {med['benchwarden'] / med['baseline']:.3f}")
left = ", ".join(f"{side} {[l for _, l, _ in values]}" for side, values in runs.items())
print(f"not deleted at the end: {left}")
print(f"machine: {machine}")
met = best["benchwarden"] <= bound * 1.10 and throttled == 0 and all(l == 0 for _, l, _ in bw)
print("target met" if met else "target MISSED")
sys.exit(0 if met else 1)
PY
