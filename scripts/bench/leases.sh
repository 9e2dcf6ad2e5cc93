#!/usr/bin/env bash
# Leases at scale, on the contract server: HOSTS machines (default 10) each
# running one benchwarden run that owns PER_HOST sandboxes (default 500:
# 5,000 in all), one of them lost, and another machine collecting what it
# left. Needs root: each machine is a benchwarden in a UTS namespace of its
# own (`unshare --uts`), with its own host name and state directory.
#
#   sudo scripts/bench/leases.sh                    # HOSTS=10 PER_HOST=500 LEASE=600 (25 min)
#   sudo HOSTS=4 PER_HOST=100 LEASE=30 scripts/bench/leases.sh
#
# The server (release `daytona-contract-server`) has the real API's Tier 1
# limits where they are measured: `authenticated` 10,000 a minute (the
# server's fixed limit, which renewals and listings count against) and
# `sandbox-lifecycle` 10,000 a minute (deletes), 20 ms latency on every call,
# deletes that take 200 ms to finish. The `sandbox-create` limit (300 a
# minute) is lifted: creating 5,000 sandboxes at it would take 17 minutes of
# setup and measures nothing here.
#
# Printed:
# 1. the renewals' share of the `authenticated` budget: PUT .../labels and
#    the renewals' listings over RENEWAL_WINDOW seconds (two renewal periods)
#    with every machine renewing, per machine and for all of them, at the
#    LEASE used, and scaled to the default lease of 10 minutes (the share is
#    proportional to 1/lease);
# 2. the time another machine's `cleanup daytona --no-dry-run` takes to
#    collect the lost machine's PER_HOST sandboxes once their leases ended,
#    against the rate-limit bound (listing every page, then PER_HOST deletes
#    at 10,000 a minute, then the destroy delay), and that it took exactly
#    those: every other machine's sandboxes are still there.
# Then every machine is stopped (SIGINT); their teardowns leave nothing.
set -euo pipefail
hosts=${HOSTS:-10}
per_host=${PER_HOST:-500}
lease=${LEASE:-600}
latency_ms=20
destroy_ms=200
root=$(cd "$(dirname "$0")/../.." && pwd)
if ((EUID != 0)); then
    echo "needs root: each machine is a benchwarden in a UTS namespace of its own (unshare --uts)" >&2
    exit 2
fi
(cd "$root" && cargo build --release --quiet --bin benchwarden && cargo build --release --quiet -p daytona-contract)
bin=$root/target/release/benchwarden
server=$root/target/release/daytona-contract-server
key="bench-key-$RANDOM$RANDOM"
work=$(mktemp -d)
pids=()
server_pid=
cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$server" --key "$key" --latency-ms "$latency_ms" --lifecycle-limit 10000 --destroy-delay-ms "$destroy_ms" \
    >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
url=
for _ in $(seq 1 200); do
    url=$(head -n 1 "$work/server.out" 2>/dev/null || true)
    [[ $url == http* ]] && break
    sleep 0.05
done
[[ $url == http* ]] || { echo "the contract server did not start: $(cat "$work/server.err")" >&2; exit 2; }
stats() { curl -sf "${url%/api}/__contract/stats"; }
stat() { stats | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
now_ms() { date +%s%3N; }

# The harness: PER_HOST creates through the proxy, four at a time, each
# retried until it is answered (a 429 under the authenticated limit), then
# it runs until stopped.
mkdir -p "$work/bench"
cat >"$work/bench/harness.sh" <<'SH'
create() {
    until curl -sf -X POST -H "Authorization: Bearer $DAYTONA_API_KEY" -H 'Content-Type: application/json' \
        -d '{}' "$DAYTONA_API_URL/sandbox" >/dev/null; do sleep 0.2; done
}
export -f create
seq "$1" | xargs -P 4 -I{} bash -c create
echo created-all
exec sleep 36000
SH
cat >"$work/bench/benchmark.yaml" <<YAML
name: lease-bench
harness:
  command: [bash, harness.sh, "$per_host"]
  cwd: .
docker:
  enabled: false
daytona:
  lease: ${lease}s
YAML

# Runs benchwarden as host $1 in place of this (sub)shell, so that a job's
# pid is benchwarden's own (a background subshell would ignore SIGINT).
as_host() {
    local host=$1
    shift
    DAYTONA_API_URL=$url DAYTONA_API_KEY=$key NO_COLOR=1 exec unshare --uts sh -c \
        'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"' "$host" "$bin" --state-dir "$work/state-$host" "$@"
}

echo "--- $hosts machines, $per_host sandboxes each, lease ${lease}s"
started=$(now_ms)
for index in $(seq 0 $((hosts - 1))); do
    as_host "host-$index" run "$work/bench/benchmark.yaml" -j 1 >"$work/host-$index.out" 2>"$work/host-$index.err" &
    pids+=($!)
done
total=$((hosts * per_host))
until [[ $(stat 's["creates"]') -ge $total ]]; do sleep 1; done
echo "created $total sandboxes in $((($(now_ms) - started) / 1000)) s"

# 1. Renewals over two periods, every machine renewing.
period=$((lease / 3))
window=$((2 * period))
put_key='sum(v for k, v in s["by_route"].items() if k.startswith("PUT "))'
list_key='s["by_route"].get("GET /api/sandbox", 0)'
sleep "$period"
puts0=$(stat "$put_key")
lists0=$(stat "$list_key")
sleep "$window"
puts1=$(stat "$put_key")
lists1=$(stat "$list_key")
python3 - "$puts0" "$puts1" "$lists0" "$lists1" "$window" "$hosts" "$per_host" "$lease" <<'PY'
import sys
puts0, puts1, lists0, lists1, window, hosts, per_host, lease = map(int, sys.argv[1:])
calls = (puts1 - puts0) + (lists1 - lists0)
per_minute = calls * 60 / window
budget = 10_000
print(f"renewals: {puts1 - puts0} PUT labels + {lists1 - lists0} listings in {window} s "
      f"= {per_minute:.0f} calls a minute, all {hosts} machines")
print(f"share of the authenticated budget (10,000/min) at lease {lease}s: "
      f"{100 * per_minute / budget:.2f} % in all, {100 * per_minute / budget / hosts:.2f} % a machine")
scaled = per_minute * lease / 600
print(f"scaled to the default lease of 600 s: {100 * scaled / budget:.2f} % in all, "
      f"{100 * scaled / budget / hosts:.3f} % a machine ({per_host} sandboxes each)")
PY
throttled=$(stat 's["throttled_429"]')
echo "429s so far (creates included): $throttled"

# 2. Machine 0 is lost: benchwarden and its harness killed, its state gone.
lost_pid=${pids[0]}
kill -KILL "$lost_pid"
wait "$lost_pid" 2>/dev/null || true
for pid in $(grep -l "BENCHWARDEN_RUN_ID=$(grep -o 'run [0-9a-z-]*' "$work/host-0.err" | head -1 | cut -d' ' -f2)" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
done
rm -rf "$work/state-host-0"
pids=("${pids[@]:1}")
lost_at=$(date +%s)
echo "host-0 lost at $lost_at; its leases end within ${lease} s, plus a grace of 1 s"
sleep $((lease + 2))

deletes0=$(stat 's["deletes_accepted"]')
begin=$(now_ms)
(as_host collector cleanup daytona --no-dry-run --lease-grace 1s --json) >"$work/collect.json" 2>"$work/collect.err" || {
    echo "the collection failed:" >&2
    cat "$work/collect.err" >&2
    exit 1
}
took=$(($(now_ms) - begin))
deletes1=$(stat 's["deletes_accepted"]')
python3 - "$work/collect.json" "$took" "$per_host" "$total" "$latency_ms" "$destroy_ms" "$((deletes1 - deletes0))" <<'PY'
import json, math, sys
path, took, per_host, total, latency, destroy, deletes = sys.argv[1], *map(int, sys.argv[2:])
report = json.load(open(path))
expired = report["lease_expired"]
hosts = {item["reason"].split("host ")[1].split(",")[0] for item in expired}
print(f"collected: {report['removed']} removed, {report['failed']} failed, {report['pending']} pending; "
      f"{len(expired)} by lease, of hosts {sorted(hosts)}; {deletes} deletes accepted")
pages = math.ceil(total / 200)
# The earliest the last sandbox can be seen gone: every page of the listing, one after the other; the deletes
# at 10,000 a minute, which the server holds to 166 a second, so the last one waits for window
# ceil(n / 166) - 1 to open; its round trip and destroy delay; one look that finds it gone.
bound = pages * latency + (math.ceil(per_host / 166) - 1) * 1000 + latency + destroy + latency
print(f"time to collect {per_host}: {took / 1000:.2f} s; rate-limit bound {bound / 1000:.2f} s; ratio {took / bound:.2f}")
ok = report["removed"] == per_host and hosts == {"host-0"} and report["failed"] == 0
sys.exit(0 if ok else 1)
PY
remaining=$(stat 's["creates"] - s["deletes_accepted"]')
echo "sandboxes not deleted: $remaining (expected $((total - per_host)): the live machines' own)"

echo "--- stopping the live machines (SIGINT): their teardowns"
for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
codes=()
for pid in "${pids[@]}"; do
    code=0
    wait "$pid" 2>/dev/null || code=$?
    codes+=("$code")
done
pids=()
echo "exit codes of the live machines: ${codes[*]} (130: interrupted, everything torn down)"
accepted=$(stat 's["deletes_accepted"]')
echo "deletes accepted in all: $accepted of $total created"
if ((accepted != total)); then
    echo "sandboxes left: $((total - accepted)); the machines' last lines:" >&2
    for index in $(seq 1 $((hosts - 1))); do tail -n 5 "$work/host-$index.out" "$work/host-$index.err" >&2; done
    exit 1
fi
