"""Where the time of ``make demo`` goes: each stage as a fraction of the demo total (issue 18).

    python benchmarks/demo_cost.py runs/demo

Reads every run's ``metrics.json`` ``timing`` under the demo folder (``s4kit.demo.read_timings``)
and prints a Markdown table: per stage, its seconds summed over the runs, its share of the
demo total (the sum over runs of their stages, ``s4kit.demo.run_total``; run-time summed over
runs, not the wall clock of two lanes side by side) and the number of runs that had it. The
parts of training (``training/data``, ``training/step``, ...) are rows below ``training``, as
shares of the same total (they are inside training's share, not added to it); ``training/other``
is training minus its measured parts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cost_rows(timings: dict[str, dict[str, float]]) -> list[tuple[str, float, float, int]]:
    """``(stage, seconds, fraction of the total, runs)`` per stage column, and
    ``training/other`` after the training parts when any run has parts."""
    from s4kit.demo import run_total, stage_columns

    total = sum(run_total(t) for t in timings.values())
    rows = []
    cols = stage_columns(timings)
    for c in cols:
        seconds = sum(t.get(c, 0.0) for t in timings.values())
        rows.append((c, seconds, seconds / total if total else 0.0, sum(c in t for t in timings.values())))
    parts = [c for c in cols if c.startswith("training/")]
    if parts:
        other = sum(t.get("training", 0.0) - sum(t.get(c, 0.0) for c in parts)
                    for t in timings.values() if any(c in t for c in parts))
        at = max(i for i, r in enumerate(rows) if r[0] in parts) + 1
        rows.insert(at, ("training/other", other, other / total if total else 0.0,
                         sum(any(c in t for c in parts) for t in timings.values())))
    return rows


def cost_table(out: str | Path) -> str:
    """The Markdown table of ``cost_rows`` for the demo folder ``out``, with a total row."""
    from s4kit.demo import read_timings, run_total

    timings = read_timings(Path(out))
    if not timings:
        raise SystemExit(f"{out}: no run with a metrics.json timing")
    total = sum(run_total(t) for t in timings.values())
    lines = [f"{len(timings)} runs in {out}", "", "| stage | seconds | share of total | runs |", "|---|---:|---:|---:|"]
    for name, seconds, share, runs in cost_rows(timings):
        label = f"  {name}" if "/" in name else name
        lines.append(f"| {label} | {seconds:.1f} | {100 * share:.1f} % | {runs} |")
    lines.append(f"| **total** | {total:.1f} | 100.0 % | {len(timings)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default="runs/demo", help="the demo folder (make demo's --out)")
    args = p.parse_args(argv)
    print(cost_table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
