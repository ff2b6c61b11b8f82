"""The equivalence harness (``benchmarks/official_equivalence``) without the official code:
its differences and verdicts, the table, SKIPPED rows when no checkout is named, and the
replay of random draws (checked against an InfoNCE computed by hand from the draws). With
``S4KIT_OFFICIAL_<GROUP>`` set, the real comparison of that group runs too."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: ``benchmarks``

from benchmarks.official_equivalence import harness as H  # noqa: E402
from benchmarks.official_equivalence import run as R  # noqa: E402


def test_diff_float_int_shape_and_nonfinite():
    d = H.diff(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 4.0]))
    assert d.max_abs == pytest.approx(1.0) and d.max_rel == pytest.approx(0.25)  # 1 / max|b| = 1 / 4
    d = H.diff(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 5, 3]))
    assert (d.max_abs, d.max_rel) == (1.0, 0.25)  # one of four labels differs
    assert math.isinf(H.diff(torch.zeros(2, 3), torch.zeros(3, 2)).max_rel)
    nan = float("nan")
    assert H.diff(torch.tensor([nan, 1.0]), torch.tensor([nan, 1.0])).max_rel == 0.0  # NaN on both sides: equal
    assert math.isinf(H.diff(torch.tensor([nan, 1.0]), torch.tensor([0.0, 1.0])).max_rel)
    both = H.diff_pairs([(torch.tensor([1.0]), torch.tensor([2.0])), (torch.tensor([10.0]), torch.tensor([10.5]))])
    assert both.max_abs == pytest.approx(1.0) and both.max_rel == pytest.approx(0.5)


def test_judge_verdicts():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-6])
    far = torch.tensor([1.0, 3.0])
    assert H.judge("c", "o", "s", [(a, b)]).verdict == H.EQUAL
    assert H.judge("c", "o", "s", [(far, b)]).verdict == H.FAIL
    row = H.judge("c", "o", "s", [(far, b)], option="m.x=code", option_pairs=[(a, b)])
    assert row.verdict == H.deliberate("m.x=code") and "`m.x=code` reproduces the code" in row.verdict
    assert row.max_abs == pytest.approx(1.0, rel=1e-6)  # the default's difference is the one reported
    assert H.judge("c", "o", "s", [(far, b)], option="m.x=code", option_pairs=[(far, b)]).verdict == H.FAIL
    assert H.judge("c", "o", "s", [(a, b)], option="m.x=code", option_pairs=[(a, b)]).verdict == H.EQUAL
    unchecked = H.judge("c", "o", "s", [(far, b)], option="m.x=code")
    assert unchecked.verdict.startswith("DIFFERS") and "not checked" in unchecked.note
    assert H.judge("c", "o", "s", [(a, b)], tol=0.0).verdict == H.FAIL  # 1e-6 apart, tolerance 0


def test_table_summary_and_exit_code(tmp_path):
    rows = [H.Row("a|b", "f.py `g`", "`h`", H.EQUAL, 0.0, 0.0), H.Row("x", "f", "s", H.deliberate("o=1"), 0.5, 0.1),
            H.Row("y", "f", "s", H.SKIPPED, note="unset")]
    table = H.markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and lines[0].count("|") == 8
    assert "a\\|b" in lines[2] and "5.0e-01" in lines[3] and "| – |" in lines[4]
    assert H.summary(rows) == "1 EQUAL, 1 DIFFERS (deliberate), 0 FAIL, 1 SKIPPED"
    assert H.exit_code(rows) == 0
    assert H.exit_code(rows + [H.Row("z", "f", "s", H.FAIL)]) == 1
    path = H.write_results(rows, tmp_path / "sub" / "R.md", "# title")
    text = path.read_text()
    assert text.startswith("# title") and table in text and "1 SKIPPED" in text


def test_groups_skipped_without_checkouts(tmp_path, monkeypatch, capsys):
    for var, _, _ in H.OFFICIAL.values():
        monkeypatch.delenv(var, raising=False)
    rows, line = R.run_group("css")
    assert rows and all(r.verdict == H.SKIPPED for r in rows) and "S4KIT_OFFICIAL_CSS is not set" in rows[0].note
    monkeypatch.setenv("S4KIT_OFFICIAL_PRCL", str(tmp_path / "missing"))
    rows, _ = R.run_group("prcl")
    assert all(r.verdict == H.SKIPPED and "is not a folder" in r.note for r in rows)
    out = tmp_path / "RESULTS.md"
    assert R.main(["--out", str(out)]) == 0  # nothing ran, nothing failed
    n = sum(len(__import__(f"benchmarks.official_equivalence.{g}", fromlist=["x"]).COMPONENTS) for g in R.GROUPS)
    assert f"0 EQUAL, 0 DIFFERS (deliberate), 0 FAIL, {n} SKIPPED" in out.read_text()
    with pytest.raises(SystemExit):
        R.main(["--only", "nosuch"])


def test_cuda_patch_is_undone():
    before = torch.Tensor.cuda
    with H.cuda_is_cpu():
        t = torch.ones(2)
        assert t.cuda() is t
    assert torch.Tensor.cuda is before


def _inputs():
    x = H.contrast_inputs(2, 2, 9, 9, 8, 5, seed=3, per_image=(2, 3))
    from s4kit.losses.contrast import flatten_pixels, own_class_scores

    reps, lab = flatten_pixels(x["rep"], x["labels"], x["valid"])
    hard = own_class_scores(x["prob"], x["labels"], x["valid"]) < 0.97
    return x, reps, lab, hard


def test_s4kit_replay_uses_the_draws():
    """ReCo's loss under the replay equals the InfoNCE computed by hand from the draws."""
    from s4kit.losses.contrast import reco_loss

    x, reps, lab, hard = _inputs()
    q, m, tau = 6, 7, 0.5
    draws = H.Draws(lab, hard, q, m, seed=4)
    assert len(draws.order) >= 2
    recorded = []
    with H.s4kit_replay(draws, recorded):
        got = reco_loss(x["rep"], x["labels"], x["valid"], x["prob"], 0.97, tau, q, m)
    means = {c: reps[lab == c].mean(0) for c in draws.classes}
    losses = []
    for c in draws.order:
        anchors = reps[(lab == c) & hard][draws.anchors[c]]  # (q, D)
        keys = torch.cat([means[c].expand(q, 1, -1), reps[draws.negatives[c]]], 1)  # (q, 1 + m, D)
        logits = F.cosine_similarity(anchors.unsqueeze(1), keys, dim=-1) / tau
        losses.append(F.cross_entropy(logits, torch.zeros(q, dtype=torch.long)))
    assert float(got) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    # the recorded class-sampling distribution: softmax over the other classes of cos(r_c, r_c') / tau
    c = draws.order[0]
    want = torch.stack([F.cosine_similarity(means[c], means[o], 0) / tau for o in draws.others(c)]).softmax(0)
    assert torch.allclose(recorded[0], want, atol=1e-6)
    assert torch.randint is not None and torch.multinomial.__module__ != __name__  # patches undone


def test_official_replay_indices_pick_the_draws():
    """The indices handed to an official loss address the replayed pixels in the official
    layout: the other classes' pixel lists concatenated in rotated order (c+1, ..., c-1)."""
    x, reps, lab, hard = _inputs()
    draws = H.Draws(lab, hard, 4, 5, seed=2)
    fake_official = type("M", (), {"negative_index_sampler": staticmethod(lambda *a: None)})
    with H.official_replay(fake_official, draws, []):
        for c in draws.order:
            assert torch.equal(torch.randint(draws.n_hard[c], size=(4,)), draws.anchors[c])
            pool = torch.cat([reps[lab == o] for o in draws.rotated(c)])
            idx = fake_official.negative_index_sampler(None, None)
            assert torch.equal(pool[idx].view(4, 5, -1), reps[draws.negatives[c]])
    assert draws.rotated(draws.classes[1]) == draws.classes[2:] + draws.classes[:1]


@pytest.mark.parametrize("group", R.GROUPS)
def test_real_comparison(group):
    var = H.OFFICIAL[group][0]
    if not os.environ.get(var):
        pytest.skip(f"{var} not set")
    torch.set_num_threads(1)
    rows, _ = R.run_group(group)
    failed = [f"{r.component}: {r.note}" for r in rows if r.failed]
    assert not failed, failed
