#!/usr/bin/env python
"""Cost of RC²L's four region losses against ReCo's pixel contrast as the crop grows.

    python benchmarks/region_cost.py [--sizes 64 128 256 512] [--repeats 3] [--device cpu|cuda]
                                     [--out region_cost.json]

For each square crop S the head grid is S/4 x S/4 (P pixels). Both losses get the same
synthetic batch: a label map of 3 x 3 blocks with random classes of K = 21 (VOC), ``--batch``
images per side.

* region: ``RC2L.region_losses`` (teacher regions, Hungarian matching, RCC, RMC, RFC, SMC)
  with N = 100 queries, E = 256 (the pascal/rc2l preset's head); the teacher is one confident
  query per block, the student random; forward + backward through the student outputs.
* reco: ``s4kit.losses.contrast.reco_loss`` on (2B, 256, h, w) representations (labeled and
  unlabeled concatenated, as in ``methods/reco.py``), ReCo's 256 anchors x 512 keys per
  class; forward + backward.

Neither includes the network: only the loss heads are compared. Step time: median of
``--repeats`` after one warm-up. Peak memory: a fresh subprocess per (loss, size); on CPU the
rise of VmHWM over the process's level after building the inputs (Linux
``/proc/self/clear_refs``), on CUDA ``max_memory_allocated`` minus the inputs. Timing is never
a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
K, N, E = 21, 100, 256


def make_inputs(size: int, batch: int, device: torch.device, seed: int = 0) -> dict:
    """Synthetic student/teacher outputs and label maps for a ``size`` x ``size`` crop."""
    g = torch.Generator().manual_seed(seed)
    h = size // 4
    blocks = torch.randint(0, K, (batch, 3, 3), generator=g)
    rows = torch.arange(h) * 3 // h
    labels = blocks[:, rows][:, :, rows]  # (B, h, h)
    t_cls = torch.full((batch, N, K + 1), -10.0)
    t_cls[:, :, K] = 10.0
    t_masks = torch.full((batch, N, h, h), -10.0)
    for b in range(batch):
        for q in range(9):
            i, j = divmod(q, 3)
            c = blocks[b, i, j]
            t_cls[b, q, c], t_cls[b, q, K] = 10.0, -10.0
            t_masks[b, q] = ((rows[:, None] == i) & (rows[None, :] == j)).float() * 20 - 10
    from s4kit.models.maskformer import semantic_inference

    dev = device
    t_out = {"pred_logits": t_cls.to(dev), "pred_masks": t_masks.to(dev),
             "rep": torch.randn(batch, E, h, h, generator=g).to(dev)}
    t_out["sem"] = semantic_inference(t_out["pred_logits"], t_out["pred_masks"])
    s_leaves = {"pred_logits": torch.randn(batch, N, K + 1, generator=g).to(dev).requires_grad_(),
                "pred_masks": torch.randn(batch, N, h, h, generator=g).to(dev).requires_grad_(),
                "rep": torch.randn(batch, E, h, h, generator=g).to(dev).requires_grad_()}
    reco = {"rep": torch.randn(2 * batch, E, h, h, generator=g).to(dev).requires_grad_(),
            "labels": torch.cat([labels, labels]).to(dev),
            "prob": torch.randn(2 * batch, K, h, h, generator=g).softmax(1).to(dev)}
    return {"t_out": t_out, "s_leaves": s_leaves, "reco": reco, "valid": torch.ones(batch, h, h, dtype=torch.bool, device=dev)}


def build_rc2l():
    """An ``RC2L`` method with the default loss options (as in every rc2l preset; its network is not used)."""
    from s4kit.config import load_config
    from s4kit.methods import build_method

    return build_method(load_config("digits/rc2l", ["device=cpu"]))


def step_fn(loss: str, inputs: dict, method):
    """A closure running one forward + backward of ``loss`` (region | reco) on ``inputs``."""
    from s4kit.losses.contrast import reco_loss
    from s4kit.models.maskformer import semantic_inference

    def region():
        s = inputs["s_leaves"]
        out_s = dict(s, sem=semantic_inference(s["pred_logits"], s["pred_masks"]))
        parts = method.region_losses(out_s, inputs["t_out"], inputs["valid"])
        (parts["rcc"] + parts["rmc"] + parts["rfc"] + parts["smc"]).backward()

    def reco():
        r = inputs["reco"]
        reco_loss(r["rep"], r["labels"], torch.ones_like(r["labels"], dtype=torch.bool), r["prob"]).backward()

    return region if loss == "region" else reco


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_time(loss: str, size: int, args) -> float:
    """Median milliseconds of one forward + backward."""
    device = torch.device(args.device)
    method = build_rc2l()
    inputs = make_inputs(size, args.batch, device)
    fn = step_fn(loss, inputs, method)
    fn()
    times = []
    for _ in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_memory(loss: str, size: int, args) -> float:
    """Peak MB of one forward + backward above the level with the inputs built (this process)."""
    device = torch.device(args.device)
    method = build_rc2l()
    inputs = make_inputs(size, args.batch, device)
    fn = step_fn(loss, inputs, method)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb()
    fn()
    return (_hwm_kb() - base) / 1024


def memory_in_subprocess(loss: str, size: int, args) -> float:
    cmd = [sys.executable, __file__, "--_memory", loss, str(size), "--batch", str(args.batch), "--device", args.device]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--batch", type=int, default=2, help="images per side (labeled / unlabeled)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        print(measure_memory(args._memory[0], int(args._memory[1]), args))
        return 0
    rows = []
    for size in args.sizes:
        row = {"crop": size, "grid": size // 4}
        for loss in ("region", "reco"):
            torch.manual_seed(0)
            row[f"{loss}_ms"] = measure_time(loss, size, args)
            if not args.no_memory:
                row[f"{loss}_mb"] = memory_in_subprocess(loss, size, args)
        row["time_ratio"] = row["region_ms"] / row["reco_ms"]
        if not args.no_memory:
            row["mem_ratio"] = row["region_mb"] / max(row["reco_mb"], 1e-3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    head = "| crop | grid | region ms | reco ms | region / reco time | region MB | reco MB | region / reco memory |"
    print(head + "\n|" + "---|" * 8)
    for r in rows:
        mem = (f"{r['region_mb']:.1f} | {r['reco_mb']:.1f} | {r['mem_ratio']:.2f}" if "mem_ratio" in r else "- | - | -")
        print(f"| {r['crop']} | {r['grid']} | {r['region_ms']:.1f} | {r['reco_ms']:.1f} | {r['time_ratio']:.2f} | {mem} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
