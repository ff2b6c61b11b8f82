#!/usr/bin/env python
"""GPU check: the cost of a training step of every method at its pascal preset.

    python benchmarks/gpu_check.py [--out gpu_check.md] [--budget-s 420]   # one CUDA GPU, < 8 min
    python benchmarks/gpu_check.py --cpu-smoke --out smoke.md              # tiny shapes on CPU, < 1 min

For every ``s4kit/configs/pascal/<method>.yaml`` (the file named after a method; not ``tiny``)
the method is built as the trainer builds it (``build_method``, ``build_optimizer`` over
``checked_param_groups``) from **random weights** (``model.pretrained=none``) and trained on
**synthetic VOC-sized batches**: the preset's per-GPU ``batch_labeled`` + ``batch_unlabeled``
images of ``crop_size`` x ``crop_size`` (normal noise), labeled masks with background and two
of the 20 object classes per image, in blocks of crop/8 pixels, 5 % void (255). Each step is the trainer's own
``training_step`` (forward of student and teacher, losses, backward, clipping, optimiser step,
EMA update) at iteration ``train.iters / 2``, so warm-ups and ramps are at full strength.

For each precision (fp32; bf16 autocast as ``train.amp``) and memory format (contiguous;
``channels_last`` for the method and the 4-D batch tensors as ``train.channels_last``) the
table holds:

* ``step ms``: median wall time of ``--steps`` steps after ``--warmup`` untimed ones (CUDA:
  ``torch.cuda.synchronize()`` around each step);
* ``img/s`` = images per step (labeled + unlabeled; labeled only for ``supervised``) / step time;
* ``peak MB``: CUDA: ``torch.cuda.max_memory_allocated`` over this variant's steps (reset at
  its start; weights, gradients, optimiser state and activations; not the allocator cache).
  CPU: the process's peak resident set so far (it never decreases, so later rows include
  earlier ones);
* ``GFLOP``: floating-point operations of one step, counted once per method in fp32 by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplications, convolutions and
  attention, forward and backward, teacher included; element-wise operations are not counted,
  so this is the "model FLOPs" of MFU);
* ``TFLOP/s`` = GFLOP / step time; ``MFU`` = TFLOP/s / the device's dense peak for the precision:
  bf16 -> the bf16 tensor-core peak; fp32 -> the TF32 peak when cuDNN may use TF32 (PyTorch's
  default, ``torch.backends.cudnn.allow_tf32``), else the FP32 peak. Peaks are NVIDIA datasheet
  numbers (``PEAK_TFLOPS``; H100/H200 SXM: 989 bf16, 495 TF32, 67 FP32) or ``--peak-bf16`` /
  ``--peak-fp32``; ``n/a`` on CPU or an unknown GPU.

What it does not measure: data loading and augmentation of real images (the batches are
made once, on the device), evaluation, multi-GPU communication. With random weights the
teacher is unsure, so terms that keep only confident pseudo-labels (ReCo's and PRCL's
unlabeled anchors, CSS's agreeing pixels) may handle fewer pixels than in a trained run.
CSS reads the length of the labeled list (its epoch length): a synthetic split folder with
92 entries (the default split) is written to a temporary folder; nothing reads its images.

``--cpu-smoke`` runs the same code on CPU at toy sizes (crop 64, 2 + 2 images, a small CNN /
mit_b0 / a 1-layer mask decoder, 1 timed step, two rows per method: fp32 contiguous and bf16
channels_last): it checks the script, not the numbers. A method
that fails (e.g. out of memory) gets its error in the table and the others go on; methods not
reached within ``--budget-s`` seconds are listed as skipped.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, by a substring of the device name
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9},  # H200 SXM (same tensor cores as H100 SXM)
    "H100": {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9},  # H100 SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
SMOKE_VARIANTS = (("fp32", False), ("bf16", True))  # --cpu-smoke: both precisions, both formats, 2 rows
SPLIT_SIZE = 92  # labeled images of the default pascal split ("92"); only CSS reads the count

# --cpu-smoke: toy sizes per network (each key is read by that network, see models.network_fields)
SMOKE_COMMON = ["data.crop_size=64", "train.batch_labeled=2", "train.batch_unlabeled=2"]
SMOKE_MODEL = {
    "deeplabv3plus": ["model.backbone=small", "model.width=8", "model.output_stride=8", "model.aspp_channels=16",
                      "model.low_channels=8", "model.head_channels=16", "model.rep_dim=16"],
    "maskformer": ["model.backbone=small", "model.width=8", "model.output_stride=8", "model.aspp_channels=16",
                   "model.low_channels=8", "model.head_channels=16", "model.rep_dim=16", "model.num_queries=8",
                   "model.dec_layers=1", "model.dec_heads=2", "model.dec_ffn=32"],
    "segformer": ["model.encoder=mit_b0", "model.decoder_dim=32", "model.drop_path=0.0"],
}


@dataclass
class Row:
    """One (method, precision, memory format) measurement; ``error`` set when it could not run."""

    method: str
    precision: str
    channels_last: bool
    images: int = 0  # images per step (labeled + unlabeled)
    step_ms: float = float("nan")
    images_per_s: float = float("nan")
    peak_mb: float = float("nan")
    gflop: float = float("nan")  # per step
    tflops: float = float("nan")  # achieved
    mfu: float | None = None  # fraction of the peak, None when no peak is known
    error: str = ""


def method_presets() -> list[str]:
    """``pascal/<name>`` for every registered method with a pascal preset of its own name."""
    from s4kit.config import CONFIG_DIR
    from s4kit.methods import registered

    return [f"pascal/{p.stem}" for p in sorted((CONFIG_DIR / "pascal").glob("*.yaml"))
            if not p.name.startswith("_") and p.stem in registered()]


def random_encoder() -> list[str]:
    """``model.pretrained=none``: random weights, said explicitly (pascal presets refuse an unset
    ``model.pretrained``)."""
    return ["model.pretrained=none"]


def write_synthetic_splits(root: Path, split: str, n_labeled: int = SPLIT_SIZE) -> Path:
    """A splits folder whose ``<split>/labeled.txt`` lists ``n_labeled`` placeholder entries (and
    one unlabeled, one val): only list lengths are read in this check, never the images."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / "labeled.txt").write_text("".join(f"synthetic/{i:05d}.jpg synthetic/{i:05d}.png\n"
                                                      for i in range(n_labeled)))
    (root / split / "unlabeled.txt").write_text("synthetic/u.jpg\n")
    (root / "val.txt").write_text("synthetic/v.jpg synthetic/v.png\n")
    return root


def preset_config(preset: str, device: str, smoke: bool, splits: Path):
    """The preset's resolved config with random weights, the device and (``smoke``) toy sizes."""
    from s4kit.config import load_config

    base = load_config(preset, random_encoder())
    extra = [f"device={device}", f"data.splits={splits}", "data.num_workers=0", "viz.enabled=false"]
    if smoke:
        extra += SMOKE_COMMON + SMOKE_MODEL[base.model.name]
    return load_config(preset, random_encoder() + extra)


def synthetic_batches(cfg, device: torch.device, seed: int = 0) -> tuple[dict, dict]:
    """Labeled and unlabeled batches of the preset's per-GPU sizes at ``crop_size``.

    Images float32 (B, 3, S, S) ~ N(0, 1) (already "normalised"); masks int64 (B, S, S) shaped
    like VOC's (background and one or two object classes per image, VOC averages about 1.5):
    each block of S/8 x S/8 pixels holds 0 or one of the image's two classes drawn from
    [1, K), 5 % of pixels are 255 (void); ``valid`` all True. The number of classes present
    sets the cost of the class-wise contrast losses.
    """
    g = torch.Generator().manual_seed(seed)
    s, k = cfg.data.crop_size, cfg.data.num_classes
    bl, bu = cfg.train.batch_labeled, cfg.train.batch_unlabeled
    objects = torch.stack([torch.randperm(k - 1, generator=g)[:2] + 1 for _ in range(bl)])  # (B, 2)
    palette = torch.cat([torch.zeros(bl, 1, dtype=torch.long), objects], 1)  # (B, 3): background, c1, c2
    choice = torch.randint(0, 3, (bl, 8, 8), generator=g)
    blocks = palette.gather(1, choice.flatten(1)).view(bl, 1, 8, 8).float()
    mask = torch.nn.functional.interpolate(blocks, size=(s, s), mode="nearest")[:, 0].long()
    mask[torch.rand(mask.shape, generator=g) < 0.05] = 255
    labeled = {"image": torch.randn(bl, 3, s, s, generator=g), "mask": mask,
               "valid": torch.ones(bl, s, s, dtype=torch.bool), "index": torch.arange(bl),
               "id": [f"synthetic_l{i}" for i in range(bl)]}
    unlabeled = {"image": torch.randn(bu, 3, s, s, generator=g), "valid": torch.ones(bu, s, s, dtype=torch.bool),
                 "index": torch.arange(bu), "id": [f"synthetic_u{i}" for i in range(bu)]}
    return ({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in labeled.items()},
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in unlabeled.items()})


def peak_tflops(device: torch.device, precision: str, override: dict) -> float | None:
    """The dense peak TFLOP/s the MFU of ``precision`` is measured against, or None."""
    if override.get(precision):
        return override[precision]
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if table is None:
        return None
    if precision == "bf16":
        return table["bf16"]
    return table["tf32"] if torch.backends.cudnn.allow_tf32 else table["fp32"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(step) -> float:
    """Floating-point operations of one call of ``step`` (FlopCounterMode; see the module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measure_method(preset: str, args, device: torch.device, splits: Path, deadline: float) -> list[Row]:
    """Build the method of ``preset`` once and measure every variant (see the module doc)."""
    from s4kit.engine.trainer import (_to_device, build_checked, build_optimizer, checked_param_groups,
                                      training_step)

    name = preset.split("/")[1]
    cfg = preset_config(preset, device.type, args.cpu_smoke, splits)
    torch.manual_seed(args.seed)
    method = build_checked(cfg).to(device)
    method.train()
    optimizer = build_optimizer(cfg, checked_param_groups(method))
    extras = method.extra_parameters()
    labeled, unlabeled = synthetic_batches(cfg, device, args.seed)
    if not method.uses_unlabeled:
        unlabeled = None
    images = cfg.train.batch_labeled + (cfg.train.batch_unlabeled if unlabeled is not None else 0)
    iteration = cfg.train.iters // 2

    def step(amp: bool, lab: dict, unl: dict | None) -> None:
        training_step(method, optimizer, lab, unl, iteration, cfg.optim.grad_clip, amp, extras)

    rows, flops = [], None
    for precision, channels_last in (SMOKE_VARIANTS if args.cpu_smoke else VARIANTS):
        row = Row(name, precision, channels_last, images)
        rows.append(row)
        if time.monotonic() > deadline:
            row.error = "skipped: time budget"
            continue
        try:
            method.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            lab = _to_device(labeled, device, channels_last)
            unl = _to_device(unlabeled, device, channels_last)
            amp = precision == "bf16"
            if flops is None:
                flops = count_flops(lambda: step(False, lab, unl))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                step(amp, lab, unl)
            times = []
            for _ in range(args.steps):
                _sync(device)
                t0 = time.perf_counter()
                step(amp, lab, unl)
                _sync(device)
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            row.step_ms, row.images_per_s = 1e3 * seconds, images / seconds
            row.peak_mb, row.gflop = _peak_mb(device), flops / 1e9
            row.tflops = flops / seconds / 1e12
            peak = peak_tflops(device, precision, {"bf16": args.peak_bf16, "fp32": args.peak_fp32})
            row.mfu = row.tflops / peak if peak else None
        except Exception as exc:  # noqa: BLE001 - one method's failure (OOM, a bug) must not hide the others
            row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:160]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del method, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[Row], header: list[str]) -> str:
    """The table (one row per method and variant) under ``header`` lines."""
    out = [*header, "",
           "| method | precision | channels_last | images/step | step ms | img/s | peak MB | GFLOP/step | TFLOP/s | MFU |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.method} | {r.precision} | {'on' if r.channels_last else 'off'} | {r.images} | "
                       f"{r.error} | | | | | |")
            continue
        mfu = f"{100 * r.mfu:.1f} %" if r.mfu is not None else "n/a"
        out.append(f"| {r.method} | {r.precision} | {'on' if r.channels_last else 'off'} | {r.images} | "
                   f"{r.step_ms:.1f} | {r.images_per_s:.1f} | {r.peak_mb:.0f} | {r.gflop:.1f} | {r.tflops:.2f} | "
                   f"{mfu} |")
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, 1 timed step (tests)")
    p.add_argument("--device", default=None, help="cuda (default) or cpu; --cpu-smoke implies cpu")
    p.add_argument("--only", nargs="*", default=None, help="method names (default: every pascal method preset)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default 3; smoke 0)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10; smoke 1)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting variants after this many seconds")
    p.add_argument("--peak-bf16", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by GPU name)")
    p.add_argument("--peak-fp32", type=float, default=None, help="peak fp32/TF32 TFLOP/s for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--out", default="gpu_check.md", help="Markdown file to write")
    args = p.parse_args(argv)
    args.device = "cpu" if args.cpu_smoke else (args.device or "cuda")
    args.warmup = args.warmup if args.warmup is not None else (0 if args.cpu_smoke else 3)
    args.steps = args.steps if args.steps is not None else (1 if args.cpu_smoke else 10)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return args


def run(args) -> tuple[list[Row], str]:
    """Measure the selected presets (``parse_args`` arguments); return the rows and the Markdown."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = method_presets()
    if args.only:
        unknown = sorted(set(args.only) - {p.split("/")[1] for p in presets})
        if unknown:
            raise SystemExit(f"gpu_check: no pascal preset for {unknown}; known: {[p.split('/')[1] for p in presets]}")
        presets = [p for p in presets if p.split("/")[1] in args.only]
    start = time.monotonic()
    deadline = start + args.budget_s
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="s4kit_gpu_check_") as tmp:
        from s4kit.config import load_config

        split = str(load_config(presets[0], random_encoder()).data.split)
        splits = write_synthetic_splits(Path(tmp) / "splits", split)
        for preset in presets:
            try:
                rows += measure_method(preset, args, device, splits, deadline)
            except Exception as exc:  # noqa: BLE001 - a preset that cannot be built is reported, not fatal
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:160]
                rows += [Row(preset.split("/")[1], p, c, error=msg)
                         for p, c in (SMOKE_VARIANTS if args.cpu_smoke else VARIANTS)]
            print(f"gpu_check: {preset} done at {time.monotonic() - start:.0f} s", file=sys.stderr)
    from s4kit.engine.trainer import git_sha

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peaks = {p: peak_tflops(device, p, {"bf16": args.peak_bf16, "fp32": args.peak_fp32}) for p in ("bf16", "fp32")}
    header = [f"# GPU check{' (--cpu-smoke: toy sizes, not a measurement)' if args.cpu_smoke else ''}", "",
              f"{datetime.date.today().isoformat()}, {name}, torch {torch.__version__}, s4kit {git_sha() or '?'}; "
              f"pascal presets with random weights, synthetic batches at the preset's crop and per-GPU batch; "
              f"{args.warmup} warm-up + {args.steps} timed steps per row (median); MFU against "
              f"{peaks['bf16'] or 'n/a'} (bf16) / {peaks['fp32'] or 'n/a'} (fp32) TFLOP/s; "
              f"total {time.monotonic() - start:.0f} s. See benchmarks/gpu_check.py for what is counted."]
    return rows, markdown(rows, header)


def main(argv=None) -> int:
    """Run, print the table and write it to ``--out``; exit 1 if a row failed, 2 without CUDA."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run on a GPU machine or use --cpu-smoke", file=sys.stderr)
        return 2
    rows, text = run(args)
    print(text)
    Path(args.out).write_text(text)
    return 0 if not any(r.error and not r.error.startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
