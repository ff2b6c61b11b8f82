"""AllSpark: channel-wise cross-attention that rebuilds labeled features from unlabeled ones.

Source: Wang et al., "AllSpark: Reborn Labeled Features from Unlabeled in Transformer for
Semi-Supervised Semantic Segmentation", CVPR 2024; the math follows the official code
(``xmed-lab/AllSpark`` ``model/semseg/allspark.py``: ``CrossAttnMem``, ``AllSpark``) as
written down in docs/methods/allspark.md §3-§6 (equation numbers A1-A8 are that file's).
Written anew; nothing is copied.

The **tokens of attention are channels**: a channel's embedding is its spatial map of
length N = h*w of the stage-4 feature. Shapes: B_l labeled and B_u unlabeled images,
C channels, h heads, K classes, N tokens.

Fixes of the official code's defects (reference §10, §11), each stated where it is made:

* memory size: N is the *true* stage-4 token count of the training crop, ceil(s/32)^2
  (``patch_num='auto'``), so crops that are multiples of 32 work; ``'literal'``
  reproduces (s//32 + 1)^2. CSG resizes the class maps to the real (h, w), so crops need
  not be square (the memory still needs one crop size).
* memory across GPUs: with ``memory_sync='allgather'`` every rank enqueues the channels
  of *every* rank (``s4kit.dist.all_gather_cat``, rank order), so all memories stay
  identical; ``'rank0_broadcast_literal'`` copies rank 0's memory to every rank before each
  enqueue (what DDP's default ``broadcast_buffers`` did in the official runs); ``'local'``
  keeps rank-local memories. On one process the three coincide.
* inference: the labeled branch runs as channel self-attention of each test image
  (``source='per_image'``, what the official batch-1 evaluation computes); ``'batch'``
  lets every image attend over the channels of the whole batch (the official
  pseudo-label forward, which makes predictions batch-dependent, §6).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import dist


def standardize(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """IN(L): standardise each (..., R, S) matrix over its last two axes, no affine.

        IN(L) = (L - mean L) / sqrt(var L + eps)      (biased variance; ``InstanceNorm2d``)

    It replaces the 1/sqrt(d) scaling of dot-product attention (reference §3.1, A4).
    """
    return F.layer_norm(logits, logits.shape[-2:], eps=eps)  # one fused kernel (= InstanceNorm2d, no affine)


def logit_moments(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of every logit matrix L = Q^T K, without forming L.

    With Q (N x R), K (N x S) and the column sums q = Q 1_R, k = K 1_S (N-vectors):

        mean L   = (q . k) / (R S)
        mean L^2 = sum_{r,s} (Q_r . K_s)^2 / (R S) = <Q Q^T, K K^T>_F / (R S)
        var L    = mean L^2 - (mean L)^2

    Q Q^T and K K^T are N x N (N = spatial positions, 4 on digits), so this costs O(N^2 (R + S))
    instead of O(N R S). Computed in float64 (the two terms of ``var`` cancel).

    Args: q float (..., N, R), k float (..., N, S); leading axes broadcast.
    Returns (mean, var), float64 (...,).
    """
    qd, kd = q.double(), k.double()
    rs = q.shape[-1] * k.shape[-1]
    mean = (qd.sum(-1) * kd.sum(-1)).sum(-1) / rs
    second = ((qd @ qd.transpose(-2, -1)) * (kd @ kd.transpose(-2, -1))).sum((-2, -1)) / rs
    return mean, (second - mean * mean).clamp_min(0.0)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: nn.Module | None = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """Channel-wise attention: channels are tokens, spatial positions are the embedding.

        A = softmax_row(IN(Q^T K))   (R x S),     O = Drop(A) V^T   (R x N)          (A4, A6)

    Args:
        q: float (..., N, R): R query channels, each an N-vector.
        k, v: float (..., N, S): S key / value channels.
        drop: dropout on the attention matrix (or ``None``).
        eps: the IN epsilon (1e-5, ``InstanceNorm2d``'s).

    Returns float (..., N, R) (O transposed back to tokens-first). Leading axes broadcast.

    Two implementations of the same maths:

    * **fused** (no active attention dropout: ``drop`` is ``None``, has p = 0 or is in eval
      mode): IN(L) = (L - mean L) / sd L, and a row softmax ignores the constant shift, so
      A = softmax_row(Q^T K / sd L) with sd L = sqrt(var L + eps) from ``logit_moments``
      (no R x S matrix needed). That is dot-product attention with queries Q / sd L and
      scale 1, run by ``F.scaled_dot_product_attention`` (a fused kernel that never stores
      the R x S matrix; gradients flow through sd L). On digits R x S is up to
      8 x 512 x 5632 per step, and the stored matrix, its IN, softmax and dropout were
      most of AllSpark's step time.
    * **materialised** (attention dropout active, the paper's 0.1): L, IN(L), softmax and
      dropout as written above.

    Permuting the N spatial positions of q, k and v together leaves the output permuted
    the same way (Q^T K is a sum over positions); permuting the S key/value channels
    together leaves it unchanged (a softmax-weighted sum over channels).
    """
    if drop is not None and drop.training and getattr(drop, "p", 0.0) > 0:
        attn = standardize(q.transpose(-2, -1) @ k, eps).softmax(dim=-1)
        return (drop(attn) @ v.transpose(-2, -1)).transpose(-2, -1)
    _, var = logit_moments(q, k)
    sd = torch.sqrt(var + eps).to(q.dtype)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    N, R, S = q.shape[-2], q.shape[-1], k.shape[-1]
    # (batch, 1, tokens, features) with unit last stride, which the fused CPU kernel needs
    qs = (q / sd[..., None, None]).transpose(-2, -1).contiguous().expand(*lead, R, N).reshape(-1, 1, R, N)
    ks = k.transpose(-2, -1).contiguous().expand(*lead, S, N).reshape(-1, 1, S, N)
    vs = v.transpose(-2, -1).contiguous().expand(*lead, S, v.shape[-2]).reshape(-1, 1, S, v.shape[-2])
    out = F.scaled_dot_product_attention(qs, ks, vs, scale=1.0)  # (prod lead, 1, R, N)
    return out.reshape(*lead, R, v.shape[-2]).transpose(-2, -1)


@torch.no_grad()
def channel_groups(z_u: torch.Tensor, class_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Channel semantic grouping (CSG, reference §4, A7): one class per channel.

        S_b[k, c] = < P'_b[k] / |P'_b[k]|, Z_b[:, c] / |Z_b[:, c]| >,    g_b(c) = argmax_k S_b[k, c]

    Args:
        z_u: float (B, N, C) post-LN unlabeled tokens, N = size[0] * size[1].
        class_maps: float (B, K, H, W) class maps (logits or probabilities of the
            pseudo-label forward), resized bilinearly (align_corners=False) to ``size``.
        size: the stage-4 grid (h, w); the official code assumes a square sqrt(N) grid.

    Returns int64 (B, C): the class of every channel. Invariant to positive rescaling of a
    class map or a channel map (cosine).
    """
    p = F.interpolate(class_maps.float(), size=tuple(size), mode="bilinear", align_corners=False).flatten(2)
    p = F.normalize(p, dim=-1)  # (B, K, N)
    z = F.normalize(z_u.float(), dim=1)  # (B, N, C), each channel's map a unit vector
    return (p @ z).argmax(dim=1)


class SemanticMemory(nn.Module):
    """S-Mem (reference §5): per class a first-in-first-out ring of C channel maps (N-vectors).

    Buffers (saved in checkpoints): ``queue`` float (K, C, N), initialised N(0, 1) as in the
    code; ``ptr`` int64 (K,), the next slot of each class.

        M[k, (ptr_k + j) mod C, :] <- z_j  (j = 0..n_k - 1),   ptr_k <- (ptr_k + n_k) mod C   (A8)

    An update with n_k >= C leaves the newest C vectors.
    """

    def __init__(self, num_classes: int, slots: int, tokens: int):
        super().__init__()
        self.register_buffer("queue", torch.randn(num_classes, slots, tokens))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, vectors: torch.Tensor, classes: torch.Tensor) -> None:
        """Write ``vectors`` float (M, N) with ``classes`` int64 (M,) in the given order (A8).

        Raises ``ValueError`` if the vectors' length is not N (wrong crop size for the memory).
        """
        K, C, N = self.queue.shape
        if vectors.shape[-1] != N:
            raise ValueError(f"semantic memory holds maps of {N} tokens, got {vectors.shape[-1]}: the training "
                             "crop's stage-4 grid does not match allspark.patch_num")
        vectors = vectors.detach().to(self.queue.dtype)
        for k in classes.unique().tolist():
            vk = vectors[classes == k]
            n = vk.shape[0]
            pos = (self.ptr[k] + torch.arange(n, device=vk.device)) % C
            keep = slice(max(n - C, 0), n)  # only the newest C survive; their slots are distinct
            self.queue[k, pos[keep]] = vk[keep]
            self.ptr[k] = (self.ptr[k] + n) % C


class ChannelCrossAttention(nn.Module):
    """``CrossAttnMem``: the two channel-attention branches, CSG and the semantic memory.

    Args:
        channels: C. num_classes: K. tokens: N (memory length). heads: h (2).
        attn_drop, proj_drop: dropout on attention matrices and outputs (0.1).

    Every projection is a bias-free Linear C -> hC (each head has full width C, §3.3).

    ``forward(z, n_labeled, class_maps=None, use_memory=False, size=None, source='batch')``:
        z float (B_l + B_u, N, C), labeled first. Returns float (B_l + B_u, N, C):
        the labeled rows from A5-A6 (K/V from the unlabeled rows, or from the memory when
        ``use_memory``), the unlabeled rows from A3-A4. If ``class_maps`` (B_u, K, H, W) is
        given (training), CSG assigns the unlabeled channels and the memory is updated
        *before* the attention (as in the code).

    ``infer(z, source)``: eval path (§6), z (B, N, C) -> labeled-branch output (B, N, C)
    with Z_l = Z_u = z; ``source='per_image'`` is self-attention of each image,
    ``'batch'`` shares K/V over the batch; ``'memory'`` (s4kit option, not in the paper or
    the code) takes K/V from the semantic memory as training after the warm-up does, so
    the labeled branch sees at test time what it saw in training (needs N tokens, else
    ``ValueError``). The unlabeled-branch weights are unused (the
    official code computes that branch and discards it; skipped here, same result).
    """

    def __init__(self, channels: int, num_classes: int, tokens: int, heads: int = 2, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, memory_sync: str = "allgather", layer_scale: str = "none"):
        super().__init__()
        if layer_scale not in ("none", "zero"):
            raise ValueError(f"AllSpark layer_scale={layer_scale!r}: expected none or zero")
        if memory_sync not in ("allgather", "rank0_broadcast_literal", "local"):
            raise ValueError(f"allspark.memory_sync={memory_sync!r}: expected allgather, rank0_broadcast_literal "
                             "or local")
        hc = heads * channels
        self.heads, self.channels, self.memory_sync = heads, channels, memory_sync
        self.q_u, self.k_u, self.v_u = (nn.Linear(channels, hc, bias=False) for _ in range(3))
        self.out_u = nn.Linear(hc, channels, bias=False)
        self.q_l2u, self.k_l2u, self.v_l2u = (nn.Linear(channels, hc, bias=False) for _ in range(3))
        self.out_l2u = nn.Linear(hc, channels, bias=False)
        self.attn_drop, self.proj_drop = nn.Dropout(attn_drop), nn.Dropout(proj_drop)
        self.memory = SemanticMemory(num_classes, channels, tokens)

    # (A3)-(A4): per-image channel self-attention with h heads of width C
    def unlabeled_branch(self, z_u: torch.Tensor) -> torch.Tensor:
        """z_u (B, N, C) -> (B, N, C). Heads are split head-major (h, C) (the code
        interleaves channel-major; a fixed permutation absorbed by W_o)."""
        B, N, C = z_u.shape
        q, k, v = (p(z_u).view(B, N, self.heads, C).transpose(1, 2) for p in (self.q_u, self.k_u, self.v_u))
        o = channel_attention(q, k, v, self.attn_drop)  # (B, h, N, C)
        return self.proj_drop(self.out_u(o.transpose(1, 2).reshape(B, N, self.heads * C)))

    # (A5)-(A6): labeled queries, one head of hC query channels, K/V from a shared source
    def labeled_branch(self, z_l: torch.Tensor, src: torch.Tensor, per_image: bool = False) -> torch.Tensor:
        """z_l (B_l, N, C); src (S, N, C) source tokens (unlabeled images or memory classes).

        Shared source: K~ = [src_1 W_k, ..., src_S W_k] in R^{N x S hC}, the same for every
        labeled image. ``per_image``: src has B_l rows and image b attends only to src_b.
        Returns (B_l, N, C).
        """
        q = self.q_l2u(z_l)  # (B_l, N, hC)
        k, v = self.k_l2u(src), self.v_l2u(src)  # (S, N, hC)
        if not per_image:
            S, N, hc = k.shape
            k = k.transpose(0, 1).reshape(1, N, S * hc)  # columns: every projected channel of every source
            v = v.transpose(0, 1).reshape(1, N, S * hc)
        return self.proj_drop(self.out_l2u(channel_attention(q, k, v, self.attn_drop)))

    @torch.no_grad()
    def update_memory(self, z_u: torch.Tensor, class_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """CSG then enqueue (A7-A8); returns the assignment int64 (B_u, C).

        Memory entries are the post-LN tokens, detached (not the projected keys, §5).
        Synchronised across ranks as ``memory_sync`` says (fix of §10.6).
        """
        groups = channel_groups(z_u, class_maps, size)  # (B_u, C)
        vectors = z_u.detach().transpose(1, 2).reshape(-1, z_u.shape[1])  # (B_u*C, N), image-major
        classes = groups.reshape(-1)
        if self.memory_sync == "allgather":
            vectors, classes = dist.all_gather_cat(vectors.contiguous()), dist.all_gather_cat(classes.contiguous())
        elif self.memory_sync == "rank0_broadcast_literal" and dist.is_distributed():
            torch.distributed.broadcast(self.memory.queue, src=0)
            torch.distributed.broadcast(self.memory.ptr, src=0)
        self.memory.enqueue(vectors, classes)
        return groups

    def forward(self, z: torch.Tensor, n_labeled: int, class_maps: torch.Tensor | None = None,
                use_memory: bool = False, size: tuple[int, int] | None = None) -> torch.Tensor:
        z_l, z_u = z[:n_labeled], z[n_labeled:]
        if z_u.shape[0] == 0:
            raise ValueError("AllSpark training forward needs unlabeled rows after the labeled ones")
        if class_maps is not None:
            self.update_memory(z_u, class_maps, size)
        if use_memory:
            src = self.memory.queue.transpose(1, 2).clone()  # K pseudo-images (K, N, C): slots act as channels (§3.3)
        else:
            src = z_u
        return torch.cat([self.labeled_branch(z_l, src), self.unlabeled_branch(z_u)], dim=0)

    def infer(self, z: torch.Tensor, source: str = "per_image") -> torch.Tensor:
        if source not in ("per_image", "batch", "memory"):
            raise ValueError(f"AllSpark inference source={source!r}: expected per_image, batch or memory")
        if source == "memory":  # s4kit option (not in the paper): K/V from the memory, as in training
            if z.shape[1] != self.memory.queue.shape[-1]:
                raise ValueError(f"AllSpark inference source='memory' needs {self.memory.queue.shape[-1]} stage-4 "
                                 f"tokens (the training crop's), got {z.shape[1]}")
            return self.labeled_branch(z, self.memory.queue.transpose(1, 2))
        return self.labeled_branch(z, z, per_image=source == "per_image")


class AllSpark(nn.Module):
    """The AllSpark bottleneck on c4 (reference §3.2):

        X = GELU(Conv1x1(c4)) as (B, N, C)                                         (A1)
        Z = LN(X),  Y = CrossAttnMem(Z) + X,  out = GELU(Conv1x1(LN(Y)))           (A2)

    ``layer_scale="zero"`` (s4kit option, not in the paper; docs/methods/allspark.md §11):
    Y = gamma * CrossAttnMem(Z) + X with a learned per-channel gamma (C,) starting at 0
    (LayerScale, Touvron et al. 2021, initialised as ReZero): the block starts as the
    identity on X and lets the attention in as it helps the loss.

    Args:
        channels: C (the c4 width: 512 for MiT-b2..b5, 256 for b0/b1).
        num_classes: K. tokens: N, the stage-4 token count of the training crop (memory length).
        heads, attn_drop, proj_drop, memory_sync: see ``ChannelCrossAttention``.
        layer_scale: ``none`` (paper) or ``zero`` (gamma above). Raises ``ValueError`` otherwise.

    Training (``self.training``): before each forward the method calls
    ``set_context(n_labeled, class_maps, use_memory)``; the input is [labeled; unlabeled]
    c4 float (B_l + B_u, C, h, w) and the output has the same shape. Without a context a
    training forward raises ``RuntimeError``. Eval: ``forward`` maps (B, C, h, w) to
    (B, C, h, w) through the labeled branch in self-attention mode (``infer_source``);
    memory and pointers are left unchanged.

    Init: xavier_uniform for every Linear (none has a bias), PyTorch defaults for convs.
    Parameters for C = 512, h = 2: 4.72 M (§2.4).
    """

    def __init__(self, channels: int, num_classes: int, tokens: int, heads: int = 2, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, memory_sync: str = "allgather", layer_scale: str = "none"):
        super().__init__()
        if layer_scale not in ("none", "zero"):
            raise ValueError(f"AllSpark layer_scale={layer_scale!r}: expected none or zero")
        self.map_in = nn.Conv2d(channels, channels, 1)
        self.norm_in, self.norm_out = nn.LayerNorm(channels, eps=1e-6), nn.LayerNorm(channels, eps=1e-6)
        self.attn = ChannelCrossAttention(channels, num_classes, tokens, heads, attn_drop, proj_drop, memory_sync)
        self.map_out = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(channels)) if layer_scale == "zero" else None
        for m in self.attn.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        self.tokens = tokens
        self.infer_source = "per_image"
        self._ctx: dict | None = None
        self.last_groups: torch.Tensor | None = None

    def set_context(self, n_labeled: int, class_maps: torch.Tensor | None = None, use_memory: bool = False) -> None:
        """What the next training forward needs: how many rows are labeled, the class maps
        (B_u, K, H, W) of the unlabeled rows for CSG (``None``: no memory update), and
        whether K/V come from the memory (after the warm-up) or the unlabeled rows."""
        self._ctx = {"n_labeled": n_labeled, "class_maps": class_maps, "use_memory": use_memory}

    def forward(self, c4: torch.Tensor) -> torch.Tensor:
        B, C, h, w = c4.shape
        x = F.gelu(self.map_in(c4)).flatten(2).transpose(1, 2)  # (B, N, C)   (A1)
        z = self.norm_in(x)
        if self.training:
            if self._ctx is None:
                raise RuntimeError("AllSpark: call set_context(n_labeled, ...) before a training forward")
            ctx, self._ctx = self._ctx, None
            if ctx["use_memory"] and h * w != self.tokens:
                raise ValueError(f"AllSpark memory holds {self.tokens} tokens but the stage-4 grid is {h}x{w}: "
                                 "train on crops of the size the memory was built for")
            a = self.attn(z, ctx["n_labeled"], ctx["class_maps"], ctx["use_memory"], (h, w))
        else:
            a = self.attn.infer(z, self.infer_source)
        y = (a if self.gamma is None else self.gamma * a) + x
        y = self.norm_out(y).transpose(1, 2).reshape(B, C, h, w)
        return F.gelu(self.map_out(y))  # (A2)


def memory_tokens(crop_size: int, input_scale: float = 1.0, mode: str = "auto") -> int:
    """N for the memory: the stage-4 token count of a square training crop ``crop_size``.

    ``auto``: ceil(s'/32)^2 with s' = floor(crop_size * input_scale) (what ``F.interpolate``
    with ``scale_factor`` gives), the true size (fix of
    reference §2.3/§10.5); ``literal``: (s'//32 + 1)^2 as the official ``patch_num``, wrong
    (and crashing) for multiples of 32. Raises ``ValueError`` for another mode.
    """
    import math

    from .segformer import stage4_size

    s = int(math.floor(crop_size * input_scale))
    if mode == "auto":
        return stage4_size(s) ** 2
    if mode == "literal":
        return (s // 32 + 1) ** 2
    raise ValueError(f"allspark.patch_num={mode!r}: expected auto or literal")
