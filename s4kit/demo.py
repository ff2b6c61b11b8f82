"""``python -m s4kit.demo``: every method on digits through the reproduction notebook.

``make demo`` runs one seed and copies a few figures to ``figures/``; ``make table`` runs
three seeds for the README's results table. Each run is ``s4kit reproduce`` (papermill)
into ``<out>/<method>_<split>_seed<N>``; finished runs are skipped, interrupted ones resume.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

# (method, split): the semi-supervised problem on 1_16, bounded by supervised 1_16 and full.
RUNS = [("supervised", "1_16"), ("meanteacher", "1_16"), ("reco", "1_16"), ("supervised", "full")]
# figures copied to figures/ for the README: (run, figure) -> name
FIGURES = {("reco_1_16", "tsne.png"): "tsne_reco.png", ("reco_1_16", "predictions.png"): "predictions_reco.png",
           ("meanteacher_1_16", "pseudo_labels.png"): "pseudo_labels_meanteacher.png"}


def results_figure(rows: list[dict], path: Path) -> Path:
    """Bar chart of mIoU per method (mean over seeds with the individual seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    labels = [f"{r['method']}\n{r['split']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 1, 3.4))
    sns.barplot(x=labels, y=[r["miou"] for r in rows], ax=ax, color="#8fb3d9", errorbar=None)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("digits: supervised vs semi-supervised (1/16 labels) vs full supervision", fontsize=9)
    for i, r in enumerate(rows):
        ax.text(i, r["miou"] + 1, f"{r['miou']:.1f}", ha="center", fontsize=8)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from .engine.report import collect_metrics, report_table
    from .engine.reproduce import reproduce

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/digits")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--figures", default="figures", help="folder for README figures ('' to skip)")
    p.add_argument("--methods", nargs="*", default=None, help="restrict to these methods")
    p.add_argument("--max-iters", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    for seed in args.seeds:
        for method, split in RUNS:
            if args.methods and method not in args.methods:
                continue
            run = out / f"{method}_{split}_seed{seed}"
            if (run / "metrics.json").exists():
                print(f"[demo] {run} done already", flush=True)
                continue
            print(f"[demo] {method} on digits {split}, seed {seed} -> {run}", flush=True)
            params = {"DATA_ROOT": args.data}
            if args.max_iters:
                params["MAX_ITERS"] = args.max_iters
            reproduce(method, "digits", split, seed, params, run)
            print(f"[demo] {time.time() - t0:.0f} s elapsed", flush=True)
    table = report_table(out)
    (out / "results.md").write_text(table + "\n")
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
        from .engine.report import summarize

        rows = [r for r in summarize(collect_metrics(out)) if r["dataset"] == "digits"]
        for r in rows:
            r["miou"] = float(r["miou"].split(" ")[0])
        results_figure(rows, fig_dir / "results.png")
        print(f"[demo] figures in {fig_dir}/", flush=True)
    print(f"[demo] finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
