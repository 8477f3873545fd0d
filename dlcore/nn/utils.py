"""Gradient utilities."""
from __future__ import annotations

import math

from dlcore.autograd import math_of


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale gradients in place so their global norm is at most ``max_norm`` (torch.nn.utils.clip_grad_norm_).

    Returns:
        The total norm before clipping, as a float (``inf`` norm supported).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    m = math_of(grads[0])
    if norm_type == math.inf:
        total = max(float(m.amax(m.abs(g))) for g in grads)
    else:
        total = sum(float(m.sum(m.abs(g) ** norm_type)) for g in grads) ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total
