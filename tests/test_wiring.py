"""Wiring of one iteration (issue 13, item 5): what each network sees, which pixels enter the
contrast, how the loss weights scale, and hand oracles of the ReCo / PRCL losses whose
representations are distinct, so that taking the positive key from the wrong class changes
the value. Everything goes through public names only: the loss functions, ``build_method``,
``train_step``, ``method.student`` / ``method.teacher`` (hooks) and ``load_config``.

``benchmarks/mutants.py`` (``make mutants``) applies named mutations of s4kit one at a time
and runs these tests (among others) to check that each mutation is caught.
"""
import copy
import math

import pytest
import torch

from s4kit.config import load_config
from s4kit.data.loaders import build_train_streams
from s4kit.losses.contrast import reco_loss
from s4kit.losses.prcl import prcl_loss
from s4kit.methods import build_method

from conftest import tiny_overrides

SEMI = ["meanteacher", "reco", "css", "prcl", "rc2l", "allspark"]
#: the keys of each method's unsupervised loss, all of which carry lambda_u (= method.unsup_weight)
UNSUP_KEYS = {"rc2l": ("loss_rcc", "loss_rmc", "loss_rfc", "loss_smc")}
NO_PHOTOMETRIC = ["augment.jitter_p=0", "augment.grayscale_p=0", "augment.blur_p=0"]


# -- hand oracles --------------------------------------------------------------------------------
def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _mean(vectors):
    return [sum(col) / len(vectors) for col in zip(*vectors)]


def _infonce(pos, negs, temperature):
    """-log e^{pos/tau} / (e^{pos/tau} + sum_n e^{neg_n/tau}) for one anchor."""
    return -math.log(math.exp(pos / temperature) / (math.exp(pos / temperature)
                                                    + sum(math.exp(n / temperature) for n in negs)))


def _plane(c, x, y, classes):
    """A representation that lives in class c's own plane (dims 2c, 2c+1) of R^{2 * classes}."""
    v = [0.0] * (2 * classes)
    v[2 * c], v[2 * c + 1] = x, y
    return v


# ReCo case: three classes in orthogonal planes, so every negative key has cosine 0 to every
# anchor whichever pixel the sampler draws; anchors are the hard pixels (P(y) < delta_s) and the
# positive key is the class mean, which differs from every anchor (distinct representations).
HARD, EASY = 0.3, 0.95
RECO_PIXELS = [  # (label, valid, P(label), rep in its class plane)
    (0, True, HARD, (1.0, 1.0)), (0, True, HARD, (1.0, -1.0)), (0, True, EASY, (3.0, 0.0)),
    (1, True, HARD, (2.0, 1.0)), (1, True, EASY, (0.5, 2.0)), (1, True, EASY, (1.0, 0.0)),
    (2, True, EASY, (1.0, 0.2)), (2, True, EASY, (0.3, 1.0)),  # class 2: no hard anchor, keys only
    (0, False, HARD, (-4.0, 5.0)),  # invalid (teacher confidence < delta_w): must not count
    (255, True, HARD, (7.0, -2.0)),  # ignore label: must not count
]


def _reco_tensors(pixels, classes=3):
    n = len(pixels)
    rep = torch.zeros(1, 2 * classes, 1, n)
    labels = torch.zeros(1, 1, n, dtype=torch.long)
    valid = torch.zeros(1, 1, n, dtype=torch.bool)
    prob = torch.zeros(1, classes, 1, n)
    for j, (c, ok, p, xy) in enumerate(pixels):
        plane = 0 if c == 255 else c
        rep[0, :, 0, j] = torch.tensor(_plane(plane, *xy, classes))
        labels[0, 0, j], valid[0, 0, j] = c, ok
        prob[0, :, 0, j] = (1 - p) / (classes - 1)
        prob[0, plane, 0, j] = p
    return rep, labels, valid, prob


def _reco_oracle(pixels, delta_s, tau, n_neg, classes=3, positive_of=lambda c, cls: c):
    """(S5)-(S9) written out: mean over classes with a hard anchor of the mean InfoNCE of their
    anchors; ``positive_of`` picks whose class mean is the positive key (the mutation check)."""
    kept = [(c, p, _plane(c, *xy, classes)) for c, ok, p, xy in pixels if ok and c != 255]
    present = sorted({c for c, _, _ in kept})
    means = {c: _mean([r for k, _, r in kept if k == c]) for c in present}
    per_class = []
    for c in present:
        anchors = [r for k, p, r in kept if k == c and p < delta_s]
        if not anchors:
            continue
        losses = []
        for a in anchors:
            negatives = {round(_cos(a, r), 12) for k, _, r in kept if k != c}
            assert len(negatives) == 1  # by construction: every negative key scores the same
            losses.append(_infonce(_cos(a, means[positive_of(c, present)]), [negatives.pop()] * n_neg, tau))
        per_class.append(sum(losses) / len(losses))
    return sum(per_class) / len(per_class)


@pytest.mark.parametrize("sampling", ["loop", "batched"])
def test_reco_loss_equals_hand_oracle_with_distinct_representations(sampling):
    rep, labels, valid, prob = _reco_tensors(RECO_PIXELS)
    delta_s, tau, n_q, n_neg = 0.9, 0.5, 5, 7
    torch.manual_seed(0)
    got = reco_loss(rep, labels, valid, prob, strong_threshold=delta_s, temperature=tau, num_queries=n_q,
                    num_negatives=n_neg, sampling=sampling).item()
    want = _reco_oracle(RECO_PIXELS, delta_s, tau, n_neg)
    assert got == pytest.approx(want, rel=1e-5)
    # the case can tell the positive key of the right class from another class's
    wrong = _reco_oracle(RECO_PIXELS, delta_s, tau, n_neg, positive_of=lambda c, cls: cls[(cls.index(c) + 1) % len(cls)])
    assert abs(wrong - want) > 0.1
    # and tau matters (the values are not all-equal cosines)
    assert abs(_reco_oracle(RECO_PIXELS, delta_s, 1.0, n_neg) - want) > 0.1


# PRCL case: two classes in orthogonal planes of R^4, sigma^2 constant within a class on each
# plane, so every negative key of the other class has the same MLS to an anchor whichever
# pixel is drawn; prototypes are the product of the class's Gaussians (P4)-(P5).
PRCL_SIGMA2 = {0: (0.2, 0.2, 0.5, 0.5), 1: (0.4, 0.4, 0.1, 0.1)}
PRCL_PIXELS = [  # (label, valid, P(label), mu in its class plane)
    (0, True, HARD, (1.0, 0.5)), (0, True, EASY, (2.0, -1.0)), (0, True, EASY, (0.5, 0.5)),
    (1, True, HARD, (0.3, 1.0)), (1, True, EASY, (1.5, 0.2)),
    (1, False, HARD, (-3.0, 2.0)),  # invalid: must not count
]


def _mls(mu_i, s2_i, mu_j, s2_j):
    """(P2): -1/(2D) sum_d [(mu^_i,d - mu^_j,d)^2 / v_d + ln v_d], v = s2_i + s2_j, mu^ = mu / |mu|."""
    ni, nj = math.sqrt(sum(x * x for x in mu_i)), math.sqrt(sum(x * x for x in mu_j))
    total = 0.0
    for a, sa, b, sb in zip(mu_i, s2_i, mu_j, s2_j):
        v = sa + sb
        total += (a / ni - b / nj) ** 2 / v + math.log(v)
    return -total / (2 * len(mu_i))


def _prcl_oracle(pixels, delta_s, tau, n_neg, positive_of=lambda c: c):
    kept = [(c, p, _plane(c, *xy, 2)) for c, ok, p, xy in pixels if ok]
    present = sorted({c for c, _, _ in kept})
    protos = {}
    for c in present:  # (P4) sigma^2_rho = (sum 1/sigma^2)^-1, (P5) mu_rho = sum sigma^2_rho / sigma^2_i mu_i
        members = [r for k, _, r in kept if k == c]
        s2 = [1.0 / sum(1.0 / PRCL_SIGMA2[c][d] for _ in members) for d in range(4)]
        mu = [sum(s2[d] / PRCL_SIGMA2[c][d] * r[d] for r in members) for d in range(4)]
        protos[c] = (mu, s2)
    per_class = []
    for c in present:
        anchors = [r for k, p, r in kept if k == c and p < delta_s]
        if not anchors:
            continue
        losses = []
        for a in anchors:
            negatives = {round(_mls(a, PRCL_SIGMA2[c], r, PRCL_SIGMA2[k]), 12) for k, _, r in kept if k != c}
            assert len(negatives) == 1
            pos = _mls(a, PRCL_SIGMA2[c], *protos[positive_of(c)])
            losses.append(_infonce(pos, [negatives.pop()] * n_neg, tau))
        per_class.append(sum(losses) / len(losses))
    return sum(per_class) / len(per_class)


@pytest.mark.parametrize("sampling", ["loop", "batched"])
def test_prcl_loss_equals_hand_oracle_with_distinct_representations(sampling):
    mu, labels, valid, prob = _reco_tensors(PRCL_PIXELS, classes=2)
    sigma2 = torch.stack([torch.tensor(PRCL_SIGMA2[c]) for c, *_ in PRCL_PIXELS], 1).view(1, 4, 1, -1)
    delta_s, tau, n_q, n_neg = 0.8, 0.5, 4, 6
    torch.manual_seed(0)
    got, _ = prcl_loss(mu, sigma2, labels, valid, prob, 2, strong_threshold=delta_s, temperature=tau,
                       num_queries=n_q, num_negatives=n_neg, sampling=sampling)
    want = _prcl_oracle(PRCL_PIXELS, delta_s, tau, n_neg)
    assert got.item() == pytest.approx(want, rel=1e-5)
    wrong = _prcl_oracle(PRCL_PIXELS, delta_s, tau, n_neg, positive_of=lambda c: 1 - c)
    assert abs(wrong - want) > 0.1
    assert abs(_prcl_oracle(PRCL_PIXELS, delta_s, 2.0, n_neg) - want) > 0.1


# -- methods: helpers ----------------------------------------------------------------------------
def _setup(name, digits_root, tmp_path, extra=(), iters=4):
    cfg = load_config(f"digits/{name}", tiny_overrides(digits_root, tmp_path, iters=iters)
                      + ["train.batch_labeled=2", "train.batch_unlabeled=4", *extra])
    torch.manual_seed(0)
    method = build_method(cfg)
    labeled, unlabeled = build_train_streams(cfg, 0, need_unlabeled=True)
    return cfg, method, next(labeled), next(unlabeled)


def _losses(out):
    return {k: v for k, v in out.items() if k.startswith("loss")}


# -- the views each network sees -------------------------------------------------------------------
def _record_inputs(module, store):
    """Record the image input of every forward (prcl's joint sigma^2 call, ``student(None,
    features=...)``, carries no image)."""
    def hook(mod, args):
        if args and args[0] is not None:
            store.append(args[0].detach().clone())

    return module.register_forward_pre_hook(hook)


def _unlabeled_rows(student_inputs, labeled_image):
    """The rows the student saw that are not labeled images (one forward or several)."""
    rows = [r for x in student_inputs for r in x]
    return [r for r in rows if not any(torch.allclose(r, l, atol=1e-5) for l in labeled_image)]


def _spy_one_step(method, labeled, unlabeled):
    """One seeded ``train_step``; returns the inputs the student and the teacher received."""
    seen_s, seen_t = [], []
    hooks = [_record_inputs(method.student, seen_s), _record_inputs(method.teacher, seen_t)]
    try:
        torch.manual_seed(0)
        method.train_step(labeled, unlabeled)
    finally:
        for h in hooks:
            h.remove()
    return seen_s, seen_t


@pytest.mark.parametrize("name", ["meanteacher", "reco", "css", "prcl"])
def test_teacher_sees_the_weak_view_and_student_the_mixed_view(name, digits_root, tmp_path):
    """With the photometric augmentation off and CutMix on, the teacher receives exactly the weak
    unlabeled images and the student, for each unlabeled image, a mix of it and one partner from
    the batch: it differs from the weak image (in the box) and equals it outside."""
    _, method, labeled, unlabeled = _setup(name, digits_root, tmp_path, ["augment.mix=cutmix", *NO_PHOTOMETRIC])
    u = unlabeled["image"]
    seen_s, seen_t = _spy_one_step(method, labeled, unlabeled)
    assert any(torch.equal(x, u) for x in seen_t), "the teacher never received the weak unlabeled batch"
    assert not any(x.shape == u.shape and torch.allclose(x, u, atol=1e-3) for x in seen_s), \
        "the student received the weak view"
    rows = _unlabeled_rows(seen_s, labeled["image"])
    assert len(rows) == u.shape[0]
    for i, row in enumerate(rows):
        own = (row - u[i]).abs().amax(0) < 1e-4  # (H, W): pixels equal to image i itself
        assert not own.all(), f"unlabeled image {i} reached the student unmixed"
        partners = [j for j in range(len(u)) if j != i and torch.allclose(row[:, ~own], u[j][:, ~own], atol=1e-4)]
        assert partners, f"the mixed region of image {i} comes from no other weak image"


@pytest.mark.parametrize("name", ["meanteacher", "reco", "prcl", "rc2l"])
def test_student_sees_the_photometric_strong_view(name, digits_root, tmp_path):
    """Without mixing, the student's unlabeled input is the strong (photometric) view: not the
    weak images, while the teacher gets the weak images exactly."""
    _, method, labeled, unlabeled = _setup(name, digits_root, tmp_path, ["augment.mix=none"])
    u = unlabeled["image"]
    seen_s, seen_t = _spy_one_step(method, labeled, unlabeled)
    assert any(torch.equal(x, u) for x in seen_t)
    rows = _unlabeled_rows(seen_s, labeled["image"])
    assert len(rows) == u.shape[0]
    assert sum(not torch.allclose(r, u[i], atol=1e-3) for i, r in enumerate(rows)) >= 2


# -- delta_w: which pixels enter the contrast -------------------------------------------------------
def _teacher_logits(num_classes, confidences):
    """A forward hook that replaces the teacher's logits: image b predicts class 0 everywhere with
    max softmax ``confidences[b]``."""

    def hook(module, args, out):
        out = dict(out)
        logits = torch.zeros_like(out["logits"])
        for b, q in enumerate(confidences):
            logits[b, 0] = math.log((num_classes - 1) * q / (1 - q))  # e^L / (e^L + K - 1) = q
        out["logits"] = logits
        return out

    return hook


def _perturb_student_rep(u, images, seed=5):
    """A forward hook that adds noise to the student's representation of the given unlabeled
    images (found by matching the student's input rows against the weak images)."""

    def hook(module, args, out):
        x = args[0]
        if x is None:  # prcl's joint sigma^2 call (student(None, features=...)): no image rows
            return out
        targets = [r for r in range(x.shape[0]) for b in images if torch.allclose(x[r], u[b], atol=1e-5)]
        if not targets:
            return out
        out = dict(out)
        rep = out["rep"].clone()
        g = torch.Generator().manual_seed(seed)
        for r in targets:
            rep[r] = rep[r] + 3.0 * torch.randn(rep[r].shape, generator=g)
        out["rep"] = rep
        return out

    return hook


@pytest.mark.parametrize("name", ["reco", "prcl", "css"])
def test_only_pixels_with_teacher_confidence_at_least_delta_w_enter_the_contrast(name, digits_root, tmp_path):
    """Teacher confidence 0.75 on unlabeled images 0-1 and 0.65 on 2-3, delta_w = 0.7 (delta_u =
    0.8): perturbing the student's representations of images 2-3 leaves ``loss_contrast``
    unchanged, perturbing those of image 0 changes it."""
    cfg, method, labeled, unlabeled = _setup(name, digits_root, tmp_path,
                                             ["augment.mix=none", *NO_PHOTOMETRIC, "method.weak_threshold=0.7",
                                              "method.confidence_threshold=0.8", "method.contrast_weight=1.0",
                                              # PRCL's tau = 100 flattens its logits: 0.1 makes the change visible
                                              f"method.temperature={0.1 if name == 'prcl' else 0.5}"])
    u = unlabeled["image"]
    method.teacher.register_forward_hook(_teacher_logits(cfg.data.num_classes, [0.75, 0.75, 0.65, 0.65]))

    def contrast(perturbed):
        m = copy.deepcopy(method)
        if perturbed:
            m.student.register_forward_hook(_perturb_student_rep(u, perturbed))
        torch.manual_seed(0)
        return m.train_step(labeled, unlabeled)["loss_contrast"].item()

    base = contrast([])
    assert base > 0
    assert contrast([2, 3]) == pytest.approx(base, rel=1e-6, abs=1e-7)
    assert abs(contrast([0]) - base) > 1e-4 * base


# -- loss weights ------------------------------------------------------------------------------------
def _weighted_losses(name, digits_root, tmp_path, key, weights, extra=()):
    """One train_step per weight in ``weights`` (config override ``method.<key>``), each from a
    method built with the same seed, on the same batch and seed, after every warm-up
    (iteration = total - 1 of 1000)."""
    out = []
    for w in weights:
        _, method, labeled, unlabeled = _setup(name, digits_root, tmp_path / f"{key}_{w}",
                                               [f"method.{key}={w}", *extra], iters=1000)
        method.iteration = method.total_iters - 1
        torch.manual_seed(0)
        out.append(_losses(method.train_step(labeled, unlabeled)))
    return out


SCALING_EXTRA = {"rc2l": ["method.region_threshold=0.0", "method.smc_threshold=0.0"]}


@pytest.mark.parametrize("name", SEMI)
def test_unsupervised_loss_scales_linearly_with_lambda_u(name, digits_root, tmp_path):
    """``method.unsup_weight`` w (lambda_u): the unsupervised loss at 2w is twice that at w, 0 at w = 0,
    and the supervised loss does not move (delta_u = 0 so that every pixel counts)."""
    extra = ["method.confidence_threshold=0.0", *SCALING_EXTRA.get(name, [])]
    keys = UNSUP_KEYS.get(name, ("loss_unsup",))
    one, two, zero = _weighted_losses(name, digits_root, tmp_path, "unsup_weight", (0.5, 1.0, 0.0), extra)
    u1, u2, u0 = (sum(d[k].item() for k in keys) for d in (one, two, zero))
    assert u1 > 1e-4
    assert u2 == pytest.approx(2 * u1, rel=1e-4)
    assert u0 == 0.0
    assert one["loss_sup"].item() == pytest.approx(two["loss_sup"].item(), rel=1e-5)


@pytest.mark.parametrize("name", ["reco", "prcl", "css"])
def test_contrast_loss_scales_linearly_with_its_weight(name, digits_root, tmp_path):
    """``method.contrast_weight`` (lambda_c): ``loss_contrast`` at 2w is twice that at w, 0 at w = 0."""
    one, two, zero = _weighted_losses(name, digits_root, tmp_path, "contrast_weight", (0.5, 1.0, 0.0),
                                      ["augment.mix=none"])
    c1 = one["loss_contrast"].item()
    assert c1 > 0
    assert two["loss_contrast"].item() == pytest.approx(2 * c1, rel=1e-4)
    assert zero["loss_contrast"].item() == 0.0


@pytest.mark.parametrize("name", ["reco", "prcl", "css"])
def test_sampling_option_reaches_the_hard_anchor_contrast(name, digits_root, tmp_path):
    """``method.sampling`` (loop by default, batched on request) is what the loss's hard-anchor
    contrast receives, and the batched step gives a positive, finite ``loss_contrast``."""
    import s4kit.losses.contrast as contrast_module
    import s4kit.losses.css as css_losses
    import s4kit.losses.prcl as prcl_losses

    module = {"reco": contrast_module, "css": css_losses, "prcl": prcl_losses}[name]
    real, seen = module.hard_anchor_contrast, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("sampling", "loop"))
        return real(*args, **kwargs)

    module.hard_anchor_contrast = spy
    try:
        for sampling in ("loop", "batched"):
            _, method, labeled, unlabeled = _setup(name, digits_root, tmp_path / sampling,
                                                   ["augment.mix=none", f"method.sampling={sampling}"])
            torch.manual_seed(0)
            loss = method.train_step(labeled, unlabeled)["loss_contrast"].item()
            assert seen[-1] == sampling and 0 < loss < math.inf
    finally:
        module.hard_anchor_contrast = real
    assert load_config(f"digits/{name}").method.sampling == "loop"  # the presets keep the loop
