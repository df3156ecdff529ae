# Sourced by the bench-*.sh scripts: bring up the local tier (release build), build the
# load tool, export the tier's addresses, and offer a way to restart the api instances
# with other settings. The caller sets `out` (its results folder) before sourcing.

tierctl=deploy/local/tierctl
mkdir -p "$out"

"$tierctl" up --tier local --profile release
cargo build --release --locked -p loadtest
set -a
eval "$("$tierctl" env --tier local)"
set +a

# Runs one ladder (the caller's `steps`, `duration` and `mix`) into $out/NAME and prints its
# table and verdict; extra arguments go to `loadtest ladder`. Fails when the verdict does;
# a comparison that must go on regardless calls `ladder NAME || true`.
ladder() {
  local name=$1
  shift
  target/release/loadtest ladder --quiet --steps "$steps" --duration "$duration" --warmup 3 \
    --mix "$mix" --out-dir "$out" --name "$name" "$@" | grep -E '^\||verdict'
}

# Restarts every api instance; extra arguments go to `tierctl up`, e.g.
# `restart_api --api-env CACHE_ENABLED=false`. Without any, the tier's own settings.
restart_api() {
  "$tierctl" stop-component api --tier local >/dev/null
  "$tierctl" up --tier local --profile release --no-build "$@" >/dev/null
}

# Reads (`psp_behaviour get`) or replaces (`psp_behaviour '{"latency_median_ms": 5, ...}'`)
# the processor simulator's behaviour while it runs.
psp_behaviour() {
  python3 - "$TIERSTACK_PSP_URL" "$1" <<'PY'
import json, sys, urllib.request
url, wanted = sys.argv[1] + "/admin/behaviour", sys.argv[2]
if wanted == "get":
    print(urllib.request.urlopen(url, timeout=5).read().decode())
else:
    request = urllib.request.Request(url, data=wanted.encode(), method="PUT",
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()
PY
}
