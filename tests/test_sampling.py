"""The batched anchor / key sampler of the hard-anchor contrast (``method.sampling=batched``,
``s4kit.losses.contrast.draw_contrast_batched`` + ``contrast_from_draws``) against the per-class
loop (``sampling=loop``, the official draw order):

(a) the same draws give the same loss and gradients (the loop replayed by the equivalence
    harness's ``s4kit_replay``, the batched path handed the same draws), for ReCo, CSS, PRCL;
(b) the batched draws have the loop's distribution: per-pixel anchor frequencies uniform over
    the class's hard pixels, negative classes from the loop's recorded pi_c, negative pixels
    uniform within their class (chi-square tests at p > 1e-3, seeded);
(c) the mean loss over many seeds agrees within 4 standard errors;
(d) gradients reach only the anchors (hard pixels); keys and prototypes stay detached.
The hand oracles of tests/test_wiring.py run with both samplers too.
"""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: ``benchmarks``

import s4kit.losses.contrast as contrast  # noqa: E402
from benchmarks.official_equivalence import harness as H  # noqa: E402
from s4kit.losses.contrast import (ContrastDraws, flatten_pixels, gathered_dot, own_class_scores,  # noqa: E402
                                   reco_loss)
from s4kit.losses.css import css_contrast_loss, rep_distribution  # noqa: E402
from s4kit.losses.prcl import prcl_loss  # noqa: E402

P_MIN = 1e-3  # smallest accepted chi-square p-value (the draws are seeded, so the outcome is fixed)


def _inputs(seed=3, d=8, k=5, hw=9):
    """2 + 2 images, k classes, ignore columns and unconfident unlabelled pixels."""
    x = H.contrast_inputs(2, 2, hw, hw, d, k, seed=seed, per_image=(2, 3))
    x["sigma2"] = 0.05 + 0.5 * torch.rand(x["rep"].shape, generator=torch.Generator().manual_seed(seed))
    keep = x["valid"] & (x["labels"] != 255)
    x["protos"] = torch.stack([x["rep"].permute(0, 2, 3, 1)[keep & (x["labels"] == c)].mean(0)
                               if bool((keep & (x["labels"] == c)).any()) else torch.zeros(d) for c in range(k)])
    return x


def _loss(kind, x, sampling, q, m, rep=None, sigma2=None):
    rep = x["rep"] if rep is None else rep
    if kind == "reco":
        return reco_loss(rep, x["labels"], x["valid"], x["prob"], 0.97, 0.5, q, m, sampling=sampling)
    if kind == "css":
        j = rep_distribution(x["rep"], x["protos"], 0.25)
        return css_contrast_loss(rep, x["labels"], x["valid"], j, x["protos"], 0.8, 0.5, q, m, sampling=sampling)
    sigma2 = x["sigma2"] if sigma2 is None else sigma2
    return prcl_loss(rep, sigma2, x["labels"], x["valid"], x["prob"], x["prob"].shape[1], 0.8, 2.0, q, m,
                     sampling=sampling)[0]


def _hard(kind, x):
    """The hard-anchor mask over the flattened valid pixels, as each loss defines it."""
    if kind == "css":
        scores, thr = rep_distribution(x["rep"], x["protos"], 0.25), 0.8
    else:
        scores, thr = x["prob"], 0.97 if kind == "reco" else 0.8
    return own_class_scores(scores, x["labels"], x["valid"]) < thr


# -- (a) the same draws, the same loss and gradients -------------------------------------------
def _as_batched(draws: H.Draws, lab: torch.Tensor, hard: torch.Tensor) -> ContrastDraws:
    """``harness.Draws`` (per class, by pixel identity) as ``ContrastDraws``."""
    classes = torch.tensor(draws.classes)
    rows = torch.tensor([draws.classes.index(c) for c in draws.order])
    anchors = torch.stack([torch.nonzero((lab == c) & hard).squeeze(1)[draws.anchors[c]] for c in draws.order])
    negatives = torch.stack([draws.negatives[c] for c in draws.order])
    return ContrastDraws(rows, anchors, torch.searchsorted(classes, lab[negatives]), negatives,
                         torch.zeros(len(rows), len(classes)))


@contextlib.contextmanager
def _batched_replay(fixed: ContrastDraws):
    real = contrast.draw_contrast_batched
    contrast.draw_contrast_batched = lambda *a, **k: fixed
    try:
        yield
    finally:
        contrast.draw_contrast_batched = real


@pytest.mark.parametrize("kind", ["reco", "css", "prcl"])
def test_same_draws_give_the_same_loss_and_gradients(kind):
    x = _inputs()
    hard = _hard(kind, x)
    _, lab = flatten_pixels(x["rep"], x["labels"], x["valid"])
    q, m = 6, 7
    draws = H.Draws(lab, hard, q, m, seed=4)
    assert len(draws.order) >= 3
    out = {}
    for sampling in ("loop", "batched"):
        rep = x["rep"].clone().requires_grad_()
        s2 = x["sigma2"].clone().requires_grad_()
        replay = H.s4kit_replay(draws, []) if sampling == "loop" else _batched_replay(_as_batched(draws, lab, hard))
        with replay:
            loss = _loss(kind, x, sampling, q, m, rep, s2)
        loss.backward()
        out[sampling] = (loss.detach(), rep.grad, s2.grad)
    (ll, gl, sl), (lb, gb, sb) = out["loop"], out["batched"]
    assert float(lb) == pytest.approx(float(ll), rel=1e-5)
    assert torch.allclose(gb, gl, rtol=1e-4, atol=1e-7)
    if kind == "prcl":
        assert torch.allclose(sb, sl, rtol=1e-4, atol=1e-7)


def test_gathered_dot_and_its_gradient_match_a_plain_gather():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 4, generator=g, requires_grad=True)
    z = torch.randn(30, 4, generator=g)
    idx = torch.randint(30, (10, 7), generator=g)
    w = torch.randn(10, 7, generator=g)
    got = gathered_dot(a, z, idx, chunk_elements=3 * 7 * 4)  # 3 rows per chunk, a ragged last chunk
    (got * w).sum().backward()
    ga, a2 = a.grad, a.detach().clone().requires_grad_()
    want = (z[idx] * a2.unsqueeze(1)).sum(-1)
    (want * w).sum().backward()
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(ga, a2.grad, atol=1e-6)


# -- (b) the distribution of the draws ----------------------------------------------------------
def _loop_probabilities(kind, x, q, m):
    """The class-sampling distributions pi_c the loop builds (recorded from its torch.multinomial),
    one per class with hard anchors, as rows over all present classes (0 on the own class)."""
    recorded, real = [], torch.multinomial

    def spy(probs, *a, **k):
        recorded.append(probs.detach().clone())
        return real(probs, *a, **k)

    torch.multinomial = spy
    try:
        _loss(kind, x, "loop", q, m)
    finally:
        torch.multinomial = real
    return recorded


@pytest.mark.parametrize("kind", ["reco", "css", "prcl"])
def test_batched_draws_have_the_loop_distribution(kind):
    x = _inputs(seed=5)
    _, lab = flatten_pixels(x["rep"], x["labels"], x["valid"])
    hard = _hard(kind, x)
    classes = torch.unique(lab)
    n = len(classes)
    loop_pi = _loop_probabilities(kind, x, 2, 2)  # the loop's pi_c, from the same relation scores
    q, m = 3000, 40  # per class: 3000 anchors, 120000 negative classes and pixels
    got, real = [], contrast.draw_contrast_batched

    def spy(*a, **k):
        got.append(real(*a, **k))
        return got[-1]

    torch.manual_seed(0)
    contrast.draw_contrast_batched = spy
    try:
        _loss(kind, x, "batched", q, m)  # the real pipeline's draw
    finally:
        contrast.draw_contrast_batched = real
    d = got[0]
    with_hard = [c for c in range(n) if bool((hard & (lab == classes[c])).any())]
    assert d.rows.tolist() == with_hard and len(with_hard) == len(loop_pi) >= 3
    assert d.anchors.shape == (len(with_hard), q) and d.negatives.shape == (len(with_hard), q, m)
    for r, (c, pi) in enumerate(zip(with_hard, loop_pi)):
        # probabilities: the loop's pi_c over the other classes, 0 on the own class
        assert d.probs[r, c] == 0
        assert torch.allclose(torch.cat([d.probs[r, :c], d.probs[r, c + 1:]]), pi, atol=1e-6)
        # anchors: only the class's hard pixels, each about q / H_c times
        pool = torch.nonzero(hard & (lab == classes[c])).squeeze(1)
        assert bool(torch.isin(d.anchors[r], pool).all())
        if pool.numel() > 1:
            counts = (d.anchors[r].unsqueeze(1) == pool).sum(0).double()
            assert chisquare(counts.numpy()).pvalue > P_MIN
        # negative classes: never the own class, frequencies ~ pi_c
        drawn = d.negative_classes[r].reshape(-1)
        assert bool((drawn != c).all())
        others = [o for o in range(n) if o != c]
        freq = torch.bincount(drawn, minlength=n).double()[others]
        expected = pi.double() * drawn.numel()
        big = expected > 5  # chi-square cells need an expected count of a few
        f_exp = expected[big] / expected[big].sum() * freq[big].sum()
        assert chisquare(freq[big].numpy(), f_exp.numpy()).pvalue > P_MIN
        assert freq[~big].sum() <= max(20.0, 3 * float(expected[~big].sum()))
        # negative pixels: of the drawn class, uniform within it
        negs = d.negatives[r].reshape(-1)
        assert torch.equal(lab[negs], classes[drawn])
        for o in [others[i] for i in torch.argsort(freq, descending=True)[:2].tolist()]:
            members = torch.nonzero(lab == classes[o]).squeeze(1)
            hits = negs[drawn == o]
            counts = (hits.unsqueeze(1) == members).sum(0).double()
            assert counts.sum() == hits.numel() and chisquare(counts.numpy()).pvalue > P_MIN


def test_no_hard_anchor_and_unknown_sampling():
    x = _inputs()
    easy = x["prob"].clone().fill_(0.0).scatter_(1, x["labels"].clamp(max=4).unsqueeze(1), 1.0)
    rep = x["rep"].clone().requires_grad_()
    for s in ("loop", "batched"):
        loss = reco_loss(rep, x["labels"], x["valid"], easy, 0.97, 0.5, 4, 4, sampling=s)
        assert loss.item() == 0 and loss.requires_grad
    with pytest.raises(ValueError, match="sampling"):
        reco_loss(rep, x["labels"], x["valid"], x["prob"], sampling="nosuch")


# -- (c) the mean loss over seeds -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["reco", "css", "prcl"])
def test_mean_loss_over_seeds_agrees(kind):
    """120 seeds per sampler, Q = 8 anchors x M = 16 keys per class: the means agree within 4
    standard errors of their difference (a false alarm has probability ~6e-5)."""
    x = _inputs(seed=7)
    values = {}
    for sampling in ("loop", "batched"):
        vals = []
        for s in range(120):
            torch.manual_seed(1000 * (sampling == "batched") + s)
            vals.append(float(_loss(kind, x, sampling, 8, 16)))
        values[sampling] = torch.tensor(vals, dtype=torch.float64)
    a, b = values["loop"], values["batched"]
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert a.std() > 1e-3  # the draws matter: a non-degenerate case
    assert abs(float(a.mean() - b.mean())) < 4 * se, (float(a.mean()), float(b.mean()), se)


# -- (d) what carries gradient ----------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["loop", "batched"])
@pytest.mark.parametrize("kind", ["reco", "css", "prcl"])
def test_gradient_reaches_only_the_anchors(kind, sampling):
    x = _inputs(seed=9)
    rep = x["rep"].clone().requires_grad_()
    s2 = x["sigma2"].clone().requires_grad_()
    protos = x["protos"].clone().requires_grad_()
    if kind == "css":
        j = rep_distribution(x["rep"], x["protos"], 0.25)
        loss = css_contrast_loss(rep, x["labels"], x["valid"], j, protos, 0.8, 0.5, 16, 16, sampling=sampling)
    else:
        loss = _loss(kind, x, sampling, 16, 16, rep, s2)
    loss.backward()
    keep = x["valid"] & (x["labels"] != 255)
    hard_map = torch.zeros_like(keep)
    hard_map[keep] = _hard(kind, x)
    touched = rep.grad.abs().sum(1) > 0
    assert bool(touched.any()) and not bool((touched & ~hard_map).any())  # keys and easy pixels: no gradient
    assert protos.grad is None  # prototypes (positive keys) are detached
    if kind == "prcl":
        t2 = s2.grad.abs().sum(1) > 0
        assert bool(t2.any()) and not bool((t2 & ~hard_map).any())
