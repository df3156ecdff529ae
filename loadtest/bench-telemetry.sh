#!/usr/bin/env bash
# What telemetry costs, in one run: the payment ladder against the local tier (release
# build) with the api instances exporting every trace and their metrics over OTLP to the
# tier's collector, then sampling 10 % of traces (parent-based), then with
# OTEL_SDK_DISABLED=true (logs only; no spans, no metrics). The processor simulator and
# the workers export throughout: the comparison isolates the api's own cost. Settings:
# STEPS (25,50,100,120), DURATION (10), MIX (create=1,get=2,list=1), PSP_MEDIAN_MS (unset:
# the tier's 150 ms).
#
# Goodput at saturation is noisy on a shared 2-core machine, so each mode also runs a
# fixed arrival rate below saturation (RATE, default 400 req/s, for 3 + DURATION s) while
# the CPU time of the api processes and of the collector is read from /proc: the same
# requests in every mode, so the difference in CPU per request is telemetry's cost, and
# the collector's share shows what co-locating it with the stack costs.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=${STEPS:-25,50,100,120}
duration=${DURATION:-10}
mix=${MIX:-create=1,get=2,list=1}
out=${OUT:-target/bench/telemetry-$(date -u +%Y%m%dT%H%M%SZ)}
# shellcheck source=loadtest/bench-common.sh
. loadtest/bench-common.sh

rate=${RATE:-400}

# CPU seconds (user + system) used so far by the components whose pid files match a glob:
# `api-[0-9]*` (the api instances, not api-demo), `otel-collector`, `worker-*`, ...
cpu_seconds() {
  python3 - "$TIERSTACK_RUN_DIR/pids" "$1" <<'PY'
import glob, os, sys
total = 0.0
for path in glob.glob(f"{sys.argv[1]}/{sys.argv[2]}.pid"):
    pid = open(path).read().strip()
    # Fields after the command name (which may hold spaces): utime is the 14th field.
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
print(total)
PY
}

# The fixed-rate phase: writes NAME-rate/cpu.json with the CPU each kind of process used
# for the requests sent (CPU seconds per 1000 requests).
groups=("api-[0-9]*" "worker-*" "psp-sim" "otel-collector")
cpu_phase() {
  local name=$1 before=() after=() group
  for group in "${groups[@]}"; do before+=("$(cpu_seconds "$group")"); done
  target/release/loadtest open --quiet --rates "$rate" --warmup 3 --duration "$duration" \
    --capacity "$rate" --mix "$mix" --out-dir "$out" --name "$name-rate" >/dev/null || true
  for group in "${groups[@]}"; do after+=("$(cpu_seconds "$group")"); done
  python3 - "$out/$name-rate" "$rate" "$duration" "${before[@]}" "${after[@]}" <<'PY'
import json, sys
out, rate, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
values = list(map(float, sys.argv[4:]))
names = ("api", "worker", "psp-sim", "collector")
before, after = values[:4], values[4:]
report = json.load(open(f"{out}/report.json"))["runs"][0]["steps"][0]
# Warm-up and measured seconds were both sent at the rate; the CPU covers both.
sent = rate * (3 + duration)
cpu = {f"{n}_ms_per_1000": (a - b) * 1e6 / sent for n, b, a in zip(names, before, after)}
cpu.update(requests=sent, p95_ms=report["success"]["p95_ms"], failures=report["failure"]["count"])
json.dump(cpu, open(f"{out}/cpu.json", "w"), indent=2)
print(f"CPU at {rate:.0f} req/s, ms per 1000 requests: "
      + ", ".join(f"{n} {cpu[n + '_ms_per_1000']:.0f}" for n in names)
      + f"; p95 {cpu['p95_ms']:.1f} ms, {cpu['failures']} failures")
PY
}

original_behaviour=$(psp_behaviour get)
if [ -n "${PSP_MEDIAN_MS:-}" ]; then
  psp_behaviour "{\"latency_median_ms\": $PSP_MEDIAN_MS, \"latency_sigma\": 0.5, \"latency_max_ms\": 5000, \"failure_rate\": 0, \"decline_rate\": 0}"
fi
trap 'restart_api; psp_behaviour "$original_behaviour"' EXIT

echo "== telemetry on: every trace exported"
restart_api
ladder telemetry-on || true
cpu_phase telemetry-on

echo "== telemetry on: 10 % of traces sampled"
restart_api --api-env OTEL_TRACES_SAMPLER=parentbased_traceidratio --api-env OTEL_TRACES_SAMPLER_ARG=0.1
ladder telemetry-sampled || true
cpu_phase telemetry-sampled

echo "== telemetry off"
restart_api --api-env OTEL_SDK_DISABLED=true
ladder telemetry-off || true
cpu_phase telemetry-off

echo
echo "on: all traces and metrics exported over OTLP; 10%: parent-based 0.1 sampling; off: OTEL_SDK_DISABLED"
python3 loadtest/side-by-side.py "$out" telemetry-on=on telemetry-sampled=10% telemetry-off=off
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
cpu = {n: json.load(open(f"{out}/telemetry-{n}-rate/cpu.json")) for n in ("on", "sampled", "off")}
names = ("api", "worker", "psp-sim", "collector")
total = {m: sum(cpu[m][f"{n}_ms_per_1000"] for n in names) for m in cpu}
print("\nCPU ms per 1000 requests at the fixed rate, by process:")
print("| mode | " + " | ".join(names) + " | all four | all against off | p95 ms |")
print("|---|" + "---:|" * (len(names) + 3))
for mode, label in (("on", "on"), ("sampled", "10%"), ("off", "off")):
    c = cpu[mode]
    cells = [f"{c[n + '_ms_per_1000']:.0f}" for n in names]
    print(f"| {label} | " + " | ".join(cells) + f" | {total[mode]:.0f} | "
          f"{total[mode] / total['off']:.2f} | {c['p95_ms']:.1f} |")
PY
echo "results in $out"
