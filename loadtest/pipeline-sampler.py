#!/usr/bin/env python3
"""Samples the workers' /metrics while a load runs, for bench-outbox.sh.

usage: pipeline-sampler.py WORKER_URLS STOP_FILE OUT_JSON

Every 250 ms it reads each worker's /metrics (comma-separated base URLs) and keeps the
largest outbox backlog, oldest-unpublished age, stream length and pending count it saw,
and the rows ClickHouse accepted. When STOP_FILE appears (the load has ended) it goes on
until the pipeline is idle (no backlog, empty stream) or 60 s pass, and writes OUT_JSON.
"""

import json
import os
import sys
import time
import urllib.request

INTERVAL_S = 0.25
DRAIN_LIMIT_S = 60.0


def scrape(bases):
    """Per metric: the sum over workers (counters) and the max (lag gauges, which every
    worker samples from the same shared sources)."""
    sums, maxes = {}, {}
    for base in bases:
        try:
            text = urllib.request.urlopen(base + "/metrics", timeout=2).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.split(" ", 1)
            value = float(value)
            sums[name] = sums.get(name, 0.0) + value
            maxes[name] = max(maxes.get(name, value), value)
    return sums, maxes


def main():
    bases, stop_file, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    peaks = {k: 0.0 for k in ("tierstack_outbox_backlog", "tierstack_outbox_oldest_age_seconds",
                              "tierstack_stream_length", "tierstack_stream_pending")}
    start = time.monotonic()
    first, _ = scrape(bases)
    inserted_start = first.get("tierstack_clickhouse_rows_inserted_total", 0.0)
    samples, load_end, drained_at, inserted_at_load_end = 0, None, None, None
    while True:
        sums, maxes = scrape(bases)
        samples += 1
        for name in peaks:
            peaks[name] = max(peaks[name], maxes.get(name, 0.0))
        now = time.monotonic()
        if load_end is None and os.path.exists(stop_file):
            load_end = now
            inserted_at_load_end = sums.get("tierstack_clickhouse_rows_inserted_total", 0.0)
        if load_end is not None:
            idle = maxes.get("tierstack_outbox_backlog", 1) == 0 and maxes.get("tierstack_stream_length", 1) == 0
            if idle or now - load_end > DRAIN_LIMIT_S:
                drained_at = now if idle else None
                break
        time.sleep(INTERVAL_S)
    seconds = load_end - start
    result = {
        "seconds": seconds,
        "samples": samples,
        "events_inserted": inserted_at_load_end - inserted_start,
        "events_per_second": (inserted_at_load_end - inserted_start) / seconds,
        "max_outbox_backlog": peaks["tierstack_outbox_backlog"],
        "max_oldest_unpublished_s": peaks["tierstack_outbox_oldest_age_seconds"],
        "max_stream_length": peaks["tierstack_stream_length"],
        "max_stream_pending": peaks["tierstack_stream_pending"],
        # None when the pipeline did not become idle within the limit.
        "drain_seconds": None if drained_at is None else drained_at - load_end,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
