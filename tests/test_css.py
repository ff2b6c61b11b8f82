"""CSS: mix / cross label strategies, EMA prototypes, the similarity indicator, the contrast."""
import math

import pytest
import torch
import torch.nn.functional as F

import s4kit.methods.css as css_module
from s4kit.config import ConfigError, load_config
from s4kit.data.loaders import build_train_streams
from s4kit.losses.css import (anchor_weights, class_sums, contrast_rampdown, css_contrast_loss, ema_prototypes,
                              max_rep_confidence, mix_labels, mix_unsupervised_loss, rep_distribution)
from s4kit.methods import build_method
from s4kit.methods.base import downsample_labels
from s4kit.methods.css import label_spaces

from conftest import tiny_overrides


def _method(digits_root, tmp_path, *extra):
    cfg = load_config("digits/css", tiny_overrides(digits_root, tmp_path) + ["augment.mix=none", *extra])
    torch.manual_seed(0)
    method = build_method(cfg)
    labeled, unlabeled = build_train_streams(cfg, 0, need_unlabeled=True)
    return method, next(labeled), next(unlabeled)


# -- pseudo-labels ---------------------------------------------------------------------------
def test_mix_keeps_exactly_the_agreeing_pixels():
    y_lgt = torch.tensor([[[0, 1, 2], [3, 3, 255]]])
    y_rep = torch.tensor([[[0, 2, 2], [3, 1, 255]]])
    assert mix_labels(y_lgt, y_rep).tolist() == [[[0, 255, 2], [3, 255, 255]]]


def test_label_spaces_mix_is_the_intersection_and_one_flip_ignores_a_pixel():
    torch.manual_seed(1)
    protos = torch.randn(4, 8)
    out = {"logits": torch.randn(2, 4, 3, 3), "rep": torch.randn(2, 8, 3, 3)}
    s = label_spaces(out, protos, 0.25, (3, 3))
    assert torch.equal(s["y_rep"], rep_distribution(out["rep"], protos, 0.25).argmax(1))
    agree = s["y_logit"] == s["y_rep"]
    assert torch.equal(s["y_mix"][agree], s["y_logit"][agree]) and (s["y_mix"][~agree] == 255).all()
    # make pixel (0, 0, 0) agree, then flip its representation onto another class's prototype
    k = int(s["y_logit"][0, 0, 0])
    out["rep"][0, :, 0, 0] = protos[k]
    assert label_spaces(out, protos, 0.25, (3, 3))["y_mix"][0, 0, 0] == k
    out["rep"][0, :, 0, 0] = protos[(k + 1) % 4]
    assert label_spaces(out, protos, 0.25, (3, 3))["y_mix"][0, 0, 0] == 255


def test_rep_distribution_sums_to_one_and_respects_the_bound():
    torch.manual_seed(0)
    p = rep_distribution(torch.randn(2, 16, 5, 5), torch.randn(21, 16), 0.5)
    assert torch.allclose(p.sum(1), torch.ones(2, 5, 5))
    assert p.max() <= max_rep_confidence(0.5, 21) + 1e-6
    assert max_rep_confidence(0.5, 21) == pytest.approx(0.732, abs=1e-3)  # reference table (C4)
    assert max_rep_confidence(0.25, 19, simplex=True) == pytest.approx(0.791, abs=1e-3)  # (C5)


# -- prototypes ------------------------------------------------------------------------------
def test_prototypes_first_observation_then_ema_rule_absent_class_unchanged():
    protos, seen = torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool)
    reps = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    protos, seen = ema_prototypes(protos, seen, *class_sums(reps, labels, 3), alpha=0.99)
    assert torch.equal(protos, torch.tensor([[2.0, 1.0], [0.0, 4.0], [0.0, 0.0]]))  # batch means exactly
    assert seen.tolist() == [True, True, False]
    reps2, labels2 = torch.tensor([[4.0, 3.0], [5.0, 5.0]]), torch.tensor([0, 2])
    new, seen = ema_prototypes(protos, seen, *class_sums(reps2, labels2, 3), alpha=0.99)
    assert torch.allclose(new[0], 0.99 * torch.tensor([2.0, 1.0]) + 0.01 * torch.tensor([4.0, 3.0]))
    assert torch.equal(new[1], protos[1])  # absent from the batch
    assert torch.equal(new[2], torch.tensor([5.0, 5.0])) and seen.all()  # first observation
    same, _ = ema_prototypes(new, seen, new * 2, torch.full((3,), 2.0))  # batch mean == prototype: fixed point
    assert torch.allclose(same, new)


def test_method_prototypes_update_in_training_and_carry_no_gradient(digits_root, tmp_path):
    method, labeled, unlabeled = _method(digits_root, tmp_path)
    assert torch.isnan(method.prototypes()).all()
    seen = {}
    real = css_module.css_contrast_loss

    def spy(rep, labels, valid, indicator, prototypes, *args):
        seen.update(rep=rep.detach().clone(), labels=labels, valid=valid, indicator=indicator,
                    protos=prototypes.clone())
        return real(rep, labels, valid, indicator, prototypes, *args)

    css_module.css_contrast_loss = spy
    try:
        method.train_step(labeled, unlabeled)
        before = method.proto.clone()
        method.train_step(labeled, unlabeled)
    finally:
        css_module.css_contrast_loss = real
    assert not method.proto.requires_grad
    # the second step: indicator from the prototypes before the update, positives after it (C3, C7)
    assert torch.allclose(seen["indicator"], rep_distribution(seen["rep"], before, 0.25), atol=1e-6)
    keep = seen["valid"] & (seen["labels"] != 255)
    sums, counts = class_sums(seen["rep"].permute(0, 2, 3, 1)[keep], seen["labels"][keep], 11)
    present = counts > 0
    expected = 0.99 * before[present] + 0.01 * sums[present] / counts[present].unsqueeze(1)
    assert torch.allclose(seen["protos"][present], expected, atol=1e-5)
    assert torch.equal(seen["protos"], method.proto)


# -- the similarity indicator and the contrast -------------------------------------------------
def _two_pixel_case():
    protos = torch.eye(3)  # orthonormal prototypes
    rep = torch.zeros(1, 3, 1, 2)
    rep[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # aligned with its prototype: cos 1
    rep[0, :, 0, 1] = torch.tensor([1.0, 1.0, 0.0])  # 45 degrees off: cos 0.71
    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    return protos, rep, labels


def test_indicator_weights_are_larger_for_less_similar_anchors():
    protos, rep, labels = _two_pixel_case()
    j = rep_distribution(rep, protos, 0.25)
    assert j[0, 0, 0, 0] > 0.8 > j[0, 0, 0, 1]  # e^4 / (e^4 + 2) = 0.965; the other ~0.5
    w = anchor_weights(j, labels, torch.ones(1, 1, 2, dtype=torch.bool), 0.8)
    assert w.tolist() == [[[0.0, 2.0]]]  # 2 valid pixels, 1 hard: weight 2 vs 0


def test_contrast_draws_anchors_only_from_hard_pixels():
    protos, rep, labels = _two_pixel_case()
    rep = torch.cat([rep, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)], dim=3)  # class 2 keys
    labels = torch.tensor([[[0, 0, 2, 2]]])
    rep.requires_grad_(True)
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    j = rep_distribution(rep.detach(), protos, 0.25)
    loss = css_contrast_loss(rep, labels, valid, j, protos, 0.8, 0.5, num_queries=8, num_negatives=4)
    loss.backward()
    g = rep.grad[0, :, 0].abs().sum(0)
    assert g[0] == 0 and g[1] > 0  # easy pixel of class 0: never an anchor; the hard one is
    assert g[2] == 0 and g[3] == 0  # class 2 pixels lie on their prototype: no hard anchor; keys are detached


def test_contrast_is_graph_connected_zero_with_one_class():
    rep = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = css_contrast_loss(rep, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.bool),
                             torch.full((1, 3, 2, 2), 1 / 3), torch.eye(3))
    assert loss.item() == 0 and loss.requires_grad


def test_lambda_c_schedules():
    vals = [contrast_rampdown(e * 10, 0, "epoch_rampdown_literal", epoch_length=10) for e in (0, 50, 100, 150, 199)]
    assert vals == pytest.approx([1, 0.7316, 0.2865, 0.0601, 0.0071], abs=1e-4)
    assert contrast_rampdown(2000, 0, "epoch_rampdown_literal", epoch_length=10) == 0
    assert contrast_rampdown(800, 800) == pytest.approx(math.exp(-5))
    assert contrast_rampdown(123, 800, "constant") == 1
    with pytest.raises(ValueError):
        contrast_rampdown(0, 1, "nosuch")


# -- strategies --------------------------------------------------------------------------------
def _capture(method, labeled, unlabeled):
    """Run one step with augment.mix=none; return the teacher's label spaces and what the
    losses received."""
    got = {}
    real_u, real_c, real_m = css_module.unsupervised_ce, css_module.css_contrast_loss, css_module.mix_unsupervised_loss
    css_module.unsupervised_ce = lambda kind, logits, y, q, t: got.update(u_label=y, u_conf=q) or real_u(kind, logits,
                                                                                                        y, q, t)
    css_module.mix_unsupervised_loss = lambda logits, y, q, t, w, k: got.update(
        u_label=y, u_conf=q, weighting=w) or real_m(logits, y, q, t, w, k)
    css_module.css_contrast_loss = lambda rep, y, v, *a: got.update(c_label=y, c_valid=v) or real_c(rep, y, v, *a)
    try:
        with torch.no_grad():
            spaces = label_spaces(method.teacher_forward(unlabeled["image"]), method.proto.clone(), 0.25,
                                  unlabeled["image"].shape[-2:])
        method.train_step(labeled, unlabeled)
    finally:
        css_module.unsupervised_ce, css_module.css_contrast_loss = real_u, real_c
        css_module.mix_unsupervised_loss = real_m
    return spaces, got


def _seed_prototypes(method):
    torch.manual_seed(3)
    method.proto.copy_(torch.randn_like(method.proto))
    method.proto_seen.fill_(True)


@pytest.mark.parametrize("iteration,warm", [(0, True), (5, False)])
def test_cross_mode_swaps_the_label_sources(digits_root, tmp_path, iteration, warm):
    method, labeled, unlabeled = _method(digits_root, tmp_path, "method.strategy=cross", "method.cross_warmup=5",
                                         "method.cross_warmup_unit=iters")
    _seed_prototypes(method)
    method.iteration = iteration
    s, got = _capture(method, labeled, unlabeled)
    src = "logit" if warm else "rep"
    assert torch.equal(got["u_label"], s[f"y_{src}"]) and torch.allclose(got["u_conf"], s[f"q_{src}"])
    assert not torch.equal(s["y_logit"], s["y_rep"])  # the test can tell the sources apart
    b = labeled["image"].shape[0]
    grid = got["c_label"].shape[-2:]
    assert torch.equal(got["c_label"][b:], downsample_labels(s["y_logit"], grid))  # contrast: logit labels


def test_mix_mode_feeds_the_intersection_to_both_losses(digits_root, tmp_path):
    method, labeled, unlabeled = _method(digits_root, tmp_path)
    _seed_prototypes(method)
    s, got = _capture(method, labeled, unlabeled)
    assert torch.equal(got["u_label"], s["y_mix"])
    # L_u receives q^lgt itself (not zeroed where the spaces disagree) and the paper weighting
    assert torch.equal(got["u_conf"], s["q_logit"]) and got["weighting"] == "paper"
    assert (s["y_mix"] == 255).any() and (got["u_conf"][s["y_mix"] == 255] > 0).any()
    b = labeled["image"].shape[0]
    c = got["c_label"][b:][got["c_valid"][b:]]
    grid = got["c_label"].shape[-2:]
    assert (c != 255).all() and torch.equal(got["c_label"][b:], downsample_labels(s["y_mix"], grid))


def test_diagnostics_and_snapshot_extras(digits_root, tmp_path):
    method, labeled, unlabeled = _method(digits_root, tmp_path)
    _seed_prototypes(method)
    out = method.train_step(labeled, unlabeled)
    for src in ("logit", "rep", "mix"):
        assert 0 <= out[f"pl_coverage_{src}"] <= 100
    assert out["pl_coverage_mix"] <= out["pl_coverage_logit"]  # mix supervises a subset
    assert 0 <= out["css_hard_fraction"] <= 100 and out["css_lambda_c"] == pytest.approx(0.1)
    extras = method.snapshot_extras(method.forward_eval(unlabeled["image"]))
    assert extras["indicator"].shape == extras["anchor_weight"].shape == (4, 8, 8)
    assert ((extras["indicator"] > 0) & (extras["indicator"] <= 1)).all()


def test_degenerate_temperature_warns(digits_root, tmp_path):
    with pytest.warns(UserWarning, match="hard anchor"):
        _method(digits_root, tmp_path, "method.rep_temperature=0.5", "method.strong_threshold=0.9")
    with pytest.warns(UserWarning, match="no pixel reaches delta_u"):
        _method(digits_root, tmp_path, "method.strategy=cross", "method.rep_temperature=0.5",
                "method.confidence_threshold=0.9")
    with pytest.raises(ConfigError, match="strategy"):
        _method(digits_root, tmp_path, "method.strategy=both")


# -- DDP: prototypes identical on every rank ---------------------------------------------------
def _proto_worker(rank, world, init_file, out_dir):
    import types

    import torch.distributed as tdist

    from s4kit.methods.css import CSS

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for sync in ("global", "local_literal"):
            fake = types.SimpleNamespace(proto=torch.zeros(3, 2), proto_seen=torch.zeros(3, dtype=torch.bool),
                                         num_classes=3, opts=types.SimpleNamespace(proto_sync=sync, proto_momentum=0.99))
            # rank 0 sees class 0 only, rank 1 classes 0 and 1: (B=1, D=2, h=1, w=2)
            rep = (torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]]]) if rank == 0
                   else torch.tensor([[[[5.0, 0.0]], [[0.0, 7.0]]]]))
            labels = torch.tensor([[[0, 0]]]) if rank == 0 else torch.tensor([[[0, 1]]])
            CSS.update_prototypes(fake, rep, labels, torch.ones(1, 1, 2, dtype=torch.bool))
            torch.save(fake.proto, f"{out_dir}/proto_{sync}_{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_prototypes_are_synchronised_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_proto_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    g0, g1, l0, l1 = (torch.load(tmp_path / f"proto_{s}_{r}.pt") for s in ("global", "local_literal") for r in (0, 1))
    # global: class 0 is the mean of (1,0), (3,0), (5,0) over both ranks; class 1 is seen on rank 1 only
    assert torch.equal(g0, g1) and torch.equal(g0, torch.tensor([[3.0, 0.0], [0.0, 7.0], [0.0, 0.0]]))
    # local_literal (the official code): each rank its own batch means
    assert torch.equal(l0, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(l1, torch.tensor([[5.0, 0.0], [0.0, 7.0], [0.0, 0.0]]))


def test_final_metrics_per_label_source(digits_root, tmp_path):
    method, _, unlabeled = _method(digits_root, tmp_path)
    _seed_prototypes(method)
    batch = {"image": unlabeled["image"], "hidden_mask": unlabeled["hidden_mask"]}
    m = method.final_metrics([batch])
    s = label_spaces(method.forward_eval(batch["image"]), method.proto, 0.25, batch["image"].shape[-2:])
    y, q = s["y_mix"], s["q_logit"].masked_fill(s["y_mix"] == 255, 0.0)
    hidden = batch["hidden_mask"]
    kept = (hidden != 255) & (q >= 0.8)
    if kept.any():
        assert m["pseudo_label_precision_mix"] == pytest.approx(100 * float(((y == hidden) & kept).sum()) / float(kept.sum()))
    assert m["pseudo_label_coverage_mix"] == pytest.approx(100 * float(kept.sum()) / float((hidden != 255).sum()))
    assert m["pseudo_label_coverage_mix"] <= m["pseudo_label_coverage_logit"]
    assert set(m) == {f"pseudo_label_{k}_{s}" for k in ("precision", "coverage", "miou") for s in ("logit", "rep", "mix")}


def test_eval_crop_mode_is_the_official_random_crop():
    from s4kit.engine.evaluate import evaluate, random_crop

    image, mask = torch.arange(12.0).view(1, 1, 3, 4).expand(1, 3, 3, 4), torch.arange(12).view(1, 3, 4)
    img, m = random_crop(image, mask, 5, seed=1)  # larger than the image: whole image plus padding
    assert m.shape == (1, 5, 5) and torch.equal(m[0, :3, :4], mask[0]) and (m[0, 3:] == 255).all()
    img, m = random_crop(image, mask, 2, seed=7)
    img2, m2 = random_crop(image, mask, 2, seed=7)
    assert torch.equal(m, m2) and torch.equal(img[0, 0], m.float()[0])  # seeded; image and mask aligned
    data = [{"image": torch.zeros(3, 6, 6), "mask": torch.zeros(6, 6, dtype=torch.long), "id": str(i)} for i in range(3)]
    with pytest.warns(UserWarning, match="absent"):  # class 1 never occurs here
        out = evaluate(lambda x: torch.zeros(x.shape[0], 2, *x.shape[-2:]), data, 2, "cpu", mode="crop", window=4)
    assert int(out["confusion"].sum()) == 3 * 16


def test_a_css_run_draws_its_label_sources(digits_root, tmp_path):
    """Every css run leaves the precision/coverage curves of the logit, rep and mix labels
    (from its log.csv) in its figures folder; methods with one label source do not."""
    import csv

    from s4kit.engine import train

    run = tmp_path / "css"
    train(load_config("digits/css", tiny_overrides(digits_root, run, iters=4)), progress=False)
    with (run / "log.csv").open() as f:
        header = next(csv.reader(f))
    assert {"pl_coverage_logit", "pl_coverage_rep", "pl_coverage_mix"} <= set(header)
    assert (run / "figures" / "label_sources.png").stat().st_size > 1000
    mt = tmp_path / "mt"
    train(load_config("digits/meanteacher", tiny_overrides(digits_root, mt, iters=2)), progress=False)
    assert (mt / "figures" / "pseudo_labels.png").exists() and not (mt / "figures" / "label_sources.png").exists()


# -- L_u weighting on mix labels (paper Eq. 8 / official code / agreeing-only) ------------------
# Two images of 2 x 3 pixels, K = 3, delta_u = 0.97. 255 = the spaces disagree.
MIX_Y = [[0, 1, 255, 2, 255, 0], [1, 1, 255, 255, 255, 2]]
MIX_Q = [[0.99, 0.5, 0.98, 0.99, 0.2, 0.97], [0.99, 0.99, 0.99, 0.99, 0.5, 0.1]]
MIX_V = [[2.0, -1.0, 0.0, 0.5, 0.0, 1.5], [3.0, 0.2, 0.0, 0.0, 0.0, -0.5]]  # the target class's logit


def _mix_example():
    """Logits 0 except v_p on the label's class, so CE_p = log(e^v_p + 2) - v_p by hand."""
    y = torch.tensor(MIX_Y).view(2, 2, 3)
    q = torch.tensor(MIX_Q).view(2, 2, 3)
    logits = torch.zeros(2, 3, 2, 3)
    for b in range(2):
        for p in range(6):
            if MIX_Y[b][p] != 255:
                logits[b, MIX_Y[b][p], p // 3, p % 3] = MIX_V[b][p]
    ce = [[math.log(math.exp(v) + 2) - v for v in row] for row in MIX_V]
    return logits, y, q, ce


def _mix_oracle(mode):
    _, _, _, ce = _mix_example()
    agree = [[MIX_Y[b][p] != 255 for p in range(6)] for b in range(2)]
    conf = [[MIX_Q[b][p] >= 0.97 for p in range(6)] for b in range(2)]
    if mode == "paper":  # plain mean over the confident agreeing pixels: (0,0) (0,3) (0,5) (1,0) (1,1)
        vals = [ce[b][p] for b in range(2) for p in range(6) if agree[b][p] and conf[b][p]]
        return sum(vals) / len(vals)
    # per-image weights: code 4/4 and 4/3 (confident pixels, agreeing or not, over 4 and 3 agreeing);
    # agree 3/4 and 2/3 (confident *and* agreeing)
    w = {"code": [4 / 4, 4 / 3], "agree": [3 / 4, 2 / 3]}[mode]
    vals = [w[b] * ce[b][p] for b in range(2) for p in range(6) if agree[b][p]]
    return sum(vals) / len(vals)


@pytest.mark.parametrize("mode", ["paper", "code", "agree"])
def test_mix_unsupervised_loss_weightings_equal_hand_computation(mode):
    logits, y, q, _ = _mix_example()
    got = mix_unsupervised_loss(logits, y, q, 0.97, mode)
    assert got.item() == pytest.approx(_mix_oracle(mode), rel=1e-6)
    for other in {"paper", "code", "agree"} - {mode}:  # the three are told apart by this example
        assert abs(_mix_oracle(other) - got.item()) > 1e-3


def test_mix_unsupervised_loss_code_weight_exceeds_one_and_zero_without_samples():
    logits, y, q, ce = _mix_example()
    only_b1 = mix_unsupervised_loss(logits[1:], y[1:], q[1:], 0.97, "code")
    agreeing = [ce[1][p] for p in range(6) if MIX_Y[1][p] != 255]
    assert only_b1.item() == pytest.approx(4 / 3 * sum(agreeing) / len(agreeing), rel=1e-6)
    low = mix_unsupervised_loss(logits.requires_grad_(), y, torch.full_like(q, 0.5), 0.97, "paper")
    assert low.item() == 0 and low.requires_grad
    with pytest.raises(ValueError, match="nosuch"):
        mix_unsupervised_loss(logits, y, q, 0.97, "nosuch")


def test_mix_weighting_option_reaches_the_loss_and_masked_needs_agree(digits_root, tmp_path):
    method, labeled, unlabeled = _method(digits_root, tmp_path, "method.mix_weighting=code")
    _seed_prototypes(method)
    _, got = _capture(method, labeled, unlabeled)
    assert got["weighting"] == "code"
    with pytest.raises(ConfigError, match="method.unsup_loss='masked'"):
        load_config("digits/css", tiny_overrides(digits_root, tmp_path) + ["method.unsup_loss=masked"])
    load_config("digits/css", tiny_overrides(digits_root, tmp_path) + ["method.unsup_loss=masked",
                                                                      "method.mix_weighting=agree"])
