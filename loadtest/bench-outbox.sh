#!/usr/bin/env bash
# What the outbox costs the write path, and how the pipeline keeps up, in one run.
#
# Against the local tier (release build): the payment ladder with the outbox on, while the
# workers' /metrics are sampled every 250 ms (outbox backlog, age of the oldest unpublished
# event, stream length and pending entries, rows ClickHouse accepted); then the time until
# the pipeline is idle again; then the same ladder with the api instances restarted with
# OUTBOX_ENABLED=false. Settings: STEPS (25,50,100), DURATION (10), MIX (create=1).
set -euo pipefail
cd "$(dirname "$0")/.."

steps=${STEPS:-25,50,100}
duration=${DURATION:-10}
mix=${MIX:-create=1}
out=${OUT:-target/bench/outbox-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

ladder() {
  local name=$1
  shift
  target/release/loadtest ladder --quiet --steps "$steps" --duration "$duration" --warmup 3 \
    --mix "$mix" --out-dir "$out" --name "$name" "$@" | grep -E '^\||verdict'
}

trap 'restart_api; rm -f "$out/stop"' EXIT

echo "== outbox on, pipeline sampled"
restart_api
rm -f "$out/stop"
python3 loadtest/pipeline-sampler.py "$TIERSTACK_WORKER_URLS" "$out/stop" "$out/pipeline.json" &
sampler=$!
ladder outbox-on
touch "$out/stop"
wait "$sampler"

echo "== outbox off"
restart_api --api-env OUTBOX_ENABLED=false
ladder outbox-off

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
runs = {n: json.load(open(f"{out}/{n}/report.json"))["runs"][0] for n in ("outbox-on", "outbox-off")}
on, off = runs["outbox-on"]["steps"], runs["outbox-off"]["steps"]
print("\n| concurrency | goodput on | goodput off | on/off | p95 ms on | p95 ms off | p95 on/off |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for a, b in zip(on, off):
    print(f"| {a['concurrency']} | {a['goodput_rps']:.1f} | {b['goodput_rps']:.1f} | "
          f"{a['goodput_rps'] / b['goodput_rps']:.2f} | {a['success']['p95_ms']:.1f} | "
          f"{b['success']['p95_ms']:.1f} | {a['success']['p95_ms'] / b['success']['p95_ms']:.2f} |")
for name, run in runs.items():
    print(f"verdict {name}: {'PASS' if run['verdict']['passed'] else 'FAIL'}")
p = json.load(open(f"{out}/pipeline.json"))
print(f"\npipeline during the outbox-on ladder ({p['seconds']:.0f} s, {p['samples']} samples): "
      f"{p['events_per_second']:.0f} events/s into ClickHouse; max outbox backlog {p['max_outbox_backlog']:.0f}, "
      f"max oldest unpublished {p['max_oldest_unpublished_s'] * 1000:.0f} ms, max stream length "
      f"{p['max_stream_length']:.0f}, max pending {p['max_stream_pending']:.0f}; "
      f"idle {p['drain_seconds']} s after the load stopped")
PY
echo "results in $out"
