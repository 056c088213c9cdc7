"""Loss-curve laws and the schedule quantities that drive them.

The annealing law (Tissue, Wang, Wang 2408.11029) writes the loss after ``s`` steps as
``L(s) = L0 + A*S1^(-alpha) - C*S2`` with

* ``S1(s) = sum_{i<=s} eta_i``, the cumulative LR area ("forward area"), and
* ``S2(s) = sum_{i<=s} m_i``, ``m_i = lam*m_{i-1} + (eta_{i-1} - eta_i)``, ``m_1 = 0``, the annealing
  area (momentum of LR drops; negative while the LR rises, so re-warming is covered).

During the initial warmup both are computed as if ``eta = eta_max`` (the paper's convention).

Example:
    >>> import numpy as np
    >>> s1, s2 = areas(np.array([1.0, 1.0, 0.5, 0.5]), lam=0.5)
    >>> s1.tolist(), s2.tolist()
    ([1.0, 2.0, 2.5, 3.0], [0.0, 0.0, 0.5, 0.75])
"""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

__all__ = ["areas"]


def areas(lrs, lam: float = 0.999, warmup_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(S1, S2)`` for a per-step LR array (index ``k`` = after ``k+1`` updates).

    ``warmup_steps``: the steps of the initial warmup, whose LRs count as the peak LR. ``None``
    takes the steps before the LR first reaches its maximum (0 for a schedule without warmup).
    The recursion for ``m`` is a first-order linear filter, evaluated in O(T) without a Python loop.
    """
    eta = np.asarray(lrs, dtype=np.float64).ravel()
    if eta.size == 0 or not np.all(np.isfinite(eta)):
        raise ValueError("lrs must be a non-empty array of finite learning rates")
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must be in [0, 1) (the paper uses 0.999), got {lam}")
    if warmup_steps is None:
        warmup_steps = int(np.argmax(eta))
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps:
        eta = eta.copy()
        eta[:warmup_steps] = eta[warmup_steps] if warmup_steps < eta.size else eta.max()
    drops = np.empty_like(eta)
    drops[0] = 0.0  # m_1 = 0 (a public reproduction wrongly starts from lr[0])
    drops[1:] = eta[:-1] - eta[1:]
    m = lfilter([1.0], [1.0, -lam], drops)
    return np.cumsum(eta), np.cumsum(m)
