#!/usr/bin/env bash
# Checks the monitoring files under deploy/ without a running Prometheus:
#   - the alerting rules load (promtool check rules) and pass their unit tests
#     (promtool test rules);
#   - every Grafana dashboard parses, every panel has at least one target with
#     an expr, and every expr is valid PromQL (promtool parses them as rules,
#     with the dashboard variables replaced);
#   - the Datadog dashboard parses and every widget has a query.
# Installs Debian's prometheus package when promtool is missing; apt starts no
# service on these machines, so that only brings the binaries.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing prometheus with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine has no package lists yet: update once and try again.
  if ! as_root apt-get install -y --no-install-recommends prometheus; then
    as_root apt-get update
    as_root apt-get install -y --no-install-recommends prometheus
  fi
fi
promtool --version | head -n 1

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yml

echo "== promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml

echo "== dashboards"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Writes every Grafana expr into one rules file, so that promtool parses them
# with the same PromQL parser that Prometheus runs.
python3 - "$scratch/dashboard-exprs.yml" deploy/dashboards/grafana/*.json <<'PY'
import json
import re
import sys

out_path, paths = sys.argv[1], sys.argv[2:]
failures = []
rules = []
builtins = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def substitute(expr):
    def repl(match):
        name = match.group(1) or match.group(2) or match.group(3)
        return builtins.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def panels_of(container):
    for panel in container.get("panels", []):
        yield panel
        yield from panels_of(panel)


if not paths:
    failures.append("no Grafana dashboards found")
for path in paths:
    try:
        with open(path) as f:
            board = json.load(f)
    except (OSError, ValueError) as error:
        failures.append(f"{path}: does not parse: {error}")
        continue
    if board.get("schemaVersion") != 39 or not board.get("uid"):
        failures.append(f"{path}: needs schemaVersion 39 and a uid")
    count = 0
    for panel in panels_of(board):
        if panel.get("type") == "row":
            continue
        count += 1
        title = panel.get("title", "?")
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        if not any(exprs):
            failures.append(f"{path} / {title}: no target with an expr")
        for n, expr in enumerate(e for e in exprs if e):
            rules.append({"record": f"dashboard:check:{len(rules)}",
                          "expr": substitute(expr),
                          "labels": {"panel": f"{path} / {title} #{n}"}})
    print(f"{path}: {count} panels")

with open(out_path, "w") as f:
    # JSON is valid YAML, and saves depending on a YAML library.
    json.dump({"groups": [{"name": "dashboard-exprs", "rules": rules}]}, f, indent=1)

for failure in failures:
    print(f"FAIL {failure}")
sys.exit(1 if failures else 0)
PY
promtool check rules "$scratch/dashboard-exprs.yml"

python3 - deploy/dashboards/datadog/tierstack.json <<'PY'
import json
import sys

path = sys.argv[1]
with open(path) as f:
    board = json.load(f)

failures = []
if board.get("layout_type") != "ordered":
    failures.append("layout_type must be ordered")


def check(widgets, where):
    for widget in widgets:
        definition = widget.get("definition", {})
        kind, title = definition.get("type"), definition.get("title", "?")
        if kind == "group":
            check(definition.get("widgets", []), f"{where}{title} / ")
        elif kind in ("timeseries", "query_value"):
            queries = [q.get("query", "").strip()
                       for r in definition.get("requests", []) for q in r.get("queries", [])]
            if not queries or not all(queries):
                failures.append(f"{where}{title}: a widget needs non-empty queries")
            widget_count[0] += 1
        else:
            failures.append(f"{where}{title}: unexpected widget type {kind}")


widget_count = [0]
check(board.get("widgets", []), "")
print(f"{path}: {widget_count[0]} widgets")
for failure in failures:
    print(f"FAIL {failure}")
sys.exit(1 if failures else 0)
PY

echo "all monitoring checks passed"
