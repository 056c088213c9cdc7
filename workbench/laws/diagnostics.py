"""What a fit can and cannot tell: identifiability (parameters at a bound, Jacobian conditioning,
parameter correlations, the spread of the leave-one-curve-out fits) as plain-language warnings,
and the scale of the calibrated prediction band (from leave-one-curve-out residuals)."""
from __future__ import annotations

import math

import numpy as np

DECAY_PARAMS = {"annealing": ("C", "lam"), "multipower": ("B", "C", "beta", "gamma")}
CORR_LIMIT = 0.9995      # |correlation| of two parameters above which they count as not separately identified
COND_LIMIT = 1e12        # column-scaled Jacobian condition number above which the fit is ill-conditioned
SPREAD_LIMIT = 10.0      # ratio max/min of a positive parameter across leave-one-curve-out fits
L0_PLAUSIBLE = 0.2       # an irreducible loss below this fraction of the lowest measured loss is implausible


def _public(name: str) -> str:
    for pre in ("log1m_", "log_"):
        if name.startswith(pre):
            return name[len(pre):]
    return name


def identifiability(lw, prob, th: np.ndarray, ref: float, data, folds, chosen) -> tuple[dict, list[str]]:
    """Diagnostics of a fit and the warnings they imply (see the module docstring)."""
    law = lw.name
    names = [_public(n) for n in lw.free]
    ymax = float(max(d.y.max() for d in data))
    ymin = float(min(d.y.min() for d in data))
    lo, hi = lw.bounds(ymax)
    at_bound = [n for n, t, a, b in zip(names, th, lo, hi)
                if (np.isfinite(a) and abs(t - a) <= 1e-6 * (1 + abs(a))) or (np.isfinite(b) and abs(t - b) <= 1e-6 * (1 + abs(b)))]
    J = prob.jacobian(th)
    norms = np.linalg.norm(J, axis=0)
    Js = J / np.where(norms > 0, norms, 1.0)
    sv = np.linalg.svd(Js, compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    H = Js.T @ Js
    try:
        Hi = np.linalg.pinv(H, hermitian=True)
        d = np.sqrt(np.maximum(np.diag(Hi), 1e-300))
        corr = Hi / np.outer(d, d)
    except np.linalg.LinAlgError:
        corr = np.eye(len(names))
    no_effect = [n for n, v in zip(names, norms) if not v > 0]
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if norms[i] > 0 and norms[j] > 0 and abs(corr[i, j]) > CORR_LIMIT:
                pairs.append((names[i], names[j], float(corr[i, j])))
    params = lw.to_params(th, ref)
    spread = {}
    if folds:
        key = str(chosen)
        fold_params = [(lw.to_params(f["_theta"][key], ref), f["_trained_on_decay"]) for f in folds
                       if key in f["_theta"]]
        any_decay = any(d for _, d in fold_params)
        for k in params:
            # a fold trained without a decay says nothing about the decay parameters: left out for them
            v = np.array([fp[k] for fp, d in fold_params if d or not any_decay or k not in DECAY_PARAMS[law]]
                         + [params[k]])
            spread[k] = [float(v.min()), float(v.max())]
    decays = any(_decays(d.lrs, d.warmup) for d in data)
    ident = {"at_bound": at_bound, "no_effect": no_effect, "condition_number": cond, "correlated": [list(p) for p in pairs],
             "loo_range": spread, "decay_in_data": decays,
             "correlation": {f"{a}/{b}": float(corr[i, j]) for i, a in enumerate(names)
                             for j, b in enumerate(names) if j > i}}
    warns = []
    dec = [n for n in DECAY_PARAMS[law] if n in names]
    if not decays:
        warns.append(f"no curve lowers its LR after the warmup, so {', '.join(dec)} (the annealing term) {'is' if len(dec) == 1 else 'are'} not "
                     "identified by these curves: add a run with a decay (e.g. a cosine or WSD run)")
    hidden = [n for n in no_effect if decays or n not in dec]
    if hidden:
        warns.append(f"{' and '.join(hidden)} {'has' if len(hidden) == 1 else 'have'} no effect on these curves' "
                     "predicted losses, so the fit cannot determine "
                     f"{'it' if len(hidden) == 1 else 'them'}: add runs with other schedules")
    if at_bound:
        vals = ", ".join(f"{n} = {params.get(n, float('nan')):.3g}" for n in at_bound if n in params)
        verb = "sits" if len(at_bound) == 1 else "sit"
        warns.append(f"{' and '.join(at_bound)} {verb} at a bound of the fit ({vals}): these curves do not pin "
                     f"{'it' if len(at_bound) == 1 else 'them'} down; add runs with other schedules or longer runs")
    if params["L0"] < L0_PLAUSIBLE * ymin:
        warns.append(f"the fitted irreducible loss L0 = {params['L0']:.3g} is implausibly low for losses down to "
                     f"{ymin:.3g}: the curves do not determine it (longer runs would); predictions far beyond "
                     "their length are unreliable")
    seen = set()
    for a, b, r in pairs:
        if (a, b) in seen or (not decays and (a in dec or b in dec)):
            continue
        seen.add((a, b))
        hint = ("add a run with a decay of another length or shape" if a in dec or b in dec
                else "add a longer run")
        warns.append(f"{a} and {b} are not identified by these curves (correlation {r:+.4f}): {hint}")
    if cond > COND_LIMIT and not (no_effect and not hidden):
        warns.append(f"the fit is ill-conditioned (Jacobian condition number {cond:.1e}): several parameter "
                     "combinations fit equally well; treat the parameters, not only the predictions, with care")
    for k, (a, b) in spread.items():
        if k == "L0":
            bad = abs(b - a) > 0.1 * max(abs(params["L0"]), 0.2 * ymin)
        else:
            bad = a > 0 and b / a > SPREAD_LIMIT
        if bad:
            warns.append(f"leaving one curve out moves {k} between {a:.3g} and {b:.3g}: the fit depends on which "
                         "curves it sees; add more runs")
    return ident, warns


def calibration(folds, chosen, sigma: float, law: str) -> dict:
    """The relative (log-space) scale of a held-out prediction's error: the root-mean-square of the
    leave-one-curve-out residuals (each fold weighted equally; folds trained on curves without a decay
    are not used when some fold has one), never below the fit's own residual scale ``sigma``."""
    if folds:
        key = str(chosen)
        usable = [f for f in folds if f["_trained_on_decay"]] or list(folds)
        mses = [float(np.mean(f["_resid"][key] ** 2)) for f in usable if f["_resid"][key].size]
        if mses:
            s = math.sqrt(float(np.mean(mses)))
            return {"method": "leave-one-curve-out residuals", "scale": max(s, sigma), "heldout_rms": s,
                    "folds": [f["held_out"] for f in usable], "train_sigma": sigma}
    return {"method": "fit residuals", "scale": sigma, "train_sigma": sigma,
            "warning": "the band is not calibrated on held-out curves (that needs two or more curves): it shows "
                       "the noise around the fit, not the law's error on unseen schedules"}


def _decays(lrs, warmup: int) -> bool:
    """Whether a schedule lowers its LR after the warmup by more than 10% of its peak."""
    post = np.asarray(lrs)[int(warmup):]
    return bool(post.size and post.max() - post[-1] > 0.1 * post.max())
