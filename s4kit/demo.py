"""``python -m s4kit.demo``: the methods on digits through the reproduction notebook.

``make demo`` runs the *tour* (``TOUR``: CSS and PRCL after the mean teacher, between the
supervised bounds, one seed) and copies a few figures to ``figures/``; ``make demo-all`` adds
ReCo, RC2L and AllSpark with the supervised baselines of the latter two's networks (``RUNS``); ``make table`` runs
three seeds of every run for the README's results table. Each run is ``s4kit reproduce``
(papermill) into ``<out>/<method>_<split>_seed<N>``; finished runs are skipped, interrupted
ones resume. ``results.md`` starts with a line naming what ran.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .io import atomic_savefig, atomic_write_text

# (preset, split): the semi-supervised problem on 1_16, bounded by supervised 1_16 and full;
# rc2l and allspark each with the supervised baseline of their own network (mask-classification
# head, SegFormer). Longest first, so that two lanes finish close together.
RUNS = [("rc2l", "1_16"), ("allspark", "1_16"), ("prcl", "1_16"), ("reco", "1_16"), ("css", "1_16"),
        ("supervised_maskformer", "1_16"), ("meanteacher", "1_16"), ("supervised_segformer", "1_16"),
        ("supervised", "full"), ("supervised", "1_16")]
# make demo: the core contrastive methods on DeepLabV3+ (CSS, PRCL) after their mean-teacher
# substrate, between the supervised bounds (1_16 below, full above); longest first, so that
# two lanes finish close together. It fits 12 minutes, install included, on an idle 2-core
# machine up to 1.5x slower than the one measured in the README. ReCo, RC2L and AllSpark (and
# the baselines of the latter two's networks): make demo-all.
TOUR = [("prcl", "1_16"), ("css", "1_16"), ("meanteacher", "1_16"), ("supervised", "full"), ("supervised", "1_16")]
# figures copied to figures/ for the README: (run, figure) -> name
FIGURES = {("prcl_1_16", "tsne.png"): "tsne_prcl.png", ("css_1_16", "predictions.png"): "predictions_css.png",
           ("meanteacher_1_16", "pseudo_labels.png"): "pseudo_labels_meanteacher.png",
           ("css_1_16", "label_sources.png"): "label_sources_css.png"}


def results_figure(rows: list[dict], path: Path) -> Path:
    """Bar chart of val mIoU per method and split: the bar is the mean over seeds, the error bar
    one sample standard deviation (two seeds or more), the dots the individual seeds.

    ``rows``: ``summarize`` rows (``method``, ``split``, ``mious``: one float per seed, percent).
    """
    from .viz.figures import use_headless_backend

    use_headless_backend()
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r['method']} · {r['split']}" for r in rows]
    values = [np.asarray(r["mious"], dtype=float) for r in rows]
    means = [v.mean() for v in values]
    stds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
    seeds = sorted({len(v) for v in values})
    fig, ax = plt.subplots(figsize=(1.05 * len(rows) + 1.5, 3.8))
    x = np.arange(len(rows))
    ax.bar(x, means, color="#8fb3d9", yerr=[s if s else np.nan for s in stds], capsize=3,
           error_kw={"elinewidth": 1, "ecolor": "#333333"}, label="mean over seeds (± 1 std)")
    for i, v in enumerate(values):
        jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
        ax.scatter(i + jitter, v, s=12, color="#1f3b5a", zorder=3, label="one seed" if i == 0 else None)
        ax.text(i, max(v.max(), means[i] + stds[i]) + 1.5, f"{means[i]:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("digits: supervised vs semi-supervised (1/16 labels) vs full supervision; "
                 f"{'/'.join(map(str, seeds))} seed(s) per bar", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


# metrics.json "timing": the stages of a run (keys without "/"), their sum is the run's total;
# "training/<part>" keys are parts of the training stage (already inside it).
STAGES = ["training", "final evaluation", "pseudo-label measurement", "method measures", "latent measures", "figures"]


def read_timings(out: Path) -> dict[str, dict[str, float]]:
    """Run folder name -> its metrics.json ``timing`` (seconds per stage), for every folder
    directly under ``out`` with a metrics.json holding one (sorted by name)."""
    import json

    timings = {}
    for metrics in sorted(Path(out).glob("*/metrics.json")):
        try:
            timing = json.loads(metrics.read_text(encoding="utf-8")).get("timing")
        except (OSError, ValueError):
            continue
        if isinstance(timing, dict) and timing:
            timings[metrics.parent.name] = {k: float(v) for k, v in timing.items()}
    return timings


def stage_columns(timings: dict[str, dict[str, float]]) -> list[str]:
    """The timing keys present in any run: the known stages in ``STAGES`` order, each
    followed by its ``<stage>/<part>`` keys, then any other key."""
    keys = list(dict.fromkeys(k for t in timings.values() for k in t))
    order = []
    for name in STAGES + [k for k in keys if "/" not in k and k not in STAGES]:
        if name in keys:
            order.append(name)
        order += [k for k in keys if k.startswith(name + "/")]
    return order + [k for k in keys if k not in order]


def run_total(timing: dict[str, float]) -> float:
    """A run's total seconds: the sum of its stages (keys without "/": the parts are inside)."""
    return sum(v for k, v in timing.items() if "/" not in k)


def timing_table(out: Path) -> str:
    """Markdown table of stage seconds per run of ``out`` (``read_timings``) with a total
    column (``run_total``) and a totals row; parts of a stage are columns ``<stage>/<part>``.
    A stage a run did not have is blank (and adds 0 to the totals). Empty string if no run
    has a timing."""
    timings = read_timings(out)
    if not timings:
        return ""
    cols = stage_columns(timings)
    lines = ["| run | " + " | ".join(cols) + " | total |", "|---|" + "---:|" * (len(cols) + 1)]
    for run, t in timings.items():
        cells = [f"{t[c]:.1f}" if c in t else "" for c in cols]
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {run_total(t):.1f} |")
    sums = [sum(t.get(c, 0.0) for t in timings.values()) for c in cols]
    total = sum(run_total(t) for t in timings.values())
    lines.append("| **total** | " + " | ".join(f"{v:.1f}" for v in sums) + f" | {total:.1f} |")
    return "\n".join(lines)


def _launch(method: str, split: str, seed: int, run: Path, data: str, max_iters: int, threads: int,
            overrides: tuple[str, ...] = ()):
    """Start ``s4kit reproduce`` for one run in a subprocess; its output goes to ``run/demo.log``.
    ``overrides``: config overrides (OmegaConf dotlist) passed to every run."""
    from .engine.trainer import claim_run_dir

    claim_run_dir(run)  # an s4kit run folder before demo.log goes in (reproduce refuses any other)
    cmd = [sys.executable, "-m", "s4kit.cli", "reproduce", "--method", method, "--dataset", "digits", "--split", split,
           "--seed", str(seed), "--out", str(run), "-p", "DATA_ROOT", data]
    if max_iters:
        cmd += ["-p", "MAX_ITERS", str(max_iters)]
    extra = ([f"train.threads={threads}"] if threads else []) + list(overrides)
    if extra:
        cmd += ["-p", "OVERRIDES", " ".join(extra)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.cpu_count() or 1))
    log = open(run / "demo.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def run_all(runs: list[tuple[str, str, int, Path]], data: str, jobs: int, max_iters: int = 0,
            overrides: tuple[str, ...] = ()) -> None:
    """Run every (method, split, seed, folder) not finished yet, ``jobs`` at a time.

    With ``jobs`` > 1 each run gets ``cpu_count // jobs`` threads: on a 2-core machine two
    single-threaded runs side by side finish about 1.5x sooner than one after the other.
    Raises ``RuntimeError`` naming the failed runs and their logs.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    todo = [r for r in runs if not (r[3] / "metrics.json").exists()]
    for r in runs:
        if r not in todo:
            print(f"[demo] {r[3]} done already", flush=True)
    running, failed, t0 = [], [], time.time()
    while todo or running:
        while todo and len(running) < jobs:
            method, split, seed, run = todo.pop(0)
            print(f"[demo] start {method} on digits {split}, seed {seed} -> {run}", flush=True)
            proc, log = _launch(method, split, seed, run, data, max_iters, threads, overrides)
            running.append((proc, log, run))
        time.sleep(1)
        for item in list(running):
            proc, log, run = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {run / 'demo.log'})"
                print(f"[demo] {run.name} {status} at {time.time() - t0:.0f} s", flush=True)
                if proc.returncode != 0:
                    failed.append(run)
    if failed:
        raise RuntimeError(f"demo runs failed: {', '.join(str(f / 'demo.log') for f in failed)}")


def what_ran(runs: list[tuple[str, str, int, Path]], tour: bool, overrides=()) -> str:
    """The line that heads ``results.md``: which demo ran (the tour or every method), its
    runs and seeds, the overrides; e.g. ``make demo (the tour): 6 runs, seed 0: prcl 1_16, ...``."""
    seeds = sorted({r[2] for r in runs})
    names = ", ".join(dict.fromkeys(f"{m} {s}" for m, s, _, _ in runs))
    kind = "make demo (the tour; make demo-all adds reco, rc2l, allspark and their networks' baselines)" if tour else "every method"
    line = f"Ran: {kind}: {len(runs)} runs, seed{'s' if len(seeds) > 1 else ''} " \
           f"{' '.join(map(str, seeds))}: {names}."
    return line + (f" Overrides: {' '.join(overrides)}." if overrides else "")


def main(argv=None) -> int:
    """Run the demo (or the results table with ``--seeds 0 1 2``); returns the exit status."""
    from .engine.report import collect_metrics, report_table, summarize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/digits")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--figures", default="figures", help="folder for README figures ('' to skip)")
    p.add_argument("--all", action="store_true", help="every method (RUNS), not only the tour (TOUR)")
    p.add_argument("--methods", nargs="*", default=None, help="restrict to these presets (e.g. rc2l supervised)")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (e.g. eval.pl_max_images=0)")
    p.add_argument("--max-iters", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    chosen = RUNS if args.all or args.methods else TOUR
    runs = [(m, s, seed, out / f"{m}_{s}_seed{seed}") for seed in args.seeds for m, s in chosen
            if not args.methods or m in args.methods]
    run_all(runs, str(Path(args.data).resolve()), args.jobs, args.max_iters, tuple(args.override))
    table = what_ran(runs, chosen is TOUR, args.override) + "\n\n" + report_table(out)
    atomic_write_text(out / "results.md", table + "\n")
    print(table)
    if args.figures:
        fig_dir = Path(args.figures)
        fig_dir.mkdir(parents=True, exist_ok=True)
        seed = args.seeds[0]
        for (run, name), target in FIGURES.items():
            src = out / f"{run}_seed{seed}" / "figures" / name
            if src.exists():
                shutil.copy(src, fig_dir / target)
        shutil.copy(out / "results.md", fig_dir / "results.md")
        rows = [r for r in summarize(collect_metrics(out)) if r["dataset"] == "digits"]
        results_figure(rows, fig_dir / "results.png")
        # issue 7: the latent space of every method side by side (t-SNE of the final snapshots)
        from .engine.latent import viz_runs

        t1 = time.time()
        viz_runs([r[3] for r in runs if r[2] == seed], out / "latent_space.png")
        shutil.copy(out / "latent_space.png", fig_dir / "latent_space.png")
        print(f"[demo] s4kit viz over {len([r for r in runs if r[2] == seed])} runs in {time.time() - t1:.0f} s",
              flush=True)
        print(f"[demo] figures in {fig_dir}/", flush=True)
    timing = timing_table(out)
    if timing:
        atomic_write_text(out / "timing.md", "seconds per stage of each run (metrics.json \"timing\"; "
                          "training/<part>: parts of training)\n\n" + timing + "\n")
        print(f"\n[demo] seconds per stage (also in {out / 'timing.md'}):\n{timing}", flush=True)
    print(f"[demo] finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
