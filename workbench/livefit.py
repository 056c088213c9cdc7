"""Fit a loss-curve law while a run trains, and extrapolate it to the end of the run's schedule.

:class:`LiveFit` takes the run's full schedule (a workbench Schedule: the laws need every future
LR to extrapolate) and consumes training events, either as a trainer callback (it is callable:
``trainer.subscribe(live)``, or call ``live.update(event)``) or by polling a run log that is
being written (``LiveFit.from_run_log(path)`` then ``.poll()``). Events are dicts with keys
``step``, ``lr``, ``loss`` and, at evaluation steps, ``val_loss`` (and optionally ``time``, the
train wall-clock in seconds, as the trainer logs it).

Step convention (the trainer's, as in :mod:`workbench.curves`): the event for step ``t`` comes after
the (t+1)-th update; its ``val_loss`` is the loss at step ``t``; its train ``loss`` was measured on
the model before that update, so it is the loss at step ``t-1``.

Refits are throttled (at least ``refit_every`` new points and ``min_interval_s`` seconds since the
last one) and warm-started from the last parameters, so a refit costs a few tens of law
evaluations; whenever the points have grown by half since the last full fit, the refit is a full
one (grid and restarts), since fits made before the LR decays cannot see the decay terms. ``report()`` gives the predicted final loss with its band, and the predicted step
(and time, from the observed seconds per step) to reach ``target_loss``.

Thread safety: ``update`` only appends under a lock (cheap enough to call from the training
thread); a refit runs on whichever thread triggers it (or on a worker thread with
``background=True``), one at a time (a second caller skips it), and swaps the fitted law in
atomically, so ``report()``/``predict()`` may run on another thread.

Example:
    >>> import numpy as np
    >>> from workbench import laws, schedules
    >>> s = schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100)
    >>> true = dict(L0=2.0, A=0.6, alpha=0.5, C=0.4, lam=0.999)
    >>> y = laws.annealing(s, **true)
    >>> live = LiveFit(s, law="annealing", target_loss=2.4, min_interval_s=0)
    >>> for t in range(0, 1000, 10):
    ...     live({"step": t, "lr": s(t), "loss": 9.9, "val_loss": float(y[t]), "time": 0.01 * (t + 1)})
    >>> r = live.report()
    >>> round(r["final_loss"], 3), round(float(y[-1]), 3)
    (2.354, 2.354)
    >>> r["step_to_target"] == int(np.argmax(y <= 2.4)), round(r["s_per_step"], 3)
    (True, 0.01)
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.curves import LossCurve
from workbench.laws import FittedLaw, fit
from workbench.schedules import Schedule

__all__ = ["LiveFit", "Forecast", "forecast"]

LEVEL = 0.9     # the band's level wherever a forecast is shown


@dataclass
class Forecast:
    """What may be shown of a law's prediction for a schedule (see :func:`forecast`).

    ``mean``/``low``/``high`` hold NaN where nothing may be shown (a loss at or below 0 or below
    the fit's floor, or a band wider than the loss itself); ``problems`` says why points are
    hidden or why the whole prediction is out of the fit's domain (then a view greys it out);
    ``warnings`` are the fit's own (:attr:`FittedLaw.warnings`).
    """

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hidden: int = 0

    @property
    def ok(self) -> bool:
        """True when the prediction is inside the fit's domain and every point may be shown."""
        return not self.problems

    @property
    def final(self) -> float | None:
        """The predicted loss at the last requested step, or None when it may not be shown."""
        v = float(self.mean[-1]) if self.mean.size else float("nan")
        return v if np.isfinite(v) else None

    def shown(self, values: np.ndarray | None = None) -> list:
        """``values`` (default ``mean``) as a list with None where nothing may be shown (for plots)."""
        v = self.mean if values is None else values
        return [float(x) if np.isfinite(x) else None for x in v]


def forecast(fitted: FittedLaw, schedule, steps=None, *, band: bool = False,
             level: float = LEVEL) -> Forecast:
    """A law's prediction for ``schedule`` (a Schedule or a LossCurve) as a view may show it: never a loss at or below 0 or
    below the fit's floor, never a band wider than the loss; with the reasons (the fit's
    :meth:`~workbench.laws.FittedLaw.check_domain` and these) and the fit's warnings.

    Example:
        >>> from workbench import laws, schedules
        >>> from workbench.curves import LossCurve
        >>> s = schedules.cosine(peak_lr=1e-3, total_steps=2000, warmup_steps=100)
        >>> steps = np.arange(100, 2000, 20)
        >>> y = laws.annealing(s, steps, L0=2.0, A=0.6, alpha=0.5, C=0.4)
        >>> f = laws.fit([LossCurve(s.lrs(), steps, y, name="cosine", warmup_steps=100)], law="annealing")
        >>> fc = forecast(f, s, [1999])
        >>> fc.ok, abs(fc.final - float(y[-1])) < 0.01
        (True, True)
        >>> far = forecast(f, schedules.constant(peak_lr=0.1, total_steps=200_000, warmup_steps=100))
        >>> far.ok, len(far.problems) > 0            # far outside the data: greyed, with the reasons
        (False, True)
    """
    if steps is None:
        n = schedule.total_steps if hasattr(schedule, "total_steps") else len(schedule)
        q = np.arange(int(n))
    else:
        q = np.asarray(steps, dtype=np.int64)
    problems = list(fitted.check_domain(schedule, level=level))
    low = high = None
    if band:
        mean, low, high = (np.asarray(a, dtype=np.float64) for a in fitted.predict(schedule, q, band=True, level=level))
    else:
        mean = np.asarray(fitted.predict(schedule, q), dtype=np.float64)
    floor = float(fitted.floor)
    bad = ~np.isfinite(mean) | (mean <= 0) | (mean < floor)
    said = " ".join(problems)
    if bad.any() and "negative loss" not in said and "irreducible loss" not in said:
        i = int(np.argmax(bad))
        problems.append(f"the law predicts a loss below its fitted floor L0 = {floor:.4g} (or 0) from step {int(q[i])} "
                        f"on ({int(bad.sum())} of {bad.size} points): not shown")
    if band:
        wide = ~bad & ((high - low) > np.abs(mean))
        if wide.any() and "wider than the loss" not in said:
            problems.append(f"the {level:.0%} band is wider than the loss itself at {int(wide.sum())} of "
                            f"{wide.size} points: not shown")
        bad |= wide
        low, high = np.where(bad, np.nan, low), np.where(bad, np.nan, high)
    mean = np.where(bad, np.nan, mean)
    return Forecast(steps=q, mean=mean, low=low, high=high, problems=list(dict.fromkeys(problems)),
                    warnings=list(getattr(fitted, "warnings", []) or []), hidden=int(bad.sum()))


class LiveFit:
    """Live fitting of a loss law to a training run (see the module docstring).

    Args:
        schedule: the run's full workbench Schedule.
        law: ``"multipower"`` or ``"annealing"``.
        loss_key: ``"val_loss"`` or ``"loss"``; default: ``val_loss`` once ``min_points`` validation
            losses have arrived, the train loss before that.
        target_loss: the loss whose predicted step/time ``report()`` gives (optional).
        min_points: points needed (after warmup) before the first fit.
        refit_every: new points between refits; ``min_interval_s``: seconds between refits.
        auto_refit: refit from ``update``/``poll`` when the throttle allows (else only on ``refit()``
            or ``report()``).
        max_points: points kept per fit (consecutive ones averaged in groups).
        max_nfev: evaluations of a warm-started refit.
        background: refit on a worker thread, so ``update`` never waits for a fit (a full fit takes
            up to a few tenths of a second).
        fit_kwargs: passed to :func:`workbench.laws.fit` for the first fit.
    """

    def __init__(self, schedule: Schedule, law: str = "multipower", *, loss_key: str | None = None,
                 target_loss: float | None = None, min_points: int = 10, refit_every: int = 10,
                 min_interval_s: float = 1.0, auto_refit: bool = True, max_points: int = 300,
                 max_nfev: int = 40, background: bool = False, fit_kwargs: dict | None = None):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"LiveFit needs the run's workbench Schedule to extrapolate, got "
                             f"{type(schedule).__name__}; e.g. schedules.load_schedule('SPEC.json')")
        if loss_key not in (None, "loss", "val_loss"):
            raise ValueError(f"loss_key must be 'loss', 'val_loss' or None, got {loss_key!r}")
        if law not in ("multipower", "annealing"):
            raise ValueError(f"unknown law {law!r}; choose 'multipower' or 'annealing'")
        self.schedule = schedule
        self.lrs = schedule.lrs()
        self.law = law
        self.loss_key = loss_key
        self.target_loss = target_loss
        self.min_points = max(int(min_points), 2)
        self.refit_every = max(int(refit_every), 1)
        self.min_interval_s = float(min_interval_s)
        self.auto_refit = auto_refit
        self.max_points = int(max_points)
        self.max_nfev = int(max_nfev)
        self.fit_kwargs = dict(fit_kwargs or {})
        self.background = bool(background)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fit_lock = threading.Lock()
        self._val: dict[int, float] = {}
        self._train: dict[int, float] = {}
        self._times: dict[int, float] = {}
        self._last_step = -1
        self._n_at_fit = 0
        self._n_at_cold = 0
        self._t_fit = -float("inf")
        self.fitted: FittedLaw | None = None
        self.refits = 0
        self.last_error: str | None = None
        self._path: str | None = None
        self._offset = 0
        self._partial = b""

    # ------------------------------------------------------------------ input
    def __call__(self, event: dict) -> None:
        self.update(event)

    def update(self, event: dict) -> bool:
        """Record one training event; refit if ``auto_refit`` and the throttle allow (on a worker
        thread with ``background=True``). Returns whether it refitted (here, now)."""
        self._record(event)
        if not self.auto_refit:
            return False
        if self.background:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self.maybe_refit, name="LiveFit-refit", daemon=True)
                self._worker.start()
            return False
        return self.maybe_refit()

    def _record(self, event: dict) -> None:
        if not isinstance(event, dict) or "step" not in event:
            return
        try:
            t = int(event["step"])
        except (TypeError, ValueError):
            return
        with self._lock:
            v = _positive(event.get("val_loss"))
            if v is not None:
                self._val[t] = v
            tr = _positive(event.get("loss"))
            if tr is not None and t >= 1:
                self._train[t - 1] = tr          # measured before update t+1: the loss at step t-1
            tm = event.get("time")
            self._times[t] = float(tm) if isinstance(tm, (int, float)) else time.monotonic()
            self._last_step = max(self._last_step, t)

    @classmethod
    def from_run_log(cls, path: str | os.PathLike, schedule: Schedule | None = None, **kwargs) -> "LiveFit":
        """Follow a run log (``log.jsonl`` or its run directory); call ``poll()`` to read new lines.

        Without ``schedule`` the run directory's ``config.json`` provides it (or the ``schedule.json``
        that ``integrations.hf.WorkbenchCallback`` saves next to an HF run's log)."""
        path = os.fspath(path)
        run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        log = os.path.join(path, "log.jsonl") if os.path.isdir(path) else path
        if schedule is None and os.path.exists(os.path.join(run_dir, "schedule.json")):
            from workbench.schedules import load_schedule

            schedule = load_schedule(os.path.join(run_dir, "schedule.json"))
        if schedule is None:
            if not os.path.exists(os.path.join(run_dir, "config.json")):
                raise ValueError(f"{path}: no schedule given and no config.json next to the log; pass "
                                 "schedule= (the run's workbench Schedule)")
            from workbench import train

            schedule = train.resolve_schedule(train.load_config(run_dir))
        live = cls(schedule, **kwargs)
        live._path = log
        return live

    def poll(self) -> int:
        """Read the lines appended to the run log since the last poll; returns how many events."""
        if self._path is None:
            raise ValueError("poll() follows a run log: create the LiveFit with LiveFit.from_run_log(path)")
        if not os.path.exists(self._path):
            return 0
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()               # an incomplete last line waits for the next poll
        n = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self._record(rec)
                n += 1
        if n and self.auto_refit:
            self.maybe_refit()
        return n

    # ------------------------------------------------------------------ fitting
    def _key(self) -> str:
        if self.loss_key is not None:
            return self.loss_key
        return "val_loss" if len(self._val) >= self.min_points else "loss"

    def curve(self) -> LossCurve | None:
        """The observed losses (of the key in use) as a LossCurve over the schedule; None if none yet."""
        with self._lock:
            pts = dict(self._val if self._key() == "val_loss" else self._train)
        pts = {s: v for s, v in pts.items() if 0 <= s < self.lrs.size}
        if not pts:
            return None
        steps = np.array(sorted(pts))
        return LossCurve(self.lrs, steps, np.array([pts[s] for s in steps]), name="live",
                         meta={"loss_key": self._key()}, warmup_steps=self.schedule.warmup)

    def _n_points(self, c: LossCurve | None) -> int:
        return 0 if c is None else int(np.sum(c.steps >= c.warmup))

    def maybe_refit(self) -> bool:
        """Refit if enough new points and time have come since the last fit."""
        c = self.curve()
        n = self._n_points(c)
        if n < self.min_points:
            return False
        same_key = self.fitted is not None and self.fitted.info.get("live_loss_key") == c.meta.get("loss_key")
        if same_key and (n - self._n_at_fit < self.refit_every or time.monotonic() - self._t_fit < self.min_interval_s):
            return False
        return self.refit(force=True, _curve=c)

    def refit(self, force: bool = False, _curve: LossCurve | None = None) -> bool:
        """Fit now (warm-started from the last fit). Returns False if skipped (too few points, or a
        refit running on another thread)."""
        if not force:
            return self.maybe_refit()
        if not self._fit_lock.acquire(blocking=False):
            return False
        try:
            c = _curve if _curve is not None else self.curve()
            n = self._n_points(c)
            if n < self.min_points:
                return False
            prev = self.fitted
            key_changed = prev is not None and prev.info.get("live_loss_key") != c.meta.get("loss_key")
            # a full fit (grid + restarts) whenever the data grew by half since the last one: early
            # fits see no LR decay yet, and warm starts alone can stay in their basin
            cold = prev is None or key_changed or n >= 1.5 * self._n_at_cold
            try:
                if cold:
                    f = fit([c], law=self.law, max_points=self.max_points, **self.fit_kwargs)
                    self._n_at_cold = n
                else:
                    f = fit([c], law=self.law, max_points=self.max_points, init=prev, max_nfev=self.max_nfev)
            except ValueError as exc:
                self.last_error = str(exc)
                return False
            f.info["live_loss_key"] = c.meta.get("loss_key")
            f.info["live_step"] = int(c.steps[-1])
            self.fitted = f
            self._n_at_fit = n
            self._t_fit = time.monotonic()
            self.refits += 1
            self.last_error = None
            return True
        finally:
            self._fit_lock.release()

    # ------------------------------------------------------------------ predictions
    def _need_fit(self) -> FittedLaw:
        if self.fitted is None:
            self.refit(force=True)
        if self.fitted is None:
            c = self.curve()
            raise ValueError(self.waiting_reason(c))
        return self.fitted

    def waiting_reason(self, c: LossCurve | None = None) -> str:
        """Why there is no fit yet, in words for the screen."""
        c = self.curve() if c is None else c
        n, w = self._n_points(c), self.schedule.warmup
        text = f"fit needs {self.min_points} points after warmup (step {w}); {n} so far"
        if self._last_step >= 0 and self._last_step < w:
            text += f" (the run is at step {self._last_step}, still in warmup)"
        return text + (f" ({self.last_error})" if self.last_error else "")

    def forecast(self, steps=None, *, level: float = LEVEL) -> Forecast:
        """The fit's prediction with its band as a view may show it (see :func:`forecast`)."""
        return forecast(self._need_fit(), self.schedule, steps, band=True, level=level)

    def predict(self, steps=None, *, band: bool = False):
        """Predicted loss at ``steps`` (default: every step of the schedule); ``band=True`` gives
        ``(mean, low, high)``."""
        return self._need_fit().predict(self.schedule, steps, band=band)

    def step_to(self, target: float) -> int | None:
        """First step (from the last observed one on) at which the predicted loss is <= ``target``;
        None if not before the end of the schedule."""
        f = self._need_fit()
        T = self.lrs.size
        start = int(min(max(self._last_step, self.schedule.warmup), T - 1))
        grid = np.unique(np.linspace(start, T - 1, min(T - start, 2000)).round().astype(np.int64))
        y = f.predict(self.schedule, grid)
        hit = np.nonzero(y <= target)[0]
        if not hit.size:
            return None
        i = int(hit[0])
        if i == 0:
            return int(grid[0])
        fine = np.arange(grid[i - 1] + 1, grid[i] + 1)
        yf = f.predict(self.schedule, fine)
        return int(fine[np.argmax(yf <= target)])

    def seconds_per_step(self) -> float | None:
        """Observed train seconds per step (from the events' ``time``, else arrival times)."""
        with self._lock:
            items = sorted(self._times.items())
        if len(items) < 2:
            return None
        (s0, t0), (s1, t1) = items[max(0, len(items) - 200)], items[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 and t1 >= t0 else None

    def time_to(self, target: float) -> float | None:
        """Predicted seconds of training from the last event until the loss reaches ``target``."""
        step = self.step_to(target)
        rate = self.seconds_per_step()
        if step is None or rate is None:
            return None
        return max(0, step - self._last_step) * rate

    def report(self, level: float = LEVEL) -> dict[str, Any]:
        """A summary: last step, points, predicted final loss with its ``level`` band, target step/time.

        ``forecast`` is True only when the final loss may be shown; otherwise ``final_loss`` and its
        band are None and ``reason`` says why (no fit yet, a loss below the fit's floor or 0, a band
        wider than the loss, or a schedule outside the fit's domain); ``warnings`` are the fit's."""
        out: dict[str, Any] = {"law": self.law, "step": self._last_step, "final_step": int(self.lrs.size - 1),
                               "loss_key": self._key(), "points": self._n_points(self.curve()), "fitted": False,
                               "forecast": False, "final_loss": None, "final_low": None, "final_high": None,
                               "refits": self.refits, "target_loss": self.target_loss, "level": level,
                               "s_per_step": self.seconds_per_step(), "warnings": []}
        try:
            f = self._need_fit()
        except ValueError as exc:
            out["reason"] = str(exc)
            return out
        fc = forecast(f, self.schedule, [self.lrs.size - 1], band=True, level=level)
        out.update(fitted=True, params=dict(f.params), warnings=fc.warnings)
        if fc.final is None or fc.problems:
            out["reason"] = "; ".join(fc.problems)
            return out
        out.update(forecast=True, final_loss=fc.final, final_low=float(fc.low[-1]), final_high=float(fc.high[-1]))
        if self.target_loss is not None:
            out["step_to_target"] = self.step_to(self.target_loss)
            out["time_to_target"] = self.time_to(self.target_loss)
        return out


def _positive(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if np.isfinite(v) and v > 0 else None
