#!/usr/bin/env bash
# Overhead of the per-task Docker proxy, in one run: the docker CLI through a
# running task's proxy against the same CLI talking to the daemon directly.
#
#   scripts/bench/proxy.sh [PS_RUNS [RUN_RUNS [ROUNDS]]]     # defaults 200 20 20
#
# A `benchwarden run` (release build) is started whose one task prints its
# DOCKER_HOST (the proxy socket) and waits. Then, in ROUNDS alternating rounds
# (proxy first in odd rounds, direct first in even ones), hyperfine times
# `docker ps` (PS_RUNS in all, per side) and `docker run --rm
# benchwarden-test:busybox true` (RUN_RUNS in all, per side); the medians over
# all rounds and the ratios proxy/direct are printed. Every run through the
# proxy is the real path: creates are labelled and committed to the ledger
# before the answer goes back. Then the proxy's own cost per request and per
# connection is measured on raw sockets (python3). At the end the task is let
# go and benchwarden tears down (nothing is left: every container was --rm).
#
# Needs: Docker, hyperfine, python3; builds the test image when it is missing
# (scripts/test-image.sh).
#
# BASELINE=/path/to/benchwarden starts a second `benchwarden run` of that
# binary (state directory of its own) beside the first, and adds its task's
# proxy as a third side, "baseline", to the same hyperfine invocations and the
# raw-socket probe. With three sides the order rotates every round (each side
# goes first equally often). Its medians and the ratios benchwarden/baseline
# are printed next to the others.
set -euo pipefail
ps_runs=${1:-200}
run_runs=${2:-20}
rounds=${3:-20}
baseline_bin=${BASELINE:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
(cd "$root" && cargo build --release --quiet)
"$root/scripts/test-image.sh" >/dev/null
bin=$root/target/release/benchwarden
image=benchwarden-test:busybox
direct=${DOCKER_HOST:-unix:///var/run/docker.sock}

work=$(mktemp -d)
finish() {
    # Lets each task end (or interrupts its run if it is stuck), then waits for its teardown.
    local name pid
    for name in bw baseline; do
        [[ -e $work/$name.pid ]] || continue
        pid=$(cat "$work/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            { echo go >"$work/$name.gate"; } 2>/dev/null &
            wait "$pid" || true
        fi
    done
    rm -rf "$work"
}
trap finish EXIT

# supervise NAME BINARY: starts `BINARY run` in the background with one task
# that writes its DOCKER_HOST to $work/NAME.host and waits on $work/NAME.gate.
supervise() {
    local name=$1 binary=$2
    mkfifo "$work/$name.host" "$work/$name.gate"
    "$binary" -q --state-dir "$work/state-$name" run --skip-cleanup -j 1 -- \
        sh -c 'echo "$DOCKER_HOST" > "$1.host"; read -r _ < "$1.gate"' harness "$work/$name" >"$work/$name.out" 2>&1 &
    echo $! >"$work/$name.pid"
}

supervise bw "$bin"
read -r proxy <"$work/bw.host"
echo "proxy: $proxy (task of benchwarden pid $(cat "$work/bw.pid")); direct: $direct"
sides=(proxy direct)
if [[ -n $baseline_bin ]]; then
    supervise baseline "$baseline_bin"
    read -r baseline <"$work/baseline.host"
    echo "baseline proxy: $baseline (task of $baseline_bin, pid $(cat "$work/baseline.pid"))"
    sides=(proxy baseline direct)
fi

# One timing round: hyperfine with the sides in the order of $order.
round() {
    local name=$1 runs=$2 warmup=$3 out=$4
    shift 4
    local cmd="docker $*" side commands=()
    for side in "${order[@]}"; do
        commands+=(-n "$side" "env DOCKER_HOST=${!side} $cmd")
    done
    hyperfine -N --style none --warmup "$warmup" --runs "$runs" --export-json "$out" "${commands[@]}" >/dev/null
    echo "  $name round: done ($runs each, ${order[0]} first)" >&2
}

for ((r = 1; r <= rounds; r++)); do
    # Rotate the sides: round 1 starts with the first, round 2 with the second, ...
    # (with two sides: proxy first in odd rounds, direct first in even ones).
    by=$(((r - 1) % ${#sides[@]}))
    order=("${sides[@]:by}" "${sides[@]:0:by}")
    round "docker ps" $((ps_runs / rounds)) 2 "$work/ps-$r.json" ps
    round "docker run --rm" $((run_runs / rounds)) 0 "$work/run-$r.json" run --rm "$image" true
done

python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for key, label in (("ps", "docker ps"), ("run", "docker run --rm IMG true")):
    times = {}
    for r in range(1, rounds + 1):
        for result in json.load(open(f"{work}/{key}-{r}.json"))["results"]:
            times.setdefault(result["command"], []).extend(result["times"])
    med = {side: statistics.median(values) * 1000 for side, values in times.items()}
    rows.append((label, len(times["direct"]), med))
print()
print("| operation | runs per side | direct median | through proxy median | ratio | overhead |")
print("|---|---|---|---|---|---|")
for label, runs, med in rows:
    ratio = med["proxy"] / med["direct"]
    print(f"| `{label}` | {runs} | {med['direct']:.1f} ms | {med['proxy']:.1f} ms | {ratio:.3f} | {100 * (ratio - 1):+.1f} % |")
if "baseline" in rows[0][2]:
    print()
    print("| operation | through baseline proxy median | baseline/direct | benchwarden/baseline |")
    print("|---|---|---|---|")
    for label, runs, med in rows:
        print(f"| `{label}` | {med['baseline']:.1f} ms | {med['baseline'] / med['direct']:.3f} | "
              f"{med['proxy'] / med['baseline']:.3f} |")
PY

# Where the time goes: the proxy's own cost per request on a kept-alive
# connection, and per new connection (accept, connect upstream, one request).
python3 - "${proxy#unix://}" "${direct#unix://}" ${baseline_bin:+"${baseline#unix://}"} <<'PY'
import socket, statistics, sys, time
proxy, direct = sys.argv[1], sys.argv[2]
baseline = sys.argv[3] if len(sys.argv) > 3 else None
PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"

def answer(sock):
    data = b""
    while not data.endswith(b"OK"):
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("connection closed")
        data += chunk

def kept_alive(path, n=2000):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        sock.sendall(PING)
        answer(sock)
        times.append(time.perf_counter() - started)
    sock.close()
    return statistics.median(times) * 1e6

def fresh(path, n=500):
    times = []
    for _ in range(n):
        started = time.perf_counter()
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.sendall(PING)
        answer(sock)
        sock.close()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6

rows = {"kept-alive GET /_ping": ([], [], []), "new connection + GET /_ping": ([], [], [])}
for _ in range(3):
    for label, probe in (("kept-alive GET /_ping", kept_alive), ("new connection + GET /_ping", fresh)):
        rows[label][0].append(probe(direct))
        rows[label][1].append(probe(proxy))
        if baseline:
            rows[label][2].append(probe(baseline))
print()
print("| request (raw socket, median of medians) | direct | through proxy | added |")
print("|---|---|---|---|")
for label, (d, p, _) in rows.items():
    d, p = statistics.median(d), statistics.median(p)
    print(f"| {label} | {d:.0f} µs | {p:.0f} µs | {p - d:+.0f} µs |")
if baseline:
    print()
    print("| request (raw socket, median of medians) | through baseline proxy | added | benchwarden/baseline of added |")
    print("|---|---|---|---|")
    for label, (d, p, b) in rows.items():
        d, p, b = statistics.median(d), statistics.median(p), statistics.median(b)
        print(f"| {label} | {b:.0f} µs | {b - d:+.0f} µs | {(p - d) / (b - d):.2f} |")
PY

for name in bw baseline; do
    [[ -e $work/$name.pid ]] || continue
    echo go >"$work/$name.gate"
    wait "$(cat "$work/$name.pid")" && status=0 || status=$?
    rm "$work/$name.pid"
    echo
    if [[ $name == bw ]]; then echo "benchwarden run exited $status:"; else echo "baseline run exited $status:"; fi
    sed 's/^/  /' "$work/$name.out"
done
