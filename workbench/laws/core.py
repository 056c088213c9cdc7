"""Constants, the schedule areas S1/S2, input checks and the error metrics shared by the laws."""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


LAWS = {
    "annealing": ("L0", "A", "alpha", "C", "lam"),
    "multipower": ("L0", "A", "alpha", "B", "C", "beta", "gamma"),
}
HUBER_DELTA = 1e-3
BLOCK_EPS = 0.1          # far-field block size / distance in the multi-power LD sum
_ETA_FLOOR = 1e-12       # LRs below this fraction of the peak count as this in eta^-gamma
_FORMAT = "workbench.fitted_law"


def _warm_eta(lrs, warmup_steps: int | None) -> tuple[np.ndarray, int]:
    eta = np.asarray(lrs, dtype=np.float64).ravel()
    if eta.size == 0 or not np.all(np.isfinite(eta)):
        raise ValueError("lrs must be a non-empty array of finite learning rates")
    if warmup_steps is None:
        warmup_steps = int(np.argmax(eta))
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps:
        eta = eta.copy()
        eta[:warmup_steps] = eta[warmup_steps] if warmup_steps < eta.size else eta.max()
    return eta, int(warmup_steps)


def _drops(eta: np.ndarray) -> np.ndarray:
    drops = np.empty_like(eta)
    drops[0] = 0.0  # m_1 = 0 (a public reproduction wrongly starts from lr[0])
    drops[1:] = eta[:-1] - eta[1:]
    return drops


def areas(lrs, lam: float = 0.999, warmup_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(S1, S2)`` for a per-step LR array (index ``k`` = after ``k+1`` updates).

    ``warmup_steps``: the steps of the initial warmup, whose LRs count as the peak LR. ``None``
    takes the steps before the LR first reaches its maximum (0 for a schedule without warmup).
    The recursion for ``m`` is a first-order linear filter, evaluated in O(T) without a Python loop.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must be in [0, 1) (the paper uses 0.999), got {lam}")
    eta, _ = _warm_eta(lrs, warmup_steps)
    m = lfilter([1.0], [1.0, -lam], _drops(eta))
    return np.cumsum(eta), np.cumsum(m)


def _lr_input(schedule_or_lrs, warmup_steps: int | None) -> tuple[np.ndarray, int]:
    """Per-step LRs and warmup steps from a Schedule or an array."""
    from workbench.schedules import Schedule

    from workbench.curves import LossCurve

    if isinstance(schedule_or_lrs, Schedule):
        lrs = schedule_or_lrs.lrs()
        w = schedule_or_lrs.warmup if warmup_steps is None else warmup_steps
    elif isinstance(schedule_or_lrs, LossCurve):
        lrs = schedule_or_lrs.lrs
        w = schedule_or_lrs.warmup if warmup_steps is None else warmup_steps
    else:
        lrs = np.asarray(schedule_or_lrs, dtype=np.float64).ravel()
        w = warmup_steps
    if lrs.size == 0 or not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise ValueError("learning rates must be a non-empty array of finite, non-negative numbers")
    if not np.any(lrs > 0):
        raise ValueError("every learning rate is 0; the laws need a positive LR")
    if w is None or (w == 0 and warmup_steps is None and lrs[0] < lrs.max()):
        w = int(np.argmax(lrs))       # no declared warmup (e.g. piecewise): the steps before the peak
    w = int(w)
    if not 0 <= w < lrs.size:
        raise ValueError(f"warmup_steps must be in [0, {lrs.size}), got {w}")
    return lrs, w


def _query_steps(steps, total: int) -> np.ndarray:
    if steps is None:
        return np.arange(total, dtype=np.int64)
    q = np.asarray(steps)
    if q.ndim == 0:
        q = q.reshape(1)
    if q.size and (np.issubdtype(q.dtype, np.floating) and not np.all(q == np.round(q))):
        raise ValueError("steps must be whole numbers (0-based update indices)")
    q = q.astype(np.int64)
    if q.size and (q.min() < 0 or q.max() >= total):
        raise ValueError(f"steps must lie in [0, {total}) for a {total}-step schedule; got {q.min()}..{q.max()}")
    return q



def metrics(pred, y) -> dict:
    """``r2``, ``mae``, ``rmse``, ``pred_err`` (mean ``|pred-y|/y``), ``worst_err`` (max of it), ``n``.

    >>> m = metrics([1.0, 2.0], [1.0, 2.5])
    >>> m["mae"], m["pred_err"], m["worst_err"], m["r2"]
    (0.25, 0.1, 0.2, 0.7777777777777778)
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if pred.size != y.size or y.size == 0:
        raise ValueError(f"metrics need as many predictions as measurements (got {pred.size} and {y.size})")
    err = pred - y
    rel = np.abs(err) / y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"r2": r2, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "pred_err": float(rel.mean()), "worst_err": float(rel.max()), "n": int(y.size)}
