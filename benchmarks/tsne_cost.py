"""How long s4kit's t-SNE takes on 10,000 pixels of 256 dimensions (issue 7's budget: 60 s on 2 cores).

    python benchmarks/tsne_cost.py                     # 10,000 x 256, n_jobs = 2, openTSNE defaults of s4kit
    python benchmarks/tsne_cost.py --pixels 2000 --jobs 1

The pixels are synthetic representations with the structure t-SNE meets in a run: 11
classes, each a Gaussian cluster around a random unit direction in 256-D with per-pixel
noise (seeded). ``s4kit.viz.tsne.tsne_embed`` fits them and places 11 prototypes with
``transform``, exactly as a run's ``figures/tsne.png`` and ``s4kit viz`` do. Besides the
wall time the script reports the ratio to a 1,000-pixel fit measured in the same run, so
the figure survives a slower or busier machine: t-SNE with Barnes-Hut / FFT gradients
should scale about linearly (a ratio near 10 for 10x the pixels).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def synthetic_pixels(n: int, dim: int, classes: int = 11, noise: float = 0.6, seed: int = 0):
    """(n, dim) float32 representations in ``classes`` Gaussian clusters and their labels (n,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + noise / np.sqrt(dim) * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels, centres.astype(np.float32)


def timed_fit(n: int, dim: int, jobs: int, n_iter: int) -> float:
    from s4kit.viz.tsne import tsne_embed

    reps, _, protos = synthetic_pixels(n, dim)
    t0 = time.perf_counter()
    emb, proto_xy, _ = tsne_embed(reps, protos, seed=0, n_iter=n_iter, n_jobs=jobs)
    seconds = time.perf_counter() - t0
    assert emb.shape == (n, 2) and proto_xy.shape == (len(protos), 2) and np.isfinite(emb).all()
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixels", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--jobs", type=int, default=2, help="openTSNE n_jobs (threads)")
    p.add_argument("--iters", type=int, default=500, help="s4kit's viz.tsne_iters (default 500)")
    p.add_argument("--out", default=None, help="also write the measurements as JSON")
    args = p.parse_args(argv)
    timed_fit(300, args.dim, args.jobs, 50)  # untimed warm-up: imports, thread pools, first-call costs
    baseline = timed_fit(1_000, args.dim, args.jobs, args.iters)
    seconds = timed_fit(args.pixels, args.dim, args.jobs, args.iters)
    result = {"pixels": args.pixels, "dim": args.dim, "n_jobs": args.jobs, "n_iter": args.iters,
              "seconds": round(seconds, 2), "baseline_1000_seconds": round(baseline, 2),
              "ratio_to_baseline": round(seconds / baseline, 2), "cpu_count": os.cpu_count()}
    print("| pixels | dim | n_jobs | seconds | 1,000-pixel fit (s) | x baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.pixels} | {args.dim} | {args.jobs} | {seconds:.1f} | {baseline:.1f} | {seconds / baseline:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
