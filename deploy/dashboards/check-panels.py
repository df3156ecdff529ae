#!/usr/bin/env python3
"""Runs every panel query of Grafana dashboards against a live Prometheus.

A dashboard can be valid JSON with valid PromQL and still show nothing: a
metric renamed in the code, a label that never takes the filtered value, a
histogram that is never observed. This script asks Prometheus, over a recent
window, for what each panel would draw, and names each panel that would stay
empty.

    check-panels.py --prometheus http://127.0.0.1:9090 [--at UNIX_TS]
                    [--range SECONDS] DASHBOARD.json...
    check-panels.py --list-metrics DASHBOARD.json...

Template variables are replaced as Grafana would with "All" selected:
$__rate_interval becomes 1m and every custom variable ($job, ${pool}, ...)
becomes `.*`, which the dashboards use with `=~`. A panel passes when every
one of its targets returns at least one series with a value that is not NaN.

Standard library only, so that it runs wherever Python 3.11 does.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STEP_SECONDS = 5
REQUEST_TIMEOUT_SECONDS = 30

# Grafana's built-in interval variables, given values that suit a 5 s step
# and a 15 s scrape interval. Every other variable matches anything.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)\]\]|\$(\w+)")

# Words of PromQL that can stand where a metric name could.
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}


@dataclass
class Target:
    dashboard: str
    # Position of the panel in its dashboard: two panels may share a title.
    panel_index: int
    panel: str
    ref_id: str
    expr: str


@dataclass
class Outcome:
    series: int = 0
    problem: str | None = None


def load_targets(paths: list[str]) -> list[Target]:
    """Every target with an expr, from every panel, including panels in rows."""
    targets = []
    for path in paths:
        board = json.loads(Path(path).read_text())
        name = board.get("title") or Path(path).stem
        for index, panel in enumerate(walk_panels(board)):
            title = panel.get("title", "?")
            for target in panel.get("targets", []):
                expr = (target.get("expr") or "").strip()
                if expr and not target.get("hide"):
                    targets.append(Target(name, index, title, target.get("refId", "?"), expr))
    return targets


def walk_panels(container: dict):
    for panel in container.get("panels", []):
        if panel.get("type") != "row":
            yield panel
        # A collapsed row keeps its panels inside itself.
        yield from walk_panels(panel)


def substitute(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return BUILTIN_VARIABLES.get(name, ".*")

    return VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads.

    Removes what can hold identifiers that are not metrics (strings, label
    matchers in braces, range and subquery brackets, label lists after
    by/without/on/ignoring/group_*), then keeps identifiers that are not
    keywords, function calls or numbers.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def query_range(base_url: str, expr: str, start: float, end: float) -> Outcome:
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{STEP_SECONDS}s"}
    )
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        # Prometheus answers a bad query with 400 and a JSON error body.
        try:
            body = json.load(error)
        except ValueError:
            return Outcome(problem=f"HTTP {error.code}")
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        return Outcome(problem=f"request failed: {error}")

    if body.get("status") != "success":
        return Outcome(problem=f"{body.get('errorType', 'error')}: {body.get('error', '?')}")
    result = body.get("data", {}).get("result", [])
    if not result:
        return Outcome(problem="no series")
    with_values = [s for s in result if any(not is_nan(v) for _, v in s.get("values", []))]
    if not with_values:
        return Outcome(series=len(result), problem=f"{len(result)} series, all NaN")
    return Outcome(series=len(with_values))


def is_nan(value: str) -> bool:
    try:
        return math.isnan(float(value))
    except ValueError:
        return True


def reachable(base_url: str) -> str | None:
    """None when Prometheus answers, else why not: one message, not one per panel."""
    url = f"{base_url.rstrip('/')}/api/v1/status/buildinfo"
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS):
            return None
    except (urllib.error.URLError, TimeoutError) as error:
        return str(error)


def check(args: argparse.Namespace, targets: list[Target]) -> int:
    end = args.at if args.at is not None else time.time()
    start = end - args.range

    # Group by panel, keeping the dashboards' order.
    panels: dict[tuple[str, int], list[Target]] = {}
    for target in targets:
        panels.setdefault((target.dashboard, target.panel_index), []).append(target)

    failed = 0
    for panel_targets in panels.values():
        dashboard, panel = panel_targets[0].dashboard, panel_targets[0].panel
        series = 0
        problems = []
        for target in panel_targets:
            outcome = query_range(args.prometheus, substitute(target.expr), start, end)
            series += outcome.series
            if outcome.problem:
                problems.append(f"{target.ref_id}: {outcome.problem}")
        if problems:
            failed += 1
            print(f"FAIL {dashboard} / {panel}: {'; '.join(problems)}")
        else:
            print(f"ok   {dashboard} / {panel}: {series} series")

    total = len(panels)
    print(f"{total - failed} of {total} panels returned data, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Query each Grafana panel's targets against Prometheus and report empty ones."
    )
    parser.add_argument("dashboards", nargs="+", metavar="DASHBOARD.json")
    parser.add_argument("--prometheus", help="base URL, for example http://127.0.0.1:9090")
    parser.add_argument("--at", type=float, help="end of the window, UNIX seconds (default: now)")
    parser.add_argument("--range", type=float, default=120, help="window length in seconds (default: 120)")
    parser.add_argument(
        "--list-metrics", action="store_true", help="print the metric names the panels read, and exit"
    )
    args = parser.parse_args()

    try:
        targets = load_targets(args.dashboards)
    except (OSError, ValueError) as error:
        print(f"cannot read dashboards: {error}", file=sys.stderr)
        return 2

    if args.list_metrics:
        names = set()
        for target in targets:
            names |= metric_names(target.expr)
        for name in sorted(names):
            print(name)
        return 0

    if not args.prometheus:
        parser.error("--prometheus is required unless --list-metrics is given")
    if args.range <= 0:
        parser.error("--range must be positive")
    problem = reachable(args.prometheus)
    if problem:
        print(f"cannot reach Prometheus at {args.prometheus}: {problem}", file=sys.stderr)
        return 2
    return check(args, targets)


if __name__ == "__main__":
    sys.exit(main())
