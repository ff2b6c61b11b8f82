"""Gradient accumulation (``train.global_batch``): one optimiser step over A micro-batches is
the step of the global batch.

* 1 process x A = 2 micro-batches of 4 equals 1 process with the batch of 8 (in process,
  ``training_step``), and equals 2 gloo processes x 1 (the trainer under torchrun), weight for
  weight, student and EMA teacher, after two SGD steps.
* The method is the mean teacher with its pseudo-label weighting non-degenerate (a per-image
  weight strictly between 0 and 1); BatchNorm is frozen (eval mode, no gradient): batch
  statistics of 4 and 8 images differ, which no accumulation can reproduce. Mixing and the
  photometric strong view are off: they draw from each process's own random stream.
* Why this fails on a wrong implementation: without the 1/A scaling the SGD step is twice
  as large; an EMA update or lr step per micro-batch moves the teacher or the second step;
  micro-batches drawn from other images than the other ranks' would change every gradient.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s4kit
from s4kit.config import ConfigError, accumulation_steps, load_config
from s4kit.data.loaders import IterationBatchSampler, build_train_streams
from s4kit.engine import trainer
from s4kit.engine.logger import read_log

from conftest import tiny_overrides
from ddp_worker import build_frozen

# the mean teacher on fixed geometry (no rescale, so no crop padding), no mixing, no
# photometric view; SGD so that the size of the gradient shows in the step (Adam's first
# step is nearly scale-free); delta_u = 0.15 so that about half the pixels are confident
SETUP = ["augment.mix=none", "augment.jitter_p=0", "augment.grayscale_p=0", "augment.blur_p=0",
         "data.scale_range=[1.0,1.0]", "optim.name=sgd", "optim.lr=0.01", "optim.warmup_iters=0",
         "method.confidence_threshold=0.15", "viz.enabled=false", "viz.snapshots=0"]


# ------------------------------------------------------------------ accumulation steps

@pytest.mark.parametrize("global_batch, batch, world, expected", [
    (16, 4, 1, 4), (16, 4, 4, 1), (16, 2, 2, 4), (8, 4, 2, 1), (None, 4, 3, 1)])
def test_accumulation_steps(global_batch, batch, world, expected):
    assert accumulation_steps(global_batch, batch, world) == expected


def test_indivisible_global_batch_is_one_line_naming_the_values(digits_root, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        accumulation_steps(12, 4, 2)  # 2 processes x 4 = 8 does not divide 12
    msg = str(info.value)
    assert "\n" not in msg and "train.global_batch=12" in msg and "train.batch_labeled=4" in msg and "2 process" in msg
    # not even a multiple of the per-process batch: refused when the config is read
    with pytest.raises(ConfigError, match=r"train\.global_batch=10"):
        load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path / "r") + ["train.global_batch=10"])
    # a multiple of the batch but not of world x batch: refused by train before any folder is made
    cfg = load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path / "r") + ["train.global_batch=12"])
    monkeypatch.setattr(s4kit.dist, "world_size", lambda: 8)
    with pytest.raises(ConfigError, match=r"train\.global_batch=12 is not a multiple of 8 process"):
        trainer.train(cfg, progress=False)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ the data of a step

def _take(sampler) -> list:
    return list(iter(sampler))


def test_micro_batches_are_the_batches_of_virtual_ranks():
    """Process r of W with A micro-batches yields, per iteration, ranks r*A .. r*A+A-1 of a
    world of W*A (indices and augmentation seeds); the micro-batches of 1 process together
    hold the images of the doubled batch."""
    n, b, seed, stream, total = 37, 4, 5, 1, 6
    accum = _take(IterationBatchSampler(n, b, seed, stream, 0, total, rank=0, world=1, accum=2))
    ranks = [_take(IterationBatchSampler(n, b, seed, stream, 0, total, rank=r, world=2)) for r in range(2)]
    assert len(accum) == 2 * total
    assert accum == [batch for t in range(total) for batch in (ranks[0][t], ranks[1][t])]
    doubled = _take(IterationBatchSampler(n, 2 * b, seed, stream, 0, total))
    assert [[i for i, _ in accum[2 * t] + accum[2 * t + 1]] for t in range(total)] == \
        [[i for i, _ in batch] for batch in doubled]
    # rank 1 of 2 processes x 2 micro-batches = ranks 2 and 3 of 4; resumed at iteration 3
    second = _take(IterationBatchSampler(n, b, seed, stream, 3, total, rank=1, world=2, accum=2))
    four = [_take(IterationBatchSampler(n, b, seed, stream, 3, total, rank=r, world=4)) for r in (2, 3)]
    assert second == [batch for t in range(total - 3) for batch in (four[0][t], four[1][t])]


# ------------------------------------------------------------------ 1 process: accumulation = doubled batch

def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal up to float32 summation order: ||a - b|| <= 1e-5 ||b|| (a gradient scaled by 2
    differs by ||b||, another batch by about as much)."""
    err, ref = float((a - b).norm()), float(b.norm())
    assert err <= 1e-5 * ref + 1e-9, f"{what}: ||a - b|| = {err:.3g}, ||b|| = {ref:.3g}"


def _method(cfg):
    torch.manual_seed(0)
    method = build_frozen(cfg)
    return method, trainer.build_optimizer(cfg, trainer.checked_param_groups(method))


def _split(batch: dict, parts: int) -> list[dict]:
    n = len(batch["id"]) // parts
    return [{k: v[i * n:(i + 1) * n] for k, v in batch.items()} for i in range(parts)]


def test_accumulated_step_equals_the_doubled_batch(digits_root, tmp_path):
    cfg = load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path / "r") + SETUP + [
        "train.batch_labeled=4", "train.batch_unlabeled=4"])
    lab_it, unl_it = build_train_streams(cfg, 0)
    batches = []
    for _ in range(2):
        labeled, unlabeled = next(lab_it), next(unl_it)
        # no void rim: the CE means of 2 + 2 images then average to the mean of 4 (equal pixel counts)
        labeled["mask"] = labeled["mask"].masked_fill(labeled["mask"] == 255, 0)
        assert unlabeled["valid"].all()
        batches.append((labeled, unlabeled))

    whole, opt_whole = _method(cfg)
    micro, opt_micro = _method(cfg)
    # iterations 1 and 2 of 3: at 0 the EMA copies the student (d_0 = 0), at 1 and 2 it averages
    for t, (labeled, unlabeled) in enumerate(batches, start=1):
        if t > 1:  # each step from the same state: float-order noise of step 1 could move a pixel across
            with torch.no_grad():  # the confidence threshold and change w_b in step 2 (in place: the
                for a, b in zip(micro.state_dict().values(), whole.state_dict().values()):  # optimiser
                    a.copy_(b)  # holds these tensors)
            opt_micro.load_state_dict(copy.deepcopy(opt_whole.state_dict()))  # own momentum buffers
        for opt in (opt_whole, opt_micro):
            for g in opt.param_groups:
                g["lr"] = trainer.poly_lr(cfg.optim.lr, t, 3)
        out, total = trainer.training_step(whole, opt_whole, labeled, unlabeled, t)
        out_m, total_m = trainer.training_step(micro, opt_micro, _split(labeled, 2), _split(unlabeled, 2), t)
        assert out["loss_unsup"] > 0 and (t > 1 or 5 < out["pl_coverage"] < 95)  # weights inside (0, 1) at first
        assert micro.iteration == t and set(out_m) == set(out)
        assert float(total_m) == pytest.approx(float(total.detach()), rel=1e-5)  # mean of the micro losses
        for (name, p), q in zip(whole.student.named_parameters(), micro.student.parameters()):
            if p.grad is not None:
                _assert_close(q.grad, p.grad, f"gradient of {name}")
    moved = 0.0
    fresh, _ = _method(cfg)
    for (name, a), b, c in zip(whole.state_dict().items(), micro.state_dict().values(), fresh.state_dict().values()):
        if a.is_floating_point():
            _assert_close(b, a, name)
            moved = max(moved, float((a - c).abs().max()))
    assert moved > 1e-3  # the two steps changed the weights


# ------------------------------------------------------------------ 2 gloo processes x 1 = 1 process x 2

@pytest.mark.slow
def test_one_process_accumulating_two_equals_two_gloo_processes(digits_root, tmp_path, monkeypatch):
    common = SETUP + ["train.global_batch=4", "train.batch_labeled=2", "train.batch_unlabeled=2", "train.log_every=1"]
    ddp_run, acc_run = tmp_path / "ddp", tmp_path / "acc"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(s4kit.__file__).parents[1]), str(Path(__file__).parent),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_worker.py")), "--freeze-bn", "digits/meanteacher",
           *tiny_overrides(digits_root, ddp_run, iters=2), *common]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # meanwhile, in this process: 1 process, 2 micro-batches of 4 + 4 per step
    saved = {}
    monkeypatch.setattr(trainer, "build_checked", build_frozen)
    monkeypatch.setattr(trainer, "finalize", lambda cfg, method, *a, **k: saved.update(trainer.unwrap_state(method)))
    steps = []
    step = trainer.training_step
    monkeypatch.setattr(trainer, "training_step",
                        lambda m, o, lab, unl, t, *a, **k: steps.append((t, len(lab))) or step(m, o, lab, unl, t, *a, **k))
    trainer.train(load_config("digits/meanteacher", tiny_overrides(digits_root, acc_run, iters=2) + common),
                  progress=False)
    assert steps == [(0, 2), (1, 2)]  # one optimiser step per iteration, of two micro-batches
    rows = read_log(acc_run / "log.csv")
    assert [r["iter"] for r in rows] == [1, 2] and rows[1]["lr"] == pytest.approx(trainer.poly_lr(0.01, 1, 2))
    assert torch.load(acc_run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2

    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    ranks = [torch.load(ddp_run / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["iter"] for r in read_log(ddp_run / "log.csv")] == [1, 2]
    for key, a in saved.items():
        if not a.is_floating_point():
            continue
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        _assert_close(a, ranks[0][key], key)
    torch.manual_seed(0)
    init = trainer.build_checked(load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path / "x") + SETUP))
    moved = {k: float((saved[k] - v).abs().max()) for k, v in init.state_dict().items() if v.is_floating_point()}
    assert max(v for k, v in moved.items() if k.startswith("student.")) > 1e-3
    assert max(v for k, v in moved.items() if k.startswith("teacher.")) > 1e-4  # the EMA moved too


def test_css_epoch_counts_the_global_batch(digits_root, tmp_path):
    """CSS's epoch (its warm-up and literal ramp-down unit) is n_labeled / global labeled batch:
    8 labeled digits scenes, 2 per micro-batch, global batch 4 -> 2 iterations (not 4)."""
    from s4kit.data.loaders import n_images
    from s4kit.methods import build_method

    base = tiny_overrides(digits_root, tmp_path / "r") + ["train.batch_labeled=2"]
    assert n_images(load_config("digits/css", base), "labeled") == 8
    assert build_method(load_config("digits/css", base + ["train.global_batch=4"])).epoch_length() == 2
    assert build_method(load_config("digits/css", base)).epoch_length() == 4
