"""DDP under torchrun: two gloo ranks on CPU train digits/reco as one model.

Rank 0 alone saves checkpoints, figures and metrics.json; evaluation splits the val set
across the ranks and all-reduces the confusion matrix. If the ranks held different models
(students out of sync, a rank-local teacher or BatchNorm statistics) or the all-reduce were
missing, metrics.json would disagree with a single-process evaluation of rank 0's last.pt.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import s4kit
from s4kit.cli import main
from s4kit.engine.logger import read_log

from conftest import tiny_overrides

ITERS = 12


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model(digits_root, tmp_path, capsys):
    run = tmp_path / "runs" / "ddp"
    overrides = tiny_overrides(digits_root, run, iters=ITERS) + [
        "train.threads=1", "optim.warmup_iters=0", "viz.enabled=false", "viz.snapshots=0"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(s4kit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "s4kit.run", "train", "digits/reco", *overrides]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters"] == ITERS
    # images per second count both ranks' batches (4 labeled + 4 unlabeled each)
    assert metrics["images_per_second"] == pytest.approx(16 * ITERS / metrics["train_seconds"])
    assert [r["iter"] for r in read_log(run / "log.csv")] == list(range(2, ITERS + 1, 2))  # one writer

    # the ranks cooperated: their all-reduced evaluation equals rank 0's checkpoint on the whole val set
    assert main(["eval", str(run)]) == 0
    single = json.loads((run / "eval.json").read_text())
    assert single["iters"] == ITERS
    assert single["pixel_acc"] == pytest.approx(metrics["pixel_acc"], abs=0.01)  # 0.01 % = 3 of 32768 pixels
    assert single["miou"] == pytest.approx(metrics["miou"], abs=0.05)  # a pixel of a rare class: ~0.03

    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs")]) == 0
    row = capsys.readouterr().out.strip().splitlines()[2]
    assert "| digits | reco | 1_16 |" in row and f"{metrics['miou']:.1f}" in row


@pytest.mark.slow
def test_two_gloo_ranks_keep_extra_heads_equal(digits_root, tmp_path):
    """rc2l with ``projection=true`` keeps a trained MLP on the method, outside the student:
    after 4 steps on different batches, both ranks hold the same weights (student, projection,
    teacher, buffers). Before the trainer averaged the extra heads' gradients, each rank
    stepped its projection with its own gradient and the ranks drifted apart."""
    run = tmp_path / "rc2l"
    overrides = tiny_overrides(digits_root, run, iters=4) + [
        "train.threads=1", "optim.warmup_iters=0", "viz.enabled=false", "viz.snapshots=0",
        "method.projection=true", "method.region_threshold=0.0", "method.unsup_warmup=0"]  # regions from the start
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(s4kit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_worker.py")), "digits/rc2l", *overrides]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]

    rows = read_log(run / "log.csv")
    assert rows[0]["loss_rfc"] > 0  # the projection was trained (on rank 0 at least)
    import torch

    a, b = (torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and any(k.startswith("projection.") for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"ranks differ in {len(differ)} tensors, e.g. {differ[:4]}"
