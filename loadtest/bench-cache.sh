#!/usr/bin/env bash
# What the Redis cache buys on a read-heavy mix, measured side by side in one run.
#
# Against the local tier (release build): the ladder with a read-heavy mix, first with the
# cache on, then with the api instances restarted with CACHE_ENABLED=false; then a pure
# read step at 100 concurrent clients with the cache on, for the cached-read p99. The hit
# ratio comes from the instances' /metrics. Settings: STEPS (25,50,100), DURATION (10),
# MIX (create=1,get=8,list=1).
set -euo pipefail
cd "$(dirname "$0")/.."

steps=${STEPS:-25,50,100}
duration=${DURATION:-10}
mix=${MIX:-create=1,get=8,list=1}
out=${OUT:-target/bench/cache-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

# Sum over the api instances (their admin ports) of the cache lookups with one result.
lookups() {
  python3 - "$TIERSTACK_API_ADMIN_URLS" "$1" <<'PY'
import sys, urllib.request
total, series = 0.0, 'tierstack_cache_lookups_total{tierstack_cache_result="%s"} ' % sys.argv[2]
for base in sys.argv[1].split(","):
    for line in urllib.request.urlopen(base + "/metrics", timeout=5).read().decode().splitlines():
        if line.startswith(series):
            total += float(line.split()[-1])
print(total)
PY
}


trap 'restart_api' EXIT

echo "== cache on"
restart_api
ladder cache-on
hits=$(lookups hit)
misses=$(lookups miss)
echo "cache hits $hits, misses $misses"

echo "== cache off"
restart_api --api-env CACHE_ENABLED=false
ladder cache-off

echo "== cached reads only, 100 concurrent clients, cache on"
restart_api
target/release/loadtest ladder --quiet --steps 100 --capacity 100 --duration "$duration" \
  --warmup 3 --mix get=1 --out-dir "$out" --name cached-reads | grep -E '^\||verdict'

python3 - "$out" "$hits" "$misses" <<'PY'
import json, sys
out, hits, misses = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
on, off = (json.load(open(f"{out}/{n}/report.json"))["runs"][0]["steps"] for n in ("cache-on", "cache-off"))
print(f"\nhit ratio with the cache on: {hits / max(hits + misses, 1):.3f} ({hits:.0f} hits, {misses:.0f} misses)")
print("| concurrency | goodput on | goodput off | on/off | p95 ms on | p95 ms off | replica busy max on | replica busy max off | primary busy max on | primary busy max off |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for a, b in zip(on, off):
    print(f"| {a['concurrency']} | {a['goodput_rps']:.1f} | {b['goodput_rps']:.1f} | "
          f"{a['goodput_rps'] / b['goodput_rps']:.2f} | {a['success']['p95_ms']:.1f} | "
          f"{b['success']['p95_ms']:.1f} | {a['db']['replica_busy_max']} | {b['db']['replica_busy_max']} | "
          f"{a['db']['primary_busy_max']} | {b['db']['primary_busy_max']} |")
reads = json.load(open(f"{out}/cached-reads/report.json"))["runs"][0]["steps"][0]
print(f"\ncached reads at 100 concurrent clients: {reads['goodput_rps']:.0f} req/s, "
      f"p50 {reads['success']['p50_ms']:.2f} ms, p99 {reads['success']['p99_ms']:.2f} ms")
PY
echo "results in $out"
