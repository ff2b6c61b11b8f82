"""How many unlabeled images the final pseudo-label precision needs (s4kit issue 18).

    python benchmarks/pl_sample_size.py --run runs/demo/meanteacher_1_16_seed0
    python benchmarks/pl_sample_size.py --train 150 --data data/digits   # a short teacher first

Measures the run's teacher on every unlabeled image (per image: confident pixels x_i and
correct-and-confident pixels y_i, at the method's threshold), then prints, for sample
sizes n, the cluster (ratio-estimator) standard error of the precision sum(y) / sum(x) of a
simple random sample of n images (``evaluate.ratio_standard_error``, finite-population
corrected), and the precision of the seeded sample ``eval.pl_max_images`` uses
(``evaluate.sample_indices``) beside the all-image precision.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = (128, 256, 384, 512, 768, 1024, 1536, 2048)


def per_image_counts(method, dataset, device, threshold: float, batch_size: int = 64) -> torch.Tensor:
    """(N, 3) float64: confident, correct-and-confident and valid pixels of every image."""
    from s4kit.engine.evaluate import _batches

    rows = []
    method.eval()
    with torch.no_grad():
        for batch in _batches(dataset, range(len(dataset)), batch_size):
            image = torch.stack([s["image"] for s in batch]).to(device)
            hidden = torch.stack([s["hidden_mask"] for s in batch]).to(device)
            labels, conf = method.pseudo_labels(image)
            confident = (hidden != 255) & (conf >= threshold)
            rows.append(torch.stack([confident.flatten(1).sum(1), (confident & (labels == hidden)).flatten(1).sum(1),
                                     (hidden != 255).flatten(1).sum(1)], 1).double().cpu())
    return torch.cat(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a finished digits run folder (semi-supervised method)")
    p.add_argument("--train", type=int, default=0, help="train digits/meanteacher this many iterations first")
    p.add_argument("--data", default="data/digits")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from s4kit.config import load_config
    from s4kit.data.loaders import build_dataset
    from s4kit.engine import train
    from s4kit.engine.evaluate import sample_indices
    from s4kit.engine.runs import load_run

    run = args.run
    if args.train:
        run = run or tempfile.mkdtemp(prefix="pl_sample_size_")
        t0 = time.time()
        cfg = load_config("digits/meanteacher", [f"data.root={args.data}", f"run.dir={run}",
                                                  f"train.iters={args.train}", "viz.enabled=false", "viz.snapshots=0",
                                                  "eval.pl_max_images=64", "device=cpu"])
        train(cfg, progress=False)
        print(f"trained {args.train} iterations in {time.time() - t0:.0f} s -> {run}")
    if not run:
        p.error("--run or --train")
    cfg, method = load_run(run, [f"data.root={args.data}"] if args.train or args.data != "data/digits" else [])
    device = next(method.parameters()).device
    unl = build_dataset(cfg, "unlabeled", train=False)
    t0 = time.time()
    counts = per_image_counts(method, unl, device, method.opts.confidence_threshold)
    seconds = time.time() - t0
    N = counts.shape[0]
    x, y, v = counts[:, 0], counts[:, 1], counts[:, 2]
    precision = 100 * float(y.sum() / x.sum())
    print(f"{N} unlabeled images measured in {seconds:.1f} s: precision {precision:.2f} %, "
          f"coverage {100 * float(x.sum() / v.sum()):.2f} %, confident pixels per image {float(x.mean()):.1f} "
          f"(sd {float(x.std()):.1f})")
    print("per-image precision sd (images with a confident pixel): "
          f"{100 * float((y[x > 0] / x[x > 0]).std()):.1f} points")
    print("\n| images n | precision SE (points) | 95 % half-width | seeded sample precision | its error "
          "| coverage SE (points) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in SIZES:
        if n >= N:
            continue
        se = _se_at(x, y, n, N)
        idx = torch.tensor(sample_indices(N, n))
        sample = 100 * float(y[idx].sum() / x[idx].sum())
        print(f"| {n} | {se:.3f} | {1.96 * se:.2f} | {sample:.2f} | {sample - precision:+.2f} "
              f"| {_se_at(v, x, n, N):.3f} |")
    return 0


def _se_at(x: torch.Tensor, y: torch.Tensor, n: int, N: int) -> float:
    """The ratio SE (points) of a sample of n of the N images, the per-image variance taken
    from all N (the population's residual variance about the all-image ratio)."""
    r = y.sum() / x.sum()
    var = float(((y - r * x) ** 2).sum()) / (N - 1)
    return 100 * math.sqrt((1 - n / N) * var / n) / float(x.mean())


if __name__ == "__main__":
    sys.exit(main())
