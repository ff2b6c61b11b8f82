"""Losses: docs/methods/substrate.md §10 checks 14-20 on hand-made tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from s4kit.losses.ce import ohem_ce, supervised_ce, unsupervised_masked_ce, unsupervised_weighted_ce
from s4kit.losses.contrast import class_means, reco_loss, sample_keys_by_class


def _batch(seed=0, B=2, K=3, H=6, W=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    return logits, labels


def test_supervised_ce_ignores_255_and_equals_mean_ce():
    logits, labels = _batch()
    labels[0, 0] = 255
    keep = labels != 255
    expected = -F.log_softmax(logits, 1).gather(1, labels.clamp(max=2).unsqueeze(1)).squeeze(1)[keep].mean()
    assert supervised_ce(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert supervised_ce(logits, torch.full_like(labels, 255)).item() == 0.0


def test_unsupervised_weight_is_zero_without_confident_pixels():
    logits, labels = _batch()
    conf = torch.full(labels.shape, 0.5)
    assert unsupervised_weighted_ce(logits, labels, conf, 0.97).item() == 0.0


def test_unsupervised_weighted_equals_plain_ce_when_all_confident():
    logits, labels = _batch()
    labels[1, 2] = 255
    conf = torch.ones(labels.shape)
    assert unsupervised_weighted_ce(logits, labels, conf, 0.97).item() == pytest.approx(
        supervised_ce(logits, labels).item(), rel=1e-5)


def test_unsupervised_weight_is_share_of_confident_pixels_and_ignores_ignored():
    logits, labels = _batch(B=1)
    conf = torch.zeros(labels.shape)
    conf[0, :3] = 1.0  # half the rows confident -> w = 0.5
    base = unsupervised_weighted_ce(logits, labels, conf, 0.97)
    assert base.item() == pytest.approx(0.5 * supervised_ce(logits, labels).item(), rel=1e-5)
    # marking ignored pixels must not change the loss of the others' weight beyond their removal
    labels2 = labels.clone()
    labels2[0, 5] = 255
    conf2 = conf.clone()
    conf2[0, 5] = 1.0  # an ignored pixel's confidence is irrelevant
    w = 18 / 30  # confident valid pixels / valid pixels
    ce = supervised_ce(logits, labels2).item()
    assert unsupervised_weighted_ce(logits, labels2, conf2, 0.97).item() == pytest.approx(w * ce, rel=1e-5)


def test_masked_unsupervised_ce_normalises_by_valid_pixels():
    logits, labels = _batch(B=1)
    conf = torch.zeros(labels.shape)
    conf[0, 0, 0] = 1
    ce0 = F.cross_entropy(logits[:, :, :1, :1], labels[:, :1, :1]).item()
    assert unsupervised_masked_ce(logits, labels, conf, 0.95).item() == pytest.approx(ce0 / 36, rel=1e-5)


def test_ohem_keeps_only_hard_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([5.0, 5.0, -5.0, 0.0])  # class-0 prob ~1, ~1, ~0, 0.5
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    loss = ohem_ce(logits, labels, thresh=0.7, min_kept=1)
    hard = F.cross_entropy(logits[..., 2:], labels[..., 2:])
    assert loss.item() == pytest.approx(hard.item(), rel=1e-5)


# ---------------------------------------------------------------- ReCo contrast (S5-S9)
def _rep_batch(seed=0, classes=3, D=8, B=2, H=6, W=6):
    g = torch.Generator().manual_seed(seed)
    rep = torch.randn(B, D, H, W, generator=g, requires_grad=True)
    labels = torch.randint(0, classes, (B, H, W), generator=g)
    prob = torch.full((B, classes, H, W), 0.5)
    return rep, labels, torch.ones(B, H, W, dtype=torch.bool), prob


def test_reco_is_zero_and_connected_with_one_class():
    rep, labels, valid, prob = _rep_batch()
    labels.zero_()
    loss = reco_loss(rep, labels, valid, prob, num_queries=8, num_negatives=8)
    assert loss.item() == 0.0
    loss.backward()
    assert rep.grad is not None and torch.count_nonzero(rep.grad) == 0


def test_reco_gradient_reaches_only_anchors():
    torch.manual_seed(0)
    rep, labels, valid, prob = _rep_batch()
    # class 1's pixels are easy (prob 1): never anchors, only keys and prototype members
    labels[0, 0] = 1
    prob[:, 1] = torch.where(labels == 1, torch.ones_like(prob[:, 1]), prob[:, 1])
    reco_loss(rep, labels, valid, prob, strong_threshold=0.97, num_queries=8, num_negatives=8).backward()
    grad_norm = rep.grad.norm(dim=1)
    assert (grad_norm[labels == 1] == 0).all()
    assert (grad_norm[labels != 1] > 0).any()


def test_reco_is_invariant_to_positive_rescaling_of_representations():
    rep, labels, valid, prob = _rep_batch()
    # cosine similarity ignores lengths; class means keep their direction under a per-class scale
    torch.manual_seed(3)
    a = reco_loss(rep.detach(), labels, valid, prob, num_queries=8, num_negatives=16)
    scale_c = torch.tensor([0.5, 2.0, 7.0])[labels].unsqueeze(1)
    torch.manual_seed(3)
    c = reco_loss(rep.detach() * scale_c, labels, valid, prob, num_queries=8, num_negatives=16)
    assert a.item() == pytest.approx(c.item(), rel=1e-5)


def test_reco_equals_log_of_one_plus_negatives_when_similarities_are_equal():
    # every representation identical: all cosines 1, so each anchor's loss is ln(1 + M_k)
    rep = torch.ones(1, 4, 4, 4)
    labels = torch.tensor([[0, 1] * 2] * 4).unsqueeze(0)
    prob = torch.full((1, 2, 4, 4), 0.5)
    loss = reco_loss(rep, labels, torch.ones(1, 4, 4, dtype=torch.bool), prob, num_queries=4, num_negatives=512)
    assert loss.item() == pytest.approx(math.log(513), rel=1e-5)


def test_sampled_keys_belong_to_the_drawn_class():
    reps = torch.arange(12.0).view(12, 1).repeat(1, 2)
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    classes = torch.tensor([0, 1, 2])
    drawn = torch.tensor([[1, 2, 1], [2, 2, 1]])
    keys = sample_keys_by_class(reps, labels, classes, drawn)
    key_class = labels[keys[..., 0].long()]
    assert torch.equal(key_class, classes[drawn])


def test_class_means_hand_example():
    reps = torch.tensor([[1.0, 0], [3.0, 0], [0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    assert torch.equal(class_means(reps, labels, torch.tensor([0, 1])), torch.tensor([[2.0, 0], [0, 2.0]]))


def test_literal_denominator_counts_classes_without_hard_anchors():
    torch.manual_seed(0)
    rep, labels, valid, prob = _rep_batch()
    prob[:, 2] = torch.where(labels == 2, torch.ones_like(prob[:, 2]), prob[:, 2])  # class 2 has no hard anchor
    torch.manual_seed(1)
    paper = reco_loss(rep.detach(), labels, valid, prob, num_queries=8, num_negatives=8)
    torch.manual_seed(1)
    literal = reco_loss(rep.detach(), labels, valid, prob, num_queries=8, num_negatives=8, literal_denominator=True)
    assert literal.item() == pytest.approx(paper.item() * 2 / 3, rel=1e-5)
