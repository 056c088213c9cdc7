"""The annealing law ``L0 + A*S1^-alpha - C*S2`` (Tissue et al. 2408.11029): evaluation and fitting pieces."""
from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from .core import LAWS, _drops, _warm_eta


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
