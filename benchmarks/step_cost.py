#!/usr/bin/env python
"""Cost of one training step of every method on the same batch, relative to a baseline.

    python benchmarks/step_cost.py [--device cpu|cuda] [--threads N] [--out step_cost.json]

For each case (a preset plus overrides) the script builds the method exactly as the
trainer does (``build_method``, ``build_optimizer``, bf16 autocast and channels_last on
CUDA) and times the trainer's own ``training_step`` on the shared labeled and unlabeled
batch: ``train_step``, the sum of the ``loss*`` entries, ``backward``, clipping,
``optimizer.step`` and ``after_step`` (the EMA update).

* Step time: median over ``--repeats`` steps after ``--warmup`` steps, all cases in one
  process, interleaved round by round (the order rotates), so a load change on a shared
  machine hits every case alike.
* Peak memory: a fresh subprocess per case (see benchmarks/README.md for what is counted
  on CPU and on CUDA).
* Every case is compared with each of its baselines, measured in the same run; a case and
  its baseline must see the same batch (checked by a fingerprint of the tensors).

Cases are data: extend ``EXTRA_CASES`` (or ``default_cases``) with ``Case(label, preset,
overrides, baselines)``. By default every digits preset that is not a ``_base`` file is a
case; every case is compared with ``supervised``, semi-supervised ones also with
``meanteacher``. Timing is never a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One measured configuration.

    label: the row name (and what other cases name as their baseline);
    preset: ``dataset/name`` of ``s4kit/configs`` or a YAML path; overrides: ``key=value``
    items applied after the preset; baselines: labels of the cases this one is compared with.
    """

    label: str
    preset: str
    overrides: tuple[str, ...] = ()
    baselines: tuple[str, ...] = ("supervised",)


# Add cases here; a baseline must itself be a case. Examples (not registered yet):
#   Case("css", "digits/css", baselines=("supervised", "meanteacher")),
#   Case("supervised_segformer", "digits/supervised", ("model.name=segformer",)),
#   Case("allspark", "digits/allspark", baselines=("supervised_segformer",)),
# reco with the batched anchor / key sampler (method.sampling=batched) against the per-class loop
EXTRA_CASES: list[Case] = [Case("reco_batched", "digits/reco", ("method.sampling=batched",),
                                ("supervised", "meanteacher", "reco"))]
# more baselines for preset cases: AllSpark is compared with the plain SegFormer it is built on,
# RC²L with the same mask-classification head trained on labels only
EXTRA_BASELINES: dict[str, tuple[str, ...]] = {"allspark": ("supervised_segformer",),
                                               "rc2l": ("supervised_maskformer",)}


def default_cases(dataset: str = "digits") -> list[Case]:
    """A case per ``s4kit/configs/<dataset>/*.yaml`` that is not a ``_base`` file:
    ``supervised`` first, then ``meanteacher``, then the rest alphabetically."""
    from s4kit.config import CONFIG_DIR, load_config
    from s4kit.methods import method_class

    names = sorted(p.stem for p in (CONFIG_DIR / dataset).glob("*.yaml") if not p.name.startswith("_"))
    names.sort(key=lambda n: (n != "supervised", n != "meanteacher", n))
    cases = []
    for name in names:
        method = method_class(load_config(f"{dataset}/{name}").method.name)
        baselines = ["supervised"]
        if method.uses_unlabeled and name != "meanteacher":
            baselines.append("meanteacher")
        cases.append(Case(name, f"{dataset}/{name}", (), tuple(baselines) + EXTRA_BASELINES.get(name, ())))
    return cases


def all_cases() -> list[Case]:
    """The default cases plus ``EXTRA_CASES`` (labels must be unique)."""
    cases = default_cases() + EXTRA_CASES
    labels = [c.label for c in cases]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SystemExit(f"step_cost: duplicate case labels {dup}")
    return cases


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    """The cases named in ``only`` (all if None) plus, recursively, their baselines."""
    by_label = {c.label: c for c in cases}
    for c in cases:
        for b in c.baselines:
            if b not in by_label:
                raise SystemExit(f"step_cost: case {c.label!r} names baseline {b!r}, which is not a case")
    want, todo = set(), list(only or by_label)
    while todo:
        label = todo.pop()
        if label not in by_label:
            raise SystemExit(f"step_cost: unknown case {label!r}; known: {', '.join(by_label)}")
        if label not in want:
            want.add(label)
            todo.extend(by_label[label].baselines)
    return [c for c in cases if c.label in want]


# -- building one case -------------------------------------------------------------------
def case_config(case: Case, args):
    """The case's resolved config with the benchmark's batch sizes, seed, device and data root."""
    from s4kit.config import load_config

    extra = [f"train.batch_labeled={args.batch_labeled}", f"train.batch_unlabeled={args.batch_unlabeled}",
             f"train.seed={args.seed}", f"device={args.device}", "data.num_workers=0"]
    if not args.amp:
        extra.append("train.amp=false")
    if not any(o.startswith("data.root=") for o in case.overrides):
        extra.append(f"data.root={args.data}")
    return load_config(case.preset, list(case.overrides) + extra)


def make_batches(cfg, device: torch.device) -> tuple[dict, dict]:
    """The first labeled and unlabeled batch of the seeded training streams, on ``device``."""
    from s4kit.data.loaders import build_train_streams

    labeled_it, unlabeled_it = build_train_streams(cfg, 0, 0, 1, need_unlabeled=True)
    channels_last = device.type == "cuda" and cfg.train.channels_last

    def move(batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device)
                if channels_last and v.dim() == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    return move(next(labeled_it)), move(next(unlabeled_it))


def fingerprint(labeled: dict, unlabeled: dict) -> str:
    """SHA-1 of every tensor and id of both batches (the "same batch" check)."""
    h = hashlib.sha1()
    for batch in (labeled, unlabeled):
        for k in sorted(batch):
            v = batch[k]
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes() if isinstance(v, torch.Tensor)
                     else repr(v).encode())
    return h.hexdigest()[:12]


class Step:
    """One trainer iteration of a freshly built method on fixed batches (s4kit.engine.trainer.train)."""

    def __init__(self, cfg, device: torch.device, labeled: dict, unlabeled: dict, iteration: int):
        from s4kit.engine.trainer import build_optimizer, checked_param_groups
        from s4kit.methods import build_method

        torch.manual_seed(cfg.train.seed)
        self.method = build_method(cfg).to(device)
        if device.type == "cuda" and cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, checked_param_groups(self.method))
        self.cfg, self.device = cfg, device
        self.labeled, self.unlabeled = labeled, unlabeled if self.method.uses_unlabeled else None
        self.amp = device.type == "cuda" and cfg.train.amp
        # mid-training: loss warm-ups and ramps are at full strength
        self.iteration = iteration if iteration >= 0 else cfg.train.iters // 2
        self.method.iteration = self.iteration
        self.method.train()

    def __call__(self) -> None:
        from s4kit.engine.trainer import training_step

        training_step(self.method, self.optimizer, self.labeled, self.unlabeled, self.iteration,
                      self.cfg.optim.grad_clip, self.amp, self.method.extra_parameters())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- peak memory (one fresh process per case) --------------------------------------------
def _status_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def measure_memory(case: Case, args) -> dict:
    """Peak memory (MB) of one steady-state step of ``case`` above what the process held
    before the method was built; run in a fresh process (see README.md)."""
    device = torch.device(args.device)
    cfg = case_config(case, args)
    labeled, unlabeled = make_batches(cfg, device)
    gc.collect()
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
    else:
        base = _status_kb()["RssAnon"]
    step = Step(cfg, device, labeled, unlabeled, args.iteration)
    for _ in range(max(1, args.memory_warmup)):  # optimiser state, lazy kernels and libraries
        step()
    gc.collect()
    if device.type == "cuda":
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        peak = torch.cuda.max_memory_allocated(device)
        held_mb, step_mb = (held - base) / 2**20, (peak - held) / 2**20
        how = "torch.cuda.max_memory_allocated"
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        before = _status_kb()
        step()
        after = _status_kb()
        held_mb, step_mb = (before["RssAnon"] - base) / 1024, (after["VmHWM"] - before["VmRSS"]) / 1024
        how = "VmHWM after /proc/self/clear_refs, MALLOC_MMAP_THRESHOLD_"
    return {"label": case.label, "peak_mb": held_mb + step_mb, "held_mb": held_mb, "step_mb": step_mb,
            "memory_method": how, "batch": fingerprint(labeled, unlabeled)}


def memory_in_subprocess(case: Case, args) -> dict:
    """Run ``measure_memory`` for ``case`` in a fresh interpreter and return its result."""
    env = dict(os.environ)
    # large blocks come from mmap and go back to the OS when freed, so the resident set
    # follows the live tensors instead of glibc's free lists
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    env["MALLOC_TRIM_THRESHOLD_"] = str(128 * 1024)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", case.label] + args.passthrough
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"step_cost: memory measurement of {case.label!r} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- step time (all cases in one process, interleaved) -----------------------------------
def measure_times(cases: list[Case], args) -> dict[str, dict]:
    """Median step time (ms) per case over ``args.repeats`` interleaved rounds."""
    device = torch.device(args.device)
    steps, batches, prints = {}, {}, {}
    for case in cases:
        cfg = case_config(case, args)
        key = json.dumps([dict(cfg.data), dict(cfg.augment), cfg.train.seed, cfg.train.batch_labeled,
                          cfg.train.batch_unlabeled], sort_keys=True, default=str)
        if key not in batches:
            batches[key] = make_batches(cfg, device)
        steps[case.label] = Step(cfg, device, *batches[key], args.iteration)
        prints[case.label] = fingerprint(*batches[key])
    for label, step in steps.items():
        for _ in range(args.warmup):
            step()
    wall: dict[str, list[float]] = {label: [] for label in steps}
    cpu: dict[str, list[float]] = {label: [] for label in steps}
    order = list(steps)
    for r in range(args.repeats):
        for label in order[r % len(order):] + order[: r % len(order)]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[label]()
            wall[label].append(1000 * (time.perf_counter() - t0))
            cpu[label].append(1000 * (time.process_time() - c0))
    out = {}
    for label in steps:
        ts = wall[label] if args.clock == "wall" else cpu[label]
        out[label] = {"step_ms": statistics.median(ts), "step_ms_min": min(ts),
                      "step_ms_quartiles": statistics.quantiles(ts, n=4) if len(ts) > 1 else ts,
                      "wall_ms": statistics.median(wall[label]), "cpu_ms": statistics.median(cpu[label]),
                      "batch": prints[label]}
    return out


# -- report -------------------------------------------------------------------------------
def rows(cases: list[Case], results: dict[str, dict]) -> list[dict]:
    """One row per (case, baseline) with the ratios; raises if they saw different batches."""
    out = []
    for case in cases:
        r = results[case.label]
        for b in case.baselines or (case.label,):
            base = results[b]
            if r["batch"] != base["batch"]:
                raise SystemExit(f"step_cost: {case.label!r} and its baseline {b!r} saw different batches "
                                 f"({r['batch']} vs {base['batch']}): their data settings differ")
            out.append({"method": case.label, "preset": " ".join((case.preset,) + case.overrides), "baseline": b,
                        "step_ms": r["step_ms"], "step_x": r["step_ms"] / base["step_ms"],
                        "peak_mb": r.get("peak_mb"),
                        "peak_x": r["peak_mb"] / base["peak_mb"] if "peak_mb" in r else None})
    return out


def markdown(table: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| method | preset | baseline | step ms | x baseline | peak MB | x baseline |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in table:
        mem = f"{r['peak_mb']:.1f} | {r['peak_x']:.2f}" if r["peak_mb"] is not None else "- | -"
        lines.append(f"| {r['method']} | {r['preset']} | {r['baseline']} | {r['step_ms']:.1f} | {r['step_x']:.2f} | "
                     f"{mem} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/digits", help="digits root (built if missing; default data/digits)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--batch-labeled", type=int, default=16)
    p.add_argument("--batch-unlabeled", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iteration", type=int, default=-1, help="method.iteration during the steps (-1: train.iters/2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per case before timing")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="step ms = wall time (default) or the process's CPU time (steadier on a loaded CPU machine)")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per case (the median is reported)")
    p.add_argument("--memory-warmup", type=int, default=2, help="steps before the memory-measured step")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="time only")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="these cases (and their baselines) only")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.passthrough = [f"--data={args.data}", f"--device={args.device}", f"--threads={args.threads}",
                        f"--batch-labeled={args.batch_labeled}", f"--batch-unlabeled={args.batch_unlabeled}",
                        f"--seed={args.seed}", f"--iteration={args.iteration}",
                        f"--memory-warmup={args.memory_warmup}"] + ([] if args.amp else ["--no-amp"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("step_cost: --device cuda but no CUDA device is available")
    if args.device == "cuda" and args.clock == "cpu":
        raise SystemExit("step_cost: --clock cpu measures CPU work; on CUDA use the wall clock")
    cases = all_cases()
    if args.memory_child:
        print(json.dumps(measure_memory(next(c for c in cases if c.label == args.memory_child), args)))
        return 0
    from s4kit.data.digits import ensure_digits

    ensure_digits(args.data)
    cases = select(cases, args.only)
    print(f"timing {len(cases)} cases on {args.device}: {args.warmup} warm-up + {args.repeats} steps each",
          file=sys.stderr)
    results = measure_times(cases, args)
    if args.memory:
        if args.device == "cpu" and not Path("/proc/self/clear_refs").exists():
            raise SystemExit("step_cost: CPU peak memory needs Linux (/proc/self/clear_refs); use --no-memory")
        for case in cases:
            print(f"peak memory of {case.label} (fresh process)", file=sys.stderr)
            mem = memory_in_subprocess(case, args)
            if mem["batch"] != results[case.label]["batch"]:
                raise SystemExit(f"step_cost: {case.label}: the memory run saw another batch than the timing run")
            results[case.label].update(mem)
    table = rows(cases, results)
    import s4kit
    from s4kit.engine.trainer import git_sha

    threads = torch.get_num_threads()
    print(f"s4kit {s4kit.__version__}, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()}, bf16 autocast {'on' if args.amp else 'off'})"
             if args.device == "cuda" else f", {threads} thread(s)")
          + f", batch {args.batch_labeled}+{args.batch_unlabeled}, step ms = median {args.clock} time of "
            f"{args.repeats} steps\n")
    print(markdown(table))
    if args.out:
        meta = {"s4kit_version": s4kit.__version__, "git_sha": git_sha(), "torch": torch.__version__,
                "device": args.device, "threads": threads, "amp": args.amp and args.device == "cuda",
                "batch_labeled": args.batch_labeled, "batch_unlabeled": args.batch_unlabeled, "seed": args.seed,
                "warmup": args.warmup, "repeats": args.repeats, "clock": args.clock}
        Path(args.out).write_text(json.dumps({"meta": meta, "cases": [asdict(c) for c in cases],
                                              "results": results, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
