"""Loss-weight schedules, all in iterations (0-based iteration t, run length T).

    linear ramp-up     r(t) = min(1, (t + 1) / L), 1 when L = 0           (ReCo/CSS lambda_c, RC2L lambda_u)
    Gaussian ramp-down d(t) = exp(m (t / T)^2)                             (PRCL P9, CSS C9; m = -5)

With m = -5 the ramp-down falls from 1 to exp(-5) ~ 0.0067 over the run (PRCL's
``RampdownScheduler``; CSS's code steps it per labelled-loader epoch over 200 epochs).
A schedule given as a share of the run is named ``*_fraction`` and turned into
iterations with ``fraction_to_iters``.
"""
from __future__ import annotations

import math


def linear_rampup(iteration: int, length: int) -> float:
    """min(1, (t + 1) / length); 1 when ``length`` is 0 (no ramp)."""
    return min(1.0, (iteration + 1) / length) if length else 1.0


def gaussian_rampdown(iteration: float, total: float, mult: float = -5.0) -> float:
    """exp(mult (max(t, 0) / total)^2), for total > 0 (callers that stop the weight at
    t >= total, as PRCL's scheduler does, check that themselves)."""
    return math.exp(mult * (max(iteration, 0.0) / total) ** 2)


def fraction_to_iters(fraction: float, total: int) -> int:
    """ceil(fraction * total): the first iteration at or after a share of the run."""
    return int(math.ceil(fraction * total))
