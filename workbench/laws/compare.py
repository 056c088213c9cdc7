"""Ranking schedules by a fitted law's predicted final loss, saying which differences the fit resolves."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .core import _lr_input
from .multipower_law import _evaluate_chunked


@dataclass
class ScheduleComparison:
    """The result of :func:`compare_schedules`.

    ``final``/``low``/``high``: predicted final loss and its ``level`` interval per schedule; ``order``:
    names from the lowest predicted final loss; ``resolved[(a, b)]``: whether the fit resolves that
    ``a`` ends below ``b`` (the ``level`` interval of the difference excludes 0 and every
    leave-one-curve-out fit agrees); ``fold_order``: per leave-one-curve-out fit (named by the curve it
    left out), its predicted order; ``domain``: per schedule, the reasons its forecast is outside the
    fit's domain (``FittedLaw.check_domain``).
    """

    names: list[str]
    final: dict
    low: dict
    high: dict
    order: list[str]
    resolved: dict
    level: float
    domain: dict = field(default_factory=dict)
    fold_order: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"predicted final loss ({100 * self.level:g}% interval), lowest first:"]
        for n in self.order:
            flag = "  [outside the fit's domain: " + "; ".join(self.domain[n]) + "]" if self.domain.get(n) else ""
            lines.append(f"  {n}: {self.final[n]:.4f} [{self.low[n]:.4f}, {self.high[n]:.4f}]{flag}")
        for a, b in zip(self.order, self.order[1:]):
            verdict = "resolved" if self.resolved[(a, b)] else "NOT resolved by these curves"
            lines.append(f"  {a} < {b}: {verdict} (difference {self.final[b] - self.final[a]:.4f})")
        for held, o in self.fold_order.items():
            if o != self.order:
                lines.append(f"  without {held} the fit orders them {' < '.join(o)}")
        if not all(self.resolved[(a, b)] for a, b in zip(self.order, self.order[1:])):
            lines.append("  unresolved pairs may rank either way: measure them, or fit on more curves")
        return "\n".join(lines)


def compare_schedules(fit, schedules, names=None, level: float = 0.9) -> ScheduleComparison:
    """Predicted final losses of several schedules with intervals, their order, and which pairwise
    differences the fit resolves.

    The interval of a difference ``L_a - L_b`` combines the parameter uncertainty of the difference
    (delta method with the fit's covariance: what the two forecasts share cancels) and, when the fit is
    calibrated, the law's held-out relative error for each of the two forecasts (taken as independent,
    which is conservative). A pair counts as resolved only when that interval excludes 0 *and* every
    leave-one-curve-out fit (kept in ``fit.info["validation"]["folds"]``) predicts the same order: an
    order that flips when one curve is left out depends on which curves were measured, not on the law.

    >>> from workbench import schedules as S
    >>> from workbench.laws import FittedLaw
    >>> f = FittedLaw("multipower", dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5), 1e-3,
    ...               cov=np.eye(7) * 1e-6)
    >>> c = compare_schedules(f, [S.constant(peak_lr=1e-3, total_steps=2000, warmup_steps=100),
    ...                           S.wsd(peak_lr=1e-3, total_steps=2000, warmup_steps=100)], names=["const", "wsd"])
    >>> c.order, c.resolved[("wsd", "const")]
    (['wsd', 'const'], True)
    """
    from scipy.stats import norm

    schedules = list(schedules)
    if not schedules:
        raise ValueError("compare_schedules needs at least one schedule")
    if names is None:
        names = [getattr(s, "family", None) or f"schedule{i}" for i, s in enumerate(schedules)]
        names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    names = [str(n) for n in names]
    if len(names) != len(schedules) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(schedules)} distinct labels, got {names}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if fit.cov is None:
        raise ValueError("the fit has no covariance; refit with workbench.laws.fit to compare schedules")
    lw, th = fit._lw, fit.theta
    z = float(norm.ppf(0.5 + level / 2))
    scale = float((fit.info.get("calibration") or {}).get("scale") or 0.0)
    final, low, high, grads, domain = {}, {}, {}, {}, {}
    for n, s in zip(names, schedules):
        lrs, w = _lr_input(s, None)
        p, J = _evaluate_chunked(lw, th, lrs / fit.eta_ref, np.array([lrs.size - 1]), w, jac=True)
        m, lo, hi = fit.predict(lrs, [lrs.size - 1], band=True, level=level, warmup_steps=w)
        final[n], low[n], high[n], grads[n] = float(m[0]), float(lo[0]), float(hi[0]), J[0]
        domain[n] = fit.check_domain(lrs, warmup_steps=w, level=level)
    order = sorted(names, key=lambda n: final[n])
    from .fitted import FittedLaw

    fold_final = {}
    for fold in (fit.info.get("validation") or {}).get("folds") or []:
        if fold.get("params"):
            ff = FittedLaw(fit.law, fold["params"], fit.eta_ref, info={"fit_lam": fit.info.get("fit_lam", False)})
            fold_final[fold["held_out"]] = {n: float(ff.predict(s, [_lr_input(s, None)[0].size - 1])[0])
                                            for n, s in zip(names, schedules)}
    resolved = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            g = grads[a] - grads[b]
            var = float(g @ fit.cov @ g) + (scale * final[a]) ** 2 + (scale * final[b]) ** 2
            diff = final[b] - final[a]
            agree = all(ff[b] > ff[a] for ff in fold_final.values())
            resolved[(a, b)] = bool(diff > z * math.sqrt(max(var, 0.0)) and agree)
    fold_order = {k: sorted(names, key=lambda n: v[n]) for k, v in fold_final.items()}
    return ScheduleComparison(names, final, low, high, order, resolved, level, domain, fold_order)
