#!/usr/bin/env python3
"""Do the load tool's numbers agree with an established load generator?

Runs oha and `loadtest` against the same endpoint (GET /v1/payments/{id} through HAProxy,
served from the replica) at the same concurrency, alternately over several rounds in one
run, and prints throughput, p50 and the CPU each tool spent per request, with medians and
ratios. Exits non-zero when the medians of throughput or p50 differ by more than 10 %.

Installs oha with `cargo install oha --locked` when it is missing. Settings:
CONCURRENCY (50), DURATION seconds (10), ROUNDS (3).
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERCTL = ROOT / "deploy/local/tierctl"
CONCURRENCY = int(os.environ.get("CONCURRENCY", "50"))
DURATION = int(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TOLERANCE = 0.10


def run(command, **kwargs):
    print("+", " ".join(map(str, command)), file=sys.stderr, flush=True)
    return subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(command, env=None):
    """Runs a command to completion; returns its stdout and the CPU seconds it used."""
    before = children_cpu_seconds()
    result = run(command, env=env, capture_output=True, text=True)
    return result.stdout, children_cpu_seconds() - before


def oha_binary():
    found = shutil.which("oha") or str(Path.home() / ".cargo/bin/oha")
    if not Path(found).exists():
        run(["cargo", "install", "oha", "--locked"])
    return found


def tier_env():
    output = run([TIERCTL, "env", "--tier", "local"], capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def one_payment(env):
    """An account, and one payment of it visible through the API."""
    created = run([ROOT / "target/release/api", "accounts", "create", "--name", "oha-agreement",
                    "--plan", "loadtest"],
                  env={**os.environ, **env}, capture_output=True, text=True).stdout
    key = json.loads(created)["api_key"]
    base = env["TIERSTACK_HAPROXY_URL"]
    body = json.dumps({"amount": 100, "currency": "EUR"}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "Idempotency-Key": str(uuid.uuid4())}
    request = urllib.request.Request(f"{base}/v1/payments", data=body, headers=headers)
    payment_id = json.loads(urllib.request.urlopen(request, timeout=10).read())["id"]
    url = f"{base}/v1/payments/{payment_id}"
    for _ in range(100):
        try:
            read = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
            urllib.request.urlopen(read, timeout=5).read()
            return key, url
        except urllib.error.HTTPError:
            time.sleep(0.05)
    sys.exit("the payment never became readable")


def oha_round(oha, key, url):
    stdout, cpu = measured([oha, "-c", str(CONCURRENCY), "-z", f"{DURATION}s", "--no-tui",
                            "--output-format", "json", "-H", f"Authorization: Bearer {key}", url])
    report = json.loads(stdout)
    summary = report["summary"]
    statuses = report.get("statusCodeDistribution", {})
    requests = sum(int(n) for n in statuses.values())
    non_200 = requests - int(statuses.get("200", 0))
    return {
        "rps": summary["requestsPerSec"],
        "p50_ms": report["latencyPercentiles"]["p50"] * 1000,
        "requests": requests,
        "errors": non_200,
        "cpu_us_per_request": cpu / max(requests, 1) * 1e6,
    }


def loadtest_round(env, index):
    name = f"oha-agreement-{int(time.time())}-{index}"
    out_dir = ROOT / "target/bench/oha"
    _, cpu = measured([ROOT / "target/release/loadtest", "ladder", "--steps", str(CONCURRENCY),
                       "--capacity", str(CONCURRENCY), "--mix", "get=1", "--warmup", "0",
                       "--duration", str(DURATION), "--accounts", str(CONCURRENCY), "--quiet",
                       "--name", name, "--out-dir", out_dir], env={**os.environ, **env})
    step = json.loads((out_dir / name / "report.json").read_text())["runs"][0]["steps"][0]
    return {
        "rps": step["throughput_rps"],
        "p50_ms": step["success"]["p50_ms"],
        "requests": step["requests"],
        "errors": step["failure"]["count"],
        # No warm-up, as oha has none; seeding 50 accounts is included in the CPU.
        "cpu_us_per_request": cpu / max(step["requests"], 1) * 1e6,
    }


def main():
    oha = oha_binary()
    run([TIERCTL, "up", "--tier", "local", "--profile", "release"])
    run(["cargo", "build", "--release", "--locked", "-p", "loadtest", "-p", "api"])
    env = tier_env()
    key, url = one_payment(env)

    results = {"oha": [], "loadtest": []}
    for index in range(ROUNDS):
        # Alternate which tool goes first, so a drift in the machine hits both alike.
        if index % 2 == 0:
            results["oha"].append(oha_round(oha, key, url))
            results["loadtest"].append(loadtest_round(env, index))
        else:
            results["loadtest"].append(loadtest_round(env, index))
            results["oha"].append(oha_round(oha, key, url))
        print(f"round {index + 1} of {ROUNDS}: oha {results['oha'][-1]}, "
              f"loadtest {results['loadtest'][-1]}", file=sys.stderr, flush=True)

    print(f"\nGET /v1/payments/{{id}} through HAProxy, {CONCURRENCY} concurrent, "
          f"{DURATION} s per run, {ROUNDS} rounds alternating (medians)\n")
    print("| tool | req/s | p50 ms | CPU µs per request | errors |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for tool, rounds in results.items():
        medians[tool] = {k: statistics.median(r[k] for r in rounds)
                         for k in ("rps", "p50_ms", "cpu_us_per_request")}
        errors = sum(r["errors"] for r in rounds)
        m = medians[tool]
        print(f"| {tool} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['cpu_us_per_request']:.0f} | {errors} |")

    rps_ratio = medians["loadtest"]["rps"] / medians["oha"]["rps"]
    p50_ratio = medians["loadtest"]["p50_ms"] / medians["oha"]["p50_ms"]
    cpu_ratio = medians["loadtest"]["cpu_us_per_request"] / medians["oha"]["cpu_us_per_request"]
    print(f"\nloadtest / oha: throughput x{rps_ratio:.3f}, p50 x{p50_ratio:.3f}, "
          f"CPU per request x{cpu_ratio:.2f}")
    agree = abs(rps_ratio - 1) <= TOLERANCE and abs(p50_ratio - 1) <= TOLERANCE
    print(f"agreement within {TOLERANCE:.0%}: {'yes' if agree else 'NO'}")
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
