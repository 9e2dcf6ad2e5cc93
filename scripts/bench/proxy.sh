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
set -euo pipefail
ps_runs=${1:-200}
run_runs=${2:-20}
rounds=${3:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
(cd "$root" && cargo build --release --quiet)
"$root/scripts/test-image.sh" >/dev/null
bin=$root/target/release/benchwarden
image=benchwarden-test:busybox
direct=${DOCKER_HOST:-unix:///var/run/docker.sock}

work=$(mktemp -d)
bw=
finish() {
    # Lets the task end (or interrupts the run if it is stuck), then waits for its teardown.
    if [[ -n $bw ]] && kill -0 "$bw" 2>/dev/null; then
        { echo go >"$work/gate"; } 2>/dev/null &
        wait "$bw" || true
    fi
    rm -rf "$work"
}
trap finish EXIT
mkfifo "$work/host" "$work/gate"

"$bin" -q --state-dir "$work/state" run --skip-cleanup -j 1 -- \
    sh -c 'echo "$DOCKER_HOST" > "$1/host"; read -r _ < "$1/gate"' harness "$work" >"$work/run.out" 2>&1 &
bw=$!
read -r proxy <"$work/host"
echo "proxy: $proxy (task of benchwarden pid $bw); direct: $direct"

# One timing round: hyperfine with both sides, in the given order.
round() {
    local name=$1 runs=$2 warmup=$3 first=$4 second=$5 out=$6
    shift 6
    local cmd="docker $*"
    hyperfine -N --style none --warmup "$warmup" --runs "$runs" --export-json "$out" \
        -n "$first" "env DOCKER_HOST=${!first} $cmd" \
        -n "$second" "env DOCKER_HOST=${!second} $cmd" >/dev/null
    echo "  $name round: done ($runs each, $first first)" >&2
}

for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then order=(proxy direct); else order=(direct proxy); fi
    round "docker ps" $((ps_runs / rounds)) 2 "${order[@]}" "$work/ps-$r.json" ps
    round "docker run --rm" $((run_runs / rounds)) 0 "${order[@]}" "$work/run-$r.json" run --rm "$image" true
done

python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for key, label in (("ps", "docker ps"), ("run", "docker run --rm IMG true")):
    times = {"proxy": [], "direct": []}
    for r in range(1, rounds + 1):
        for result in json.load(open(f"{work}/{key}-{r}.json"))["results"]:
            times[result["command"]] += result["times"]
    med = {side: statistics.median(values) * 1000 for side, values in times.items()}
    ratio = med["proxy"] / med["direct"]
    rows.append((label, len(times["direct"]), med["direct"], med["proxy"], ratio))
print()
print("| operation | runs per side | direct median | through proxy median | ratio | overhead |")
print("|---|---|---|---|---|---|")
for label, runs, direct, proxy, ratio in rows:
    print(f"| `{label}` | {runs} | {direct:.1f} ms | {proxy:.1f} ms | {ratio:.3f} | {100 * (ratio - 1):+.1f} % |")
PY

# Where the time goes: the proxy's own cost per request on a kept-alive
# connection, and per new connection (accept, connect upstream, one request).
python3 - "${proxy#unix://}" "${direct#unix://}" <<'PY'
import socket, statistics, sys, time
proxy, direct = sys.argv[1], sys.argv[2]
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

rows = {"kept-alive GET /_ping": ([], []), "new connection + GET /_ping": ([], [])}
for _ in range(3):
    rows["kept-alive GET /_ping"][0].append(kept_alive(direct))
    rows["kept-alive GET /_ping"][1].append(kept_alive(proxy))
    rows["new connection + GET /_ping"][0].append(fresh(direct))
    rows["new connection + GET /_ping"][1].append(fresh(proxy))
print()
print("| request (raw socket, median of medians) | direct | through proxy | added |")
print("|---|---|---|---|")
for label, (d, p) in rows.items():
    d, p = statistics.median(d), statistics.median(p)
    print(f"| {label} | {d:.0f} µs | {p:.0f} µs | {p - d:+.0f} µs |")
PY

echo go >"$work/gate"
wait "$bw" && status=0 || status=$?
bw=
echo
echo "benchwarden run exited $status:"
sed 's/^/  /' "$work/run.out"
