"""Joint transforms and mixing: docs/methods/substrate.md §10 checks 8-13."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from s4kit.config import AugmentConfig
from s4kit.data.mixing import classmix_masks, cutmix_masks, mix, mix_batch, partner_index
from s4kit.data.transforms import EvalTransform, StrongAugment, TrainTransform


def _coded_pair(h=24, w=30):
    """An image whose red channel encodes the label, so joint geometry can be checked."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (h // 6, w // 6)).repeat(6, 0).repeat(6, 1)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 40 + 20
    return image, mask.astype(np.int64)


@pytest.mark.parametrize("flip", [False, True])
def test_weak_view_moves_image_and_mask_together(flip):
    image, mask = _coded_pair()
    t = TrainTransform(crop_size=20, scale_range=(0.7, 1.4), flip=flip, mean=(0, 0, 0), std=(1, 1, 1))
    for seed in range(10):
        torch.manual_seed(seed)
        x, y, valid = t(image, mask)
        assert x.shape == (3, 20, 20) and y.shape == (20, 20) and y.dtype == torch.int64
        assert torch.equal(valid, y != 255)
        # away from label edges (bilinear mixes there), the red channel decodes to the mask
        red = (x[0] * 255 - 20) / 40
        inner = valid.clone()
        inner[1:-1, 1:-1] &= (y[:-2, 1:-1] == y[1:-1, 1:-1]) & (y[2:, 1:-1] == y[1:-1, 1:-1]) \
            & (y[1:-1, :-2] == y[1:-1, 1:-1]) & (y[1:-1, 2:] == y[1:-1, 1:-1])
        inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
        assert torch.allclose(red[inner], y[inner].float(), atol=0.15)


def test_padding_is_ignore_in_mask_and_zero_in_image():
    image, mask = _coded_pair(12, 12)
    t = TrainTransform(crop_size=20, scale_range=(1.0, 1.0), flip=False, mean=(0, 0, 0), std=(1, 1, 1))
    x, y, valid = t(image, mask)
    assert (~valid).sum() == 400 - 144
    assert (y[~valid] == 255).all() and (x[:, ~valid] == 0).all()


def test_identity_weak_view_equals_normalised_input():
    image, mask = _coded_pair(18, 18)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    x, y, _ = TrainTransform(18, (1.0, 1.0), False, mean, std)(image, mask)
    xe, ye, _ = EvalTransform(mean, std)(image, mask)
    assert torch.allclose(x, xe) and torch.equal(y, ye) and torch.equal(y, torch.from_numpy(mask))


def test_strong_view_is_photometric_and_per_image():
    cfg = OmegaConf.structured(AugmentConfig(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8).clamp(-2, 2)
    y = StrongAugment(cfg)(x)
    assert y.shape == x.shape
    diffs = [(y[i] - x[i]).abs().mean().item() for i in range(4)]
    assert len({round(d, 6) for d in diffs}) == 4  # different random parameters per image


def test_cutmix_box_area_is_half_and_partner_is_a_permutation():
    torch.manual_seed(0)
    m = cutmix_masks(8, 20, 30)
    zeros = (m == 0).flatten(1).sum(1).float()
    assert ((zeros - 300).abs() <= 20).all()  # HW/2 up to rounding of the height
    idx = partner_index(8)
    assert sorted(idx.tolist()) == list(range(8)) and (idx != torch.arange(8)).all()


def test_cutmix_box_never_spans_the_full_width():
    """ReCo's generate_cutout_mask draws w with np.random.randint(W/2 + 1, W): W excluded."""
    torch.manual_seed(0)
    for width in (8, 9, 32):
        m = cutmix_masks(400, 16, width)
        box_w = (m == 0).any(1).sum(1)  # columns touched by the box
        assert box_w.max() == width - 1 and box_w.min() == width // 2 + 1  # the whole range, W never


def test_classmix_picks_half_of_the_present_classes():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1, 2, 3], [4, 4, 255, 0]]]).repeat(3, 1, 1)
    masks = classmix_masks(labels)
    for b in range(3):
        chosen = torch.unique(labels[b][masks[b] == 1])
        assert len(chosen) == 5 // 2
        assert 255 not in chosen.tolist()
        # every pixel of a chosen class is kept
        assert (masks[b][torch.isin(labels[b], chosen)] == 1).all()


@pytest.mark.parametrize("mode", ["cutmix", "classmix"])
def test_mixing_takes_image_label_and_confidence_from_the_same_source(mode):
    torch.manual_seed(0)
    B, H, W = 4, 12, 12
    source = torch.arange(B).view(B, 1, 1).expand(B, H, W)
    image = source.unsqueeze(1).expand(B, 3, H, W).float()
    labels = torch.randint(0, 4, (B, H, W))
    conf = source.float() / 10
    xi, yl, cf, src = mix_batch(mode, image, labels, conf, source)
    assert torch.equal(xi[:, 0], src.float()) and torch.allclose(cf, src.float() / 10)
    partner = partner_index(B)
    own = src == torch.arange(B).view(B, 1, 1)
    assert torch.equal(yl[own], labels[own])
    assert torch.equal(yl[~own], labels[partner][~own])


def test_mix_with_all_ones_mask_is_identity():
    x = torch.randn(3, 2, 5, 5)
    (out,) = mix(torch.ones(3, 5, 5), x)
    assert torch.equal(out, x)
