"""Weak (geometric) and strong (photometric) views, built on torchvision.transforms.v2.

* Weak view, per sample in the data loader (docs/methods/substrate.md §4, docs/methods/frameworks.md §A3):
  random rescale by s ~ U(scale_range), random crop to ``crop_size`` with padding
  (image 0, mask 255; UniMatch's convention; the ReCo family pads images by reflection on
  the right and bottom, ReCo ``build_data.py`` ``transform``: padded pixels carry no label
  either way), horizontal flip with p = 0.5 (off for digits). Image and mask are
  ``tv_tensors.Image`` / ``tv_tensors.Mask``, so v2 moves them jointly (masks with
  nearest interpolation).
* Strong view, per image on the training device after pseudo-labelling and mixing:
  colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5). Photometric only, so
  pseudo-labels and confidences need no change.
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

IGNORE_INDEX = 255


class RandomRescale(v2.Transform):
    """Resize by a random factor s ~ U(lo, hi) of the input size (bilinear; masks nearest)."""

    def __init__(self, scale_range: tuple[float, float]):
        super().__init__()
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        s = self.lo + (self.hi - self.lo) * torch.rand(()).item()
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params):
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return TF.resize(inpt, params["size"], antialias=True)
        return inpt


def _to_tv(image: np.ndarray, mask: np.ndarray | None):
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = None if mask is None else tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
    return img, msk


class TrainTransform:
    """The weak view: rescale, crop (pad image 0, mask 255), optional flip, normalise.

    ``__call__(image uint8 (H, W, 3), mask int64 (H, W) or None)`` returns
    ``(image float32 (3, c, c), mask int64 (c, c) or None, valid bool (c, c))`` with
    c = ``crop_size`` and ``valid`` False on padding (so unlabeled padding can be ignored
    too). Randomness comes from the global torch RNG (seeded per sample by the dataset).
    """

    def __init__(self, crop_size: int, scale_range=(0.5, 2.0), flip: bool = True,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        ops = [RandomRescale(tuple(scale_range)),
               v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})]
        if flip:
            ops.append(v2.RandomHorizontalFlip(0.5))
        ops += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
                v2.Normalize(list(mean), list(std))]
        self.ops = v2.Compose(ops)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None):
        img, msk = _to_tv(image, mask)
        pad = tv_tensors.Mask(torch.zeros(img.shape[-2:], dtype=torch.uint8))  # 255 where padded
        if msk is None:
            img, pad = self.ops(img, pad)
            return img.as_subclass(torch.Tensor), None, pad.as_subclass(torch.Tensor) != IGNORE_INDEX
        img, msk, pad = self.ops(img, msk, pad)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor), pad.as_subclass(torch.Tensor) != IGNORE_INDEX


class EvalTransform:
    """Validation: no geometry, only ``ToDtype`` and ``Normalize``; returns (image, mask, valid)."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.ops = v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
                               v2.Normalize(list(mean), list(std))])

    def __call__(self, image: np.ndarray, mask: np.ndarray | None):
        img, msk = _to_tv(image, mask)
        valid = torch.ones(img.shape[-2:], dtype=torch.bool)
        if msk is None:
            return self.ops(img).as_subclass(torch.Tensor), None, valid
        img, msk = self.ops(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor), valid


class StrongAugment:
    """Photometric strong view of a normalised batch, with per-image random parameters.

    Colour jitter (``jitter_p``; brightness, contrast, saturation factors in
    [1 - x, 1 + x], hue in [-hue, hue]), grayscale (``grayscale_p``), Gaussian blur
    (``blur_p``, sigma ~ U(blur_sigma), kernel ``2 * ceil(3 sigma) + 1``). The image is
    un-normalised to [0, 1], augmented, and normalised again.

    ``__call__(images float (B, 3, H, W)) -> float (B, 3, H, W)`` on the input's device.
    """

    def __init__(self, cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.jitter = v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                                     p=cfg.jitter_p)
        self.grayscale_p, self.blur_p = cfg.grayscale_p, cfg.blur_p
        self.sigma = tuple(cfg.blur_sigma)
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images), self.std.to(images)
        out = []
        for img in images:
            x = (img * std + mean).clamp(0, 1)
            x = self.jitter(x)
            if torch.rand(()) < self.grayscale_p:
                x = TF.rgb_to_grayscale(x, num_output_channels=3)
            if torch.rand(()) < self.blur_p:
                sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * torch.rand(()).item()
                k = 2 * int(np.ceil(3 * sigma)) + 1
                x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
            out.append((x - mean) / std)
        return torch.stack(out)
