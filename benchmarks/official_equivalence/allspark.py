"""AllSpark (github.com/xmed-lab/AllSpark, ``model/semseg/allspark.py``) against s4kit
(``s4kit/models/allspark.py``): the channel cross-attention (fused and materialised
paths), the semantic memory, channel semantic grouping, the AllSpark bottleneck in
training and evaluation, and the upsampling of the logits.

Weights are shared by copying; the unlabelled branch's output projection is permuted
because the two codes order its input columns differently (official: channel-major
``c * heads + head``; s4kit: head-major ``head * C + c``), a fixed permutation. The
official file needs ``einops``; ``mmcv`` (used only by the SegFormer head) is stubbed.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import harness as H

C, HEADS, K, S = 256, 2, 21, 11  # channels, heads, classes, stage-4 grid (crop 321 -> 11 x 11)
N, BL, BU = S * S, 2, 2
FILE = "model/semseg/allspark.py"
COMPONENTS = [
    ("AllSpark channel cross-attention, fused path (A3-A6)", FILE + " `CrossAttnMem.forward`",
     "`models.allspark.ChannelCrossAttention` (`channel_attention`, fused)"),
    ("AllSpark channel cross-attention, materialised path", FILE + " `CrossAttnMem.forward`",
     "`ChannelCrossAttention` (attention dropout active)"),
    ("AllSpark semantic memory (A8)", FILE + " `CrossAttnMem._dequeue_and_enqueue`",
     "`models.allspark.SemanticMemory.enqueue`"),
    ("AllSpark channel semantic grouping (A7)", FILE + " `CrossAttnMem.forward` (CSG)",
     "`models.allspark.channel_groups`"),
    ("AllSpark bottleneck, training (A1-A2)", FILE + " `AllSpark.forward`", "`models.allspark.AllSpark`"),
    ("AllSpark eval path (bottleneck)", FILE + " `AllSpark.forward` (eval: batch duplicated)",
     "`AllSpark` eval, `infer_source`"),
    ("AllSpark logits upsampling to the label size", FILE + " `SemiDecoder.forward`",
     "`methods.allspark.AllSparkMethod.predict`"),
]


def to_s4kit_out_u(w: torch.Tensor) -> torch.Tensor:
    """Official ``out_u`` weight (C, h*C), input column c*h + head -> s4kit column head*C + c."""
    return w.view(w.shape[0], C, HEADS).transpose(1, 2).reshape(w.shape[0], HEADS * C)


def copy_attention(official, ours) -> None:
    with torch.no_grad():
        for name in ("q_u", "k_u", "v_u", "q_l2u", "k_l2u", "v_l2u", "out_l2u"):
            getattr(ours, name).weight.copy_(getattr(official, name).weight)
        ours.out_u.weight.copy_(to_s4kit_out_u(official.out_u.weight))
        ours.memory.queue.copy_(official.kv_queue)
        ours.memory.ptr.copy_(official.queue_ptr)


class PassThroughDropout(nn.Module):
    """Looks like an active Dropout(p=0.1) to s4kit (so it takes the materialised path) but
    returns its input: both sides then compute the same deterministic function."""

    p = 0.1

    def forward(self, x):
        return x


def class_maps(b: int, size, seed: int) -> torch.Tensor:
    """Smooth random class logits float (b, K, *size), the CSG input."""
    g = torch.Generator().manual_seed(seed)
    base = 3 * torch.randn(b, K, 4, 4, generator=g)
    return F.interpolate(base, size=size, mode="bilinear", align_corners=False) + 0.3 * torch.randn(b, K, *size,
                                                                                                    generator=g)


def load(root: Path):
    with H.official_imports(root, stubs=("mmcv.cnn",)):
        import sys

        cnn = sys.modules["mmcv.cnn"]
        if not hasattr(cnn, "ConvModule"):
            cnn.ConvModule = nn.Module
        return H.load_file(root / "model" / "semseg" / "allspark.py", "official_allspark")


def attention_rows(AS, names) -> list[H.Row]:
    from s4kit.models.allspark import ChannelCrossAttention, channel_groups

    rows, memory_pairs, csg_pairs = [], [], []
    torch.manual_seed(0)
    off = AS.CrossAttnMem(HEADS, C, 0.0, K, N).train()
    start = {k: v.clone() for k, v in off.state_dict().items()}
    for path in ("fused", "materialised"):
        off.load_state_dict(start)
        ours = ChannelCrossAttention(C, K, N, HEADS, 0.0, 0.0, "allgather").train()
        if path == "materialised":
            ours.attn_drop = PassThroughDropout()
        copy_attention(off, ours)
        recorded = []
        real_enqueue = type(off)._dequeue_and_enqueue.__get__(off)  # not a wrapper of the previous path

        def enqueue(emb_u, channel_cls, real=real_enqueue):
            recorded.append(channel_cls.clone())
            return real(emb_u, channel_cls)

        off._dequeue_and_enqueue = enqueue
        g = torch.Generator().manual_seed(1)
        pairs = []
        for phase, use_memory in (("warm-up", False), ("memory", True)):
            z = torch.randn(BL + BU, N, C, generator=g)
            cm = class_maps(BU, (65, 65), 2 if use_memory else 3)
            zo, zs = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
            yo = off(zo, None, cm, use_memory)
            ys = ours(zs, BL, cm, use_memory, (S, S))
            w = torch.randn(yo.shape, generator=g)
            (yo * w).sum().backward()
            (ys * w).sum().backward()
            pairs += [(ys, yo), (zs.grad, zo.grad), (ours.out_u.weight.grad, to_s4kit_out_u(off.out_u.weight.grad))]
            pairs += [(getattr(ours, n).weight.grad, getattr(off, n).weight.grad)
                      for n in ("q_u", "k_u", "v_u", "q_l2u", "k_l2u", "v_l2u", "out_l2u")]
            memory_pairs += [(ours.memory.queue, off.kv_queue), (ours.memory.ptr, off.queue_ptr)]
            groups = channel_groups(z[BL:], cm, (S, S))
            csg_pairs.append((groups, torch.stack(recorded[-BU:])))
            for p in list(off.parameters()) + list(ours.parameters()):
                p.grad = None
        rows.append(H.judge(*next(names), pairs,
                            note=f"{BL}+{BU} images, C={C}, N={N}, {HEADS} heads; warm-up (K/V from the unlabelled "
                                 "channels) and memory phases; output, d/dz, d/dW of the 8 projections"))
        rows[-1].note += "" if path == "fused" else "; attention dropout replaced by the identity on both sides"
    rows.append(H.judge(*next(names), memory_pairs, tol=0.0, note="2 updates per path, queue and pointers, "
                                                                    "bit-identical (tolerance 0)"))
    rows.append(H.judge(*next(names), csg_pairs, tol=0.0, note="channel -> class of every unlabelled channel"))
    return rows


def bottleneck_rows(AS, names) -> list[H.Row]:
    from s4kit.models.allspark import AllSpark

    rows = []
    torch.manual_seed(3)
    off = AS.AllSpark(HEADS, C, C, C, 0.0, K, N).train()
    ours = AllSpark(C, K, N, HEADS, 0.0, 0.0).train()
    with torch.no_grad():
        ours.map_in.load_state_dict(off.map_in[0].state_dict())
        ours.map_out.load_state_dict(off.map_out[0].state_dict())
        ours.norm_in.load_state_dict(off.attn_norm.state_dict())
        ours.norm_out.load_state_dict(off.encoder_norm.state_dict())
    copy_attention(off.attn, ours.attn)
    g = torch.Generator().manual_seed(4)
    pairs = []
    for use_memory in (False, True):
        c4 = torch.randn(BL + BU, C, S, S, generator=g)
        cm = class_maps(BU, (81, 81), 5)
        co, cs = c4.clone().requires_grad_(True), c4.clone().requires_grad_(True)
        yo = off(co, None, cm, use_memory)
        ours.set_context(BL, cm, use_memory)
        ys = ours(cs)
        w = torch.randn(yo.shape, generator=g)
        (yo * w).sum().backward()
        (ys * w).sum().backward()
        pairs += [(ys, yo), (cs.grad, co.grad), (ours.map_in.weight.grad, off.map_in[0].weight.grad),
                  (ours.norm_in.weight.grad, off.attn_norm.weight.grad), (ours.attn.memory.queue, off.attn.kv_queue)]
    rows.append(H.judge(*next(names), pairs, note="warm-up and memory phases; output, d/dc4, d/dW_in, d/dLN, memory"))
    off.eval()
    ours.eval()
    with torch.no_grad():
        c1 = torch.randn(1, C, S, S, generator=g)
        c3 = torch.randn(3, C, S, S, generator=g)
        default = [(ours(c1), off(c1, None, None, False))]
        ours.infer_source = "batch"
        batch = [(ours(c3), off(c3, None, None, False))]
        ours.infer_source = "per_image"
    rows.append(H.judge(*next(names), default + batch,
                        note="batch 1 (the official evaluation's) with the default `eval_source=per_image`; batch 3 "
                             "with `eval_source=batch` (the official forward shares K/V over the batch)"))
    return rows


def upsampling_row(AS, names) -> H.Row:
    """The official ``SemiDecoder.forward`` with its bottleneck and head stubbed (fixed
    logits), against s4kit's ``predict`` with ``forward_eval`` stubbed likewise."""
    from s4kit.config import load_config
    from s4kit.methods import build_method

    g = torch.Generator().manual_seed(8)
    logits = F.interpolate(3 * torch.randn(2, K, 9, 9, generator=g), size=(81, 81), mode="bilinear",
                           align_corners=False) + 0.5 * torch.randn(2, K, 81, 81, generator=g)
    dec = AS.SemiDecoder.__new__(AS.SemiDecoder)
    nn.Module.__init__(dec)
    dec.pseudo_label = dec.pseudo_prob_map = None
    dec.using_SMem = False
    dec.allspark = lambda e4, *a: e4
    dec.decoder = lambda *feats: logits
    official = dec((None, None, None, None), 321, 321)
    method = build_method(load_config("digits/allspark", ["method.layer_scale=none"]))
    method.forward_eval = lambda image: {"logits": logits}
    ours = method.predict(torch.zeros(2, 3, 321, 321))
    corners = F.interpolate(logits, size=(321, 321), mode="bilinear", align_corners=True)
    changed = float((corners.argmax(1) != official.argmax(1)).float().mean())
    return H.judge(*next(names), [(ours, official)],
                   note=f"stride-4 logits 81x81 -> 321x321, `align_corners=False` as the official code "
                        f"(`True`, s4kit before issue 14, changes the argmax of {100 * changed:.1f} % of pixels)")


def run(root: Path) -> list[H.Row]:
    AS = load(root)
    names = iter(COMPONENTS)
    return attention_rows(AS, names) + bottleneck_rows(AS, names) + [upsampling_row(AS, names)]
