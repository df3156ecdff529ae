#!/usr/bin/env bash
# What telemetry costs, in one run: the payment ladder against the local tier (release
# build) with the api instances exporting every trace and their metrics over OTLP to the
# tier's collector, then sampling 10 % of traces (parent-based), then with
# OTEL_SDK_DISABLED=true (logs only; no spans, no metrics). The processor simulator and
# the workers export throughout: the comparison isolates the api's own cost. Settings:
# STEPS (25,50,100,120), DURATION (10), MIX (create=1,get=2,list=1), PSP_MEDIAN_MS (unset:
# the tier's 150 ms).
set -euo pipefail
cd "$(dirname "$0")/.."

steps=${STEPS:-25,50,100,120}
duration=${DURATION:-10}
mix=${MIX:-create=1,get=2,list=1}
out=${OUT:-target/bench/telemetry-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

ladder() {
  local name=$1
  shift
  target/release/loadtest ladder --quiet --steps "$steps" --duration "$duration" --warmup 3 \
    --mix "$mix" --out-dir "$out" --name "$name" "$@" | grep -E '^\||verdict' || true
}

original_behaviour=$(psp_behaviour get)
if [ -n "${PSP_MEDIAN_MS:-}" ]; then
  psp_behaviour "{\"latency_median_ms\": $PSP_MEDIAN_MS, \"latency_sigma\": 0.5, \"latency_max_ms\": 5000, \"failure_rate\": 0, \"decline_rate\": 0}"
fi
trap 'restart_api; psp_behaviour "$original_behaviour"' EXIT

echo "== telemetry on: every trace exported"
restart_api
ladder telemetry-on

echo "== telemetry on: 10 % of traces sampled"
restart_api --api-env OTEL_TRACES_SAMPLER=parentbased_traceidratio --api-env OTEL_TRACES_SAMPLER_ARG=0.1
ladder telemetry-sampled

echo "== telemetry off"
restart_api --api-env OTEL_SDK_DISABLED=true
ladder telemetry-off

echo
echo "on: all traces and metrics exported over OTLP; 10%: parent-based 0.1 sampling; off: OTEL_SDK_DISABLED"
python3 loadtest/side-by-side.py "$out" telemetry-on=on telemetry-sampled=10% telemetry-off=off
echo "results in $out"
