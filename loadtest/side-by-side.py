#!/usr/bin/env python3
"""Prints ladder runs of one benchmark side by side, as a Markdown table.

usage: side-by-side.py OUT_DIR NAME=LABEL [NAME=LABEL ...]

Each NAME is a `loadtest ladder --name` run under OUT_DIR; the last one is the baseline:
every other run's goodput and p95 are also shown as a ratio to it, step by step. Then one
verdict line per run.
"""

import json
import sys


def main():
    out, pairs = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
    runs = {name: json.load(open(f"{out}/{name}/report.json"))["runs"][0] for name, _ in pairs}
    labels = dict(pairs)
    names = [name for name, _ in pairs]
    base, others = names[-1], names[:-1]

    header = ["concurrency"]
    header += [f"goodput {labels[n]}" for n in names]
    header += [f"{labels[n]}/{labels[base]}" for n in others]
    header += [f"p95 ms {labels[n]}" for n in names]
    header += [f"p95 {labels[n]}/{labels[base]}" for n in others]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))

    for steps in zip(*(runs[n]["steps"] for n in names)):
        step = dict(zip(names, steps))
        goodput = {n: s["goodput_rps"] for n, s in step.items()}
        p95 = {n: s["success"]["p95_ms"] for n, s in step.items()}
        cells = [str(step[base]["concurrency"])]
        cells += [f"{goodput[n]:.1f}" for n in names]
        cells += [f"{goodput[n] / goodput[base]:.2f}" for n in others]
        cells += [f"{p95[n]:.1f}" for n in names]
        cells += [f"{p95[n] / p95[base]:.2f}" for n in others]
        print("| " + " | ".join(cells) + " |")

    for name in names:
        passed = runs[name]["verdict"]["passed"]
        print(f"verdict {name}: {'PASS' if passed else 'FAIL'}")


if __name__ == "__main__":
    main()
