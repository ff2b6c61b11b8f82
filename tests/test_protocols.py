"""Protocol cards and paper numbers: config validation, `s4kit report`'s paper and bootstrap
columns on hand-made runs, the generated docs/protocols.md, and the ReCo Cityscapes preset."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from s4kit.config import ConfigError, available_presets, load_config, to_yaml
from s4kit.engine.report import PRESET_CARD, bootstrap_ci, protocol_items, protocol_markdown, report_table, summarize

ROOT = Path(__file__).resolve().parents[1]


def _preset(name, overrides=()):
    """A preset as the protocol tests read it: no ImageNet weights file needed (PRESET_CARD)."""
    return load_config(name, [PRESET_CARD, *overrides])


def _exact_quantile(values, q):
    """Inverse CDF at q of the exact bootstrap distribution of the mean: every one of the
    n**n ordered resamples, equally likely (independent of numpy's sampling)."""
    means = sorted(sum(c) / len(values) for c in itertools.product(values, repeat=len(values)))
    return means[max(0, math.ceil(q * len(means)) - 1)]


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    v = [61.3, 64.0, 58.2, 66.9, 63.1]  # 5**5 = 3125 resamples; 2.5 % falls inside, not at the minimum
    lo, hi = bootstrap_ci(v, n_resamples=10_000, seed=0)
    # 10,000 draws estimate the 2.5 % point with a standard error of sqrt(.025 * .975 / 1e4) = 0.0016
    # in probability: the estimate lies between the exact 1.8 % and 3.2 % quantiles (4.4 sigma)
    assert _exact_quantile(v, 0.018) <= lo <= _exact_quantile(v, 0.032)
    assert _exact_quantile(v, 0.968) <= hi <= _exact_quantile(v, 0.982)
    assert min(v) < lo < np.mean(v) < hi < max(v)
    assert bootstrap_ci(v, seed=0) == (lo, hi)  # seeded: the same interval every time
    assert bootstrap_ci([70.0]) is None and bootstrap_ci([]) is None


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    v = np.array([61.3, 64.0, 58.2, 66.9, 63.1])
    try:
        res = stats.bootstrap((v,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(1))
    except TypeError:  # scipy < 1.15
        res = stats.bootstrap((v,), np.mean, n_resamples=10_000, method="percentile", random_state=1)
    lo, hi = bootstrap_ci(v, n_resamples=10_000, seed=0)
    # two independent Monte Carlo estimates of the same percentiles: within ~4 sigma of each other
    spread = _exact_quantile(list(v), 0.034) - _exact_quantile(list(v), 0.016)
    assert abs(lo - res.confidence_interval.low) <= spread
    assert abs(hi - res.confidence_interval.high) <= spread


def _run(root: Path, name: str, metrics: dict, preset: str | None = None, overrides=()):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    if preset:
        (d / "config.yaml").write_text(to_yaml(_preset(preset, list(overrides))))
    return d


def test_report_puts_the_paper_number_and_bootstrap_interval_beside_the_runs(tmp_path):
    runs = tmp_path / "runs"
    css = [66.0, 69.5, 67.1]
    for seed, miou in enumerate(css):
        _run(runs, f"css{seed}", {"dataset": "pascal", "method": "css", "split": "92", "miou": miou, "seed": seed},
             "pascal/css", [f"train.seed={seed}"])
    _run(runs, "digits", {"dataset": "digits", "method": "reco", "split": "1_16", "miou": 31.0, "seed": 0})
    # a pascal/tiny smoke run on a split with no published number, one seed
    _run(runs, "tiny", {"dataset": "pascal", "method": "reco", "split": "toy", "miou": 3.0, "seed": 0}, "pascal/tiny")
    table = report_table(runs)
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:3]: [c.strip() for c in line.strip("|").split("|")]
            for line in lines[2:] if line.startswith("| ")}
    css_row = rows[("pascal", "css", "92")]
    assert css_row[head.index("paper (%)")] == "68.09 ± 4.89"  # CSS Table 1, row CSS (mix)
    assert css_row[head.index("mIoU (%)")] == f"{np.mean(css):.1f} ± {np.std(css, ddof=1):.1f}"
    lo, hi = bootstrap_ci(css)
    assert css_row[head.index("95% CI (seeds)")] == f"[{lo:.1f}, {hi:.1f}]"
    digits_row = rows[("digits", "reco", "1_16")]
    assert digits_row[head.index("paper (%)")] == "n/a" and digits_row[head.index("95% CI (seeds)")] == "n/a"
    tiny_row = rows[("pascal", "reco", "toy")]
    assert tiny_row[head.index("paper (%)")] == "n/a"
    protocol = {line.split("**")[1]: line for line in lines if line.startswith("- **")}
    assert set(protocol) == {"pascal/css", "pascal/reco"}  # one line per preset group with a card
    assert "CSS Space Engage" in protocol["pascal/css"] and "crop 512" in protocol["pascal/css"]
    assert "s4kit:" in protocol["pascal/css"] and "evaluation full" in protocol["pascal/css"].split("s4kit:")[1]
    tiny_diffs = protocol["pascal/reco"].split("s4kit:")[1]  # the tiny run's own config, not the preset's
    assert "crop 96" in tiny_diffs and "iterations 20" in tiny_diffs

    csv_lines = report_table(runs, csv=True).splitlines()
    cols = csv_lines[0].split(",")
    import csv as csvmod

    by_split = {r[cols.index("split")]: r for r in csvmod.reader(csv_lines[1:])}
    assert float(by_split["92"][cols.index("paper_miou")]) == 68.09
    assert float(by_split["92"][cols.index("ci95_low")]) == pytest.approx(lo, abs=1e-4)
    assert by_split["1_16"][cols.index("paper_miou")] == "" and by_split["1_16"][cols.index("ci95_low")] == ""


def test_report_falls_back_to_the_preset_card_without_a_config_file(tmp_path):
    _run(tmp_path, "a", {"dataset": "cityscapes", "method": "allspark", "split": "1_16", "miou": 70.0, "seed": 0})
    _run(tmp_path, "b", {"dataset": "cityscapes", "method": "allspark", "split": "1_16", "miou": 72.0, "seed": 1})
    (row,) = summarize([json.loads((tmp_path / x / "metrics.json").read_text()) | {"run_dir": str(tmp_path / x)}
                        for x in ("a", "b")])
    assert row["paper"] == "78.33" and row["paper_miou"] == 78.33  # AllSpark's Cityscapes table, 1/16 (186)
    assert row["ci95"] == "[70.0, 72.0]"  # two seeds: every resample mean lies in [min, max], both ends drawn


def test_protocol_page_is_up_to_date():
    page = ROOT / "docs" / "protocols.md"
    assert page.read_text(encoding="utf-8") == protocol_markdown(), \
        "docs/protocols.md is stale: python -m s4kit.engine.report docs/protocols.md"


def test_every_pascal_cityscapes_and_coco_preset_has_a_card_and_digits_none():
    for name in available_presets():
        cfg = _preset(name)
        if name.startswith(("digits/", "folder/")):  # no paper behind them
            assert cfg.protocol.source == "" and len(cfg.paper) == 0
            continue
        assert cfg.protocol.source.strip(), name
        assert cfg.protocol.split_family, name
        for r in cfg.paper:
            assert 0 < r.miou <= 100 and r.source.strip()
    # split names in the paper tables stay strings (1_16, not the YAML integer 116)
    assert [r.split for r in _preset("cityscapes/allspark").paper] == ["1_16", "1_8", "1_4", "1_2"]


def test_contrast_methods_show_the_loss_denominator_choice():
    for name in ("pascal/reco", "pascal/css", "pascal/prcl", "cityscapes/reco"):
        items = {i[0]: i for i in protocol_items(_preset(name))}
        _, paper, ours, differs = items["contrast-loss denominator"]
        assert "the code" in paper and "classes with hard anchors" in ours and differs
        _, _, ours, differs = {i[0]: i for i in protocol_items(
            _preset(name, ["method.literal_denominator=true"]))}["contrast-loss denominator"]
        assert "every class" in ours and not differs
    assert "contrast-loss denominator" not in {i[0] for i in protocol_items(_preset("pascal/meanteacher"))}


def test_cityscapes_reco_is_recos_own_protocol():
    cfg = _preset("cityscapes/reco")
    assert list(cfg.data.resize) == [512, 1024] and cfg.data.crop_size == 512
    assert list(cfg.data.scale_range) == [1.0, 1.0]
    assert (cfg.train.batch_labeled, cfg.train.batch_unlabeled, cfg.train.iters) == (2, 2, 40000)
    assert cfg.method.sup_loss == "ce" and cfg.augment.mix == "classmix" and cfg.eval.mode == "full"
    items = {i[0]: i for i in protocol_items(cfg)}
    for item in ("images resized to", "crop", "output stride", "scale range (labeled)",
                 "global batch (labeled+unlabeled)", "iterations", "supervised loss", "mixing", "evaluation",
                 "network evaluated"):
        assert not items[item][3], item
    changed = {i[0]: i for i in protocol_items(_preset("cityscapes/reco", ["data.crop_size=769",
                                                                              "eval.mode=sliding"]))}
    assert changed["crop"][3] and changed["evaluation"][3]


def test_allspark_voc_iterations_follow_the_default_split():
    cfg = _preset("pascal/allspark")
    assert cfg.data.split == "92"
    # AllSpark: 80 epochs over the unlabeled set, 4 GPUs x 2 per GPU, DistributedSampler padding,
    # drop_last: 10,490 unlabeled images on split 92
    assert cfg.train.iters == cfg.protocol.iters == 80 * (math.ceil(10_490 / 4) // 2)


@pytest.mark.parametrize("override, message", [
    ("protocol.eval_mode=best", "protocol.eval_mode='best'"),
    ("protocol.split_family=random", "protocol.split_family='random'"),
    ("protocol.scale_range=[2.0,1.0]", "protocol.scale_range"),
    ("protocol.gpus=-1", "protocol.gpus=-1"),
    ("protocol.output_stride=12", "protocol.output_stride=12"),
    ("protocol.checkpoint=final", "protocol.checkpoint='final'"),
    ("protocol.source=' '", "protocol.source=' '"),
    ("paper=[{split: '92', miou: 120, source: T1}]", r"paper\[0\].miou=120"),
    ("paper=[{split: '92', miou: 70, source: T1}, {split: '92', miou: 71, source: T2}]",
     r"paper\[1\].split='92'.*one per split"),
    ("paper=[{split: '92', miou: 70, source: ' '}]", r"paper\[0\].source=' '"),
    ("paper.0.miou=70", "paper.0.miou=70.*give a list whole"),
    ("data.resize=[512]", "data.resize"),
])
def test_bad_protocol_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _preset("pascal/css", [override])
