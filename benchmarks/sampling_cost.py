#!/usr/bin/env python
"""Loss-only cost of the hard-anchor contrast: the per-class loop against the batched sampler.

    python benchmarks/sampling_cost.py [--losses reco css prcl] [--device cpu|cuda] [--repeats 5]
                                       [--threads N] [--profile] [--out sampling_cost.json]

Both samplers (``method.sampling=loop|batched``, ``s4kit.losses.contrast.hard_anchor_contrast``)
get the same synthetic batch at the VOC shape of the pascal presets: 4 + 4 images, D = 256
representations on the 81 x 81 head grid of a 321 crop, K = 21 classes (all present by
default, ``--per-image 8 14``), ignore columns and unconfident unlabelled pixels, the
preset's M_q = 256 anchors per class and M_k = 512 keys per anchor. One call is the loss
forward plus ``backward`` into the representations (and sigma^2 for PRCL); the network is not
included.

* Time: the median of ``--repeats`` calls per (loss, sampler) after one warm-up call each,
  loop and batched interleaved call by call (the order alternates), so a load change on a
  shared machine hits both alike. The ratio is loop / batched of the medians; the median of
  the per-round ratios is printed too.
* ``--profile``: the ten most expensive operators of one call of each (torch.profiler), to
  show where the time goes.

Timing is never a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("loop", "batched")


def make_inputs(args, device: torch.device) -> dict:
    """The synthetic VOC-shaped batch (``benchmarks.official_equivalence.harness.contrast_inputs``)."""
    from benchmarks.official_equivalence.harness import contrast_inputs

    x = contrast_inputs(args.batch, args.batch, args.grid, args.grid, args.dim, args.classes, seed=args.seed,
                        per_image=tuple(args.per_image))
    g = torch.Generator().manual_seed(args.seed + 1)
    x["sigma2"] = 0.05 + 0.5 * torch.rand(x["rep"].shape, generator=g)  # PRCL's variances
    return {k: v.to(device) for k, v in x.items()}


def call_fn(loss: str, sampling: str, x: dict, args):
    """A closure running one forward + backward of ``loss`` with ``sampling``; returns the loss."""
    from s4kit.losses.contrast import reco_loss
    from s4kit.losses.css import css_contrast_loss, rep_distribution
    from s4kit.losses.prcl import prcl_loss

    q, m = args.num_queries, args.num_negatives
    rep = x["rep"].clone().requires_grad_()
    if loss == "css":
        keep = x["valid"] & (x["labels"] != 255)
        protos = torch.stack([x["rep"].permute(0, 2, 3, 1)[keep & (x["labels"] == c)].mean(0)
                              for c in range(args.classes)])
        indicator = rep_distribution(x["rep"], protos, 0.25)
    if loss == "prcl":
        sigma2 = x["sigma2"].clone().requires_grad_()

    def run() -> float:
        rep.grad = None
        if loss == "reco":
            value = reco_loss(rep, x["labels"], x["valid"], x["prob"], 0.97, 0.5, q, m, sampling=sampling)
        elif loss == "css":
            value = css_contrast_loss(rep, x["labels"], x["valid"], indicator, protos, 0.8, 0.5, q, m,
                                      sampling=sampling)
        else:
            sigma2.grad = None
            value = prcl_loss(rep, sigma2, x["labels"], x["valid"], x["prob"], args.classes, 0.8, 100.0, q, m,
                              sampling=sampling)[0]
        value.backward()
        if rep.device.type == "cuda":
            torch.cuda.synchronize(rep.device)
        return float(value.detach())

    return run


def measure(loss: str, x: dict, args) -> dict:
    """Median seconds of each sampler over interleaved calls, and the ratio loop / batched."""
    fns = {s: call_fn(loss, s, x, args) for s in SAMPLERS}
    values = {s: [fns[s]()] for s in SAMPLERS}  # warm-up
    times: dict[str, list[float]] = {s: [] for s in SAMPLERS}
    for r in range(args.repeats):
        for s in (SAMPLERS if r % 2 == 0 else SAMPLERS[::-1]):
            torch.manual_seed(args.seed + r)
            t0 = time.perf_counter()
            values[s].append(fns[s]())
            times[s].append(time.perf_counter() - t0)
            print(f"  {loss} {s:7s} round {r}: {times[s][-1]:.2f} s", file=sys.stderr)
    med = {s: statistics.median(times[s]) for s in SAMPLERS}
    per_round = [a / b for a, b in zip(times["loop"], times["batched"])]
    return {"loss": loss, "loop_s": med["loop"], "batched_s": med["batched"], "ratio": med["loop"] / med["batched"],
            "ratio_per_round_median": statistics.median(per_round), "times": times,
            "loss_mean": {s: statistics.mean(values[s]) for s in SAMPLERS}}


def profile(loss: str, x: dict, args) -> None:
    """Print the ten most expensive operators of one call of each sampler."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    for s in SAMPLERS:
        fn = call_fn(loss, s, x, args)
        with torch_profile(activities=acts) as prof:
            fn()
        key = "cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
        print(f"\n{loss}, sampling={s}:\n" + prof.key_averages().table(sort_by=key, row_limit=10))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", nargs="+", default=["reco"], choices=["reco", "css", "prcl"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per sampler (the median is reported)")
    p.add_argument("--batch", type=int, default=4, help="labelled images = unlabelled images (VOC: 4 + 4)")
    p.add_argument("--grid", type=int, default=81, help="head grid side (VOC 321 crop at stride 4: 81)")
    p.add_argument("--dim", type=int, default=256, help="representation dimension")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--per-image", type=int, nargs=2, default=[8, 14], metavar=("MIN", "MAX"),
                   help="classes per image (default 8 14: every class present in the batch)")
    p.add_argument("--num-queries", type=int, default=256, help="M_q (pascal presets: 256)")
    p.add_argument("--num-negatives", type=int, default=512, help="M_k (pascal presets: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also print the top operators of one call each")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sampling_cost: --device cuda but no CUDA device is available")
    device = torch.device(args.device)
    x = make_inputs(args, device)
    keep = x["valid"] & (x["labels"] != 255)
    present = int(torch.unique(x["labels"][keep]).numel())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"torch {torch.__version__}, device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda"
                 else f", {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, load average {load:.1f}")
              + f"; {args.batch}+{args.batch} x {args.dim} x {args.grid}x{args.grid}, {present} of {args.classes} "
                f"classes present, {int(keep.sum())} valid pixels, M_q={args.num_queries}, M_k={args.num_negatives}; "
                f"forward + backward, median of {args.repeats} interleaved calls")
    print(header, file=sys.stderr)
    results = [measure(loss, x, args) for loss in args.losses]
    print(header + "\n")
    print("| loss | loop s | batched s | loop / batched | median per-round ratio | mean loss loop / batched |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['loss']} | {r['loop_s']:.3f} | {r['batched_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['ratio_per_round_median']:.2f} | {r['loss_mean']['loop']:.4f} / {r['loss_mean']['batched']:.4f} |")
    if args.profile:
        for loss in args.losses:
            profile(loss, x, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"header": header, "args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
