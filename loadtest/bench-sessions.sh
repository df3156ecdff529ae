#!/usr/bin/env bash
# Why the session discipline matters, measured side by side in one run.
#
# Against the local tier (release build), N concurrent clients create payments for a
# fixed time, first with the API in its normal mode (two short sessions around the
# processor call), then in the demonstration mode (one session held across the processor
# call), then the API is put back in its normal mode. Then session-cost measures what the
# PgBouncer-safe writer settings cost per session. Results and ratios are printed and kept
# as JSON under target/bench/.
#
# Settings: CONCURRENCY (100), DURATION seconds (20), WARMUP seconds (3),
# PSP_MEDIAN_MS (50), ACQUIRE_TIMEOUT_MS for both modes (2000).
set -euo pipefail
cd "$(dirname "$0")/.."

concurrency=${CONCURRENCY:-100}
duration=${DURATION:-20}
warmup=${WARMUP:-3}
psp_median_ms=${PSP_MEDIAN_MS:-50}
acquire_timeout_ms=${ACQUIRE_TIMEOUT_MS:-2000}
out=${OUT:-target/bench/sessions-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

# The processor's latency is part of the experiment: set it explicitly, and put back what
# it was when the script ends.
original_behaviour=$(psp_behaviour get)
psp_behaviour "{\"latency_median_ms\": $psp_median_ms, \"latency_sigma\": 0.5, \"latency_max_ms\": 5000, \"failure_rate\": 0, \"decline_rate\": 0}"

# Each run starts from the same state: fresh api processes, and a PgBouncer with no server
# connections left open by the run before.
restart_api() {
  "$tierctl" stop-component api --tier local >/dev/null
  "$tierctl" stop-component pgbouncer --tier local >/dev/null
  "$tierctl" up --tier local --profile release --no-build \
    --api-env "DB_ACQUIRE_TIMEOUT_MS=$acquire_timeout_ms" "$@" >/dev/null
}

# One step at the given concurrency, counted as within capacity. The demonstration mode is
# expected to fail the verdict; its numbers are what matters, so the exit code is ignored.
run_ladder() {
  local label=$1
  target/release/loadtest ladder --quiet --steps "$concurrency" --capacity "$concurrency" \
    --warmup "$warmup" --duration "$duration" --mix create=1 --accounts 50 \
    --out-dir "$out" --name "$label" | grep -E '^\||verdict' || true
}

trap 'restart_api; psp_behaviour "$original_behaviour"' EXIT

echo "== normal mode: two short sessions around the processor call"
restart_api
run_ladder disciplined

echo "== demonstration mode: one session held across the processor call"
restart_api --api-env API_DEMO_HOLD_SESSION_ACROSS_PSP=true
run_ladder hold-session

python3 - "$out/disciplined/report.json" "$out/hold-session/report.json" <<'PY'
import json, sys
good, bad = (json.load(open(p))["runs"][0]["steps"][0] for p in sys.argv[1:3])
def row(name, key):
    g, b = key(good), key(bad)
    ratio = f"{b / g:.2f}" if g else "-"
    print(f"| {name} | {g} | {b} | {ratio} |")
print(f"\n{good['concurrency']} concurrent clients, side by side")
print("| measure | normal | hold session | hold / normal |")
print("|---|---:|---:|---:|")
row("goodput req/s", lambda s: round(s["goodput_rps"], 1))
row("p50 ms", lambda s: round(s["success"]["p50_ms"], 1))
row("p95 ms", lambda s: round(s["success"]["p95_ms"], 1))
row("p99 ms", lambda s: round(s["success"]["p99_ms"], 1))
row("pool timeouts", lambda s: s["outcomes"].get("pool_timeout", 0))
row("other 5xx", lambda s: s["outcomes"].get("server5xx", 0) + s["outcomes"].get("deadline_exceeded", 0))
row("primary connections max", lambda s: s["db"]["primary_connections_max"])
row("primary busy connections max", lambda s: s["db"]["primary_busy_max"])
row("pgbouncer sv_active max", lambda s: s["db"]["pgbouncer_server_active_max"])
row("pgbouncer cl_waiting max", lambda s: s["db"]["pgbouncer_clients_waiting_max"])
PY

echo "== what the PgBouncer-safe writer settings cost per session"
target/release/session-cost --rounds 5 --sessions 150 --concurrency 16 | tee "$out/session-cost.md"
echo "results in $out"
