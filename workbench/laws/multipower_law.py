"""The multi-power law (Luo et al. 2503.12811): the fast LD sum over dyadic blocks and the fitting pieces."""
from __future__ import annotations

import math

import numpy as np

from .core import _ETA_FLOOR, BLOCK_EPS, LAWS


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
    # grid start: wide in the shape parameters (real curves put beta and gamma far from the paper's ~0.5)
    GRID_GAMMA = (0.25, 0.5, 0.8, 1.2, 1.8)
    GRID_BETA = (0.05, 0.15, 0.3, 0.6, 1.2)

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
        gammas, betas = self.GRID_GAMMA, self.GRID_BETA
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
