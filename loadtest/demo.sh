#!/usr/bin/env bash
# The main job: bring up the local tier, run the load ladder, and show the lesson.
#
# 1. the ladder 25/50/100/120 against the service, with its verdict;
# 2. the same ladder against the service and against its demonstration mode (a session
#    held across the processor call), side by side;
# 3. 1000 users with about one second of think time.
# Reports (Markdown, JSON, SVG chart) go to target/loadtest/<run>/. The exit code is
# non-zero when the service fails a criterion. WARMUP and DURATION (seconds per step)
# can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

tierctl=deploy/local/tierctl
warmup=${WARMUP:-3}
duration=${DURATION:-10}
stamp=$(date -u +%Y%m%dT%H%M%SZ)

"$tierctl" up --tier local --profile release
cargo build --release --locked -p loadtest
set -a
eval "$("$tierctl" env --tier local)"
set +a
"$tierctl" smoke --tier local

loadtest=target/release/loadtest
common=(--warmup "$warmup" --duration "$duration" --out-dir target/loadtest)
status=0

echo
echo "== 1. the concurrency ladder: 25, 50, 100, 120 concurrent requests"
"$loadtest" ladder "${common[@]}" --name "ladder-$stamp" || status=1

echo
echo "== 2. the same ladder, normal service against a session held across the processor call"
"$loadtest" compare "${common[@]}" --versus "$TIERSTACK_DEMO_URL" --name "compare-$stamp" || status=1

echo
echo "== 3. 1000 users, exponential think time with a 1 s mean, read-heavy mix"
"$loadtest" users "${common[@]}" --users 1000 --think-ms 1000 --mix create=1,get=6,list=1 \
  --name "users-$stamp" || status=1

echo
if [ "$status" = 0 ]; then
  echo "demo: every criterion passed"
else
  echo "demo: a criterion failed; see the FAIL lines above and the reports"
fi
echo "reports: target/loadtest/{ladder,compare,users}-$stamp/report.md (chart.svg beside each)"
exit "$status"
