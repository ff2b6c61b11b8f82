"""The trainer end to end on the small digits set: run folder, resume, non-finite losses."""
import json
import math
import re

import pytest
import torch

from s4kit.config import ConfigError, load_config
from s4kit.engine import NonFiniteLossError, train
from s4kit.engine.logger import read_log
from s4kit.engine.trainer import TRAINING_PARTS

from conftest import tiny_overrides

METRIC_KEYS = {"method", "dataset", "split", "n_labeled", "seed", "iters", "miou", "per_class_iou", "pixel_acc",
               "train_seconds", "images_per_second", "peak_memory_mb", "device", "world_size", "batch_labeled",
               "batch_unlabeled", "s4kit_version", "git_sha"}


MEANTEACHER_STAGES = ["training", "final evaluation", "pseudo-label measurement", "latent measures", "figures"]


def test_run_folder_contents(digits_root, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = train(load_config("digits/meanteacher", tiny_overrides(digits_root, run)), progress=True)
    # every stage says once, on stderr, how long it took; metrics.json keeps the seconds
    err = capsys.readouterr().err
    for name in MEANTEACHER_STAGES:
        assert len(re.findall(rf"(?m)^{name} \.\.\. \d+\.\d s$", err.replace("\r", "\n"))) == 1, name
    assert "method measures" not in err  # mean teacher has no measures of its own
    timing = json.loads((run / "metrics.json").read_text())["timing"]
    parts = [f"training/{p}" for p in TRAINING_PARTS]
    assert list(timing) == ["training", *parts, *MEANTEACHER_STAGES[1:]]
    assert all(isinstance(v, float) and v >= 0 for v in timing.values())
    assert timing["training"] >= metrics["train_seconds"] - 0.01  # the loop holds the training time
    # the parts of training (issue 18) lie inside its wall clock; each iteration loads data and steps
    assert sum(timing[p] for p in parts) <= timing["training"]
    assert timing["training/data"] > 0 and timing["training/step"] > 0 and timing["training/ema"] > 0
    assert timing["training/snapshots"] > 0 and timing["training/checkpoints"] > 0 and timing["training/logging"] > 0
    assert timing["training/snapshots"] <= metrics["snapshot_seconds"] + 0.05
    assert timing["training/periodic evaluation"] == 0.0  # train.eval_every is 0
    assert timing["training/step"] > timing["training/ema"]
    assert METRIC_KEYS | {"pseudo_label_precision", "pseudo_label_coverage"} <= set(metrics)
    # the final pseudo-labels on the seeded sample of eval.pl_max_images=16 of the 120 unlabeled images
    se, precision = metrics["pseudo_label_precision_se"], metrics["pseudo_label_precision"]
    assert metrics["pseudo_label_images"] == 16 and math.isnan(se) == math.isnan(precision) and not se < 0
    assert json.loads((run / "metrics.json").read_text())["miou"] == pytest.approx(metrics["miou"])
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.pt").exists()
    for fig in ("predictions", "per_class_iou", "tsne", "losses", "pseudo_labels"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
    rows = read_log(run / "log.csv")
    assert [r["iter"] for r in rows] == [2, 4]
    assert {"loss", "loss_sup", "loss_unsup", "lr", "images_per_second", "pl_coverage"} <= set(rows[0])
    assert len(metrics["per_class_iou"]) == 11 and 0 <= metrics["miou"] <= 100
    # 4 iterations, snapshots after iterations 1, 2, 3, 4: their time is measured and part of training time
    assert len(list((run / "snapshots").glob("iter_*.npz"))) == 4
    assert 0 < metrics["snapshot_seconds"] < metrics["train_seconds"]


class Killed(Exception):
    pass


def test_killed_and_resumed_run_ends_with_identical_metrics(digits_root, tmp_path, monkeypatch):
    common = tiny_overrides(digits_root, tmp_path / "x", iters=6)[2:] + ["train.deterministic=true",
                                                                       "train.checkpoint_every=3"]
    full = train(load_config("digits/reco", [f"data.root={digits_root}", f"run.dir={tmp_path / 'full'}"] + common),
                 progress=False)
    # kill the run during iteration 5: last.pt holds step 3, the log already has the row of step 4
    from s4kit.methods.reco import ReCo

    original = ReCo.after_step

    def dies_at_step_4(self, step):
        if step == 4:
            raise Killed
        original(self, step)

    part = tmp_path / "part"
    monkeypatch.setattr(ReCo, "after_step", dies_at_step_4)
    with pytest.raises(Killed):
        train(load_config("digits/reco", [f"data.root={digits_root}", f"run.dir={part}"] + common), progress=False)
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert [r["iter"] for r in read_log(part / "log.csv")] == [2, 4]
    monkeypatch.setattr(ReCo, "after_step", original)
    resumed = train(load_config("digits/reco", [f"data.root={digits_root}", f"run.dir={part}"] + common),
                    progress=False)
    assert resumed["miou"] == full["miou"] and resumed["per_class_iou"] == full["per_class_iou"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["method"]
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "images_per_second"} for r in rows]

    assert strip(read_log(tmp_path / "full" / "log.csv")) == strip(read_log(part / "log.csv"))


def test_resume_refuses_a_different_config(digits_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config("digits/supervised", tiny_overrides(digits_root, run, iters=2)), progress=False)
    assert capsys.readouterr() == ("", "")  # progress=False: no bar, no stage line
    assert set(json.loads((run / "metrics.json").read_text())["timing"]) == {
        "training", "final evaluation", "latent measures", "figures", *(f"training/{p}" for p in TRAINING_PARTS)}
    with pytest.raises(ConfigError, match="different config.*optim.lr"):
        train(load_config("digits/supervised", tiny_overrides(digits_root, run, iters=2) + ["optim.lr=0.1"]),
              progress=False)


def test_non_finite_loss_stops_with_iteration_and_value(digits_root, tmp_path, monkeypatch):
    from s4kit.methods.supervised import Supervised

    original = Supervised.train_step

    def nan_at_second(self, labeled, unlabeled=None):
        out = original(self, labeled, unlabeled)
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == 2:
            out["loss_sup"] = out["loss_sup"] * float("nan")
        return out

    monkeypatch.setattr(Supervised, "train_step", nan_at_second)
    with pytest.raises(NonFiniteLossError, match=r"iteration 1.*loss_sup.*nan"):
        train(load_config("digits/supervised", tiny_overrides(digits_root, tmp_path / "nan")), progress=False)
