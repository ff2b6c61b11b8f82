"""PRCL's probability head (sigma^2) and a network wrapper that adds it to DeepLabV3+.

Source: Xie et al., "Boosting Semi-Supervised Semantic Segmentation with Probabilistic
Representations", AAAI 2023 (arXiv 2210.14670); docs/methods/prcl.md §2.3 (official code
``generalframeworks/networks/uncer_head.py``, ``Uncertainty_head``). Per pixel p with input
x_p (the raw decoder concatenation, C_f channels):

    h = ReLU(BN_affine(W1^ x_p)),   g = BN_no-affine(W2^ h),   g' = gamma * g + beta    (P1a)
    sigma^2_p = sigmoid(ln(exp(g') + 1e-6))  in (0, 1)^D                              (P1b)

W1^, W2^ are the 1x1-conv weights with every row (output channel) L2-normalised at each
forward; no biases; gamma, beta are learnable *scalars* (init 1, 0). The sigmoid output is
used directly as the per-dimension variance (diagonal covariance).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ProbabilityHead(nn.Module):
    """The sigma^2 head (P1a)-(P1b).

    Args:
        in_channels: C_in (304 = C_f on the papers' DeepLabV3+; ``rep_dim`` if it reads mu).
        out_channels: D, the dimension of the representation it pairs with.

    ``forward(x)``: float (B, C_in, h, w) -> sigma^2 float (B, D, h, w), strictly in (0, 1)
    for finite inputs (the sigmoid saturates to exactly 0 or 1 only beyond |g'| ~ 17 in
    float32; the output is clamped to [1e-6, 1 - 1e-6] so that 1/sigma^2 and ln stay finite).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(out_channels, in_channels))
        self.w2 = nn.Parameter(torch.empty(out_channels, out_channels))
        nn.init.kaiming_normal_(self.w1)
        nn.init.kaiming_normal_(self.w2)
        self.bn1 = nn.BatchNorm2d(out_channels, affine=True)
        self.bn2 = nn.BatchNorm2d(out_channels, affine=False)
        self.gamma = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _conv1x1(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # W^ = W with unit-norm rows
        w = F.normalize(w, dim=1)
        return F.conv2d(x, w.to(x.dtype)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self._conv1x1(x, self.w1)))                      # (P1a)
        g = self.gamma * self.bn2(self._conv1x1(h, self.w2)) + self.beta
        # (P1b); ln(exp(g') + 1e-6) computed stably as logaddexp(g', ln 1e-6)
        guarded = torch.logaddexp(g.float(), torch.tensor(-13.815510557964274, device=g.device))
        return torch.sigmoid(guarded).clamp(1e-6, 1 - 1e-6)


class ProbabilisticNet(nn.Module):
    """A segmentation network plus a probability head: ``forward`` adds ``sigma2``.

    Args:
        net: a network returning a dict with ``logits``, ``rep`` (B, D, h, w) and ``feat``
            (B, C_f, h, w) (``s4kit.models.DeepLabV3Plus``).
        head: the ``ProbabilityHead``.
        head_input: ``feat`` (the official code: the raw decoder concatenation) or ``rep``
            (the head reads the mean mu; prcl.md §13 ``sigma_head_input=mu``).
        sigma_batch: ``per_stream`` (the head runs inside every forward, so in training its
            BatchNorm sees each stream's statistics) or ``joint`` (the official code,
            ``generalframeworks/networks/ddp_model.py`` L73: the head runs once on the labeled and unlabeled features
            concatenated, one BatchNorm batch). With ``joint``, a forward in training mode
            leaves ``sigma2`` out and the caller runs ``forward(None, features=cat)``.

    ``forward(x)`` returns ``net(x)`` plus ``sigma2`` float (B, D, h, w) in (0, 1) (not in
    training mode with ``sigma_batch=joint``). ``forward(None, features=f)`` with f float
    (N, C_in, h, w) returns ``{"sigma2": (N, D, h, w)}``; it goes through ``forward`` so that
    a ``DistributedDataParallel`` wrapper sees the head's use. Raises ``ValueError`` for
    another ``head_input`` or ``sigma_batch``.
    """

    def __init__(self, net: nn.Module, head: ProbabilityHead, head_input: str = "feat",
                 sigma_batch: str = "per_stream"):
        super().__init__()
        if head_input not in ("feat", "rep"):
            raise ValueError(f"head_input={head_input!r}: expected feat or rep")
        if sigma_batch not in ("joint", "per_stream"):
            raise ValueError(f"sigma_batch={sigma_batch!r}: expected joint or per_stream")
        self.net, self.sigma_head, self.head_input, self.sigma_batch = net, head, head_input, sigma_batch
        self.num_classes, self.rep_dim = getattr(net, "num_classes", None), getattr(net, "rep_dim", None)

    def forward(self, x: torch.Tensor | None, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if features is not None:
            return {"sigma2": self.sigma_head(features)}
        out = dict(self.net(x))
        if not (self.training and self.sigma_batch == "joint"):
            out["sigma2"] = self.sigma_head(out[self.head_input])
        return out
