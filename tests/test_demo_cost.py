"""Issue 18: the demo's time breakdown and the sampled pseudo-label measurement."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from s4kit.demo import read_timings, run_total, timing_table
from s4kit.engine.evaluate import pseudo_label_metrics, ratio_standard_error, sample_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from demo_cost import cost_rows, cost_table  # noqa: E402

A = {"training": 10.0, "training/data": 2.0, "training/step": 6.0, "final evaluation": 1.5, "figures": 3.0}
B = {"training": 20.0, "training/data": 4.0, "final evaluation": 2.5, "pseudo-label measurement": 1.0}


def _demo(tmp_path) -> Path:
    out = tmp_path / "demo"
    for name, timing in (("a_run", A), ("b_run", B)):
        (out / name).mkdir(parents=True)
        (out / name / "metrics.json").write_text(json.dumps({"miou": 1.0, "timing": timing}))
    (out / "unfinished").mkdir()  # no metrics.json: not a row
    (out / "old").mkdir()
    (out / "old" / "metrics.json").write_text(json.dumps({"miou": 1.0}))  # before timings: not a row
    return out


def test_timing_table_sums_stages_not_parts(tmp_path):
    out = _demo(tmp_path)
    assert list(read_timings(out)) == ["a_run", "b_run"]
    assert run_total(A) == 14.5 and run_total(B) == 23.5  # training/... is inside training
    lines = timing_table(out).splitlines()
    assert lines[0] == ("| run | training | training/data | training/step | final evaluation | "
                        "pseudo-label measurement | figures | total |")
    assert lines[2] == "| a_run | 10.0 | 2.0 | 6.0 | 1.5 |  | 3.0 | 14.5 |"
    assert lines[3] == "| b_run | 20.0 | 4.0 |  | 2.5 | 1.0 |  | 23.5 |"
    assert lines[4] == "| **total** | 30.0 | 6.0 | 6.0 | 4.0 | 1.0 | 3.0 | 38.0 |"
    assert timing_table(tmp_path / "empty") == ""


def test_demo_cost_fractions(tmp_path):
    rows = {name: (seconds, share, runs) for name, seconds, share, runs in cost_rows(read_timings(_demo(tmp_path)))}
    assert list(rows) == ["training", "training/data", "training/step", "training/other", "final evaluation",
                          "pseudo-label measurement", "figures"]
    assert rows["training"] == pytest.approx((30.0, 30 / 38, 2))
    assert rows["training/data"] == pytest.approx((6.0, 6 / 38, 2))
    assert rows["training/step"] == pytest.approx((6.0, 6 / 38, 1))
    assert rows["training/other"] == pytest.approx((18.0, 18 / 38, 2))  # (10 - 8) + (20 - 4)
    assert rows["pseudo-label measurement"] == pytest.approx((1.0, 1 / 38, 1))
    assert sum(share for name, (_, share, _) in rows.items() if "/" not in name) == pytest.approx(1.0)
    table = cost_table(tmp_path / "demo")
    assert "| training | 30.0 | 78.9 % | 2 |" in table and "| **total** | 38.0 | 100.0 % | 2 |" in table


def test_ratio_standard_error_by_hand():
    # R = 27/30 = 0.9; residuals 0, -1, 1: variance 2/2 = 1; SE = sqrt(1/3) / mean(x) = sqrt(1/3) / 10
    assert ratio_standard_error([9, 8, 10], [10, 10, 10]) == pytest.approx(math.sqrt(1 / 3) / 10)
    # finite population of 6: (1 - 3/6) of the variance
    assert ratio_standard_error([9, 8, 10], [10, 10, 10], population=6) == pytest.approx(math.sqrt(0.5 / 3) / 10)
    # unequal clusters: R = 4/6; residuals -1/3, 1/3: variance 2/9; SE = sqrt(2/9 / 2) / 3 = 1/9
    assert ratio_standard_error([1, 3], [2, 4]) == pytest.approx(1 / 9)
    assert ratio_standard_error([1, 3], [2, 4], population=2) == 0.0  # every image measured
    assert math.isnan(ratio_standard_error([1], [2])) and math.isnan(ratio_standard_error([0, 0], [0, 0]))


def test_sample_indices_seeded_subset():
    first = sample_indices(3840, 512)
    assert first == sample_indices(3840, 512) and first == sorted(first) and len(set(first)) == 512
    assert first != list(range(512)) and max(first) > 3000  # spread over the list, not its head
    assert sample_indices(3840, 512, seed=1) != first
    assert sample_indices(10, 0) == list(range(10)) and sample_indices(10, 10) == list(range(10))
    assert sample_indices(10, 25) == list(range(10))


class _Unlabeled:
    """Images whose pixel value says the pseudo-label and its confidence; seeded hidden masks."""

    def __init__(self, n: int = 12):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 4, 4, generator=g)
        self.hidden = torch.randint(0, 3, (n, 4, 4), generator=g)
        self.hidden[torch.rand(n, 4, 4, generator=g) < 0.2] = 255

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "hidden_mask": self.hidden[i], "id": str(i)}


def _pseudo(image):
    return (image[:, 0] * 3).long().clamp(max=2), image[:, 1]


def _expected(data, indices, threshold=0.5):
    img = data.images[indices]
    labels, conf = _pseudo(img)
    hidden = data.hidden[indices]
    valid = hidden != 255
    confident = valid & (conf >= threshold)
    cc = (confident & (labels == hidden)).sum().item()
    return {"pseudo_label_precision": 100 * cc / confident.sum().item(),
            "pseudo_label_coverage": 100 * confident.sum().item() / valid.sum().item(),
            "pseudo_label_accuracy": 100 * (valid & (labels == hidden)).sum().item() / valid.sum().item()}


def test_pseudo_label_metrics_all_and_sampled():
    data = _Unlabeled()
    every = pseudo_label_metrics(_pseudo, data, "cpu", 0.5, batch_size=5, max_images=0)
    for k, v in _expected(data, list(range(12))).items():
        assert every[k] == pytest.approx(v)
    assert every["pseudo_label_images"] == 12 and every["pseudo_label_precision_se"] == 0.0
    some = pseudo_label_metrics(_pseudo, data, "cpu", 0.5, batch_size=5, max_images=5)
    chosen = sample_indices(12, 5)
    assert chosen != list(range(5))
    for k, v in _expected(data, chosen).items():
        assert some[k] == pytest.approx(v)
    assert some["pseudo_label_images"] == 5 and some["pseudo_label_precision_se"] > 0


def test_unlabeled_batches_sample_and_head():
    from s4kit.engine.trainer import UnlabeledBatches

    data = _Unlabeled()
    ids = lambda batches: [i for b in batches for i in b["id"]]  # noqa: E731
    chosen = sample_indices(12, 5)
    # finalize hands method measures (PRCL's AUROC, CSS's sources) the pseudo-label sample
    assert ids(UnlabeledBatches(data, "cpu", 2, indices=chosen)) == [str(i) for i in chosen]
    # max_images alone keeps the first N (notebook 03 compares final_metrics on its first N images)
    assert ids(UnlabeledBatches(data, "cpu", 2, 5)) == ["0", "1", "2", "3", "4"]
    assert ids(UnlabeledBatches(data, "cpu", 64)) == [str(i) for i in range(12)]


def test_demo_main_prints_and_writes_timing(tmp_path, monkeypatch, capsys):
    import s4kit.demo as demo
    import s4kit.engine.report as report

    out = _demo(tmp_path)
    monkeypatch.setattr(demo, "run_all", lambda *a, **k: None)  # the runs are there already
    monkeypatch.setattr(report, "report_table", lambda out: "| results |")
    assert demo.main(["--out", str(out), "--figures", ""]) == 0
    written = (out / "timing.md").read_text()
    assert timing_table(out) in written and "| **total** | 30.0 | 6.0 | 6.0 | 4.0 | 1.0 | 3.0 | 38.0 |" in written
    assert timing_table(out) in capsys.readouterr().out


def test_demo_runs_the_tour_or_everything_and_says_which(tmp_path, monkeypatch):
    """make demo = the tour (CSS, PRCL, mean teacher + supervised bounds, one network); --all = every run; the
    overrides reach every run's OVERRIDES; results.md's first line names what ran."""
    import s4kit.demo as demo
    import s4kit.engine.report as report

    calls = []
    monkeypatch.setattr(demo, "run_all", lambda runs, data, jobs, max_iters=0, overrides=(): calls.append(
        ([(m, s, seed) for m, s, seed, _ in runs], overrides)))
    monkeypatch.setattr(report, "report_table", lambda out: "| results |")
    out = tmp_path / "demo"
    out.mkdir()
    assert demo.main(["--out", str(out), "--figures", ""]) == 0
    tour = [(m, s, 0) for m, s in demo.TOUR]
    assert calls[-1] == (tour, ())
    assert {m for m, _, _ in tour} == {"supervised", "meanteacher", "css", "prcl"}  # one network
    assert {s for m, s, _ in tour if m == "supervised"} == {"1_16", "full"}  # both bounds
    head = (out / "results.md").read_text().splitlines()[0]
    assert head.startswith("Ran: make demo (the tour") and "5 runs, seed 0: prcl 1_16, css 1_16," in head
    assert demo.main(["--all", "--out", str(out), "--figures", "", "--seeds", "0", "1",
                      "--override", "eval.pl_max_images=0", "viz.snapshots=0"]) == 0
    runs, overrides = calls[-1]
    assert len(runs) == 20 and {(m, s) for m, s, _ in runs} == set(demo.RUNS)
    assert overrides == ("eval.pl_max_images=0", "viz.snapshots=0")
    head = (out / "results.md").read_text().splitlines()[0]
    assert head.startswith("Ran: every method: 20 runs, seeds 0 1: rc2l 1_16, allspark 1_16,")
    assert head.endswith("Overrides: eval.pl_max_images=0 viz.snapshots=0.")


def test_demo_launch_passes_threads_and_overrides(tmp_path, monkeypatch):
    import subprocess

    import s4kit.demo as demo

    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["cmd"], seen["env"] = cmd, kw["env"]

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    _, log = demo._launch("reco", "1_16", 3, tmp_path / "run", "/data", 0, 1, ("eval.pl_max_images=0",))
    log.close()
    cmd = seen["cmd"]
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--method") + 1] == "reco"
    assert cmd[cmd.index("OVERRIDES") + 1] == "train.threads=1 eval.pl_max_images=0"
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and "MAX_ITERS" not in cmd
