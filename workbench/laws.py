"""Loss-curve laws, the schedule quantities that drive them, fitting, prediction and schedule search.

Step convention (as in :mod:`workbench.schedules` and :mod:`workbench.curves`): ``lrs[t]`` is the LR
of the (t+1)-th update, and the loss "at step s" is the loss after ``s+1`` updates, so it depends on
``lrs[0..s]``. Every per-step array here is indexed that way.

**Annealing law** (Tissue, Wang, Wang 2408.11029): ``L(s) = L0 + A*S1^(-alpha) - C*S2`` with

* ``S1(s) = sum_{i<=s} eta_i``, the cumulative LR area ("forward area"), and
* ``S2(s) = sum_{i<=s} m_i``, ``m_i = lam*m_{i-1} + (eta_{i-1} - eta_i)``, ``m_1 = 0``, the annealing
  area (momentum of LR drops; negative while the LR rises, so re-warming is covered).

During the initial warmup both are computed as if ``eta = eta_max`` (the paper's convention).
``lam`` (0.999 in the paper) is fixed or fitted (``fit(..., lam=None)``).

**Multi-power law** (Luo et al., ICLR 2025, 2503.12811), seven parameters
``L0, A, alpha, B, C, beta, gamma``::

    L(t) = L0 + A*(S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t)),  G(x) = 1 - (C*x + 1)^(-beta)

with ``t`` counted after the warmup of ``W`` steps, ``S1(t)`` the LR area after it, ``S_k(t)`` the
area of steps ``k..t``, ``eta_0`` the peak LR and ``S_W`` the warmup's LR area. Here ``S_W`` is the
actual area ``sum(lrs[:W])`` (``eta_max*(W-1)/2`` for the workbench's linear warmup, which starts at 0;
the paper writes ``eta_max*W/2``: half a peak step apart). An LR of exactly 0 in ``eta_k^(-gamma)``
is floored at ``1e-12`` of the peak, which gives the limits: ``G = 1`` once later steps add LR area,
``G = 0`` while none do (updates with LR 0 change nothing).

*How LD is evaluated.* Naively ``LD`` at every step is an O(T^2) double sum. Here the drops
``d_k = eta_{k-1} - eta_k`` are aggregated in a dyadic pyramid (aligned blocks of 1, 2, 4, ... steps)
that stores, per block, ``sum d_k``, ``sum d_k eta_k^-gamma`` and ``sum d_k eta_k^-gamma * (area
from k to the block's end)``, built bottom-up from local sums in O(T) per value of ``gamma`` (no
cancellation between large prefix sums). A requested step ``t`` sums over O(log(T)/eps) blocks:
single steps next to ``t``, and further away blocks at most ``eps = 0.1`` times their distance from
``t``, both in steps and in LR area, inside which the LR varies by at most ``eps`` of itself; each
block's ``G`` is taken at its drop-weighted mean argument (exact to first order: the error is
second order in ``eps``, ~1e-6 of the loss, tested against a brute-force O(T^2) sum; a step
schedule is exact). Blocks without an LR change (constant stretches) are skipped. Cost:
O(T + Q*log(T)/eps) for ``Q`` requested steps: ~2000 display points of a 100k-step cosine in
~35 ms on a 2-core CPU (all 100k steps: ~1.4 s; :meth:`FittedLaw.predictor` interpolates between
display steps), and a fit evaluates ~1e5 block terms per iteration for 3 curves x 500 points.

**Fitting** (:func:`fit`): curves with different schedules are fitted jointly by minimising the sum
of ``Huber_delta(log Lhat - log L)`` (``delta = 1e-3``) over their points after warmup (points
inside the warmup are not described by either law and are skipped; the count is in ``info``).
LRs are rescaled by the largest peak LR, so initial values scale with the data. Initialisation: a
grid over the non-linear parameters, each with the linear ones (``L0, A`` and ``C`` or ``B``)
solved by non-negative least squares on relative errors; the 3 best grid points and ``restarts``
seeded perturbations of the best are refined a little, and the best of them to convergence, by a
trust-region least-squares solver (scipy ``least_squares``, Huber loss, analytic Jacobian,
bounds). Deterministic given ``seed``. With two or more curves, early stopping (the number of
solver evaluations, from ``STOP_CANDIDATES``) is chosen by leave-one-curve-out validation: fit on
the other curves, score the mean relative error on the left-out one; the least-stopped candidate
within ``STOP_TOLERANCE`` (5%) of the best wins; all of it is in ``info["validation"]``. Points
that two curves share exactly (a two-stage run branched from the constant run) count once, and are
not scored when their curve is left out.

**Uncertainty**: a Laplace (Gauss-Newton) approximation of the parameter covariance from the
fit's residuals; ``predict(..., band=True)`` returns ``(mean, low, high)`` by the delta method.
It reflects parameter uncertainty given the law, not the law's own error on unseen schedules.

Example:
    >>> import numpy as np
    >>> s1, s2 = areas(np.array([1.0, 1.0, 0.5, 0.5]), lam=0.5)
    >>> s1.tolist(), s2.tolist()
    ([1.0, 2.0, 2.5, 3.0], [0.0, 0.0, 0.5, 0.75])
    >>> from workbench import schedules
    >>> s = schedules.wsd(peak_lr=1e-3, total_steps=2000, warmup_steps=100, decay_fraction=0.2)
    >>> p = dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5)
    >>> y = multipower(s, **p)
    >>> bool(y[1599] > y[1999]), y.shape
    (True, (2000,))
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import least_squares, minimize_scalar, nnls
from scipy.signal import lfilter

__all__ = ["areas", "annealing", "multipower", "LAWS", "fit", "FittedLaw", "load_fit", "optimize_schedule",
           "metrics"]

LAWS = {
    "annealing": ("L0", "A", "alpha", "C", "lam"),
    "multipower": ("L0", "A", "alpha", "B", "C", "beta", "gamma"),
}
HUBER_DELTA = 1e-3
BLOCK_EPS = 0.1          # far-field block size / distance in the multi-power LD sum
_ETA_FLOOR = 1e-12       # LRs below this fraction of the peak count as this in eta^-gamma
_FORMAT = "workbench.fitted_law"


# --------------------------------------------------------------------------- S1 / S2
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


# --------------------------------------------------------------------------- helpers
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


# --------------------------------------------------------------------------- annealing law
class _AnnealStruct:
    """Per (LR array, query steps): S1 at the queries and what S2 needs."""

    def __init__(self, lrs: np.ndarray, steps: np.ndarray, warmup: int, lam: float | None):
        eta, _ = _warm_eta(lrs, warmup)
        self.q = steps
        self.s1 = np.maximum(np.cumsum(eta)[steps], 1e-300)
        self.drops = _drops(eta)
        self.in_warmup = steps < warmup
        self.s2 = None
        if lam is not None:
            self.s2 = np.cumsum(lfilter([1.0], [1.0, -lam], self.drops))[steps]

    def s2_and_grad(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        m = lfilter([1.0], [1.0, -lam], self.drops)
        shifted = np.concatenate([[0.0], m[:-1]])
        dm = lfilter([1.0], [1.0, -lam], shifted)        # d m_i / d lam
        return np.cumsum(m)[self.q], np.cumsum(dm)[self.q]


class _Annealing:
    name = "annealing"
    params = LAWS["annealing"]

    def __init__(self, lam: float | None = 0.999):
        if lam is not None and not 0.0 <= lam < 1.0:
            raise ValueError(f"lam must be in [0, 1) or None (fit it), got {lam}")
        self.lam = lam                      # None: fitted
        self.free = ["L0", "log_A", "log_alpha", "C"] + (["log1m_lam"] if lam is None else [])

    def prepare(self, lrs, steps, warmup):
        return _AnnealStruct(lrs, steps, warmup, self.lam)

    def evaluate(self, th, st: _AnnealStruct, jac: bool = False):
        L0, A, alpha, C = th[0], math.exp(th[1]), math.exp(th[2]), th[3]
        p = A * st.s1 ** (-alpha)
        if self.lam is None:
            lam = 1.0 - math.exp(th[4])
            s2, ds2 = st.s2_and_grad(lam)
        else:
            s2, ds2 = st.s2, None
        pred = L0 + p - C * s2
        if not jac:
            return pred, None
        J = np.empty((pred.size, len(self.free)))
        J[:, 0] = 1.0
        J[:, 1] = p
        J[:, 2] = -p * np.log(st.s1) * alpha
        J[:, 3] = -s2
        if self.lam is None:
            J[:, 4] = -C * ds2 * (-(1.0 - lam))   # d lam / d log(1-lam) = -(1-lam)
        return pred, J

    def to_params(self, th, ref):
        alpha = math.exp(th[2])
        lam = self.lam if self.lam is not None else 1.0 - math.exp(th[4])
        return {"L0": float(th[0]), "A": float(math.exp(th[1]) * ref ** alpha), "alpha": alpha,
                "C": float(th[3] / ref), "lam": float(lam)}

    def to_theta(self, params, ref):
        alpha = float(params["alpha"])
        th = [float(params["L0"]), math.log(float(params["A"]) * ref ** (-alpha)), math.log(alpha),
              float(params["C"]) * ref]
        if self.lam is None:
            th.append(math.log(1.0 - float(params["lam"])))
        return np.array(th)

    def bounds(self, ymax):
        lo = [0.0, -60.0, math.log(0.01), 0.0] + ([math.log(1e-5)] if self.lam is None else [])
        hi = [ymax, 60.0, math.log(3.0), np.inf] + ([math.log(0.5)] if self.lam is None else [])
        return np.array(lo), np.array(hi)

    # -- grid: alpha (and lam) on a grid, (L0, A, C) by non-negative least squares
    def grid(self, structs):
        alphas = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.4, 2.0])
        lams = [self.lam] if self.lam is not None else [0.99, 0.995, 0.998, 0.999, 0.9995]
        out = []
        for lam in lams:
            s2s = [st.s2 if self.lam is not None else st.s2_and_grad(lam)[0] for st in structs]
            for a in alphas:
                cols = [np.stack([np.ones_like(st.s1), st.s1 ** (-a), -s2], axis=1) for st, s2 in zip(structs, s2s)]
                extra = [math.log(a)] + ([math.log(1.0 - lam)] if self.lam is None else [])
                out.append((cols, extra))
        return out

    def from_linear(self, coef, extra):
        L0, A, C = coef
        th = [L0, math.log(max(A, 1e-30)), extra[0], C] + list(extra[1:])
        return np.array(th)

    def perturb(self, th, rng):
        th = th.copy()
        th[2] += rng.normal(0.0, 0.3)
        if self.lam is None:
            th[4] += rng.normal(0.0, 0.5)
        return th


# --------------------------------------------------------------------------- multi-power law
def _walk(t: np.ndarray, P: np.ndarray, tv: np.ndarray, eta1: np.ndarray,
          eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cover steps ``1..t_q`` of every query by aligned dyadic blocks, each a single step or at most
    ``eps`` times its distance from ``t_q`` both in steps and in LR area, and with an LR that varies
    by at most ``eps`` of itself inside it. ``P``: prefix LR areas (``P[0] = 0``); ``tv``: prefix
    sums of ``|eta_{k-1} - eta_k|``; ``eta1[k]``: the LR of step k (``eta1[0]`` the peak).

    Starts from the binary (Fenwick) decomposition of ``1..t`` and halves every block that breaks a
    rule, all queries at once (at most log2(T) rounds). Blocks in which the LR never changes add
    nothing to the LD sum and are dropped. Returns flat ``(query, level, end)``: the block is steps
    ``end-2^level+1..end``.
    """
    t = np.asarray(t, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    if not t.size or t.max() <= 0:
        return empty, empty, empty
    pt = P.take(t)
    levels = np.arange(int(t.max()).bit_length(), dtype=np.int64)
    q, lv = np.nonzero((t[:, None] >> levels[None, :]) & 1)
    lv = lv.astype(np.int64)
    end = (t.take(q) >> lv) << lv
    done_q, done_lv, done_end = [], [], []
    while q.size:
        size = np.int64(1) << lv
        start = end - size
        tve = tv.take(end)
        change = tve - tv.take(start)
        live = np.flatnonzero(change > 0)      # no LR change inside: contributes nothing
        if live.size < q.size:
            q, lv, end, size, start, tve, change = (a.take(live) for a in (q, lv, end, size, start, tve, change))
        ok = size <= eps * (t.take(q) - end + 1)
        c = np.flatnonzero(ok)                 # the area and LR-change rules, where the step rule holds
        e, s0 = end.take(c), start.take(c)
        pe, ee = P.take(e), eta1.take(e)
        ok[c] = (((pe - P.take(s0)) <= eps * (pt.take(q.take(c)) - pe + ee))
                 & (change.take(c) <= eps * np.minimum(ee, eta1.take(s0 + 1))))
        ok |= lv == 0
        done_q.append(q[ok])
        done_lv.append(lv[ok])
        done_end.append(end[ok])
        bad = ~ok
        q, lv, end = q[bad], lv[bad] - 1, end[bad]
        q = np.concatenate([q, q])
        end = np.concatenate([end, end - (np.int64(1) << lv)])
        lv = np.concatenate([lv, lv])
    return np.concatenate(done_q), np.concatenate(done_lv), np.concatenate(done_end)


class _MPSchedule:
    """Schedule-level data of the multi-power law: post-warmup LRs, drops and their block pyramids."""

    def __init__(self, lrs: np.ndarray, warmup: int):
        W = int(warmup)
        self.W = W
        self.eta0 = float(lrs[:W + 1].max())
        post = lrs[W:]
        n = post.size
        self.n = n
        self.P = np.concatenate([[0.0], np.cumsum(post)])
        self.sw = float(lrs[:W].sum())
        self.cum_all = np.cumsum(lrs)
        d = np.empty(n)
        d[0] = self.eta0 - post[0]
        d[1:] = post[:-1] - post[1:]
        self.eta1 = np.concatenate([[self.eta0], post])
        self.tv = np.concatenate([[0.0], np.cumsum(np.abs(d))])
        N = 1 << max(0, int(math.ceil(math.log2(max(n, 1)))))
        self.N = N
        pad = lambda x: np.concatenate([x, np.zeros(N - n)])  # noqa: E731
        eta_f = np.maximum(post, _ETA_FLOOR * max(self.eta0, float(post.max())))
        self.ln_eta = pad(np.log(eta_f))
        self.eta = pad(post)
        self.a_right = []          # right-child areas at every level of the pyramid
        A = self.eta
        while A.size > 1:
            self.a_right.append(A[1::2])
            A = A[0::2] + A[1::2]
        self.offsets = np.concatenate([[0], np.cumsum([N >> lv for lv in range(len(self.a_right) + 1)])])
        self.parts = []            # positive drops, and negative ones (re-warming) if any
        for dpart in ([np.maximum(d, 0.0)] + ([np.minimum(d, 0.0)] if np.any(d < 0) else [])):
            dp = pad(dpart)
            self.parts.append((dp, np.concatenate(self._sum_pyramid(dp))))

    @staticmethod
    def _sum_pyramid(x):
        out = [x]
        while x.size > 1:
            x = x[0::2] + x[1::2]
            out.append(x)
        return out

    def pyramid(self, E):
        """Block sums of ``E = d*e`` and of ``d*e*(area from k to the block's end)``, all levels."""
        Es, Fs = [E], [E * self.eta]
        F = Fs[0]
        for ar in self.a_right:
            EL = E[0::2]
            F = F[0::2] + F[1::2] + EL * ar
            E = EL + E[1::2]
            Es.append(E)
            Fs.append(F)
        return np.concatenate(Es), np.concatenate(Fs)


class _MPStruct:
    """Per (schedule, query steps): the block decomposition of each query's LD sum (fixed)."""

    def __init__(self, lrs: np.ndarray, steps: np.ndarray, warmup: int, eps: float = BLOCK_EPS,
                 sched: _MPSchedule | None = None):
        sc = sched if sched is not None else _MPSchedule(lrs, warmup)
        self.sched = sc
        W = sc.W
        self.q = steps
        self.in_warmup = steps < W
        post_q = ~self.in_warmup
        tq = np.where(post_q, steps - W + 1, 0)
        self.z = np.empty(steps.size)
        self.z[post_q] = sc.sw + sc.P[tq[post_q]]
        self.z[self.in_warmup] = np.maximum(sc.cum_all[steps[self.in_warmup]], 0.5 * sc.eta0)
        self.z = np.maximum(self.z, 1e-300)
        qidx, lv, end = _walk(tq, sc.P, sc.tv, sc.eta1, eps)
        flat = sc.offsets[lv] + (end >> lv) - 1
        dist_area = sc.P.take(tq).take(qidx) - sc.P.take(end)
        self.parts = []
        for dp, D in sc.parts:
            Db = D.take(flat)
            keep = Db != 0.0
            if keep.all():
                self.parts.append({"d": dp, "flat": flat, "q": qidx, "D": Db, "dist": dist_area})
            else:
                self.parts.append({"d": dp, "flat": flat[keep], "q": qidx[keep], "D": Db[keep],
                                   "dist": dist_area[keep]})
        self.n_terms = int(sum(p["flat"].size for p in self.parts))

    def ld_terms(self, gamma: float, jac: bool):
        """Per part: (query index, D, ybar, dybar/dgamma) of the non-empty blocks."""
        sc = self.sched
        e = np.exp(-gamma * sc.ln_eta)
        out = []
        for part in self.parts:
            if part["flat"].size == 0:
                continue
            de = part["d"] * e
            E, F = sc.pyramid(de)
            f = part["flat"]
            y = (E[f] * part["dist"] + F[f]) / part["D"]
            dy = None
            if jac:
                El, Fl = sc.pyramid(de * sc.ln_eta)
                dy = -(El[f] * part["dist"] + Fl[f]) / part["D"]
            out.append((part["q"], part["D"], np.maximum(y, 0.0), dy))
        return out


class _MultiPower:
    name = "multipower"
    params = LAWS["multipower"]
    free = ["L0", "log_A", "log_alpha", "log_B", "log_C", "log_beta", "log_gamma"]

    def __init__(self, eps: float = BLOCK_EPS):
        self.eps = eps

    def prepare(self, lrs, steps, warmup):
        return _MPStruct(lrs, steps, warmup, self.eps)

    def evaluate(self, th, st: _MPStruct, jac: bool = False):
        L0, A, alpha, B, C, beta, gamma = th[0], *np.exp(th[1:]).tolist()
        Q = st.q.size
        zp = st.z ** (-alpha)
        pw = A * zp
        ld = np.zeros(Q)
        if jac:
            gC, gb, gg = np.zeros(Q), np.zeros(Q), np.zeros(Q)
        for qi, D, y, dy in st.ld_terms(gamma, jac):
            lnu = np.log1p(C * y)
            ub = np.exp(-beta * lnu)                 # u^-beta
            ld += np.bincount(qi, D * (1.0 - ub), minlength=Q)
            if jac:
                w = D * beta * ub / (1.0 + C * y)    # D * beta * u^(-beta-1)
                gC += np.bincount(qi, w * y, minlength=Q)
                gb += np.bincount(qi, D * ub * lnu, minlength=Q)
                gg += np.bincount(qi, w * dy, minlength=Q)
        pred = L0 + pw - B * ld
        if not jac:
            return pred, None
        J = np.empty((Q, 7))
        J[:, 0] = 1.0
        J[:, 1] = pw
        J[:, 2] = -pw * np.log(st.z) * alpha
        J[:, 3] = -B * ld
        J[:, 4] = -B * gC * C
        J[:, 5] = -B * gb * beta
        J[:, 6] = -B * gg * C * gamma
        return pred, J

    def to_params(self, th, ref):
        L0, A, alpha, B, C, beta, gamma = th[0], *np.exp(th[1:]).tolist()
        return {"L0": float(L0), "A": float(A * ref ** alpha), "alpha": alpha, "B": float(B / ref),
                "C": float(C * ref ** (gamma - 1.0)), "beta": beta, "gamma": gamma}

    def to_theta(self, params, ref):
        p = {k: float(params[k]) for k in self.params}
        return np.array([p["L0"], math.log(p["A"] * ref ** (-p["alpha"])), math.log(p["alpha"]),
                         math.log(p["B"] * ref), math.log(p["C"] * ref ** (1.0 - p["gamma"])),
                         math.log(p["beta"]), math.log(p["gamma"])])

    def bounds(self, ymax):
        lo = np.array([0.0, -60.0, math.log(0.01), -40.0, -40.0, math.log(0.01), math.log(0.01)])
        hi = np.array([ymax, 60.0, math.log(3.0), 40.0, 40.0, math.log(10.0), math.log(2.0)])
        return lo, hi

    def grid(self, structs):
        alphas = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 1.0])
        gammas, betas = [0.25, 0.5, 0.8], [0.3, 0.6, 1.2]
        crel = [0.01, 0.1, 1.0, 10.0, 100.0]
        out = []
        zpows = {a: [st.z ** (-a) for st in structs] for a in alphas}
        for g in gammas:
            terms = [st.ld_terms(g, False) for st in structs]
            ys = np.concatenate([np.concatenate([y for _, _, y, _ in tt]) for tt in terms if tt] or [np.ones(1)])
            ys = ys[ys > 0]
            scale = 1.0 / float(np.median(ys)) if ys.size else 1.0
            for b in betas:
                for c in crel:
                    C = c * scale
                    lds = []
                    for st, tt in zip(structs, terms):
                        ld = np.zeros(st.q.size)
                        for qi, D, y, _ in tt:
                            ld += np.bincount(qi, D * (1.0 - (1.0 + C * y) ** (-b)), minlength=st.q.size)
                        lds.append(ld)
                    for a in alphas:
                        cols = [np.stack([np.ones_like(ld), zp, -ld], axis=1) for ld, zp in zip(lds, zpows[a])]
                        out.append((cols, [math.log(a), math.log(C), math.log(b), math.log(g)]))
        return out

    def from_linear(self, coef, extra):
        L0, A, B = coef
        la, lC, lb, lg = extra
        return np.array([L0, math.log(max(A, 1e-30)), la, math.log(max(B, 1e-17)), lC, lb, lg])

    def perturb(self, th, rng):
        th = th.copy()
        th[2] += rng.normal(0.0, 0.2)
        th[4:7] += rng.normal(0.0, 0.4, 3)
        return th


_CHUNK = 4096


def _evaluate_chunked(lw, th, lrs: np.ndarray, q: np.ndarray, warmup: int, jac: bool = False):
    """``lw.evaluate`` on ``q`` in chunks (schedule-level work shared), for long all-step requests."""
    if not isinstance(lw, _MultiPower) or q.size <= _CHUNK:
        return lw.evaluate(th, lw.prepare(lrs, q, warmup), jac=jac)
    sched = _MPSchedule(lrs, warmup)
    preds, Js = [], []
    for i in range(0, q.size, _CHUNK):
        p, J = lw.evaluate(th, _MPStruct(lrs, q[i:i + _CHUNK], warmup, lw.eps, sched), jac=jac)
        preds.append(p)
        Js.append(J)
    return np.concatenate(preds), (np.concatenate(Js) if jac else None)


def _law(name: str, lam: float | None = 0.999):
    if name == "annealing":
        return _Annealing(lam)
    if name == "multipower":
        return _MultiPower()
    raise ValueError(f"unknown law {name!r}; choose 'annealing' or 'multipower'")


# --------------------------------------------------------------------------- public evaluators
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


# --------------------------------------------------------------------------- metrics
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


# --------------------------------------------------------------------------- fitting
@dataclass
class _Data:
    """One curve's fit points (after warmup, duplicates removed), prepared for a law."""
    name: str
    lrs: np.ndarray      # normalised by the reference LR
    warmup: int
    steps: np.ndarray
    y: np.ndarray
    struct: Any = None
    grid_struct: Any = None
    grid_idx: np.ndarray | None = None


def _as_curves(curves) -> list:
    from workbench.curves import LossCurve, read_curve

    if isinstance(curves, (LossCurve, str, os.PathLike)):
        curves = [curves]
    out = []
    for c in curves:
        if isinstance(c, (str, os.PathLike)):
            c = read_curve(c)
        if not isinstance(c, LossCurve):
            raise ValueError(f"fit takes LossCurve objects or paths to loss logs, got {type(c).__name__}")
        out.append(c)
    if not out:
        raise ValueError("fit needs at least one loss curve")
    return out


def _shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.size, b.size)
    diff = np.nonzero(~np.isclose(a[:n], b[:n], rtol=1e-12, atol=0.0))[0]
    return int(diff[0]) if diff.size else n


def _dedupe(curves: list, ref: float, max_points: int) -> tuple[list[_Data], dict]:
    """Fit points per curve: after warmup, thinned, points identical to an earlier curve's dropped."""
    data, skipped_warm, dup = [], {}, {}
    names = [c.name or f"curve{i}" for i, c in enumerate(curves)]
    names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    for i, c in enumerate(curves):
        c = c.thin(max_points)
        w = c.warmup
        keep = (c.steps >= w) & (np.cumsum(c.lrs)[c.steps] > 0)     # no LR area yet: no law applies
        skipped_warm[names[i]] = int((~keep).sum())
        steps, y = c.steps[keep], c.losses[keep]
        ndup = 0
        for prev, pc in zip(data, curves[:i]):
            p = _shared_prefix(c.lrs, pc.lrs)
            if p == 0:
                continue
            same = np.isin(steps, prev.steps[prev.steps < p])
            if np.any(same):
                loss_prev = dict(zip(prev.steps.tolist(), prev.y.tolist()))
                eq = np.array([s_ and np.isclose(loss_prev.get(int(st), -1.0), yy, rtol=1e-9)
                               for s_, st, yy in zip(same, steps, y)], dtype=bool)
                ndup += int(eq.sum())
                steps, y = steps[~eq], y[~eq]
        dup[names[i]] = ndup
        data.append(_Data(names[i], c.lrs / ref, w, steps, y))
    return data, {"skipped_warmup_points": skipped_warm, "shared_duplicate_points": dup}


def _huber_cost(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))


class _Problem:
    """Residuals ``log pred - log y`` over a set of curves, with the Jacobian, cached per theta."""

    def __init__(self, law, data: list[_Data], use_grid: bool = False):
        self.law, self.data = law, data
        self.structs = [d.grid_struct if use_grid else d.struct for d in data]
        self.y = np.concatenate([d.y[d.grid_idx] if use_grid else d.y for d in data])
        self.logy = np.log(self.y)
        self._key, self._val = None, None
        self.nfev = 0

    def _eval(self, th):
        key = th.tobytes()
        if key != self._key:
            preds, Js = [], []
            for st in self.structs:
                p, J = self.law.evaluate(th, st, jac=True)
                preds.append(p)
                Js.append(J)
            pred = np.concatenate(preds)
            J = np.concatenate(Js)
            safe = np.maximum(pred, 1e-12)
            r = np.log(safe) - self.logy
            r = np.where(pred > 1e-12, r, np.log(1e-12) - self.logy + (pred - 1e-12) / 1e-12)
            self._key, self._val = key, (r, J / safe[:, None], pred)
            self.nfev += 1
        return self._val

    def residuals(self, th):
        return self._eval(th)[0]

    def jacobian(self, th):
        return self._eval(th)[1]

    def cost(self, th, delta=HUBER_DELTA):
        return _huber_cost(self.residuals(th), delta)


def _grid_starts(law, data: list[_Data], basis, n_best: int) -> list[tuple[float, np.ndarray]]:
    """Best grid points (linear parameters by NNLS on relative errors), as (Huber cost, theta)."""
    y = np.concatenate([d.y[d.grid_idx] for d in data])
    scored = []
    for cols, extra in basis:
        X = np.concatenate(cols)
        Xs = X / y[:, None]
        try:
            coef, _ = nnls(Xs, np.ones_like(y), maxiter=50 * X.shape[1])
        except RuntimeError:
            continue
        pred = X @ coef
        if np.any(pred <= 0) or not np.all(np.isfinite(pred)):
            continue
        scored.append((_huber_cost(np.log(pred) - np.log(y), HUBER_DELTA), coef, extra))
    if not scored:
        raise ValueError("could not initialise the fit: no grid point gives positive predicted losses; "
                         "check that the losses decrease as training goes on")
    scored.sort(key=lambda s: s[0])
    return [(c, law.from_linear(coef, extra)) for c, coef, extra in scored[:n_best]]


def _select_basis(basis, keep: Sequence[int]):
    return [([cols[i] for i in keep], extra) for cols, extra in basis]


def _solve(law, data: list[_Data], basis, *, seed: int, restarts: int, max_nfev: int | None,
           record: bool = False, start: np.ndarray | None = None):
    """Grid + restarts + trust-region least squares. Returns (theta, info, path)."""
    prob = _Problem(law, data)
    ymax = float(max(d.y.max() for d in data))
    lo, hi = law.bounds(ymax)
    if start is not None:
        starts = [np.clip(start, lo, hi)]
    else:
        best = _grid_starts(law, data, basis, 3)
        starts = [th for _, th in best]
        rng = np.random.default_rng(seed)
        grid_prob = _Problem(law, data, use_grid=True)
        for _ in range(restarts):
            starts.append(law.perturb(best[0][1], rng))
        # order the starts by their cost on the grid subsample (cheap)
        starts = [np.clip(s, lo, hi) for s in starts]
        costs = [grid_prob.cost(s) for s in starts]
        order = np.argsort(costs)
        starts = [starts[i] for i in order]
    path: list[tuple[int, float, np.ndarray]] = []     # (evaluations so far, cost, theta) of stage 2
    if record:
        path.append((0, prob.cost(starts[0]), starts[0].copy()))

    def run(th0, nfev, residuals=prob.residuals):
        return least_squares(residuals, th0, jac=prob.jacobian, bounds=(lo, hi), method="trf", loss="huber",
                             f_scale=HUBER_DELTA, x_scale="jac", max_nfev=nfev, ftol=1e-12, xtol=1e-12,
                             gtol=1e-12)

    if max_nfev == 0:
        th = starts[0]
        return th, {"nfev": 0, "status": "grid start only", "cost": prob.cost(th), "starts": len(starts)}, path
    # stage 1: a few evaluations from each start; stage 2: continue the best one
    stage1 = 8 if len(starts) > 1 else 0
    cands = []
    if stage1:
        for s in starts:
            r = run(s, stage1)
            cands.append((prob.cost(r.x), r.x))
        cands.sort(key=lambda c: c[0])
        th0 = cands[0][1]
    else:
        th0 = starts[0]
    total = 600 if max_nfev is None else max(1, max_nfev - stage1)

    def recorded(th):                                   # stage 2's trajectory, by evaluation count
        r = prob.residuals(th)
        path.append((stage1 + len(path), _huber_cost(r, HUBER_DELTA), th.copy()))
        return r
    res = run(th0, total, recorded if record else prob.residuals)
    th = res.x
    return th, {"nfev": int(res.nfev) + stage1 * len(starts), "status": res.message, "cost": prob.cost(th),
                "starts": len(starts), "optimality": float(res.optimality)}, path


def _path_at(path, n: int):
    """Best (lowest cost) iterate among the first ``n`` evaluations of a recorded path."""
    best = None
    for k, c, th in path:
        if k > n:
            break
        if best is None or c <= best[0]:
            best = (c, th)
    return best[1]


def _laplace(prob: _Problem, th: np.ndarray) -> tuple[np.ndarray, float]:
    r = prob.residuals(th)
    J = prob.jacobian(th)
    n, p = J.shape
    sigma2 = float(np.sum(r * r) / max(n - p, 1))
    H = J.T @ J
    ridge = 1e-10 * max(float(np.trace(H)) / p, 1e-300)
    cov = sigma2 * np.linalg.pinv(H + ridge * np.eye(p), hermitian=True)
    return cov, math.sqrt(sigma2)


STOP_CANDIDATES = (10, 20, 40, 80, None)   # evaluations of the refinement (None: to convergence)
STOP_TOLERANCE = 0.05                       # stop early only if it predicts held-out curves >5% better


def fit(curves, law: str = "multipower", *, lam: float | None = 0.999, seed: int = 0, restarts: int = 2,
        validate: bool | None = None, max_points: int = 1000, max_nfev: int | None = None,
        init: "FittedLaw | dict | None" = None) -> "FittedLaw":
    """Fit a law jointly to several loss curves (LossCurve objects or paths to logs).

    Args:
        curves: curves with different schedules (``workbench.curves.LossCurve``) or file paths.
        law: ``"multipower"`` (7 parameters) or ``"annealing"`` (4, plus ``lam`` if ``lam=None``).
        lam: the annealing law's decay factor, fixed (default 0.999, the paper's) or ``None`` to fit it.
        seed: seeds the random restarts; the result is deterministic given it.
        restarts: random perturbations of the best grid point tried besides the 3 best grid points.
        validate: choose early stopping by leave-one-curve-out validation (default: when there are
            two or more curves and ``max_nfev`` is not given).
        max_points: curves with more points are thinned (consecutive points averaged) to this many.
        max_nfev: stop the refinement after this many evaluations (``0``: the grid start).
        init: warm start from a previous fit (or its ``params``): no grid, no restarts, no validation.

    Returns a :class:`FittedLaw`; ``info`` holds the fit's cost, points, validation and timings.

    >>> from workbench import schedules
    >>> from workbench.curves import LossCurve
    >>> p = dict(L0=2.0, A=0.6, alpha=0.5, C=0.3, lam=0.999)
    >>> cs = []
    >>> for s in (schedules.constant(peak_lr=1e-3, total_steps=3000, warmup_steps=100),
    ...           schedules.cosine(peak_lr=1e-3, total_steps=3000, warmup_steps=100)):
    ...     steps = list(range(100, 3000, 20))
    ...     cs.append(LossCurve.from_schedule(s, steps, annealing(s, steps, **p)))
    >>> f = fit(cs, law="annealing")
    >>> round(f.params["alpha"], 3), round(f.params["L0"], 3)
    (0.5, 2.0)
    """
    t0 = time.perf_counter()
    curves = _as_curves(curves)
    lw = _law(law, lam)
    ref = float(max(c.peak_lr for c in curves))
    data, prep_info = _dedupe(curves, ref, max_points)
    for d in data:
        if d.y.size == 0 and prep_info["shared_duplicate_points"][d.name]:
            raise ValueError(f"curve {d.name!r} only repeats points of an earlier curve (the same run given "
                             "twice?); drop it")
        if d.y.size == 0:
            raise ValueError(f"curve {d.name!r} has no loss measured after its warmup ({d.warmup} steps); "
                             "the laws describe the loss after warmup: log losses later in the run")
    n_pts = sum(d.y.size for d in data)
    if n_pts < len(lw.free) + 1:
        raise ValueError(f"{n_pts} points after warmup is too few to fit the {law} law's {len(lw.free)} "
                         "parameters; give curves with more measured losses")
    for d in data:
        d.struct = lw.prepare(d.lrs, d.steps, d.warmup)
        gi = np.unique(np.linspace(0, d.y.size - 1, min(d.y.size, 64)).round().astype(np.int64))
        d.grid_idx = gi
        d.grid_struct = lw.prepare(d.lrs, d.steps[gi], d.warmup)
    t_prep = time.perf_counter()
    start = None
    if init is not None:
        params = init.params if isinstance(init, FittedLaw) else dict(init)
        if law == "annealing" and lam is not None:
            params = dict(params, lam=lam)
        try:
            start = lw.to_theta(params, ref)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"init must hold the {law} law's parameters {', '.join(LAWS[law])}: {exc}") from None
        validate = False
    basis = lw.grid([d.grid_struct for d in data]) if start is None else None
    validation: dict[str, Any] = {"method": "none"}
    chosen = max_nfev
    if start is not None:
        validation["reason"] = "warm start (init=)"
    elif len(data) < 2 and validate is not False:
        validation["reason"] = "leave-one-curve-out validation needs two or more curves"
    elif max_nfev is not None and not validate:
        validation["reason"] = f"max_nfev={max_nfev} given"
    elif validate is False:
        validation["reason"] = "validate=False"
    else:
        chosen, validation = _validate(lw, data, basis, seed, restarts)
    th, opt, _ = _solve(lw, data, basis, seed=seed, restarts=restarts, max_nfev=chosen, start=start)
    prob = _Problem(lw, data)
    cov, sigma = _laplace(prob, th)
    train = metrics(np.exp(prob.residuals(th) + prob.logy), prob.y)
    info = {
        "law": law, "curves": [d.name for d in data], "points": [int(d.y.size) for d in data],
        "n_points": int(n_pts), "eta_ref": ref, "fit_lam": bool(law == "annealing" and lam is None),
        "huber_delta": HUBER_DELTA, "seed": seed, "restarts": restarts, "max_nfev": chosen,
        "cost": opt["cost"], "nfev": opt["nfev"], "status": str(opt["status"]),
        "sigma_log": sigma, "train": train, "validation": validation,
        "time_s": round(time.perf_counter() - t0, 4), "prepare_s": round(t_prep - t0, 4), **prep_info,
    }
    return FittedLaw(law=law, params=lw.to_params(th, ref), eta_ref=ref, cov=cov, info=info)


def _validate(lw, data: list[_Data], basis, seed: int, restarts: int):
    """Leave-one-curve-out choice of the number of refinement evaluations."""
    cands = list(STOP_CANDIDATES)
    errs = {str(c): [] for c in cands}
    folds = []
    for i, held in enumerate(data):
        keep = [j for j in range(len(data)) if j != i]
        train = [data[j] for j in keep]
        # held-out points identical to a training curve's point are not unseen: skip them
        mask = np.ones(held.y.size, dtype=bool)
        for tr in train:
            p = _shared_prefix(held.lrs, tr.lrs)
            if p:
                tl = dict(zip(tr.steps.tolist(), tr.y.tolist()))
                mask &= ~np.array([s < p and np.isclose(tl.get(int(s), -1.0), v, rtol=1e-9)
                                   for s, v in zip(held.steps, held.y)], dtype=bool)
        _, _, path = _solve(lw, train, _select_basis(basis, keep), seed=seed, restarts=restarts, max_nfev=None,
                            record=True)
        last = path[-1][0] if path else 0
        fold = {"held_out": held.name, "evaluations": last}
        for c in cands:
            th = _path_at(path, last if c is None else c)
            pred, _ = lw.evaluate(th, held.struct)
            ok = mask & np.isfinite(pred)
            e = float(np.mean(np.abs(pred[ok] - held.y[ok]) / held.y[ok])) if ok.any() else float("nan")
            errs[str(c)].append(e)
            fold[str(c)] = e
        folds.append(fold)
    mean = {c: float(np.nanmean(v)) if np.any(np.isfinite(v)) else float("inf") for c, v in errs.items()}
    best = min(mean.values())
    # the least-stopped candidate within STOP_TOLERANCE of the best: with a few curves the held-out
    # errors are noisy, so stopping early must earn its place
    pick = None
    for c in reversed(cands):
        if mean[str(c)] <= best * (1.0 + STOP_TOLERANCE) + 1e-15:
            pick = c
            break
    return pick, {"method": "leave-one-curve-out early stopping", "tolerance": STOP_TOLERANCE,
                  "candidates": ["converged" if c is None else c for c in cands],
                  "heldout_pred_err": {("converged" if c == "None" else c): v for c, v in mean.items()},
                  "chosen_max_nfev": "converged" if pick is None else pick, "folds": folds}


# --------------------------------------------------------------------------- the fitted law
@dataclass
class FittedLaw:
    """A fitted loss-curve law: ``params`` (in the units of the data), prediction, scoring, JSON I/O.

    ``cov`` is the covariance of the internal parameters (LRs divided by ``eta_ref``; positive
    parameters as logs), used for prediction bands.
    """

    law: str
    params: dict
    eta_ref: float
    cov: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.law not in LAWS:
            raise ValueError(f"unknown law {self.law!r}; choose one of {', '.join(LAWS)}")
        missing = [k for k in LAWS[self.law] if k not in self.params]
        if missing:
            raise ValueError(f"{self.law} parameters missing: {', '.join(missing)}")
        self.params = {k: float(self.params[k]) for k in LAWS[self.law]}
        if self.cov is not None:
            self.cov = np.asarray(self.cov, dtype=np.float64)

    @property
    def _lw(self):
        fit_lam = bool(self.info.get("fit_lam", False))
        return _law(self.law, None if fit_lam else self.params.get("lam", 0.999))

    @property
    def theta(self) -> np.ndarray:
        return self._lw.to_theta(self.params, self.eta_ref)


    def predict(self, schedule_or_lrs, steps=None, *, band: bool = False, level: float = 0.95,
                warmup_steps: int | None = None):
        """Predicted loss at ``steps`` (default: every step) of a Schedule, LR array or LossCurve.

        With ``band=True`` returns ``(mean, low, high)``: a ``level`` band from the parameter
        covariance (delta method). Steps inside the warmup get the law's value with the area floored
        (finite, but not a prediction the laws make).
        """
        lw = self._lw
        lrs, w = _lr_input(schedule_or_lrs, warmup_steps)
        q = _query_steps(steps, lrs.size)
        pred, J = _evaluate_chunked(lw, self.theta, lrs / self.eta_ref, q, w, jac=band)
        if not band:
            return pred
        if self.cov is None:
            raise ValueError("this fit has no covariance (band=True needs one); refit with workbench.laws.fit")
        from scipy.stats import norm

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        sd = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", J, self.cov, J), 0.0))
        z = float(norm.ppf(0.5 + level / 2))
        return pred, pred - z * sd, pred + z * sd

    def predict_band(self, schedule_or_lrs, steps=None, *, level: float = 0.95, warmup_steps: int | None = None):
        """``(mean, low, high)``; the same as ``predict(..., band=True)``."""
        return self.predict(schedule_or_lrs, steps, band=True, level=level, warmup_steps=warmup_steps)

    def __call__(self, schedule_or_lrs, steps=None):
        return self.predict(schedule_or_lrs, steps)

    def predictor(self, max_points: int = 2000) -> Callable:
        """A ``schedule -> loss at every step`` callable for the Schedule Designer: exact at up to
        ``max_points`` evenly spread steps (the designer's display steps), linear in between."""
        def predict_all(schedule):
            lrs, w = _lr_input(schedule, None)
            n = lrs.size
            if n <= max_points:
                return self.predict(schedule)
            idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
            return np.interp(np.arange(n), idx, self.predict(schedule, idx))
        return predict_all

    def score(self, curve, *, include_warmup: bool = False) -> dict:
        """Metrics of the prediction at a curve's measured steps (after its warmup unless asked):
        ``r2, mae, rmse, pred_err, worst_err, n``."""
        from workbench.curves import LossCurve, read_curve

        if isinstance(curve, (str, os.PathLike)):
            curve = read_curve(curve)
        if not isinstance(curve, LossCurve):
            raise ValueError(f"score takes a LossCurve or a path, got {type(curve).__name__}")
        keep = np.ones(len(curve), dtype=bool) if include_warmup else curve.steps >= curve.warmup
        if not keep.any():
            raise ValueError(f"curve {curve.name!r} has no points after its warmup ({curve.warmup} steps) to score")
        pred = self.predict(curve.lrs, curve.steps[keep], warmup_steps=curve.warmup)
        return metrics(pred, curve.losses[keep])

    # -- JSON
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "law": self.law, "params": self.params, "eta_ref": self.eta_ref,
                "cov": None if self.cov is None else self.cov.tolist(), "info": _json_safe(self.info)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the fit as JSON (atomically)."""
        from workbench.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "fit") -> "FittedLaw":
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a fitted-law file (no \"format\": \"{_FORMAT}\"); write one with "
                             "FittedLaw.save or `workbench curves fit`")
        try:
            return cls(law=d["law"], params=d["params"], eta_ref=float(d["eta_ref"]), cov=d.get("cov"),
                       info=d.get("info") or {})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: incomplete fitted-law file ({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FittedLaw":
        """Read a fit written by :meth:`save`."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"fit file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(d, path)

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"FittedLaw({self.law}: {ps})"


def load_fit(path: str | os.PathLike) -> FittedLaw:
    """``FittedLaw.load(path)``."""
    return FittedLaw.load(path)


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return _json_safe(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- schedule search
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
                      n_knots: int = 40, max_iter: int = 300):
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

    Returns a workbench Schedule (``wsd`` or, for ``free``, ``piecewise``).

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

    def final(s):
        return float(fitted.predict(s, [total_steps - 1])[0])

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
            return wsd_best
        return _free_form(fitted, total_steps, peak_lr, warmup_steps, min_lr, n_knots, max_iter, wsd_best)
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
