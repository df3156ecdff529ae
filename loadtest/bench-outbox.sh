#!/usr/bin/env bash
# What the outbox costs the write path, and how the pipeline keeps up, in one run.
#
# Against the local tier (release build): the payment ladder with the outbox on, while the
# workers' /metrics are sampled every 250 ms (outbox backlog, age of the oldest unpublished
# event, stream length and pending entries, rows ClickHouse accepted); then the time until
# the pipeline is idle again; then the same ladder with the workers stopped, so that the
# outbox's cost on the write path is seen apart from the pipeline's use of the same CPU
# (the events wait in the outbox and are relayed afterwards); then the same ladder with the
# api instances restarted with OUTBOX_ENABLED=false. Settings: STEPS (25,50,100), DURATION (10), MIX (create=1), and
# PSP_MEDIAN_MS (unset: the tier's 150 ms); a fast processor makes the database sessions,
# where the outbox's cost lies, a larger part of each payment.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=${STEPS:-25,50,100}
duration=${DURATION:-10}
mix=${MIX:-create=1}
out=${OUT:-target/bench/outbox-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

# A failed verdict does not stop the comparison: every verdict is printed at the end.
original_behaviour=$(psp_behaviour get)
if [ -n "${PSP_MEDIAN_MS:-}" ]; then
  psp_behaviour "{\"latency_median_ms\": $PSP_MEDIAN_MS, \"latency_sigma\": 0.5, \"latency_max_ms\": 5000, \"failure_rate\": 0, \"decline_rate\": 0}"
fi
trap 'restart_api; "$tierctl" start-component worker --tier local >/dev/null; psp_behaviour "$original_behaviour"; rm -f "$out/stop"' EXIT

echo "== outbox on, pipeline sampled"
restart_api
rm -f "$out/stop"
python3 loadtest/pipeline-sampler.py "$TIERSTACK_WORKER_URLS" "$out/stop" "$out/pipeline.json" &
sampler=$!
run_start=$(date +%s)
ladder outbox-on || true
touch "$out/stop"
wait "$sampler"

# Once the pipeline is idle, every event of the run is in ClickHouse exactly once: its
# distinct events since the run began equal the outbox's.
outbox_events=$(psql "$DB_PRIMARY_URL" -Atc \
  "SELECT count(*) FROM outbox WHERE occurred_at >= to_timestamp($run_start)")
clickhouse_events=$(python3 - "$CLICKHOUSE_URL" "$run_start" <<'PY'
import sys, urllib.request
url, start = sys.argv[1], int(sys.argv[2])
query = f"SELECT uniqExact(event_id) FROM payment_events WHERE occurred_at_us >= {start * 1000000}"
print(urllib.request.urlopen(url + "/?database=tierstack", data=query.encode(), timeout=10).read().decode().strip())
PY
)
if [ "$outbox_events" = "$clickhouse_events" ]; then verdict=equal; else verdict=MISMATCH; fi
echo "events of the run: outbox $outbox_events, ClickHouse distinct $clickhouse_events ($verdict)" \
  | tee "$out/consistency.txt"

echo "== outbox on, workers stopped"
restart_api
"$tierctl" stop-component worker --tier local >/dev/null
ladder outbox-on-no-workers || true
"$tierctl" start-component worker --tier local >/dev/null

echo "== outbox off"
restart_api --api-env OUTBOX_ENABLED=false
ladder outbox-off || true

echo
echo "on: outbox and pipeline; alone: outbox on, workers stopped; off: no outbox"
python3 loadtest/side-by-side.py "$out" outbox-on=on outbox-on-no-workers=alone outbox-off=off

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
p = json.load(open(f"{out}/pipeline.json"))
print(f"pipeline during the outbox-on ladder ({p['seconds']:.0f} s, {p['samples']} samples): "
      f"{p['events_per_second']:.0f} events/s into ClickHouse; max outbox backlog {p['max_outbox_backlog']:.0f}, "
      f"max oldest unpublished {p['max_oldest_unpublished_s'] * 1000:.0f} ms, max stream length "
      f"{p['max_stream_length']:.0f}, max pending {p['max_stream_pending']:.0f}; "
      f"idle {p['drain_seconds']} s after the load stopped")
PY
echo "results in $out"
