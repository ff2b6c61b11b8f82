"""Colour palettes: the PASCAL VOC palette (also used for digits) and Cityscapes'."""
from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * n`` ints.

    Class ``i`` gets the colour whose bits are the interleaved bits of ``i`` (the VOC
    devkit's ``labelcolormap``); index 255 (void) is (224, 224, 192).
    """
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def palette_array(dataset: str, num_classes: int) -> np.ndarray:
    """uint8 (256, 3) lookup table: row k is the colour of class k; row 255 is void."""
    pal = np.asarray(voc_palette(), np.uint8).reshape(256, 3).copy()
    if dataset == "cityscapes":
        pal[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
        pal[len(CITYSCAPES_COLOURS) : 255] = 0
    return pal


def colorize(mask: np.ndarray, dataset: str = "pascal", num_classes: int = 21) -> np.ndarray:
    """Map an int (H, W) label map (255 = ignore) to uint8 (H, W, 3) RGB."""
    return palette_array(dataset, num_classes)[np.asarray(mask).astype(np.int64) & 255]
