"""mIoU and pseudo-label metrics: torchmetrics as the oracle, hand-made examples, reference checks 21-25."""
import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from s4kit.engine.evaluate import sliding_window_logits
from s4kit.engine.trainer import poly_lr
from s4kit.metrics import confusion_matrix, iou_from_confusion, miou, pseudo_label_quality


def test_miou_matches_torchmetrics_with_ignore_index():
    g = torch.Generator().manual_seed(0)
    K = 6
    target = torch.randint(0, K, (4, 20, 20), generator=g)
    target[:, :3] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=K - 1),
                       torch.randint(0, K, target.shape, generator=g))
    ours = miou(confusion_matrix(pred, target, K))
    oracle = MulticlassJaccardIndex(num_classes=K, ignore_index=255, average="macro")(pred, target).item() * 100
    assert ours == pytest.approx(oracle, abs=1e-4)


def test_hand_computed_iou():
    # gt:   0 0 1 1 ; pred: 0 1 1 1  -> class0: tp1 fp0 fn1 -> 1/2; class1: tp2 fp1 fn0 -> 2/3
    gt = torch.tensor([[0, 0, 1, 1]])
    pr = torch.tensor([[0, 1, 1, 1]])
    iou = iou_from_confusion(confusion_matrix(pr, gt, 2))
    assert iou.tolist() == pytest.approx([0.5, 2 / 3])


def test_ignored_pixels_never_count_and_perfect_prediction_is_100():
    gt = torch.tensor([[0, 1, 255, 255]])
    cm = confusion_matrix(torch.tensor([[0, 1, 0, 1]]), gt, 2)
    assert cm.sum() == 2
    assert miou(cm) == pytest.approx(100.0)


def test_dataset_level_miou_differs_from_mean_of_per_image_miou():
    # image A: a big object predicted perfectly; image B: a one-pixel object missed.
    a_gt = torch.zeros(1, 10, 10, dtype=torch.long)
    a_gt[0, :5] = 1
    b_gt = torch.zeros(1, 10, 10, dtype=torch.long)
    b_gt[0, 0, 0] = 1
    a_pr, b_pr = a_gt.clone(), torch.zeros_like(b_gt)
    cm = confusion_matrix(a_pr, a_gt, 2) + confusion_matrix(b_pr, b_gt, 2)
    per_image = (miou(confusion_matrix(a_pr, a_gt, 2)) + miou(confusion_matrix(b_pr, b_gt, 2))) / 2
    assert miou(cm) != pytest.approx(per_image, abs=1.0)


def test_confusion_matrix_is_additive_over_shards():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 4, (6, 8, 8), generator=g)
    p = torch.randint(0, 4, (6, 8, 8), generator=g)
    whole = confusion_matrix(p, t, 4)
    shards = confusion_matrix(p[:2], t[:2], 4) + confusion_matrix(p[2:], t[2:], 4)
    assert torch.equal(whole, shards)


def test_sliding_window_equals_full_image_when_window_covers_it():
    net = torch.nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 17, 23)
    full = net(x).softmax(1)
    slid = sliding_window_logits(net, x, window=32, stride=21, num_classes=5)
    assert torch.allclose(full, slid, atol=1e-6)


def test_sliding_window_covers_every_pixel_and_argmax_of_sum_is_stable():
    net = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(1, 3, 20, 29)
    summed = sliding_window_logits(net, x, window=8, stride=5, num_classes=4)
    counts = summed.sum(1)  # each window adds probabilities summing to 1 per pixel
    assert (counts >= 1 - 1e-5).all()
    # a 1x1 conv is translation-equivariant: every window gives the full-image softmax per pixel
    assert torch.equal(summed.argmax(1), net(x).argmax(1))


def test_poly_lr_schedule():
    lrs = [poly_lr(0.01, t, 100, 0.9, 1e-4) for t in range(100)]
    assert lrs[0] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert min(lrs) >= 1e-4
    assert poly_lr(0.01, 0, 100, warmup=10) == pytest.approx(0.001)


def test_pseudo_label_quality_hand_example():
    pseudo = torch.tensor([[1, 1, 2, 0]])
    conf = torch.tensor([[0.99, 0.5, 0.98, 0.99]])
    hidden = torch.tensor([[1, 2, 1, 255]])
    q = pseudo_label_quality(pseudo, conf, hidden, 0.95)
    # valid: 3 pixels; confident & valid: pixels 0 and 2; correct among them: pixel 0
    assert q["coverage"] == pytest.approx(200 / 3)
    assert q["precision"] == pytest.approx(50.0)
    assert q["accuracy"] == pytest.approx(100 / 3)
    assert math.isnan(pseudo_label_quality(pseudo, conf * 0, hidden, 0.95)["precision"])
