"""The laws as plain functions of a schedule: ``annealing(...)``, ``multipower(...)``."""
from __future__ import annotations

import numpy as np

from .annealing_law import _Annealing
from .core import _lr_input, _query_steps
from .multipower_law import _evaluate_chunked, _MultiPower


def _law(name: str, lam: float | None = 0.999):
    if name == "annealing":
        return _Annealing(lam)
    if name == "multipower":
        return _MultiPower()
    raise ValueError(f"unknown law {name!r}; choose 'annealing' or 'multipower'")


def _eval_params(law, params: dict, schedule_or_lrs, steps, warmup_steps) -> np.ndarray:
    lrs, w = _lr_input(schedule_or_lrs, warmup_steps)
    q = _query_steps(steps, lrs.size)
    ref = float(lrs.max())
    th = law.to_theta(params, ref)
    pred, _ = _evaluate_chunked(law, th, lrs / ref, q, w)
    return pred


def annealing(schedule_or_lrs, steps=None, *, L0: float, A: float, alpha: float, C: float, lam: float = 0.999,
              warmup_steps: int | None = None) -> np.ndarray:
    """The annealing law ``L0 + A*S1^-alpha - C*S2`` at ``steps`` (default: every step).

    ``schedule_or_lrs``: a workbench Schedule (its warmup is used) or a per-step LR array
    (warmup inferred as the steps before the LR first peaks, unless ``warmup_steps`` is given).

    >>> y = annealing([1.0, 1.0, 0.5, 0.5], L0=1.0, A=1.0, alpha=1.0, C=1.0, lam=0.5)
    >>> [round(v, 6) for v in y.tolist()]
    [2.0, 1.5, 0.9, 0.583333]
    """
    return _eval_params(_Annealing(lam), dict(L0=L0, A=A, alpha=alpha, C=C, lam=lam), schedule_or_lrs, steps,
                        warmup_steps)


def multipower(schedule_or_lrs, steps=None, *, L0: float, A: float, alpha: float, B: float, C: float,
               beta: float, gamma: float, warmup_steps: int | None = None) -> np.ndarray:
    """The multi-power law at ``steps`` (default: every step); see the module docstring.

    >>> y = multipower([1.0, 1.0, 1.0, 1.0], L0=2.0, A=1.0, alpha=1.0, B=1.0, C=1.0, beta=1.0, gamma=1.0)
    >>> y.tolist()        # a constant LR: no loss drop, L0 + 1/S1
    [3.0, 2.5, 2.3333333333333335, 2.25]
    """
    p = dict(L0=L0, A=A, alpha=alpha, B=B, C=C, beta=beta, gamma=gamma)
    for k in ("A", "alpha", "B", "C", "beta", "gamma"):
        if not p[k] > 0:
            raise ValueError(f"multipower: {k} must be > 0, got {p[k]}")
    return _eval_params(_MultiPower(), p, schedule_or_lrs, steps, warmup_steps)
