"""Schedule search: the schedule of a family that minimises a fitted law's predicted final loss."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from .core import _ETA_FLOOR, _drops, _warm_eta
from .fitted import FittedLaw


def _final_loss_grad(fitted: FittedLaw, lrs: np.ndarray, warmup: int) -> tuple[float, np.ndarray]:
    """The law's loss after the last step and its gradient with respect to the post-warmup LRs
    ``lrs[warmup:]`` (normalised by ``fitted.eta_ref``), exact, in O(T). The warmup LRs and the
    first post-warmup LR (the peak) are held fixed."""
    th = fitted.theta
    W = int(warmup)
    if fitted.law == "annealing":
        lam = fitted.params["lam"]
        eta, _ = _warm_eta(lrs, W)
        n = eta.size
        j = np.arange(n)
        w = -np.expm1((n - j) * math.log(lam)) / (1.0 - lam)       # (1 - lam^(n-j)) / (1 - lam)
        drops = _drops(eta)
        s1, s2 = eta.sum(), float(np.dot(drops, w))
        A, alpha, C = math.exp(th[1]), math.exp(th[2]), th[3]
        dS2 = np.empty(n)                                            # d S2 / d eta_i
        dS2[:-1] = w[1:] - w[:-1]
        dS2[-1] = -w[-1]
        dS2[0] = w[1] if n > 1 else 0.0
        g = -alpha * A * s1 ** (-alpha - 1.0) - C * dS2
        return float(th[0] + A * s1 ** (-alpha) - C * s2), g[W:]
    L0, A, alpha, B, C, beta, gamma = th[0], *np.exp(th[1:]).tolist()
    post = lrs[W:]
    eta0 = float(lrs[:W + 1].max())
    P = np.cumsum(post)
    S = P[-1] - np.concatenate([[0.0], P[:-1]])
    d = np.concatenate([[eta0 - post[0]], post[:-1] - post[1:]])
    floor = _ETA_FLOOR * eta0
    ef = np.maximum(post, floor)
    e = ef ** (-gamma)
    u = 1.0 + C * e * S
    ub = u ** (-beta)
    G = 1.0 - ub
    Gp = beta * ub / u
    Z = float(lrs[:W].sum() + P[-1])
    loss = L0 + A * Z ** (-alpha) - B * float(np.dot(d, G))
    g = np.full(post.size, -alpha * A * Z ** (-alpha - 1.0))
    g -= B * (np.concatenate([G[1:], [0.0]]) - G)                   # through the drops d
    de = np.where(post > floor, -gamma * e / ef, 0.0)
    g -= B * d * Gp * C * S * de                                     # through eta_k^-gamma
    g -= B * C * np.cumsum(d * Gp * e)                               # through the areas S_k
    return float(loss), g


def optimize_schedule(fitted: FittedLaw, total_steps: int, family: str = "wsd", *, peak_lr: float | None = None,
                      warmup_steps: int = 0, min_lr: float = 0.0, shapes: Sequence[str] | None = None,
                      n_knots: int = 40, max_iter: int = 300, band: bool = False, level: float = 0.9):
    """The schedule of a family that minimises the law's predicted final loss.

    Args:
        fitted: a :class:`FittedLaw`.
        total_steps: the run's length.
        family: ``"wsd"`` (searches the decay fraction and the decay shape) or ``"free"`` (any
            schedule that does not increase after the warmup, ``n_knots`` knots, linear between).
        peak_lr: the peak LR (default: the peak of the fit's data; the laws know nothing about
            instability, so they would always pick a larger peak if it were free).
        warmup_steps, min_lr: fixed, as in ``schedules.wsd``.
        shapes: decay shapes to try (default: all of ``schedules.DECAY_SHAPES`` that ``min_lr`` allows).
        band, level: also return the forecast of the final loss with its ``level`` band.

    Returns a workbench Schedule (``wsd`` or, for ``free``, ``piecewise``); with ``band=True``,
    ``(schedule, (final, low, high))``.

    Refuses (``ValueError`` with the reason) to search where the law cannot forecast: a peak LR
    outside the fitted curves' range, a run far longer than they are, or an optimum whose forecast
    is impossible (below 0 or the fitted floor, or a band wider than the loss); see
    :meth:`FittedLaw.check_domain`.

    >>> from workbench import schedules
    >>> f = FittedLaw("multipower", dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5), 1e-3)
    >>> s = optimize_schedule(f, 2000, warmup_steps=100)
    >>> s.family, 0.0 < s.decay_fraction <= 1.0
    ('wsd', True)
    """
    from workbench import schedules

    if peak_lr is None:
        peak_lr = fitted.eta_ref
    total_steps = int(total_steps)
    if total_steps < 2 or not 0 <= warmup_steps < total_steps - 1:
        raise ValueError(f"need total_steps >= 2 and 0 <= warmup_steps < total_steps-1, got {total_steps}, "
                         f"{warmup_steps}")
    if not 0 <= min_lr < peak_lr:
        raise ValueError(f"min_lr must be in [0, peak_lr={peak_lr}), got {min_lr}")

    probe = schedules.constant(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps)
    reasons = [r for r in fitted.check_domain(probe, level=level) if "peak LR" in r or "longest fitted" in r]
    if reasons:
        raise ValueError("optimize_schedule refuses to extrapolate: " + "; ".join(reasons))

    def final(s):
        return float(fitted.predict(s, [total_steps - 1])[0])

    def answer(s):
        bad = fitted.check_domain(s, level=level)
        if bad:
            raise ValueError("optimize_schedule found no forecast it can stand behind: " + "; ".join(bad))
        if not band:
            return s
        if fitted.cov is None:
            raise ValueError("band=True needs a fit with a covariance (made by workbench.laws.fit)")
        m, lo, hi = fitted.predict(s, [total_steps - 1], band=True, level=level)
        return s, (float(m[0]), float(lo[0]), float(hi[0]))

    if family == "wsd" or family == "free":
        shapes = [s for s in (shapes or schedules.DECAY_SHAPES) if s != "exponential" or min_lr > 0]
        bad = [s for s in shapes if s not in schedules.DECAY_SHAPES]
        if bad:
            raise ValueError(f"unknown decay shape(s) {bad}; choose from {', '.join(schedules.DECAY_SHAPES)}")
        max_frac = (total_steps - warmup_steps) / total_steps

        def make(frac, shape):
            return schedules.wsd(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                                 min_lr=min_lr, decay_fraction=float(min(max(frac, 0.0), max_frac)), decay=shape)
        best = None
        grid = np.linspace(0.0, max_frac, 21)
        for shape in shapes:
            vals = [final(make(f, shape)) for f in grid]
            i = int(np.argmin(vals))
            lo_, hi_ = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
            r = minimize_scalar(lambda f: final(make(f, shape)), bounds=(lo_, hi_), method="bounded",
                                options={"xatol": 1e-4 * max_frac})
            cand = [(vals[i], grid[i]), (float(r.fun), float(r.x))]
            v, f = min(cand)
            if best is None or v < best[0]:
                best = (v, f, shape)
        wsd_best = make(best[1], best[2])
        if family == "wsd":
            return answer(wsd_best)
        return answer(_free_form(fitted, total_steps, peak_lr, warmup_steps, min_lr, n_knots, max_iter, wsd_best))
    raise ValueError(f"unknown family {family!r}; choose 'wsd' or 'free'")


def _free_form(fitted, T, peak, W, min_lr, n_knots, max_iter, init):
    from scipy.optimize import minimize
    from scipy.special import expit

    from workbench import schedules

    K = int(max(3, min(n_knots, (T - W) // 2 + 1)))
    knots = np.unique(np.linspace(W, T - 1, K).round().astype(np.int64))
    K = knots.size
    ref = fitted.eta_ref
    t = np.arange(W, T)
    seg = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, K - 2)
    w = np.clip((t - knots[seg]) / np.maximum(knots[seg + 1] - knots[seg], 1), 0.0, 1.0)
    warm = (peak * np.arange(W) / max(W, 1)) / ref
    top, span = peak / ref, (peak - min_lr) / ref

    def values(z):
        u = np.logaddexp(0.0, z)                                     # softplus: increments >= 0
        U = u.sum()
        c = np.cumsum(u[:-1]) / U                                    # in [0, 1), non-decreasing
        return np.concatenate([[top], top - span * c]), u, U, c

    def objective(z):
        v, u, U, c = values(z)
        post = v[seg] * (1 - w) + v[seg + 1] * w
        loss, g_post = _final_loss_grad(fitted, np.concatenate([warm, post]), W)
        g_v = np.bincount(seg, g_post * (1 - w), minlength=K) + np.bincount(seg + 1, g_post * w, minlength=K)
        gv = g_v[1:]                                                  # knot 0 (the peak) is fixed
        # v_j = top - span * c_{j-1}, c_i = sum_{m<=i} u_m / U
        tail = np.concatenate([np.cumsum(gv[::-1])[::-1], [0.0]])      # sum_{i>=m} g_i
        g_u = -span * (tail - float(np.dot(gv, c))) / U
        return loss, g_u * expit(z)                                    # d softplus / dz = sigmoid

    def z_from(vals):
        c = np.clip((peak - vals) / max(peak - min_lr, 1e-300), 0.0, 1.0)
        inc = np.maximum(np.diff(np.concatenate([[0.0], c[1:], [1.0]])), 1e-6)
        inc = inc / inc.sum() * K
        return np.log(np.expm1(inc))

    best = None
    for start in (init(knots), peak - (peak - min_lr) * (knots - W) / max(T - 1 - W, 1)):
        r = minimize(objective, z_from(np.asarray(start, dtype=np.float64)), jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-10})
        if best is None or r.fun < best[0]:
            best = (float(r.fun), values(r.x)[0] * ref)
    vals = np.clip(best[1], min_lr, peak)
    vals[0] = peak
    points = ([(0, 0.0)] if W > 0 else []) + [(int(k), float(v)) for k, v in zip(knots, vals)]
    return schedules.piecewise(points=points, total_steps=T)
