"""PRCL: probability head, MLS, distribution prototypes, loss, schedule, sigma^2 AUROC, one step."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from s4kit.config import ConfigError, load_config
from s4kit.data.loaders import build_train_streams
from s4kit.losses.prcl import (distribution_prototypes, mls, precision_stats, prcl_loss, prototypes_from_stats,
                               rampdown_weight, variance_regularizer)
from s4kit.methods import build_method
from s4kit.methods.prcl import error_auroc
import copy

import s4kit.methods.prcl as prcl_module
from s4kit.models.probability import ProbabilisticNet, ProbabilityHead

from conftest import tiny_overrides


# -- probability head ---------------------------------------------------------------------
def test_probability_head_range_normalised_rows_and_scalars():
    torch.manual_seed(0)
    head = ProbabilityHead(12, 8)
    with torch.no_grad():
        head.w1.mul_(7.0)  # raw weights of any scale: the rows are normalised at every forward
    x = torch.randn(3, 12, 4, 4)
    for scale in (1.0, 1e4, -1e4):
        s2 = head(x * scale)
        assert s2.shape == (3, 8, 4, 4) and ((s2 > 0) & (s2 < 1)).all()
    assert head.gamma.shape == () and head.beta.shape == () and head.gamma.item() == 1 and head.beta.item() == 0
    # the 1x1 conv uses unit-norm rows: scaling a row of w1 leaves the output unchanged
    head.eval()
    before = head(x)
    with torch.no_grad():
        head.w1[0].mul_(5.0)
    assert torch.allclose(head(x), before, atol=1e-6)


# -- MLS (P2) -----------------------------------------------------------------------------
def test_mls_hand_computed_and_symmetric():
    mu_i, mu_j = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])  # unit: (0.6, 0.8), (1, 0)
    s2_i, s2_j = torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.5])  # v = (0.5, 1.0)
    expected = -0.25 * ((0.4 ** 2) / 0.5 + math.log(0.5) + (0.8 ** 2) / 1.0 + math.log(1.0))
    assert mls(mu_i, s2_i, mu_j, s2_j).item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(1)
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    va, vb = torch.rand(5, 16) + 0.01, torch.rand(5, 16) + 0.01
    assert torch.allclose(mls(a, va, b, vb), mls(b, vb, a, va))
    assert torch.allclose(mls(3.0 * a, va, b, vb), mls(a, va, b, vb), atol=1e-6)  # scale-invariant in mu
    assert not torch.allclose(mls(a, 2 * va, b, vb), mls(a, va, b, vb))  # not in sigma^2


def test_mls_largest_for_identical_means_at_fixed_variance():
    torch.manual_seed(2)
    D = 8
    mu = torch.randn(D)
    s2_i, s2_j = torch.rand(D) + 0.05, torch.rand(D) + 0.05
    best = mls(mu, s2_i, mu, s2_j)
    assert best.item() == pytest.approx((-0.5 * (s2_i + s2_j).log().mean()).item(), rel=1e-6)
    others = torch.randn(200, D)
    assert (mls(mu.expand(200, D), s2_i, others, s2_j) < best).all()
    # identical *distributions* are not the maximiser: a narrower partner scores higher (check 12)
    assert mls(mu, s2_i, mu, 0.5 * s2_i) > mls(mu, s2_i, mu, s2_i)


def test_mls_with_constant_variance_is_affine_in_cosine():
    torch.manual_seed(3)
    D, v = 16, 0.3  # sigma^2 = v/2 on both sides
    a, b = torch.randn(50, D), torch.randn(50, D)
    s = mls(a, torch.full((D,), v / 2), b, torch.full((D,), v / 2))
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert torch.allclose(s, (cos - 1) / (D * v) - 0.5 * math.log(v), atol=1e-6)  # (P3)


# -- distribution prototypes (P4)-(P5) --------------------------------------------------------
def test_prototype_is_harmonic_variance_and_precision_weighted_mean():
    mu = torch.tensor([[1.0, 2.0], [3.0, -2.0], [9.0, 9.0]])
    s2 = torch.tensor([[0.5, 0.25], [0.5, 0.75], [0.1, 0.1]])
    labels = torch.tensor([0, 0, 2])
    p_mu, p_s2 = distribution_prototypes(mu, s2, labels, 3)
    # class 0: precisions (2, 2) and (4, 4/3): sigma^2_rho = (1/4, 3/16)
    # mu_rho = (1/4 * (2*1 + 2*3), 3/16 * (4*2 + 4/3*(-2))) = (2, 1)
    assert torch.allclose(p_s2[0], torch.tensor([0.25, 3 / 16]))
    assert torch.allclose(p_mu[0], torch.tensor([2.0, 1.0]))
    assert torch.allclose(p_mu[2], mu[2]) and torch.allclose(p_s2[2], s2[2])  # a single member is itself
    assert torch.isnan(p_mu[1]).all() and torch.isnan(p_s2[1]).all()  # absent class
    # equal variances: arithmetic mean and sigma^2 / n
    q_mu, q_s2 = distribution_prototypes(mu[:2], torch.full((2, 2), 0.4), torch.tensor([0, 0]), 1)
    assert torch.allclose(q_mu[0], mu[:2].mean(0)) and torch.allclose(q_s2[0], torch.full((2,), 0.2))


def test_prototype_statistics_are_chunk_associative():
    torch.manual_seed(4)
    mu, s2 = torch.randn(40, 6), torch.rand(40, 6) + 0.05
    labels = torch.randint(0, 3, (40,))
    whole = distribution_prototypes(mu, s2, labels, 3)
    a = precision_stats(mu[:15], s2[:15], labels[:15], 3)
    b = precision_stats(mu[15:], s2[15:], labels[15:], 3)
    parts = prototypes_from_stats(a[0] + b[0], a[1] + b[1])  # what all_reduce_sum over two ranks gives
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(whole, parts))


def test_pixel_with_larger_variance_contributes_less():
    mu = torch.tensor([[0.0], [1.0]])
    equal = distribution_prototypes(mu, torch.tensor([[0.2], [0.2]]), torch.tensor([0, 0]), 1)[0]
    wide = distribution_prototypes(mu, torch.tensor([[0.2], [0.8]]), torch.tensor([0, 0]), 1)[0]
    assert equal.item() == pytest.approx(0.5) and wide.item() == pytest.approx(0.2)  # 4:1 precision weights
    # and in the similarity: the gradient a mismatch sends to the mean shrinks with sigma^2
    grads = []
    for v in (0.1, 0.9):
        a = torch.tensor([1.0, 0.2], requires_grad=True)
        mls(a, torch.full((2,), v), torch.tensor([0.0, 1.0]), torch.full((2,), 0.01)).backward()
        grads.append(a.grad.norm().item())
    assert grads[1] < grads[0]


# -- the loss (P6)-(P7) and the schedule (P9) --------------------------------------------------
def _toy(B=2, D=4, h=4, w=4, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, h, w, generator=g, requires_grad=True)
    s2 = (torch.rand(B, D, h, w, generator=g) * 0.8 + 0.1).requires_grad_(True)
    labels = torch.randint(0, K, (B, h, w), generator=g)
    prob = torch.full((B, K, h, w), 0.5)  # every pixel a hard anchor (P(c) < 0.8)
    return mu, s2, labels, torch.ones(B, h, w, dtype=torch.bool), prob


def test_loss_is_log_of_key_count_when_all_scores_are_equal():
    # one pixel per class: each prototype is its pixel; equal means and variances everywhere
    mu = torch.ones(1, 4, 1, 3, requires_grad=True)
    s2 = torch.full((1, 4, 1, 3), 0.3, requires_grad=True)
    labels, valid = torch.tensor([[[0, 1, 2]]]), torch.ones(1, 1, 3, dtype=torch.bool)
    prob = torch.full((1, 3, 1, 3), 1 / 3)
    loss, _ = prcl_loss(mu, s2, labels, valid, prob, 3, num_queries=8, num_negatives=20)
    assert loss.item() == pytest.approx(math.log(21), rel=1e-5)


def test_loss_gradient_reaches_both_heads_and_degenerate_cases_are_connected_zeros():
    torch.manual_seed(5)
    mu, s2, labels, valid, prob = _toy()
    loss, (prec, weighted) = prcl_loss(mu, s2, labels, valid, prob, 3, num_queries=8, num_negatives=16)
    loss.backward()
    assert mu.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    assert prec.requires_grad is False and weighted.requires_grad is False
    # no hard anchor anywhere: zero, still graph-connected
    mu2, s22, labels2, valid2, _ = _toy(seed=1)
    confident = torch.nn.functional.one_hot(labels2, 3).permute(0, 3, 1, 2).float()
    zero, _ = prcl_loss(mu2, s22, labels2, valid2, confident, 3, num_queries=8, num_negatives=16)
    assert zero.item() == 0 and zero.requires_grad
    # a single class present: zero
    one, _ = prcl_loss(mu2, s22, torch.zeros_like(labels2), valid2, prob, 3)
    assert one.item() == 0


def test_reduce_is_applied_to_the_prototype_statistics():
    torch.manual_seed(6)
    mu, s2, labels, valid, prob = _toy()
    calls = []
    _, local = prcl_loss(mu, s2, labels, valid, prob, 3, num_queries=4, num_negatives=4)
    _, doubled = prcl_loss(mu, s2, labels, valid, prob, 3, num_queries=4, num_negatives=4,
                           reduce=lambda t: calls.append(1) or 2 * t)
    assert len(calls) == 2 and torch.allclose(doubled[0], 2 * local[0])


def test_rampdown_schedule_values():
    got = [rampdown_weight(e, 200) for e in (0, 50, 100, 150, 199, 200, 250)]
    assert got == pytest.approx([1.0, 0.7316, 0.2865, 0.0601, 0.0071, 0.0, 0.0], abs=1e-4)


def test_variance_regulariser_is_zero_at_unit_variance_and_positive_below():
    assert variance_regularizer(torch.ones(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    assert variance_regularizer(torch.full((3, 4), 0.1)).item() == pytest.approx(0.5 * (0.1 - math.log(0.1) - 1))


# -- sigma^2 AUROC ---------------------------------------------------------------------------
def test_error_auroc_hand_made_case():
    # pairs (wrong, right): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): AUC = 3/4
    assert error_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert math.isnan(error_auroc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_final_metrics_sigma2_auroc_matches_sklearn(digits_root, tmp_path):
    cfg = load_config("digits/prcl", tiny_overrides(digits_root, tmp_path))
    method = build_method(cfg)
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 11, 8, 8, generator=g)
    sigma2 = torch.rand(2, 64, 8, 8, generator=g)
    method.forward_eval = lambda image: {"logits": logits, "sigma2": sigma2}
    hidden = torch.randint(0, 11, (2, 8, 8), generator=g)
    hidden[0, :2] = 255
    pred = logits.argmax(1)
    hidden[1, 3:] = pred[1, 3:]  # make some pseudo-labels right
    batch = {"image": torch.zeros(2, 3, 8, 8), "hidden_mask": hidden}
    m = method.final_metrics([batch])
    keep = hidden != 255
    wrong = (pred != hidden)[keep].numpy()
    want = roc_auc_score(wrong, sigma2.mean(1)[keep].numpy())
    assert m["sigma2_error_auroc"] == pytest.approx(want, rel=1e-6)
    conf = logits.softmax(1).max(1).values
    assert m["confidence_error_auroc"] == pytest.approx(roc_auc_score(wrong, (1 - conf)[keep].numpy()), rel=1e-6)
    cls = pred[keep].numpy()
    within = [roc_auc_score(wrong[cls == j], sigma2.mean(1)[keep].numpy()[cls == j]) for j in range(11)
              if 0 < wrong[cls == j].sum() < (cls == j).sum()]
    assert m["sigma2_error_auroc_within_class"] == pytest.approx(np.mean(within), rel=1e-6)
    assert method.final_metrics(None) == {}


# -- the method --------------------------------------------------------------------------------
def test_one_prcl_step_trains_the_probability_head(digits_root, tmp_path):
    cfg = load_config("digits/prcl", tiny_overrides(digits_root, tmp_path) + ["method.variance_reg=custom"])
    torch.manual_seed(0)
    method = build_method(cfg)
    groups = {g["name"]: g for g in method.param_groups()}
    assert groups["sigma_head"]["lr_mult"] == pytest.approx(cfg.method.sigma_lr / cfg.optim.lr)
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len([p for p in method.student.parameters() if p.requires_grad])
    assert method.prototypes() is None
    labeled, unlabeled = (next(s) for s in build_train_streams(cfg, 0, need_unlabeled=True))
    out = method.train_step(labeled, unlabeled)
    assert {"loss_sup", "loss_unsup", "loss_contrast", "loss_var"} <= set(out)
    assert out["contrast_lambda"] == pytest.approx(1.0) and 0 < out["sigma2_mean"] < 1
    sum(v for k, v in out.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in method.student.sigma_head.parameters())
    assert method.student.sigma_head.w1.grad.abs().sum() > 0
    protos = method.prototypes()
    assert protos.shape == (11, cfg.model.rep_dim)
    out_eval = method.forward_eval(unlabeled["image"])  # the teacher carries the head too
    extras = method.snapshot_extras(out_eval)
    assert extras["sigma2"].shape == out_eval["rep"].shape[:1] + out_eval["rep"].shape[2:]
    method.iteration = cfg.train.iters // 2
    assert method.contrast_lambda() == pytest.approx(math.exp(-5 * 0.25))


def test_bad_options_are_rejected(digits_root, tmp_path):
    for bad in ("method.version=ijcv", "method.variance_reg=kl", "method.sigma_head_input=x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):  # by the config, before a method exists
            load_config("digits/prcl", tiny_overrides(digits_root, tmp_path) + [bad])


def test_ijcv_interpretation_step_runs(digits_root, tmp_path):
    cfg = load_config("digits/prcl", tiny_overrides(digits_root, tmp_path) + [
        "method.version=ijcv_interpretation", "method.virtual_negatives=8", "method.sigma_head_input=rep"])
    torch.manual_seed(0)
    method = build_method(cfg)
    streams = build_train_streams(cfg, 0, need_unlabeled=True)
    for _ in range(2):  # the second step uses the global prototypes of the first
        labeled, unlabeled = (next(s) for s in streams)
        out = method.train_step(labeled, unlabeled)
        assert torch.isfinite(out["loss_contrast"])


# -- the probability head on the joint batch (official ddp_model.py) vs per stream -----------------
class _FeatNet(torch.nn.Module):
    """A stand-in network: ``feat`` is the input itself, so two streams can be told apart."""

    def forward(self, x):
        return {"logits": x[:, :2], "rep": x[:, :4], "feat": x}


def test_joint_sigma_head_equals_the_head_on_the_concatenation_and_differs_per_stream():
    torch.manual_seed(0)
    head = ProbabilityHead(6, 4)
    xl = torch.randn(2, 6, 3, 3)
    xu = 3.0 + 2.0 * torch.randn(3, 6, 3, 3)  # another mean and spread: per-stream BN statistics differ
    joint = ProbabilisticNet(_FeatNet(), copy.deepcopy(head), "feat", "joint").train()
    per = ProbabilisticNet(_FeatNet(), copy.deepcopy(head), "feat", "per_stream").train()
    assert "sigma2" not in joint(xl)  # in training the joint net leaves sigma^2 to the caller
    got = joint(None, features=torch.cat([joint(xl)["feat"], joint(xu)["feat"]]))["sigma2"]
    oracle = copy.deepcopy(head).train()(torch.cat([xl, xu]))  # one BatchNorm batch of 5 images
    assert torch.allclose(got, oracle, atol=1e-6)
    streams = torch.cat([per(xl)["sigma2"], per(xu)["sigma2"]])
    assert (streams - got).abs().max() > 1e-2
    assert torch.allclose(streams, torch.cat([copy.deepcopy(head).train()(xl), copy.deepcopy(head).train()(xu)]),
                          atol=1e-6)
    joint.eval()  # evaluation: running statistics, sigma^2 in every forward
    assert joint(xl)["sigma2"].shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match="sigma_batch"):
        ProbabilisticNet(_FeatNet(), head, "feat", "both")


@pytest.mark.parametrize("mode", ["joint", "per_stream"])
def test_prcl_loss_reads_the_sigma2_of_its_sigma_head_batch(digits_root, tmp_path, mode):
    cfg = load_config("digits/prcl", tiny_overrides(digits_root, tmp_path) + [f"method.sigma_head_batch={mode}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    labeled, unlabeled = (next(s) for s in build_train_streams(cfg, 0, need_unlabeled=True))
    head0 = copy.deepcopy(method.student.sigma_head)  # its BN state before the step
    calls, seen = [], {}
    method.student.sigma_head.register_forward_hook(lambda m, i, o: calls.append((i[0].detach(), o.detach())))
    real = prcl_module.prcl_loss
    prcl_module.prcl_loss = lambda mu, sigma2, *a, **k: seen.update(sigma2=sigma2.detach()) or real(mu, sigma2, *a, **k)
    try:
        method.train_step(labeled, unlabeled)
    finally:
        prcl_module.prcl_loss = real
    b_l, b_u = labeled["image"].shape[0], unlabeled["image"].shape[0]
    feats = torch.cat([x for x, _ in calls])
    assert feats.shape[0] == b_l + b_u
    if mode == "joint":  # one head call on the labeled + unlabeled features, one BN batch
        assert [x.shape[0] for x, _ in calls] == [b_l + b_u]
        want = head0.train()(feats)
    else:
        assert [x.shape[0] for x, _ in calls] == [b_l, b_u]
        want = torch.cat([copy.deepcopy(head0).train()(x) for x, _ in calls])
    assert torch.allclose(seen["sigma2"], want, atol=1e-6)
    other = torch.cat([copy.deepcopy(head0).train()(feats[:b_l]), copy.deepcopy(head0).train()(feats[b_l:])]) \
        if mode == "joint" else copy.deepcopy(head0).train()(feats)
    assert (seen["sigma2"] - other).abs().max() > 1e-4  # the two modes give different sigma^2 here
