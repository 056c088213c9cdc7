"""Joint fitting of a law to several curves: grid start, trust-region refinement, leave-one-curve-out early stopping."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares, nnls

from .core import HUBER_DELTA, LAWS, metrics
from .diagnostics import _decays
from .evaluate import _law
from .fitted import FittedLaw


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
    >>> from workbench.laws import annealing
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
    folds = None
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
        folds = validation.pop("_folds")
        for pub, priv in zip(validation["folds"], folds):     # the fold fits, for robustness checks
            pub["params"] = lw.to_params(priv["_theta"][str(chosen)], ref)
    th, opt, _ = _solve(lw, data, basis, seed=seed, restarts=restarts, max_nfev=chosen, start=start)
    prob = _Problem(lw, data)
    cov, sigma = _laplace(prob, th)
    train = metrics(np.exp(prob.residuals(th) + prob.logy), prob.y)
    from .diagnostics import calibration, identifiability

    ident, warns = identifiability(lw, prob, th, ref, data, folds, chosen)
    calib = calibration(folds, chosen, sigma, law)
    if calib.get("warning"):
        warns.append(calib.pop("warning"))
    span = {"peak_lr": [float(min(d.lrs.max() for d in data) * ref), float(max(d.lrs.max() for d in data) * ref)],
            "total_steps": [int(min(d.lrs.size for d in data)), int(max(d.lrs.size for d in data))],
            "min_loss": float(min(d.y.min() for d in data)), "decays": any(_decays(d.lrs, d.warmup) for d in data)}
    info = {
        "law": law, "curves": [d.name for d in data], "points": [int(d.y.size) for d in data],
        "n_points": int(n_pts), "eta_ref": ref, "fit_lam": bool(law == "annealing" and lam is None),
        "huber_delta": HUBER_DELTA, "seed": seed, "restarts": restarts, "max_nfev": chosen,
        "cost": opt["cost"], "nfev": opt["nfev"], "status": str(opt["status"]),
        "sigma_log": sigma, "train": train, "validation": validation, "identifiability": ident,
        "warnings": warns, "calibration": calib, "domain": span,
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
        fold = {"held_out": held.name, "evaluations": last, "_theta": {}, "_resid": {},
                "_trained_on_decay": any(_decays(d.lrs, d.warmup) for d in train)}
        for c in cands:
            th = _path_at(path, last if c is None else c)
            pred, _ = lw.evaluate(th, held.struct)
            ok = mask & np.isfinite(pred) & (pred > 0)
            fold["_theta"][str(c)] = th
            fold["_resid"][str(c)] = np.log(pred[ok] / held.y[ok])
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
                  "chosen_max_nfev": "converged" if pick is None else pick,
                  "folds": [{k: v for k, v in f.items() if not k.startswith("_")} for f in folds], "_folds": folds}

