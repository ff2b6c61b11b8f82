"""A MaskFormer-style mask-classification head on the DeepLabV3+ encoder and decoder.

Sources: Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic
Segmentation" (MaskFormer, NeurIPS 2021), §3.2-3.4 and ``mask_former/modeling``; the
RC²L head as its Fig. 2 caption names it (Zhang et al., IJCAI 2022; docs/methods/rc2l.md §5).

Structure (C_f = decoder concatenation, E = ``mask_dim``, N = ``num_queries``):

    encoder -> low (stride 4), high (stride OS)
    ASPP(high) -> memory tokens a (B, C_a, H/OS, W/OS)       transformer-decoder input
    DeepLabV3+ decoder feature f (B, C_f, H/4, W/4)          as in ``deeplab.py``
    pixel embedding  F = 1x1(3x3-BN-ReLU(f))                 (B, E, H/4, W/4)   "pixel decoder"
    queries q_0 = 0, positional query embeddings (N, E); L decoder layers (self-attention,
    cross-attention to a + sine positions, FFN; post-norm), a shared LayerNorm on each
    layer's output q_l (B, N, E)
    class logits     p~_i = Linear(q_l,i)                    (B, N, K+1)   last = no-object
    mask embeddings  f_i  = MLP_3(q_l,i)                     (B, N, E)
    mask logits      m~_i[h,w] = f_i . F[:,h,w]              (B, N, H/4, W/4)      (R1)
    semantic masks   S[c] = sum_i softmax(p~_i)(c) sigmoid(m~_i)  c = 1..K         (R3)

s4kit choices (docs/methods/rc2l.md D1, I3): the pixel decoder is the substrate DeepLabV3+
decoder (the issue's "mask head on the DeepLabV3+ features"), not MaskFormer's FPN; no
transformer encoder (MaskFormer's ENC_LAYERS = 0 default). What the queries attend to is an
option: ``memory="aspp"`` (default, the ASPP output projected to E, as MaskFormer attends to
res5) or ``memory="pixel"`` (the pixel embedding F itself, stride 4); ``masked_attention``
adds Mask2Former's masked cross-attention (Cheng et al., CVPR 2022, Eq. 2-3): learned query
features q_0, a prediction from q_0, and layer l attends only where layer l-1's mask is >= 0.5.

Why the digits presets use ``memory=pixel`` + ``masked_attention`` (supervised_maskformer,
seed 0, digits 1_16, 800 iterations, AdamW 1e-3): MaskFormer's layout 16.6 mIoU; pixel memory
alone 15.6; masked attention on the ASPP memory 19.9; both 26.7. A diagnosis of the 16.6
model: the matched queries' masks were good (mean Dice 0.79) but their classes were
right for only 64 % of the segments: at stride 8 a 32-px digit covers about 2 x 2 ASPP
tokens, and unmasked attention averages it with the background.

The network returns what s4kit's evaluation expects plus the mask-classification outputs:
``logits`` = log(S) (B, K, H/4, W/4), so that softmax(logits) = S / sum_c S, the
normalised semantic masks, and argmax is MaskFormer's semantic inference; ``rep`` = F
(the per-pixel embedding the masks and the region features live in); ``feat`` = f;
``sem`` = S; ``pred_logits`` (B, N, K+1); ``pred_masks`` (B, N, H/4, W/4) mask logits;
``aux`` = a list of ``(pred_logits, pred_masks)`` of the earlier decoder layers (deep
supervision, MaskFormer §3.4).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .deeplab import DeepLabTrunk, conv_bn_relu

LOG_EPS = 1e-6  # floor of S before the log that turns semantic masks into ``logits``


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """MaskFormer's semantic inference (R3): S[b, c] = sum_i softmax(p~_bi)(c) sigmoid(m~_bi).

    Args:
        class_logits: float (B, N, K+1), the last entry is the no-object class (dropped).
        mask_logits: float (B, N, h, w).

    Returns float (B, K, h, w) with values in [0, N]. Source: MaskFormer §3.4,
    ``semantic_inference`` in ``mask_former_model.py``; docs/methods/rc2l.md (R3).
    """
    prob = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bnk,bnhw->bkhw", prob, mask_logits.sigmoid())


def sine_positions(h: int, w: int, dim: int, device, dtype=torch.float32) -> torch.Tensor:
    """2-D sine positional encoding (DETR / MaskFormer ``PositionEmbeddingSine``, normalised).

    Returns float (h*w, dim): the first dim/2 channels encode y, the rest x, each as
    interleaved sin/cos of (coordinate / 10000^(2i/(dim/2))), coordinates scaled to [0, 2 pi].
    Raises ``ValueError`` if ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"positional dimension {dim} must be a multiple of 4")
    half = dim // 2
    y = (torch.arange(h, device=device, dtype=dtype) + 1) / (h + 1e-6) * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=dtype) + 1) / (w + 1e-6) * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half // 2, device=device, dtype=dtype)) / half)
    py = y[:, None] / freq  # (h, half/2)
    px = x[:, None] / freq
    py = torch.stack([py.sin(), py.cos()], -1).flatten(1)  # (h, half)
    px = torch.stack([px.sin(), px.cos()], -1).flatten(1)  # (w, half)
    return torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], -1).reshape(h * w, dim)


class DecoderLayer(nn.Module):
    """One post-norm transformer-decoder layer with query and memory positions (DETR style).

    ``forward(q (B, N, E), qpos (B, N, E), mem (B, M, E), mpos (B, M, E), attn_mask=None) -> (B, N, E)``:
    q = LN(q + SA(q+qpos, q+qpos, q)); q = LN(q + CA(q+qpos, mem+mpos, mem)); q = LN(q + FFN(q)).
    ``attn_mask`` bool (B*heads, N, M), True = memory token not attended (masked attention,
    ``masked_attention_mask``); None attends everywhere.
    Source: MaskFormer ``transformer.py`` ``TransformerDecoderLayer.forward_post``.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        self.drop = nn.Dropout(dropout)

    def forward(self, q, qpos, mem, mpos, attn_mask=None):
        k = q + qpos
        q = self.norms[0](q + self.drop(self.self_attn(k, k, q, need_weights=False)[0]))
        q = self.norms[1](q + self.drop(self.cross_attn(q + qpos, mem + mpos, mem, attn_mask=attn_mask,
                                                        need_weights=False)[0]))
        return self.norms[2](q + self.drop(self.ffn(q)))


def masked_attention_mask(mask_logits: torch.Tensor, size: tuple[int, int], heads: int) -> torch.Tensor:
    """Mask2Former's attention mask from the previous layer's mask logits.

        M[i, p] = 0 if sigmoid(m~_i(p)) >= 0.5 else -inf   (a query with no pixel >= 0.5 sees all)

    Args: mask_logits float (B, N, h, w) (detached here), ``size`` the memory grid (h_m, w_m),
    ``heads`` the attention heads. Returns bool (B*heads, N, h_m*w_m), True = not attended, as
    ``nn.MultiheadAttention(attn_mask=...)`` expects. Source: Cheng et al., "Masked-attention
    Mask Transformer" (Mask2Former, CVPR 2022) Eq. 2-3, ``mask2former_transformer_decoder.py``.
    """
    m = F.interpolate(mask_logits.detach().float(), size=size, mode="bilinear", align_corners=False)
    blocked = (m.sigmoid() < 0.5).flatten(2)  # (B, N, M)
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(heads, 0)


class MaskFormerHead(DeepLabTrunk):
    """DeepLabV3+ encoder/decoder with a mask-classification head (see the module docstring).

    Args:
        encoder: a module returning ``(low, high)`` (``low_channels``, ``high_channels``).
        num_classes: K (the class head has K+1 outputs).
        mask_dim: E, the width of the queries, the mask embeddings and the pixel embedding F
            (MaskFormer: 256).
        num_queries: N (MaskFormer: 100).
        dec_layers, dec_heads, dec_ffn, dropout: the transformer decoder (MaskFormer: 6, 8,
            2048, 0.1).
        aspp_channels, low_channels, head_channels, aspp_rates: as in ``DeepLabV3Plus``.
        memory: what the queries cross-attend to: ``aspp`` (the ASPP output at stride OS projected
            to E; MaskFormer attends to res5) or ``pixel`` (the pixel embedding F at stride 4).
        masked_attention: Mask2Former's masked cross-attention (each query attends only to
            the pixels of its previous-layer mask, ``masked_attention_mask``) with learned
            query features and a supervised prediction before the first layer (in ``aux``).

    Raises ``ValueError`` for an unknown ``memory``.

    ``forward(x float (B, 3, H, W))`` returns the dict described in the module docstring.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, mask_dim: int = 256, num_queries: int = 100,
                 dec_layers: int = 6, dec_heads: int = 8, dec_ffn: int = 2048, dropout: float = 0.1,
                 aspp_channels: int = 256, low_channels: int = 48, head_channels: int = 256,
                 aspp_rates: tuple[int, int, int] = (6, 12, 18), memory: str = "aspp",
                 masked_attention: bool = False):
        if memory not in ("aspp", "pixel"):
            raise ValueError(f"model.dec_memory={memory!r}: expected aspp or pixel")
        super().__init__(encoder, aspp_channels, low_channels, aspp_rates)
        self.memory, self.masked_attention, self.dec_heads = memory, masked_attention, dec_heads
        self.pixel_embed = nn.Sequential(conv_bn_relu(self.feat_channels, head_channels, 3), nn.Conv2d(head_channels, mask_dim, 1))
        self.memory_proj = nn.Conv2d(aspp_channels, mask_dim, 1) if memory == "aspp" else nn.Identity()
        self.query_pos = nn.Embedding(num_queries, mask_dim)
        self.query_feat = nn.Embedding(num_queries, mask_dim) if masked_attention else None
        self.layers = nn.ModuleList([DecoderLayer(mask_dim, dec_heads, dec_ffn, dropout) for _ in range(dec_layers)])
        self.out_norm = nn.LayerNorm(mask_dim)
        self.class_head = nn.Linear(mask_dim, num_classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(mask_dim, mask_dim), nn.ReLU(inplace=True),
                                       nn.Linear(mask_dim, mask_dim), nn.ReLU(inplace=True),
                                       nn.Linear(mask_dim, mask_dim))
        self.num_classes, self.num_queries, self.mask_dim = num_classes, num_queries, mask_dim
        self.rep_dim = mask_dim

    def predictions(self, q: torch.Tensor, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (B, N, K+1) and mask logits (B, N, h, w) of queries q (B, N, E) (R1)."""
        q = self.out_norm(q)
        return self.class_head(q), torch.einsum("bne,behw->bnhw", self.mask_head(q), pix)

    def forward(self, x: torch.Tensor) -> dict:
        f, a = self.trunk(x)  # the DeepLabV3+ decoder feature and the ASPP output
        pix = self.pixel_embed(f)
        b = x.shape[0]
        grid = self.memory_proj(a) if self.memory == "aspp" else pix
        mem = grid.flatten(2).transpose(1, 2)  # (B, M, E)
        mpos = sine_positions(grid.shape[-2], grid.shape[-1], self.mask_dim, x.device, mem.dtype).unsqueeze(0).expand(b, -1, -1)
        qpos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        q = torch.zeros_like(qpos) if self.query_feat is None else self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        outs = [self.predictions(q, pix)] if self.masked_attention else []
        for layer in self.layers:
            attn_mask = (masked_attention_mask(outs[-1][1], grid.shape[-2:], self.dec_heads)
                         if self.masked_attention else None)
            q = layer(q, qpos, mem, mpos, attn_mask)
            outs.append(self.predictions(q, pix))
        cls, masks = outs[-1]
        sem = semantic_inference(cls.float(), masks.float())
        return {"logits": sem.clamp_min(LOG_EPS).log(), "sem": sem, "rep": pix, "feat": f,
                "pred_logits": cls, "pred_masks": masks, "aux": outs[:-1]}
