"""CutMix and ClassMix inside a batch, applied jointly to images, pseudo-labels and confidences.

Source: docs/methods/substrate.md §4 step 3 (ReCo ``module_list.py`` ``generate_cutout_mask``,
``generate_class_mask``; ``build_data.py`` ``generate_unsup_data``). Image i is mixed
with its partner pi(i) = (i + 1) mod B through a binary mask M_i (1 = keep image i):

    x~_i = M_i * x_i + (1 - M_i) * x_pi(i),   y^~_i, q~_i likewise              (S2)

* CutMix: a box of area HW/2 comes from the partner: width w ~ U{floor(W/2) + 1 .. W - 1}
  (ReCo ``generate_cutout_mask``: ``np.random.randint(W/2 + 1, W)`` excludes W, so the box
  never spans the full width), height round(HW / 2 / w), uniform position; M_i = 0 inside
  the box. (UniMatch draws a different box: area U(0.02, 0.4) HW, aspect U(0.3, 1/0.3),
  pasted with p = 0.5; not offered here.)
* ClassMix: M_i(p) = 1[y^_i(p) in S_i], S_i a uniformly random subset of floor(K_i / 2)
  of the K_i distinct pseudo-classes of image i (ignore 255 excluded, an s4kit choice).

The partner is per rank (the PRCL/CSS DDP defect of mixing with rank 0's images is not
reproduced, substrate §4.1).
"""
from __future__ import annotations

import torch

from ..labels import IGNORE_INDEX


def cutmix_masks(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """Binary CutMix masks, float (B, H, W): 0 inside a box of area ~HW/2, 1 elsewhere.

    Box width w ~ U{floor(W/2) + 1 .. W - 1} (ReCo's convention: never the full width; for
    W < 4 that range is empty and w = W - 1 or 1), height min(H, round(HW / 2 / w)).
    """
    masks = torch.ones(batch, height, width, device=device)
    area = height * width / 2
    lo, hi = width // 2 + 1, max(width - 1, 1)
    for b in range(batch):
        # w ~ U{W/2 + 1 .. W - 1}; torch.randint's high is exclusive, as numpy's in ReCo
        w = int(torch.randint(lo, hi + 1, ()).item()) if lo <= hi else hi
        h = min(height, int(round(area / w)))
        y0 = int(torch.randint(0, height - h + 1, ()).item())
        x0 = int(torch.randint(0, width - w + 1, ()).item())
        masks[b, y0 : y0 + h, x0 : x0 + w] = 0
    return masks


def classmix_masks(labels: torch.Tensor) -> torch.Tensor:
    """Binary ClassMix masks from pseudo-labels int64 (B, H, W) -> float (B, H, W).

    For each image, floor(K_i / 2) of its K_i present classes (255 excluded) are drawn
    uniformly without replacement; M_i = 1 on their pixels.
    """
    masks = torch.zeros(labels.shape, device=labels.device)
    for b in range(labels.shape[0]):
        classes = torch.unique(labels[b])
        classes = classes[classes != IGNORE_INDEX]
        chosen = classes[torch.randperm(len(classes), device=classes.device)[: len(classes) // 2]]
        masks[b] = torch.isin(labels[b], chosen).float()
    return masks


def partner_index(batch: int, device=None) -> torch.Tensor:
    """pi(i) = (i + 1) mod B, a permutation of the local batch."""
    return torch.roll(torch.arange(batch, device=device), -1)


def mix(masks: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Apply (S2) with masks (B, H, W) to each tensor of shape (B, H, W) or (B, C, H, W).

    Every tensor is mixed with the same mask and the same partner, so for every pixel the
    image, pseudo-label and confidence come from the same source image. Integer tensors
    (labels) are selected, never interpolated.
    """
    idx = partner_index(masks.shape[0], masks.device)
    out = []
    for t in tensors:
        m = masks.bool() if t.dim() == 3 else masks.bool().unsqueeze(1)
        out.append(torch.where(m, t, t[idx]))
    return tuple(out)


def mix_batch(mode: str, image: torch.Tensor, label: torch.Tensor, *others: torch.Tensor):
    """Mix a batch with ``mode`` in ``cutmix | classmix | none``.

    Args:
        image: float (B, 3, H, W); label: int64 (B, H, W) pseudo-labels; ``others``: more
            (B, H, W) maps (confidences, hidden ground truth) mixed the same way.

    Returns ``(image, label, *others)`` mixed. Raises ``ValueError`` for an unknown mode.
    """
    if mode == "none":
        return (image, label, *others)
    if mode == "cutmix":
        masks = cutmix_masks(image.shape[0], image.shape[2], image.shape[3], image.device)
    elif mode == "classmix":
        masks = classmix_masks(label)
    else:
        raise ValueError(f"augment.mix={mode!r}: expected cutmix, classmix or none")
    return mix(masks, image, label, *others)
