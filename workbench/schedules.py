"""Learning-rate schedules as small, immutable, vectorised functions of the step.

A schedule maps the optimizer step ``t`` (0-based: ``t`` is the learning rate used by the
(t+1)-th ``optimizer.step()``, the torch ``LambdaLR`` / transformers convention) to a learning
rate. ``sched(t)`` takes an int or a numpy array of steps and returns a float or an array, so a
1,000,000-step schedule evaluates in one call. Past ``total_steps`` a schedule holds its last value.

Families (keyword arguments ``peak_lr``, ``total_steps``, ``warmup_steps``, ``min_lr`` throughout):
``constant``, ``linear``, ``cosine``, ``inverse_sqrt``, ``wsd``, ``power``, ``infinite``,
``multistep``, ``piecewise``, ``refined``; composition with ``join`` and ``rewarm``.

Every schedule round-trips through ``to_dict()`` / ``schedule_from_dict()`` (JSON-safe: the
dict is the ``SPEC.json`` file format) and drives torch through ``torch_scheduler(optimizer)``.

Example:
    >>> from workbench import schedules
    >>> s = schedules.wsd(peak_lr=1e-3, total_steps=1000, warmup_steps=100, decay_fraction=0.2)
    >>> float(s(0)), float(s(100)), round(float(s(999)), 9)
    (0.0, 0.001, 5e-06)
    >>> schedules.schedule_from_dict(s.to_dict()) == s
    True
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from workbench.files import atomic_write_text

__all__ = [
    "Schedule", "constant", "linear", "cosine", "inverse_sqrt", "wsd", "power", "infinite",
    "multistep", "piecewise", "refined", "join", "rewarm", "make", "FAMILIES", "DECAY_SHAPES",
    "schedule_from_dict", "load_schedule", "save_schedule", "export_csv", "lr_array",
    "ScheduleLR",
]

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "1-square", "exponential", "wsdsc")
#: the longest horizon a schedule may have (far beyond any real run; refuses 1e12-step typos early)
MAX_TOTAL_STEPS = 10**9
#: ``lrs()`` refuses to allocate a per-step array longer than this (800 MB of float64)
MAX_LRS_STEPS = 10**8
#: how deeply ``join``/``rewarm`` dicts may nest in a SPEC
MAX_SPEC_DEPTH = 32
WARMUP_SHAPES = ("linear", "cosine", "1-sqrt")


# --------------------------------------------------------------------------- validation helpers
def _check_number(name: str, value: Any, *, low: float | None = 0.0, high: float | None = None,
                  strict_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if strict_low else v < low):
        op = ">" if strict_low else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def _check_int(name: str, value: Any, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer number of steps, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer number of steps, got {value!r}")
    v = int(value)
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def _check_lrs(peak_lr: Any, min_lr: Any) -> tuple[float, float]:
    peak = _check_number("peak_lr", peak_lr, low=0.0, strict_low=True)
    low = _check_number("min_lr", min_lr, low=0.0)
    if low > peak:
        raise ValueError(f"min_lr must be in [0, peak_lr={peak}], got min_lr={low}")
    return peak, low


def _check_warmup(warmup_steps: Any, total_steps: Any) -> tuple[int, int]:
    total = _check_int("total_steps", total_steps, low=1, high=MAX_TOTAL_STEPS)
    warm = _check_int("warmup_steps", warmup_steps, low=0)
    if warm >= total:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total}), got {warm}")
    return warm, total


def _check_shape(name: str, shape: str, allowed: Sequence[str]) -> str:
    if shape not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {shape!r}")
    return shape


def _steps(t: Any) -> np.ndarray:
    """Validate steps and return them as a float64 array (0-d for a scalar)."""
    arr = np.asarray(t)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"step must be a non-negative integer or an array of them, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("step must be finite (got NaN or inf)")
        if not np.all(arr == np.floor(arr)):
            raise ValueError("step must be a whole number: steps count optimizer updates (0, 1, 2, ...)")
    if arr.size and arr.min() < 0:
        raise ValueError(f"step must be >= 0, got {arr.min()}")
    return arr.astype(np.float64)


def _warmup_factor(t: np.ndarray, warmup: int) -> np.ndarray:
    # transformers convention: step / max(1, warmup) during warmup
    return t / max(1, warmup)


def _decay_multiplier(x: np.ndarray, shape: str, peak: float, low: float, cycles: float = 0.5) -> np.ndarray:
    """LR during a decay phase, ``x`` in [0, 1] the fraction of the phase done. ``cycles``: cosine
    periods over the phase (0.5: half a cosine, peak to ``low``; transformers' ``num_cycles``)."""
    if shape == "exponential":
        return peak ** (1.0 - x) * low ** x
    if shape == "linear":
        f = 1.0 - x
    elif shape == "cosine":
        f = 0.5 * (1.0 + np.cos(np.pi * x)) if cycles == 0.5 else 0.5 * (1.0 + np.cos(np.pi * float(cycles) * 2.0 * x))
    elif shape == "1-sqrt":
        f = 1.0 - np.sqrt(x)
    elif shape == "1-square":
        f = 1.0 - x * x
    elif shape == "wsdsc":
        f = (1.0 - x) ** 1.5
    else:  # pragma: no cover - validated at construction
        raise ValueError(f"unknown decay shape {shape!r}")
    # factor * (1 - r) + r, as transformers computes it (keeps parity to the last bit)
    r = low / peak
    return peak * (f * (1.0 - r) + r)


# --------------------------------------------------------------------------- base class
@dataclass(frozen=True)
class Schedule:
    """Base class: a pure function of the step. Subclasses implement ``_lr(t)`` on float arrays."""

    family: ClassVar[str] = ""

    def __call__(self, t: Any) -> Any:
        arr = _steps(t)
        out = np.asarray(self._lr(arr), dtype=np.float64)
        if arr.ndim == 0:
            return float(out)
        return out

    def _lr(self, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- common read-only properties
    @property
    def warmup(self) -> int:
        """Steps of the initial warmup: ``warmup_steps`` where the family has it, else the steps
        before the LR first reaches its maximum (a piecewise ramp, a refined schedule)."""
        if hasattr(self, "warmup_steps"):
            return int(self.warmup_steps or 0)
        return int(np.argmax(self.lrs()))

    def lrs(self, total_steps: int | None = None) -> np.ndarray:
        """The LR at every step ``0 .. total_steps-1`` (default: the schedule's horizon).

        Schedules are immutable, so the horizon's array is computed once and kept; each call returns
        a fresh copy of it (a designer redraw asks several times; copying is ~100x cheaper).
        """
        n = self.total_steps if total_steps is None else _check_int("total_steps", total_steps, low=1)
        if n > MAX_LRS_STEPS:
            raise ValueError(f"an LR array of {n:,} steps would take {8 * n / 2**30:.1f} GiB; evaluate the "
                             f"schedule at the steps you need instead (sched(steps)); at most {MAX_LRS_STEPS:,}")
        if total_steps is None or total_steps == self.total_steps:
            cached = self.__dict__.get("_lrs_cache")
            if cached is None:
                cached = self(np.arange(self.total_steps))
                cached.flags.writeable = False
                object.__setattr__(self, "_lrs_cache", cached)
            return cached.copy()
        n = _check_int("total_steps", total_steps, low=1)
        return self(np.arange(n))

    # -- serialisation
    def to_dict(self) -> dict:
        """JSON-safe dict with a ``family`` key and every argument; the SPEC.json format."""
        d: dict[str, Any] = {"family": self.family}
        for f in dataclasses.fields(self):
            d[f.name] = _jsonable(getattr(self, f.name))
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_python(self) -> str:
        """A Python snippet that rebuilds this schedule."""
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in self.to_dict().items() if k != "family")
        return f"schedules.{self.family}({args})"

    def torch_scheduler(self, optimizer) -> "ScheduleLR":
        """A torch LR scheduler setting each group's LR to ``self(t)`` times the group's ratio
        (``lr_scale``, or its ``initial_lr`` over the largest one); see :class:`ScheduleLR`."""
        return ScheduleLR(optimizer, self)

    # -- other frameworks' conventions
    def to_numpy(self, total: int | None = None) -> np.ndarray:
        """The LR at steps ``0 .. total-1`` as a float64 array (default: the schedule's horizon).

        >>> constant(peak_lr=1.0, total_steps=4, warmup_steps=2).to_numpy(5).tolist()
        [0.0, 0.5, 1.0, 1.0, 1.0]
        """
        return self.lrs(total)

    def _peak(self) -> float:
        peak = getattr(self, "peak_lr", None)
        return float(peak) if peak else float(self.lrs().max())

    def as_lambda(self, base_lr: float | None = None) -> Callable[[int], float]:
        """The multiplier ``t -> self(t) / base_lr`` for ``torch.optim.lr_scheduler.LambdaLR`` (and
        transformers, accelerate, Lightning, which take a LambdaLR). LambdaLR multiplies each group's
        initial ``lr`` by it, so build the optimizer with ``lr=base_lr`` (default: the peak LR);
        groups built with other LRs keep their ratio.

        >>> import torch
        >>> s = cosine(peak_lr=1e-3, total_steps=10, warmup_steps=2)
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        >>> sch = torch.optim.lr_scheduler.LambdaLR(opt, s.as_lambda())
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
        >>> bool(np.allclose(lrs, s.lrs(), rtol=1e-12, atol=0))
        True
        """
        base = self._peak() if base_lr is None else _check_number("base_lr", base_lr, low=0.0, strict_low=True)
        table = self.lrs() / base
        last = float(table[-1])

        def multiplier(step: int) -> float:
            step = int(step)
            return float(table[step]) if 0 <= step < table.size else (last if step >= table.size else float(table[0]))

        return multiplier

    def as_optax(self) -> Callable:
        """An optax-compatible schedule ``count -> lr`` (jax-traceable: a table lookup, so it works
        under ``jax.jit`` and as ``optax.adamw(learning_rate=...)``). Needs jax."""
        try:
            import jax.numpy as jnp
        except ImportError:
            raise ValueError("as_optax() needs jax (pip install jax optax); for numpy use to_numpy()") from None
        table = jnp.asarray(self.lrs(), dtype=jnp.float32)
        n = int(table.shape[0])

        def schedule(count):
            return table[jnp.clip(jnp.asarray(count, dtype=jnp.int32), 0, n - 1)]

        return schedule

    @classmethod
    def from_hf(cls, args, total_steps: int | None = None) -> "Schedule":
        """The schedule a transformers ``Trainer`` runs with ``args`` (``TrainingArguments``, or a dict
        of its fields: ``learning_rate``, ``lr_scheduler_type``, ``lr_scheduler_kwargs``,
        ``warmup_steps``/``warmup_ratio``, ``max_steps``). ``total_steps`` when ``max_steps`` is not set
        (an epoch-based run). See :func:`workbench.integrations.hf.schedule_from_hf`."""
        from workbench.integrations.hf import schedule_from_hf

        return schedule_from_hf(args, total_steps=total_steps)

    def __repr__(self) -> str:
        return self.to_python().replace("schedules.", "", 1)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Schedule):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _py_literal(v: Any) -> str:
    if isinstance(v, dict) and "family" in v:
        return schedule_from_dict(v).to_python()
    if isinstance(v, list):
        return "[" + ", ".join(_py_literal(x) for x in v) + "]"
    return repr(v)


# --------------------------------------------------------------------------- families
@dataclass(frozen=True, repr=False)
class Constant(Schedule):
    family: ClassVar[str] = "constant"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self):
        _check_lrs(self.peak_lr, 0.0)
        _check_warmup(self.warmup_steps, self.total_steps)

    def _lr(self, t):
        return np.where(t < self.warmup_steps, self.peak_lr * _warmup_factor(t, self.warmup_steps), self.peak_lr)


@dataclass(frozen=True, repr=False)
class _WarmupDecay(Schedule):
    """Linear warmup from 0, then a decay of shape ``shape`` to ``min_lr`` at ``total_steps``."""

    shape: ClassVar[str] = ""
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        _check_lrs(self.peak_lr, self.min_lr)
        _check_warmup(self.warmup_steps, self.total_steps)

    def _lr(self, t):
        w, n = self.warmup_steps, self.total_steps
        x = np.clip((t - w) / max(1, n - w), 0.0, 1.0)
        return np.where(t < w, self.peak_lr * _warmup_factor(t, w),
                        _decay_multiplier(x, self.shape, self.peak_lr, self.min_lr))


class Linear(_WarmupDecay):
    family: ClassVar[str] = "linear"
    shape: ClassVar[str] = "linear"


class Cosine(_WarmupDecay):
    family: ClassVar[str] = "cosine"
    shape: ClassVar[str] = "cosine"


@dataclass(frozen=True, repr=False)
class InverseSqrt(Schedule):
    family: ClassVar[str] = "inverse_sqrt"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    timescale: int | None = None

    def __post_init__(self):
        _check_lrs(self.peak_lr, 0.0)
        _check_warmup(self.warmup_steps, self.total_steps)
        if self.timescale is not None:
            _check_int("timescale", self.timescale, low=1)

    @property
    def effective_timescale(self) -> int:
        # transformers: timescale defaults to num_warmup_steps or 10_000
        return int(self.timescale) if self.timescale is not None else (self.warmup_steps or 10_000)

    def _lr(self, t):
        w, ts = self.warmup_steps, self.effective_timescale
        shift = ts - w
        decay = 1.0 / np.sqrt(np.maximum(t + shift, 1e-300) / ts)
        return np.where(t < w, self.peak_lr * _warmup_factor(t, w), self.peak_lr * decay)


@dataclass(frozen=True, repr=False)
class WSD(Schedule):
    family: ClassVar[str] = "wsd"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    decay_steps: int | None = None
    decay_fraction: float | None = None
    decay: str = "linear"
    warmup_shape: str = "linear"
    num_cycles: float = 0.5
    warmup_start_lr: float | None = None

    def __post_init__(self):
        peak, low = _check_lrs(self.peak_lr, self.min_lr)
        w, n = _check_warmup(self.warmup_steps, self.total_steps)
        if self.warmup_start_lr is not None:
            _check_number("warmup_start_lr", self.warmup_start_lr, low=0.0, high=peak)
        _check_shape("decay", self.decay, DECAY_SHAPES)
        _check_shape("warmup_shape", self.warmup_shape, WARMUP_SHAPES)
        _check_number("num_cycles", self.num_cycles, low=0.0, strict_low=True)
        if self.decay == "exponential" and low <= 0:
            raise ValueError("decay='exponential' needs min_lr > 0 (it decays geometrically to min_lr); "
                             "set min_lr, e.g. min_lr=0.01*peak_lr, or pick another decay shape")
        if self.decay_steps is not None and self.decay_fraction is not None:
            raise ValueError("give either decay_steps or decay_fraction, not both")
        if self.decay_fraction is not None:
            _check_number("decay_fraction", self.decay_fraction, low=0.0, high=1.0)
        if self.decay_steps is not None:
            _check_int("decay_steps", self.decay_steps, low=0)
        d = self.n_decay
        if w + d > n:
            raise ValueError(f"warmup_steps + decay_steps must be <= total_steps={n}, got {w} + {d}")

    @property
    def n_decay(self) -> int:
        """Number of decay steps (``decay_fraction`` resolved against ``total_steps``)."""
        if self.decay_steps is not None:
            return int(self.decay_steps)
        frac = 0.1 if self.decay_fraction is None else float(self.decay_fraction)
        return int(round(frac * self.total_steps))

    def _lr(self, t):
        # transformers' get_wsd_schedule: the warmup rises from min_lr (not 0) to the peak
        w, n, d = self.warmup_steps, self.total_steps, self.n_decay
        start = n - d
        x = np.clip((t - start) / max(1, d), 0.0, 1.0)
        out = np.where(t < start, self.peak_lr,
                       _decay_multiplier(x, self.decay, self.peak_lr, self.min_lr, self.num_cycles))
        out = np.where(t >= n, self.min_lr, out)         # after the decay: min_lr (whatever num_cycles)
        p = _warmup_factor(np.minimum(t, w), w)
        if self.warmup_shape == "cosine":
            p = 0.5 * (1.0 - np.cos(np.pi * p))
        elif self.warmup_shape == "1-sqrt":
            p = 1.0 - np.sqrt(1.0 - p)
        r = (self.min_lr if self.warmup_start_lr is None else self.warmup_start_lr) / self.peak_lr
        return np.where(t < w, self.peak_lr * (p * (1.0 - r) + r), out)


@dataclass(frozen=True, repr=False)
class Power(Schedule):
    """IBM power scheduler (2408.13359): ``min(peak_lr, batch_size * a * n^b)``, ``n`` tokens seen."""

    family: ClassVar[str] = "power"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    a: float = 4.6
    b: float = -0.51
    batch_size: int = 1024
    tokens_per_step: int = 4_194_304
    decay_steps: int = 0
    decay: str = "exponential"
    min_lr: float = 0.0

    def __post_init__(self):
        _check_lrs(self.peak_lr, self.min_lr)
        w, n = _check_warmup(self.warmup_steps, self.total_steps)
        _check_number("a", self.a, low=0.0, strict_low=True)
        _check_number("b", self.b, low=None, high=0.0)
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("tokens_per_step", self.tokens_per_step, low=1)
        d = _check_int("decay_steps", self.decay_steps, low=0)
        _check_shape("decay", self.decay, DECAY_SHAPES)
        if w + d > n:
            raise ValueError(f"warmup_steps + decay_steps must be <= total_steps={n}, got {w} + {d}")
        if d and self.decay == "exponential" and self.min_lr <= 0:
            raise ValueError("decay='exponential' needs min_lr > 0; set min_lr or choose decay='linear'")

    def _power(self, t):
        tokens = t * float(self.tokens_per_step)
        with np.errstate(divide="ignore", over="ignore"):
            p = self.batch_size * self.a * np.power(np.maximum(tokens, 1.0), self.b)
        return np.minimum(self.peak_lr, p)

    def _lr(self, t):
        w, n, d = self.warmup_steps, self.total_steps, self.decay_steps
        start = n - d
        stable = self._power(np.maximum(t, w).astype(np.float64))
        warm = _warmup_factor(t, w) * float(self._power(np.float64(w)))
        out = np.where(t < w, warm, stable)
        if d:
            at_start = float(self._power(np.float64(start)))
            x = np.clip((t - start) / d, 0.0, 1.0)
            low = min(self.min_lr, at_start)
            out = np.where(t >= start, _decay_multiplier(x, self.decay, at_start, low), out)
        return out


@dataclass(frozen=True, repr=False)
class Infinite(Schedule):
    """Warmup -> cooldown to ``const_lr`` -> constant -> exponential anneal to ``min_lr``."""

    family: ClassVar[str] = "infinite"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    cooldown_steps: int | None = None
    anneal_steps: int | None = None
    const_lr: float | None = None
    min_lr: float | None = None
    cooldown: str = "inv_sqrt"
    alpha: float = 10.0

    def __post_init__(self):
        peak = _check_number("peak_lr", self.peak_lr, low=0.0, strict_low=True)
        w, n = _check_warmup(self.warmup_steps, self.total_steps)
        # resolve the defaults, so to_dict() records the values actually used
        defaults = {"const_lr": 0.1 * peak, "min_lr": 0.01 * peak,
                    "cooldown_steps": int(round(0.15 * n)), "anneal_steps": int(round(0.1 * n))}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        c = _check_number("const_lr", self.const_lr, low=0.0, strict_low=True, high=peak)
        _check_number("min_lr", self.min_lr, low=0.0, strict_low=True, high=c)
        _check_shape("cooldown", self.cooldown, ("inv_sqrt", "cosine", "linear"))
        _check_number("alpha", self.alpha, low=0.0, strict_low=True)
        cool = _check_int("cooldown_steps", self.cooldown_steps, low=0)
        anneal = _check_int("anneal_steps", self.anneal_steps, low=0)
        if w + cool + anneal > n:
            raise ValueError(f"warmup_steps + cooldown_steps + anneal_steps must be <= total_steps={n}, "
                             f"got {w} + {cool} + {anneal}")

    def _lr(self, t):
        w, n = self.warmup_steps, self.total_steps
        c_end = w + self.cooldown_steps
        a_start = n - self.anneal_steps
        peak, const, final = self.peak_lr, self.const_lr, self.min_lr
        p = np.clip((t - w) / max(1, self.cooldown_steps), 0.0, 1.0)
        if self.cooldown == "inv_sqrt":
            f = lambda q: 1.0 / np.sqrt(1.0 + self.alpha * q) - 1.0  # noqa: E731
            frac = f(p) / f(1.0)
        elif self.cooldown == "cosine":
            frac = 0.5 * (1.0 - np.cos(np.pi * p))
        else:
            frac = p
        cool = peak + (const - peak) * frac
        out = np.where(t < c_end, cool, const)
        if self.anneal_steps:
            k = math.log(const / final) / self.anneal_steps
            dt = np.clip(t - a_start, 0.0, self.anneal_steps)
            out = np.where(t >= a_start, const * np.exp(-k * dt), out)
        return np.where(t < w, peak * _warmup_factor(t, w), out)


@dataclass(frozen=True, repr=False)
class Multistep(Schedule):
    """Step decay, e.g. DeepSeek's 80/10/10: ``peak_lr`` until 80%, then 31.6%, then 10% of it."""

    family: ClassVar[str] = "multistep"
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple = (0.8, 0.9)
    factors: tuple = (0.316, 0.1)

    def __post_init__(self):
        _check_lrs(self.peak_lr, 0.0)
        w, n = _check_warmup(self.warmup_steps, self.total_steps)
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "factors", tuple(self.factors))
        if len(self.milestones) != len(self.factors):
            raise ValueError(f"milestones and factors must have the same length, got "
                             f"{len(self.milestones)} and {len(self.factors)}")
        for i, f in enumerate(self.factors):
            _check_number(f"factors[{i}]", f, low=0.0)
        steps = self.milestone_steps
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"milestones must increase, got {list(self.milestones)} (steps {steps} at "
                             f"total_steps={n}); use a longer run or give milestones as increasing steps")
        if steps and (steps[0] < w or steps[-1] > n):
            raise ValueError(f"milestones must lie in [warmup_steps={w}, total_steps={n}], got steps {steps}")

    @property
    def milestone_steps(self) -> list[int]:
        """Milestones in steps; values in (0, 1) are fractions of ``total_steps``."""
        ms = list(self.milestones)
        fractions = all(isinstance(m, float) and 0.0 < m < 1.0 for m in ms)
        out = []
        for i, m in enumerate(ms):
            if fractions:
                out.append(int(round(m * self.total_steps)))
            else:
                out.append(_check_int(f"milestones[{i}]", m, low=0))
        return out

    def _lr(self, t):
        w = self.warmup_steps
        idx = np.searchsorted(np.asarray(self.milestone_steps, dtype=np.float64), t, side="right")
        mult = np.concatenate([[1.0], np.asarray(self.factors, dtype=np.float64)])[idx]
        return np.where(t < w, self.peak_lr * _warmup_factor(t, w), self.peak_lr * mult)


@dataclass(frozen=True, repr=False)
class Piecewise(Schedule):
    """Linear interpolation between ``(step, lr)`` points; constant before the first / after the last."""

    family: ClassVar[str] = "piecewise"
    points: tuple
    total_steps: int | None = None

    def __post_init__(self):
        pts = tuple((p[0], p[1]) for p in self.points) if self.points is not None else ()
        if len(pts) < 1:
            raise ValueError("points must hold at least one (step, lr) pair")
        steps = [_check_int(f"points[{i}] step", s) for i, (s, _) in enumerate(pts)]
        lrs = [_check_number(f"points[{i}] lr", v) for i, (_, v) in enumerate(pts)]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"points must have strictly increasing steps, got {steps}")
        object.__setattr__(self, "points", tuple(zip(steps, lrs)))
        if self.total_steps is None:
            object.__setattr__(self, "total_steps", steps[-1] + 1)
        object.__setattr__(self, "total_steps", _check_int("total_steps", self.total_steps, low=1,
                                                           high=MAX_TOTAL_STEPS))

    @property
    def peak_lr(self) -> float:
        return max(v for _, v in self.points)

    def _lr(self, t):
        xs = np.asarray([s for s, _ in self.points], dtype=np.float64)
        ys = np.asarray([v for _, v in self.points], dtype=np.float64)
        return np.interp(t, xs, ys)


@dataclass(frozen=True, repr=False)
class Refined(Schedule):
    """Schedule refined from a previous run's gradient norms (Defazio et al. 2310.07831)."""

    family: ClassVar[str] = "refined"
    grad_norms: tuple
    peak_lr: float
    total_steps: int | None = None
    method: str = "adam"
    window_fraction: float = 0.1

    def __post_init__(self):
        g = np.asarray(self.grad_norms, dtype=np.float64).ravel()
        if g.size < 2:
            raise ValueError("grad_norms must hold at least 2 per-step gradient norms")
        if not np.all(np.isfinite(g)) or np.any(g <= 0):
            raise ValueError("grad_norms must be positive and finite; drop steps with a zero/NaN norm first")
        object.__setattr__(self, "grad_norms", tuple(float(x) for x in g))
        _check_number("peak_lr", self.peak_lr, low=0.0, strict_low=True)
        _check_shape("method", self.method, ("adam", "sgd"))
        _check_number("window_fraction", self.window_fraction, low=0.0, high=1.0)
        if self.total_steps is None:
            object.__setattr__(self, "total_steps", int(g.size))
        _check_int("total_steps", self.total_steps, low=2, high=MAX_LRS_STEPS)
        object.__setattr__(self, "_table", _refine(g, int(self.total_steps), self.method,
                                                   float(self.window_fraction)) * float(self.peak_lr))

    def _lr(self, t):
        idx = np.minimum(t, self.total_steps - 1).astype(np.int64)
        return self._table[idx]


def _refine(g: np.ndarray, total: int, method: str, window_fraction: float) -> np.ndarray:
    """Steps 2-5 of Defazio et al.'s refinement; returns multipliers with max 1 and last 0."""
    from scipy.ndimage import median_filter

    g = np.interp(np.linspace(0, g.size - 1, total), np.arange(g.size), g)
    window = max(1, int(round(window_fraction * total)))
    g = median_filter(g, size=window, mode="reflect")
    w = g ** (-1.0 if method == "adam" else -2.0)
    tail = np.cumsum(w[::-1])[::-1] - w  # sum_{p > t} w_p
    eta = w * tail / w.sum()
    return eta / eta.max()


@dataclass(frozen=True, repr=False)
class Join(Schedule):
    """Run ``schedules[i]`` from ``boundaries[i-1]``, each evaluated at the step offset from its start."""

    family: ClassVar[str] = "join"
    schedules: tuple
    boundaries: tuple

    def __post_init__(self):
        scheds = tuple(s if isinstance(s, Schedule) else schedule_from_dict(s) for s in self.schedules)
        if not scheds:
            raise ValueError("join needs at least one schedule")
        bounds = tuple(_check_int(f"boundaries[{i}]", b, low=1, high=MAX_TOTAL_STEPS)
                       for i, b in enumerate(self.boundaries))
        if len(bounds) != len(scheds) - 1:
            raise ValueError(f"join needs len(boundaries) == len(schedules) - 1, got {len(bounds)} "
                             f"boundaries for {len(scheds)} schedules")
        if any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])):
            raise ValueError(f"boundaries must increase, got {list(bounds)}")
        object.__setattr__(self, "schedules", scheds)
        object.__setattr__(self, "boundaries", bounds)

    @property
    def total_steps(self) -> int:
        start = self.boundaries[-1] if self.boundaries else 0
        return start + self.schedules[-1].total_steps

    @property
    def peak_lr(self) -> float:
        return max(float(getattr(s, "peak_lr")) for s in self.schedules)

    @property
    def warmup(self) -> int:
        return self.schedules[0].warmup

    def _lr(self, t):
        starts = (0,) + self.boundaries
        idx = np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), t, side="right")
        out = np.empty_like(t, dtype=np.float64)
        for i, s in enumerate(self.schedules):
            sel = idx == i
            if np.ndim(t) == 0:
                if sel:
                    return s._lr(t - starts[i])
                continue
            if sel.any():
                out[sel] = s._lr(t[sel] - starts[i])
        return out


@dataclass(frozen=True, repr=False)
class Rewarm(Schedule):
    """Continue ``previous`` with a new cycle: warmup from its last LR, optional stable phase, decay."""

    family: ClassVar[str] = "rewarm"
    previous: Schedule
    peak_lr: float
    cycle_steps: int
    warmup_steps: int = 0
    stable_steps: int = 0
    min_lr: float = 0.0
    decay: str = "cosine"
    start_step: int | None = None

    def __post_init__(self):
        prev = self.previous if isinstance(self.previous, Schedule) else schedule_from_dict(self.previous)
        object.__setattr__(self, "previous", prev)
        peak, low = _check_lrs(self.peak_lr, self.min_lr)
        n = _check_int("cycle_steps", self.cycle_steps, low=1, high=MAX_TOTAL_STEPS)
        w = _check_int("warmup_steps", self.warmup_steps, low=0)
        s = _check_int("stable_steps", self.stable_steps, low=0)
        if w + s >= n:
            raise ValueError(f"warmup_steps + stable_steps must be < cycle_steps={n}, got {w} + {s}")
        _check_shape("decay", self.decay, DECAY_SHAPES)
        if self.decay == "exponential" and low <= 0:
            raise ValueError("decay='exponential' needs min_lr > 0; set min_lr or pick another decay shape")
        if self.start_step is not None:
            _check_int("start_step", self.start_step, low=1, high=MAX_TOTAL_STEPS)

    @property
    def start(self) -> int:
        return self.previous.total_steps if self.start_step is None else int(self.start_step)

    @property
    def total_steps(self) -> int:
        return self.start + self.cycle_steps

    @property
    def warmup(self) -> int:
        return self.previous.warmup

    @property
    def start_lr(self) -> float:
        """The LR the previous schedule ended on; the re-warmup starts there."""
        return float(self.previous(self.start - 1))

    def _lr(self, t):
        t0, w, s, n = self.start, self.warmup_steps, self.stable_steps, self.cycle_steps
        u = t - t0
        lr0 = self.start_lr
        warm = lr0 + (self.peak_lr - lr0) * (u / max(1, w))
        x = np.clip((u - w - s) / max(1, n - w - s), 0.0, 1.0)
        cyc = np.where(u < w, warm, np.where(u < w + s, self.peak_lr,
                                             _decay_multiplier(x, self.decay, self.peak_lr, self.min_lr)))
        prev = self.previous._lr(np.minimum(t, t0 - 1))
        return np.where(u < 0, prev, cyc)


# --------------------------------------------------------------------------- public constructors
def constant(*, peak_lr: float, total_steps: int, warmup_steps: int = 0) -> Constant:
    """Constant LR (after an optional linear warmup from 0).

    >>> constant(peak_lr=0.1, total_steps=10, warmup_steps=2)(1)
    0.05
    """
    return Constant(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps)


def linear(*, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> Linear:
    """Linear warmup from 0, then linear decay to ``min_lr`` at ``total_steps``.

    >>> linear(peak_lr=1.0, total_steps=10)(5)
    0.5
    """
    return Linear(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=min_lr)


def cosine(*, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> Cosine:
    """Linear warmup, then half a cosine from ``peak_lr`` to ``min_lr``.

    >>> cosine(peak_lr=1.0, total_steps=100)(50)
    0.5
    """
    return Cosine(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=min_lr)


def inverse_sqrt(*, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                 timescale: int | None = None) -> InverseSqrt:
    """Warmup, then ``peak_lr / sqrt((t + timescale - warmup) / timescale)`` (transformers' form).

    >>> inverse_sqrt(peak_lr=1.0, total_steps=1000, warmup_steps=100)(400)
    0.5
    """
    return InverseSqrt(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, timescale=timescale)


def wsd(*, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
        decay_steps: int | None = None, decay_fraction: float | None = None, decay: str = "linear",
        warmup_shape: str = "linear", num_cycles: float = 0.5, warmup_start_lr: float | None = None) -> WSD:
    """Warmup-stable-decay (MiniCPM): decay over the last ``decay_steps`` (or ``decay_fraction``, default 0.1).

    ``decay`` is one of ``linear``, ``cosine``, ``1-sqrt``, ``1-square``, ``exponential`` (needs
    ``min_lr > 0``) or ``wsdsc`` (``(1-x)^1.5``). As transformers' ``get_wsd_schedule`` (same values
    to the last bit, ``min_lr_ratio = min_lr / peak_lr``): the warmup rises from ``min_lr`` to the peak
    with ``warmup_shape`` (``linear``, ``cosine``, ``1-sqrt``); ``num_cycles`` is the number of cosine
    periods of a ``cosine`` decay (0.5: peak to ``min_lr``). ``warmup_start_lr`` starts the warmup
    elsewhere (``0.0``: from zero, the workbench's behaviour before this parity fix; schedules saved
    then, such as the bundled runs', carry it).

    >>> wsd(peak_lr=1.0, total_steps=100, decay_steps=20)(90)
    0.5
    """
    return WSD(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=min_lr,
               decay_steps=decay_steps, decay_fraction=decay_fraction, decay=decay, warmup_shape=warmup_shape,
               num_cycles=num_cycles, warmup_start_lr=warmup_start_lr)


def power(*, peak_lr: float, total_steps: int, warmup_steps: int = 0, a: float = 4.6, b: float = -0.51,
          batch_size: int = 1024, tokens_per_step: int = 4_194_304, decay_steps: int = 0,
          decay: str = "exponential", min_lr: float = 0.0) -> Power:
    """IBM power scheduler: ``min(peak_lr, batch_size * a * tokens^b)``, optional final decay.

    Tokens seen at step ``t`` are ``t * tokens_per_step``; warmup ramps linearly to the power value
    at the end of warmup; the final ``decay_steps`` decay with ``decay`` shape to ``min_lr``.

    >>> s = power(peak_lr=0.02, total_steps=100_000, batch_size=1024, tokens_per_step=4_194_304)
    >>> s(0) == 0.02 and s(99_999) < 0.006
    True
    """
    return Power(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, a=a, b=b,
                 batch_size=batch_size, tokens_per_step=tokens_per_step, decay_steps=decay_steps,
                 decay=decay, min_lr=min_lr)


def infinite(*, peak_lr: float, total_steps: int, warmup_steps: int = 0, cooldown_steps: int | None = None,
             anneal_steps: int | None = None, const_lr: float | None = None, min_lr: float | None = None,
             cooldown: str = "inv_sqrt", alpha: float = 10.0) -> Infinite:
    """Infinite schedule: warmup, cooldown to ``const_lr``, constant, then exponential anneal to ``min_lr``.

    Defaults: cooldown 15% and anneal 10% of ``total_steps``, ``const_lr = 0.1*peak_lr``,
    ``min_lr = 0.01*peak_lr``; ``cooldown`` is ``inv_sqrt`` (alpha 10), ``cosine`` or ``linear``.

    >>> s = infinite(peak_lr=1.0, total_steps=100, warmup_steps=5, cooldown_steps=15, anneal_steps=10)
    >>> s(20), s(50), round(s(100), 6)
    (0.1, 0.1, 0.01)
    """
    return Infinite(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                    cooldown_steps=cooldown_steps, anneal_steps=anneal_steps, const_lr=const_lr,
                    min_lr=min_lr, cooldown=cooldown, alpha=alpha)


def multistep(*, peak_lr: float, total_steps: int, warmup_steps: int = 0,
              milestones: Sequence = (0.8, 0.9), factors: Sequence[float] = (0.316, 0.1)) -> Multistep:
    """Step decay: ``peak_lr * factors[i]`` from ``milestones[i]`` on (fractions in (0,1) or steps).

    >>> s = multistep(peak_lr=1.0, total_steps=100)
    >>> s(79), s(80), s(95)
    (1.0, 0.316, 0.1)
    """
    return Multistep(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                     milestones=tuple(milestones), factors=tuple(factors))


def piecewise(*, points: Sequence[tuple[int, float]], total_steps: int | None = None) -> Piecewise:
    """Linear between ``(step, lr)`` points.

    >>> piecewise(points=[(0, 0.0), (10, 1.0), (20, 0.0)])(15)
    0.5
    """
    return Piecewise(points=tuple(tuple(p) for p in points), total_steps=total_steps)


def refined(*, grad_norms: Sequence[float], peak_lr: float, total_steps: int | None = None,
            method: str = "adam", window_fraction: float = 0.1) -> Refined:
    """Refine a schedule from a previous run's per-step gradient norms (Defazio et al. 2310.07831).

    Norms are resampled to ``total_steps``, median-filtered (window ``window_fraction*T``), weighted
    ``w = G^-1`` (``method='adam'``, l1 norms) or ``G^-2`` (``'sgd'``, l2 norms), and
    ``eta_t = w_t * sum_{p>t} w_p / sum_p w_p``, normalised to max ``peak_lr``; ends at 0.

    >>> s = refined(grad_norms=[1.0] * 100, peak_lr=1.0)
    >>> round(s(0), 3), s(99)
    (1.0, 0.0)
    """
    return Refined(grad_norms=tuple(grad_norms), peak_lr=peak_lr, total_steps=total_steps, method=method,
                   window_fraction=window_fraction)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Join:
    """Concatenate schedules: the i-th runs from ``boundaries[i-1]`` with its own step counter from 0.

    >>> s = join([constant(peak_lr=1.0, total_steps=10), constant(peak_lr=0.5, total_steps=10)], [10])
    >>> s(9), s(10), s.total_steps
    (1.0, 0.5, 20)
    """
    return Join(schedules=tuple(schedules), boundaries=tuple(boundaries))


def rewarm(previous: Schedule, *, peak_lr: float, cycle_steps: int, warmup_steps: int = 0,
           stable_steps: int = 0, min_lr: float = 0.0, decay: str = "cosine",
           start_step: int | None = None) -> Rewarm:
    """Continue a finished schedule with a new warmup-(stable)-decay cycle, for continual pre-training.

    The new cycle starts at ``start_step`` (default ``previous.total_steps``) and warms up linearly
    from the LR the previous schedule ended on to ``peak_lr``, then decays to ``min_lr`` with ``decay``.

    >>> a = cosine(peak_lr=1.0, total_steps=100, min_lr=0.1)
    >>> b = rewarm(a, peak_lr=0.5, cycle_steps=100, warmup_steps=10, min_lr=0.05)
    >>> round(b(99), 3), b(110), b.total_steps
    (0.1, 0.5, 200)
    """
    return Rewarm(previous=previous, peak_lr=peak_lr, cycle_steps=cycle_steps, warmup_steps=warmup_steps,
                  stable_steps=stable_steps, min_lr=min_lr, decay=decay, start_step=start_step)


FAMILIES: dict[str, Callable[..., Schedule]] = {
    "constant": constant, "linear": linear, "cosine": cosine, "inverse_sqrt": inverse_sqrt, "wsd": wsd,
    "power": power, "infinite": infinite, "multistep": multistep, "piecewise": piecewise,
    "refined": refined, "join": join, "rewarm": rewarm,
}


def make(family: str, **kwargs) -> Schedule:
    """Build a schedule by family name, e.g. ``make("cosine", peak_lr=1e-3, total_steps=1000)``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown schedule family {family!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](**kwargs)


def schedule_from_dict(d: dict) -> Schedule:
    """Inverse of ``Schedule.to_dict()`` (the SPEC.json format); any bad input raises ``ValueError``.

    Refused with a message saying what to fix: a missing or unknown family, unknown or missing
    arguments, booleans or non-integers as steps, horizons over ``MAX_TOTAL_STEPS``, ``rewarm``
    without ``previous``, ``piecewise`` points that are not ``[step, lr]`` pairs, ``join`` lists
    of the wrong type and nesting deeper than ``MAX_SPEC_DEPTH``.

    >>> schedule_from_dict({"family": "constant", "peak_lr": 0.1, "total_steps": True})
    Traceback (most recent call last):
    ...
    ValueError: total_steps must be an integer number of steps, got True
    """
    return _from_dict(d, 0)


def _from_dict(d: Any, depth: int) -> Schedule:
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"the schedule nests join/rewarm more than {MAX_SPEC_DEPTH} levels deep; flatten it "
                         "(one join takes any number of schedules)")
    if not isinstance(d, dict) or "family" not in d:
        raise ValueError("a schedule dict needs a 'family' key, e.g. {'family': 'cosine', 'peak_lr': 1e-3, ...}")
    kwargs = {k: v for k, v in d.items() if k != "family"}
    family = d["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"unknown schedule family {str(family)[:40]!r} in dict; choose one of "
                         f"{', '.join(sorted(FAMILIES))}")
    if family == "join":
        scheds, bounds = kwargs.pop("schedules", None), kwargs.pop("boundaries", [])
        if kwargs:
            raise ValueError(f"bad arguments for schedule family 'join': unknown {sorted(kwargs)}; it takes "
                             "schedules and boundaries")
        if not isinstance(scheds, list) or not isinstance(bounds, list):
            raise ValueError("join needs 'schedules' (a list of schedule dicts) and 'boundaries' (a list of steps)")
        return join([_from_dict(s, depth + 1) for s in scheds], bounds)
    if family == "rewarm":
        if "previous" not in kwargs:
            raise ValueError("rewarm needs 'previous': the schedule dict of the run it continues")
        kwargs["previous"] = _from_dict(kwargs["previous"], depth + 1)
    if family == "piecewise":
        points = kwargs.get("points")
        if not (isinstance(points, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points)):
            raise ValueError("piecewise needs 'points': a list of [step, lr] pairs, e.g. [[0, 0.001], [100, 0.0]]")
        kwargs["points"] = [tuple(p) for p in points]
    for key in ("milestones", "factors", "grad_norms"):
        if key in kwargs and not isinstance(kwargs[key], (list, tuple)):
            raise ValueError(f"{family} needs {key!r} as a list of numbers, got {type(kwargs[key]).__name__}")
        if key in kwargs and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kwargs[key]):
            raise ValueError(f"{family}: every entry of {key!r} must be a number")
    if family == "rewarm":
        prev = kwargs.pop("previous")
        try:
            return rewarm(prev, **kwargs)
        except TypeError as exc:
            raise ValueError(f"bad arguments for schedule family 'rewarm': {exc}") from None
    try:
        return FAMILIES[family](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for schedule family {family!r}: {exc}") from None


def save_schedule(sched: Schedule, path: str | os.PathLike) -> None:
    """Write ``sched.to_dict()`` as JSON (atomically): the SPEC.json format."""
    atomic_write_text(path, sched.to_json() + "\n")


def load_schedule(path: str | os.PathLike) -> Schedule:
    """Read a SPEC.json written by ``save_schedule`` / ``to_dict()``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"schedule file {path!r} does not exist")
    try:
        with open(path) as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); a SPEC.json is a schedule's to_dict()") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to read; flatten the schedule (one join takes any "
                         "number of schedules)") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory; give the SPEC.json file") from None
    try:
        return schedule_from_dict(d)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def export_csv(sched: Schedule, path: str | os.PathLike) -> int:
    """Write ``step,lr`` for every step ``0..total_steps-1`` (atomically); returns the number of rows."""
    lrs = sched.lrs()
    body = "\n".join(f"{i},{v!r}" for i, v in enumerate(lrs.tolist()))
    atomic_write_text(path, "step,lr\n" + body + "\n")
    return int(lrs.size)


def lr_array(sched_or_lrs: Schedule | Sequence[float] | np.ndarray, total_steps: int | None = None) -> np.ndarray:
    """The per-step LR array of a schedule (or the array itself, validated)."""
    if isinstance(sched_or_lrs, Schedule):
        return sched_or_lrs.lrs(total_steps)
    arr = np.asarray(sched_or_lrs, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("learning rates must be a non-empty array of finite, non-negative numbers")
    return arr if total_steps is None else arr[:total_steps]


# --------------------------------------------------------------------------- torch adapter
class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets each param group's LR to ``schedule(t) * ratio`` of the group.

    Absolute values, whatever ``lr`` the optimizer was built with. A group's ratio is its
    ``lr_scale`` if any group has one (default 1.0), else its ``initial_lr`` (the LR it was built
    with, the torch/HF convention) over the largest group's: groups built with different LRs keep
    their ratio, and the largest follows the schedule exactly. The state is just the step (plus the
    schedule as a dict, checked on load), so it loads with ``torch.load(weights_only=True)`` and
    resumes exactly: restore the optimizer's state, then the scheduler's.

    Example:
        >>> import torch
        >>> from workbench import schedules
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
        >>> sch = schedules.cosine(peak_lr=1.0, total_steps=10).torch_scheduler(opt)
        >>> opt.param_groups[0]["lr"]
        1.0
    """

    def __init__(self, optimizer, schedule: Schedule, last_epoch: int = -1, steps_per_update: int = 1):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a workbench Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        # calls of step() per optimizer update (accelerate's prepared scheduler steps N times on N processes)
        self.steps_per_update = _check_int("steps_per_update", steps_per_update, low=1)
        super().__init__(optimizer, last_epoch)

    def ratios(self) -> list[float]:
        """Each group's multiplier of the schedule (see the class docstring)."""
        groups = self.optimizer.param_groups
        if any("lr_scale" in g for g in groups):
            return [float(g.get("lr_scale", 1.0)) for g in groups]
        init = [float(g.get("initial_lr", g["lr"])) for g in groups]
        top = max(init) if init else 0.0
        return [v / top if top > 0 else 1.0 for v in init]

    def get_lr(self):
        lr = self.schedule(max(0, int(self.last_epoch)) // self.steps_per_update)
        return [lr * r for r in self.ratios()]

    _get_closed_form_lr = get_lr

    def state_dict(self):
        return {"last_epoch": int(self.last_epoch), "schedule": self.schedule.to_dict(),
                "_step_count": int(getattr(self, "_step_count", 0)), "steps_per_update": self.steps_per_update}

    def load_state_dict(self, state_dict):
        saved = state_dict.get("schedule")
        if saved is not None:
            try:
                same = schedule_from_dict(saved) == self.schedule
            except (ValueError, TypeError):
                same = False
            if not same:
                raise ValueError(f"this scheduler state was saved with another schedule ({saved!r}) than this "
                                 f"scheduler's ({self.schedule.to_dict()!r}); build the scheduler with the saved "
                                 "schedule (schedule_from_dict(state['schedule'])) to resume that run")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        lrs = self.get_lr()
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = list(lrs)
