"""``FittedLaw``: a fitted law's parameters, prediction with bands, scoring, domain checks and JSON I/O."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .core import _FORMAT, LAWS, _lr_input, _query_steps, metrics
from .evaluate import _law
from .multipower_law import _evaluate_chunked


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


    @property
    def floor(self) -> float:
        """The lowest loss this law can reach at the fitted peak LR: no forecast is shown below it.

        ``L0`` is the loss at infinite LR area *before* the annealing bonus: real runs do end below it
        after a long decay (the 124M cooldowns do), so the floor is ``L0`` minus the largest bonus the
        law can give: ``B * eta_peak`` for the multi-power law (``LD <= B * sum of the drops``) and
        ``C * eta_peak / (1 - lam)`` for the annealing law (``S2 <= sum of the drops / (1 - lam)``),
        with ``eta_peak`` the highest peak LR of the fitted curves.

        >>> FittedLaw("multipower", dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5),
        ...           1e-3).floor
        2.2
        """
        p = self.params
        dom = self.info.get("domain") or {}
        peak = float(dom["peak_lr"][1]) if dom.get("peak_lr") else float(self.eta_ref)
        if self.law == "multipower":
            bonus = float(p["B"]) * peak
        else:
            bonus = float(p["C"]) * peak / max(1.0 - float(p.get("lam", 0.999)), 1e-12)
        return float(p["L0"]) - max(bonus, 0.0)

    @property
    def warnings(self) -> list[str]:
        """Plain-language warnings about what these curves do not determine (empty when well posed)."""
        return list(self.info.get("warnings") or [])

    @property
    def identifiability(self) -> dict:
        """``at_bound``, ``condition_number``, ``correlated`` pairs, ``loo_range`` (the parameters'
        range over the leave-one-curve-out fits), ``decay_in_data``."""
        return dict(self.info.get("identifiability") or {})

    def predict(self, schedule_or_lrs, steps=None, *, band: bool = False, level: float = 0.95,
                method: str | None = None, warmup_steps: int | None = None):
        """Predicted loss at ``steps`` (default: every step) of a Schedule, LR array or LossCurve.

        With ``band=True`` returns ``(mean, low, high)``, a ``level`` band:

        * ``method="calibrated"`` (the default when the fit has a calibration): a band for a measured
          loss on an unseen schedule: the parameter uncertainty (delta method) plus the law's relative
          error on held-out curves (``info["calibration"]["scale"]``, from leave-one-curve-out fits),
          combined in log space (so ``low > 0``);
        * ``method="laplace"``: the parameter uncertainty alone (Gauss-Newton covariance, delta method).

        Steps inside the warmup get the law's value with the area floored (finite, but not a
        prediction the laws make).
        """
        lw = self._lw
        lrs, w = _lr_input(schedule_or_lrs, warmup_steps)
        q = _query_steps(steps, lrs.size)
        pred, J = _evaluate_chunked(lw, self.theta, lrs / self.eta_ref, q, w, jac=band)
        if not band:
            return pred
        from scipy.stats import norm

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        calib = self.info.get("calibration") or {}
        if method is None:
            method = "calibrated" if calib.get("scale") is not None else "laplace"
        if method not in ("calibrated", "laplace"):
            raise ValueError(f"method must be 'calibrated' or 'laplace', got {method!r}")
        if self.cov is None:
            raise ValueError("this fit has no covariance (band=True needs one); refit with workbench.laws.fit")
        sd = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", J, self.cov, J), 0.0))
        z = float(norm.ppf(0.5 + level / 2))
        if method == "laplace":
            return pred, pred - z * sd, pred + z * sd
        if calib.get("scale") is None:
            raise ValueError("this fit has no calibration (fit it with two or more curves); use method='laplace'")
        safe = np.maximum(pred, 1e-12)
        rel = np.sqrt((sd / safe) ** 2 + float(calib["scale"]) ** 2)
        span = np.minimum(z * rel, 700.0)      # a hopeless band is astronomically wide, not an overflow warning
        return pred, safe * np.exp(-span), safe * np.exp(span)

    def predict_band(self, schedule_or_lrs, steps=None, *, level: float = 0.95, method: str | None = None,
                     warmup_steps: int | None = None):
        """``(mean, low, high)``; the same as ``predict(..., band=True)``."""
        return self.predict(schedule_or_lrs, steps, band=True, level=level, method=method,
                            warmup_steps=warmup_steps)

    def check_domain(self, schedule_or_lrs, *, warmup_steps: int | None = None, level: float = 0.9,
                     max_length_ratio: float = 3.0, lr_tolerance: float = 0.25) -> list[str]:
        """Reasons not to trust this law's forecast for a schedule (empty list: inside the domain).

        Flags a peak LR outside the fitted curves' range (by more than ``lr_tolerance`` of it), a run
        more than ``max_length_ratio`` times longer than the longest fitted curve, a predicted loss below
        the law's floor (:attr:`floor`) or below 0, and a ``level`` band at the final step wider than the loss.

        >>> from workbench import schedules
        >>> f = FittedLaw("multipower", dict(L0=2.5, A=0.5, alpha=0.4, B=300.0, C=2.0, beta=0.6, gamma=0.5),
        ...               1e-3, info={"domain": {"peak_lr": [1e-3, 1e-3], "total_steps": [2000, 2000]}})
        >>> f.check_domain(schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100))
        []
        >>> f.check_domain(schedules.cosine(peak_lr=8e-3, total_steps=20000, warmup_steps=100))[0][:30]
        'peak LR 0.008 is outside the f'
        """
        lrs, w = _lr_input(schedule_or_lrs, warmup_steps)
        reasons = []
        dom = self.info.get("domain") or {}
        peak = float(lrs.max())
        if dom.get("peak_lr"):
            a, b = dom["peak_lr"]
            if peak < a * (1 - lr_tolerance) or peak > b * (1 + lr_tolerance):
                rng = f"{a:.3g}" if math.isclose(a, b) else f"{a:.3g}-{b:.3g}"
                reasons.append(f"peak LR {peak:.3g} is outside the fitted curves' range ({rng}): the law was not "
                               "fitted there")
        if dom.get("total_steps"):
            longest = int(dom["total_steps"][1])
            if lrs.size > max_length_ratio * longest:
                reasons.append(f"{lrs.size} steps is {lrs.size / longest:.1f}x the longest fitted curve "
                               f"({longest} steps); forecasts beyond {max_length_ratio:g}x are extrapolation")
        n = lrs.size
        idx = np.unique(np.linspace(w, n - 1, min(n - w, 200)).round().astype(np.int64))
        pred = self.predict(lrs, idx, warmup_steps=w)
        low = float(np.min(pred))
        if low < 0:
            reasons.append(f"the law predicts a negative loss ({low:.4g}): impossible, so no forecast")
        elif low < self.floor:
            reasons.append(f"the law predicts {low:.4g}, below the lowest loss it can reach ({self.floor:.4g}: L0 "
                           "minus its largest annealing gain): outside where it holds")
        if self.cov is not None:
            m, lo_, hi_ = self.predict(lrs, [n - 1], band=True, level=level, warmup_steps=w)
            if hi_[0] - lo_[0] > abs(m[0]):
                reasons.append(f"the {100 * level:g}% band at the last step ({lo_[0]:.3g} to {hi_[0]:.3g}) is wider "
                               "than the loss itself: the fit cannot forecast this")
        return reasons

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
