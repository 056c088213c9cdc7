"""Loss curves: the per-step learning rate of a run and the losses measured at some of its steps.

A :class:`LossCurve` is what the loss-curve laws (:mod:`workbench.laws`) fit and score. Readers
turn logs into curves: :func:`read_curve` picks one by the file's name.

Step convention (the same as :mod:`workbench.schedules` and the trainer's run log):

* step ``t`` is the 0-based index of an optimizer update; ``lrs[t]`` is the LR that the (t+1)-th
  update used, i.e. ``schedule(t)``;
* a loss "at step ``s``" is the loss of the model **after s+1 updates** (after the update that used
  ``lrs[s]``). It depends on ``lrs[0..s]`` only. So a CSV row ``step,lr,loss = s,eta,L`` says: update
  ``s`` used ``eta`` and the model after it had loss ``L`` (the trainer's log line for step ``s``).
* Trainer run logs (``log.jsonl``): the event for step ``t`` is written after the (t+1)-th update,
  ``lr`` is ``schedule(t)``, ``val_loss`` is measured after those t+1 updates, so it is the loss at
  step ``t``. The train ``loss`` of event ``t`` is the loss of the batch that *produced* update t+1,
  measured on the model after ``t`` updates: it is the loss at step ``t-1`` (the event of step 0,
  the untrained model, is dropped).
* Other tools count differently: HF ``Trainer`` / Lightning ``global_step`` counts *completed*
  updates (their step ``n`` is our ``n-1``), W&B's ``_step`` counts ``wandb.log`` calls. Steps are
  taken as they are in the file; pass ``step_offset=-1`` for a log keyed by ``global_step``
  (the laws barely notice one step, but this keeps it exact).

Readers: :func:`read_runs` finds every run under a path and detects its format; :func:`read_curve`
reads one of them (``run=`` chooses) into a :class:`LossCurve`. Formats:

* CSV with header columns ``step``, ``lr``, ``loss`` (other columns ignored; the W&B names below
  are accepted too). Rows with an empty ``loss`` carry the LR only. The LR at steps not listed is
  linearly interpolated between listed steps; before the first listed step it is a linear warmup
  from 0 to the first listed LR (so logs may be sparse and may start after the warmup).
* The trainer's JSONL run log (a run directory or its ``log.jsonl``), W&B's ``wandb-history.jsonl``.
* TensorBoard logdirs at any depth (every folder with ``*tfevents*`` files is a run, named by its
  relative path), streamed by :mod:`workbench.tfevents`: neither tensorflow nor tensorboard is needed.
* W&B run histories exported as JSON (``run.history().to_json(orient="records")``, a list of
  records, ``{"history": [...]}``, or ``{column: [values]}``), CSV or Parquet; ``wandb:ENTITY/PROJECT/ID``
  reads the full history through the ``wandb`` API (``scan_history``) when wandb is installed.
* HF ``Trainer`` output folders (``trainer_state.json``'s ``log_history``, or the latest checkpoint's).
* Lightning ``CSVLogger`` folders (``metrics.csv``); the 124M curves' W&B-style JSON (``history`` +
  ``config``: the LR at every step is rebuilt from the config and checked against the logged one).

Column / tag names recognised (first match wins; ``loss_key=``, ``lr_key=``, ``step_key=`` override;
falling back to W&B's ``_step``, which counts ``wandb.log`` calls, warns):

=========  =========================================================================================
step       ``step``, ``iter``, ``iteration``, ``global_step``, ``trainer/global_step``,
           ``train/global_step``, ``_step``
lr         ``lr``, ``learning_rate``, ``train/learning_rate``, ``train/lr``, ``train_lr``, ``lr-AdamW``,
           ``lr-Adam``, ``lr-SGD``, ``optimizer/lr``, ``trainer/learning_rate``, then any ``lr-*`` (Lightning)
val loss   ``val_loss``, ``eval/loss``, ``eval_loss``, ``val/loss``, ``validation/loss``, ``valid/loss``,
           ``test/loss``
train loss ``loss``, ``train/loss``, ``train_loss``, ``training_loss``, ``train/loss_step``,
           ``train_loss_step``, ``train_loss_epoch``
=========  =========================================================================================

The default loss is a validation loss if the log has one, else the train loss. The LR per step
comes from the run's own schedule where one is saved with it (exact at every step), else from
the log, else from ``schedule=`` (``--schedule SPEC.json``, or ``Schedule.from_hf(training_args)``).
Every choice is kept in ``curve.meta["choices"]`` and printed by the CLI. Curves longer than
``MAX_STEPS`` (1e8) steps are refused before anything is allocated.

Resumed runs repeat (or reorder) steps: every reader groups rows by step, keeps the last
occurrence of each step, sorts, and says so in a ``UserWarning``. Bad values (a loss that is not
positive and finite, a negative LR, a missing column) raise ``ValueError`` naming the file, the
line and the fix.

Example:
    >>> import numpy as np
    >>> from workbench import schedules
    >>> s = schedules.cosine(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    >>> c = LossCurve.from_schedule(s, steps=[199, 599, 999], losses=[3.1, 2.8, 2.6], name="cos")
    >>> c.total_steps, c.warmup, c.steps.tolist()
    (1000, 100, [199, 599, 999])
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from workbench.files import atomic_write_text
from workbench.schedules import Schedule

__all__ = ["LossCurve", "Run", "read_runs", "select_run", "read_curve", "read_curves", "read_csv", "read_run_log",
           "read_tensorboard", "read_wandb", "describe_choices", "STEP_KEYS", "LR_KEYS", "VAL_LOSS_KEYS",
           "TRAIN_LOSS_KEYS", "MAX_STEPS"]

STEP_KEYS = ("step", "iter", "iteration", "global_step", "trainer/global_step", "train/global_step", "_step")
LR_KEYS = ("lr", "learning_rate", "train/learning_rate", "train/lr", "train_lr", "lr-AdamW", "lr-Adam", "lr-SGD",
           "optimizer/lr", "trainer/learning_rate")
VAL_LOSS_KEYS = ("val_loss", "eval/loss", "eval_loss", "val/loss", "validation/loss", "valid/loss", "test/loss")
TRAIN_LOSS_KEYS = ("loss", "train/loss", "train_loss", "training_loss", "train/loss_step", "train_loss_step",
                   "train_loss_epoch")


# --------------------------------------------------------------------------- the curve
@dataclass
class LossCurve:
    """Per-step LRs of a run (warmup included) and losses measured at some steps.

    Attributes:
        lrs: LR at every step ``0..total_steps-1`` (``lrs[t]`` = LR of the (t+1)-th update).
        steps: sorted, distinct steps with a measured loss (the loss after ``step+1`` updates).
        losses: the measured losses (positive, finite), one per entry of ``steps``.
        name: a label (the file name for curves read from files).
        meta: free-form metadata (``source``, ``loss_key``, ``format``, ...).
        warmup_steps: steps of the initial warmup; ``None`` infers it as the first step at which
            the LR reaches its maximum.
    """

    lrs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)
    warmup_steps: int | None = None

    def __post_init__(self):
        lrs = np.asarray(self.lrs, dtype=np.float64).ravel()
        steps = np.asarray(self.steps).ravel()
        losses = np.asarray(self.losses, dtype=np.float64).ravel()
        who = f"curve {self.name!r}" if self.name else "LossCurve"
        if lrs.size == 0 or not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
            raise ValueError(f"{who}: lrs must be a non-empty array of finite, non-negative learning rates")
        if not np.any(lrs > 0):
            raise ValueError(f"{who}: every learning rate is 0; a loss law needs a positive LR somewhere")
        if steps.size != losses.size:
            raise ValueError(f"{who}: steps and losses must have the same length, got {steps.size} and {losses.size}")
        if steps.size == 0:
            raise ValueError(f"{who}: no measured losses; a curve needs at least one (step, loss) pair")
        if np.issubdtype(steps.dtype, np.floating):
            if not np.all(np.isfinite(steps)) or not np.all(steps == np.round(steps)):
                raise ValueError(f"{who}: steps must be whole numbers (0-based update indices)")
        steps = steps.astype(np.int64)
        if steps.min() < 0 or steps.max() >= lrs.size:
            raise ValueError(f"{who}: steps must lie in [0, {lrs.size}) (one LR per step up to the last "
                             f"measured step); got {steps.min()}..{steps.max()}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError(f"{who}: steps must be strictly increasing (group repeated steps first, "
                             f"e.g. read the log with read_curve, which keeps the last occurrence)")
        bad = ~(np.isfinite(losses) & (losses > 0))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"{who}: loss {float(losses[i])!r} at step {int(steps[i])} is not a positive finite "
                             "number; the laws fit log-loss, drop that point")
        if self.warmup_steps is not None:
            w = int(self.warmup_steps)
            if w < 0 or w >= lrs.size:
                raise ValueError(f"{who}: warmup_steps must be in [0, {lrs.size}), got {self.warmup_steps}")
            self.warmup_steps = w
        self.lrs, self.steps, self.losses = lrs, steps, losses

    # -- derived
    @property
    def total_steps(self) -> int:
        """Number of steps with a known LR."""
        return int(self.lrs.size)

    @property
    def warmup(self) -> int:
        """Warmup steps: ``warmup_steps`` if given, else the first step at which the LR peaks."""
        return int(self.warmup_steps) if self.warmup_steps is not None else int(np.argmax(self.lrs))

    @property
    def peak_lr(self) -> float:
        return float(self.lrs.max())

    def __len__(self) -> int:
        return int(self.steps.size)

    def __repr__(self) -> str:
        return (f"LossCurve(name={self.name!r}, total_steps={self.total_steps}, points={len(self)}, "
                f"peak_lr={self.peak_lr:.3g}, warmup={self.warmup})")

    # -- constructors
    @classmethod
    def from_schedule(cls, schedule: Schedule | Sequence[float], steps: Sequence[int], losses: Sequence[float],
                      name: str = "", meta: dict | None = None, total_steps: int | None = None) -> "LossCurve":
        """A curve from a workbench Schedule (or per-step LR array) and measured ``(steps, losses)``."""
        if isinstance(schedule, Schedule):
            n = max(schedule.total_steps, int(np.max(steps)) + 1) if total_steps is None else total_steps
            lrs = schedule(np.arange(n))
            warm = _schedule_warmup(schedule, lrs)
        else:
            lrs = np.asarray(schedule, dtype=np.float64)
            warm = None
        return cls(lrs=lrs, steps=np.asarray(steps), losses=np.asarray(losses, dtype=np.float64), name=name,
                   meta=dict(meta or {}), warmup_steps=warm)

    # -- transforms
    def thin(self, max_points: int = 1000) -> "LossCurve":
        """At most ``max_points`` points: consecutive points averaged in groups (geometric mean loss,
        middle step of each group). Returns ``self`` when already small enough.

        >>> c = LossCurve(lrs=[1.0] * 10, steps=range(10), losses=[2.0] * 10)
        >>> c.thin(5).steps.tolist(), c.thin(5).losses.tolist()
        ([1, 3, 5, 7, 9], [2.0, 2.0, 2.0, 2.0, 2.0])
        """
        n = len(self)
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if n <= max_points:
            return self
        k = math.ceil(n / max_points)
        starts = np.arange(0, n, k)
        counts = np.diff(np.append(starts, n))
        logl = np.add.reduceat(np.log(self.losses), starts) / counts
        steps = self.steps[np.minimum(starts + counts // 2, n - 1)]
        meta = dict(self.meta, thinned_from=n)
        return LossCurve(self.lrs, steps, np.exp(logl), self.name, meta, self.warmup_steps)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``step,lr,loss`` (atomically): every step's LR, the loss where one was measured."""
        loss = {int(s): float(v) for s, v in zip(self.steps, self.losses)}
        lines = ["step,lr,loss"]
        for t, lr in enumerate(self.lrs.tolist()):
            lines.append(f"{t},{lr!r},{loss[t]!r}" if t in loss else f"{t},{lr!r},")
        atomic_write_text(path, "\n".join(lines) + "\n")


def _schedule_warmup(schedule: Schedule, lrs: np.ndarray) -> int | None:
    """A schedule's declared warmup; ``None`` (infer: the steps before the peak) when it declares
    none but starts below its peak (e.g. a ``piecewise`` ramp)."""
    w = schedule.warmup
    return None if (w == 0 and lrs.size and lrs[0] < lrs.max()) else w


# --------------------------------------------------------------------------- shared assembly
MAX_STEPS = 100_000_000
"""Longest curve a reader builds (one float64 LR per step: 800 MB). A longer one is refused before
anything is allocated: it is almost always a wrong step column (a token count, a timestamp)."""


@dataclass
class _Row:
    where: str          # "file, line N" for error messages
    step: int
    lr: float | None
    loss: float | None


def _num(value: Any, where: str, column: str) -> float | None:
    """Parse a cell; ``None`` for empty. Raises ValueError naming the place."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: column {column!r} holds {value!r}, not a number")
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    if s == "" or s.lower() in ("none", "null"):
        return None
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"{where}: column {column!r} holds {s[:40]!r}, not a number; fix the value or "
                         "leave the cell empty") from None


def _step_value(value: Any, where: str, column: str, offset: int) -> int | None:
    step = _num(value, where, column)
    if step is None or (isinstance(step, float) and math.isnan(step)):
        return None
    if not math.isfinite(step) or abs(step) > MAX_STEPS:
        raise ValueError(f"{where}: step {value!r} in column {column!r} is beyond {MAX_STEPS:,} steps (a curve "
                         f"that long needs {8 * min(abs(step), 1e18) / 1e9:.3g} GB of per-step LRs); is "
                         f"{column!r} the optimizer step? Pass --step-key (step_key=) naming the step column")
    if not float(step).is_integer():
        raise ValueError(f"{where}: step {value!r} is not a whole number; steps count optimizer updates")
    return int(step) + offset


def _pick(names: Iterable[str], candidates: Sequence[str], given: str | None, what: str, source: str,
          where: str, required: bool = True) -> str | None:
    names = list(names)
    if given is not None:
        if given not in names:
            raise ValueError(f"{where}: no {given!r} column/key for the {what} (found: {', '.join(names) or 'none'}); "
                             f"pass {what}_key= (--{what}-key) naming one of them")
        return given
    for c in candidates:
        if c in names:
            return c
    if required:
        raise ValueError(f"{where}: no {what} column (found: {', '.join(names) or 'none'}); add a "
                         f"{candidates[0]!r} column, or pass {what}_key= (--{what}-key) naming the column that holds it")
    return None


def _pick_loss(names: Iterable[str], loss_key: str | None, where: str) -> str:
    names = list(names)
    if loss_key is not None:
        return _pick(names, (), loss_key, "loss", "", where)
    for c in VAL_LOSS_KEYS + TRAIN_LOSS_KEYS:
        if c in names:
            return c
    raise ValueError(f"{where}: no loss column (found: {', '.join(names) or 'none'}); add a 'loss' column, "
                     "or pass loss_key= (--loss-key) naming the column that holds it")


def _assemble(rows: list[_Row], source: str, *, name: str | None, meta: dict,
              schedule: Schedule | None, lrs: np.ndarray | None = None, lrs_source: str = "") -> LossCurve:
    """Group rows by step (last wins, warn), validate, interpolate the LR, build the curve.

    ``lrs``: per-step LRs rebuilt from the run's own config (preferred to the logged ones, which are
    checked against it); ``schedule``: the same from a Schedule."""
    if not rows:
        raise ValueError(f"{source}: no data rows")
    by_step: dict[int, _Row] = {}
    lr_at: dict[int, tuple[float, str]] = {}
    repeated = reordered = 0
    last_lr = last_loss = -1
    for r in rows:
        if r.step < 0:
            raise ValueError(f"{r.where}: step {r.step} is negative; steps are 0-based update indices "
                             "(use step_offset= / --step-offset to shift a log that counts differently)")
        if r.lr is not None:
            if not math.isfinite(r.lr) or r.lr < 0:
                raise ValueError(f"{r.where}: lr {r.lr!r} is negative or not finite; learning rates "
                                 "must be finite and >= 0 (fix the row or delete it)")
            if r.step in lr_at:
                repeated += r.loss is None
            elif r.step < last_lr:
                reordered += r.loss is None
            last_lr = max(last_lr, r.step)
            lr_at[r.step] = (r.lr, r.where)
        if r.loss is not None:
            if not math.isfinite(r.loss) or r.loss <= 0:
                raise ValueError(f"{r.where}: loss {r.loss!r} is not a positive finite number; the laws "
                                 "fit log-loss: fix the row, delete it, or leave the loss cell empty")
            if r.step in by_step:
                repeated += 1
            elif r.step < last_loss:
                reordered += 1
            last_loss = max(last_loss, r.step)
            by_step[r.step] = r
    if repeated or reordered:
        what = []
        if repeated:
            what.append(f"{repeated} repeated step(s)")
        if reordered:
            what.append(f"{reordered} out-of-order step(s)")
        warnings.warn(f"{source}: {' and '.join(what)} (a resumed run?): grouped by step, kept the last "
                      "occurrence of each step, sorted by step", UserWarning, stacklevel=3)
    if not by_step:
        raise ValueError(f"{source}: no loss values (every loss cell is empty); a curve needs measured losses")
    steps = np.array(sorted(by_step), dtype=np.int64)
    losses = np.array([by_step[s].loss for s in steps], dtype=np.float64)
    n = int(max(steps[-1], max(lr_at) if lr_at else 0)) + 1
    if schedule is not None:
        n = max(n, int(schedule.total_steps))
    elif lrs is not None:
        n = max(n, int(lrs.size))
    if n > MAX_STEPS:
        raise ValueError(f"{source}: a curve of {n:,} steps is longer than {MAX_STEPS:,} (it would need "
                         f"{8 * n / 1e9:.3g} GB of per-step LRs); check the step column (--step-key) and the "
                         "schedule's total_steps")
    warm = None
    if schedule is not None or lrs is not None:
        if schedule is not None:
            full = schedule(np.arange(n))
            warm = _schedule_warmup(schedule, full)
            label = "the schedule"
        else:
            full = np.concatenate([lrs, np.full(n - lrs.size, lrs[-1])]) if n > lrs.size else lrs[:n].copy()
            label = lrs_source or "the run's config"
        if lr_at:
            ls = np.array(sorted(lr_at))
            logged = np.array([lr_at[s][0] for s in ls])
            bad = np.abs(logged - full[ls]) > 1e-6 * max(float(full.max()), 1e-30) + 1e-6 * np.abs(logged)
            if np.any(bad):
                i = int(np.argmax(bad))
                warnings.warn(f"{lr_at[int(ls[i])][1]}: logged lr {float(logged[i])!r} differs from "
                              f"{label}'s {float(full[ls[i]])!r} at step {int(ls[i])}; using {label} (is it "
                              "the run's schedule?)", UserWarning, stacklevel=3)
        lrs_out = full
    else:
        if not lr_at:
            raise ValueError(f"{source}: no learning rates (the lr column is missing or empty); add an 'lr' "
                             "column, pass lr_key= (--lr-key), or pass schedule= (--schedule SPEC.json)")
        ls = np.array(sorted(lr_at), dtype=np.float64)
        lv = np.array([lr_at[int(s)][0] for s in ls])
        t = np.arange(n, dtype=np.float64)
        lrs_out = np.interp(t, ls, lv)
        if ls[0] > 0:  # before the first listed step: linear warmup from 0
            head = t < ls[0]
            lrs_out[head] = lv[0] * t[head] / ls[0]
    if not np.any(lrs_out > 0):
        raise ValueError(f"{source}: every learning rate is 0; check the lr column")
    label = name if name is not None else os.path.splitext(os.path.basename(source.rstrip("/")))[0]
    meta = dict(meta, source=source)
    if repeated or reordered:
        meta["regrouped"] = {"repeated": repeated, "reordered": reordered}
    return LossCurve(lrs=lrs_out, steps=steps, losses=losses, name=label, meta=meta, warmup_steps=warm)


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One run found by :func:`read_runs`: its logged records and how to read them.

    Attributes:
        name: the run's path relative to the path given to ``read_runs`` (``"."``: that path itself).
        path: the file (or folder) the records came from.
        format: ``csv``, ``lightning_csv``, ``run_log``, ``wandb_json``, ``wandb_jsonl``, ``wandb_parquet``,
            ``wandb_api``, ``hf_trainer_state``, ``curves124m_json`` or ``tensorboard``.
        records: ``(where, {key: value})`` in file order (``where`` names the file and line/record).
        step_offset: the format's default shift of its step numbers to the workbench's 0-based update
            index (``-1`` for logs keyed by HF's ``global_step``, which counts completed updates).
        schedule / lrs: the run's own LR at every step where it can be rebuilt (a ``schedule.json``
            saved next to it, the 124M logs' ``config``); exact, so preferred to the sparse logged LRs
            (which are checked against it).
    """

    name: str
    path: str
    format: str
    records: list = field(repr=False, default_factory=list)
    header_where: str = ""
    step_offset: int = 0
    offset_reason: str = ""
    schedule: Schedule | None = None
    lrs: np.ndarray | None = field(repr=False, default=None)
    lrs_source: str = ""

    @property
    def metrics(self) -> list[str]:
        """Every column / key / tag logged, in order of first appearance."""
        keys: dict[str, None] = {}
        for _, r in self.records:
            keys.update(dict.fromkeys(r))
        if self.format == "tensorboard":
            keys.pop("step", None)
        return list(keys)

    def choices(self, *, loss_key: str | None = None, lr_key: str | None = None, step_key: str | None = None,
                step_offset: int | None = None, schedule: Schedule | None = None) -> dict:
        """The keys a curve of this run would use, and why (``read_curve`` and the CLI print them)."""
        keys: dict[str, None] = {}
        for _, r in self.records:
            keys.update(dict.fromkeys(r))
        where0 = self.header_where or self.path
        notes = []
        if self.format == "tensorboard":
            if step_key not in (None, "step"):
                raise ValueError(f"{self.path}: TensorBoard steps are each event's global step; step_key= "
                                 "does not apply (use step_offset= to shift them)")
            s_col = "step"
            keys.pop("step", None)
        else:
            s_col = _pick(keys, STEP_KEYS, step_key, "step", self.path, where0)
            if s_col == "_step" and step_key is None:
                notes.append("fell back to W&B's '_step' (it counts wandb.log calls, not optimizer updates); "
                             "pass --step-key naming the run's step column if it has one")
                warnings.warn(f"{self.path}: no {', '.join(repr(k) for k in STEP_KEYS[:-1])} column; using W&B's "
                              "'_step', which counts wandb.log calls, not optimizer updates: pass step_key= "
                              "(--step-key) naming the step column", UserWarning, stacklevel=3)
        names = [k for k in keys if k != s_col]
        l_col = _pick_loss(names, loss_key, where0)
        r_col = _pick(names, LR_KEYS, lr_key, "lr", self.path, where0, required=False)
        if r_col is None and lr_key is None:
            r_col = next((k for k in names if k.startswith("lr-") or k.startswith("lr/")), None)
        if schedule is not None:
            lr_source = "the schedule given (--schedule)"
        elif self.schedule is not None:
            lr_source = self.lrs_source or "the run's saved schedule"
        elif self.lrs is not None:
            lr_source = self.lrs_source or "the run's config"
        elif r_col is not None:
            lr_source = f"the logged {r_col!r} (linear between logged steps)"
        else:
            lr_source = None
        offset = self.step_offset if step_offset is None else int(step_offset)
        return {"run": self.name, "format": self.format, "step_key": s_col, "loss_key": l_col, "lr_key": r_col,
                "lr_source": lr_source, "step_offset": offset,
                "offset_reason": self.offset_reason if step_offset is None else "given", "notes": notes}

    def curve(self, *, loss_key: str | None = None, lr_key: str | None = None, step_key: str | None = None,
              step_offset: int | None = None, schedule: Schedule | None = None,
              name: str | None = None) -> LossCurve:
        """This run's loss curve; the choices made are in ``curve.meta["choices"]``."""
        ch = self.choices(loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                          schedule=schedule)
        if ch["lr_source"] is None:
            raise ValueError(f"{self.header_where or self.path}: no lr column (found: "
                             f"{', '.join(self.metrics) or 'none'}); pass lr_key= (--lr-key) naming it, or "
                             "schedule= (--schedule SPEC.json, or Schedule.from_hf(training_args))")
        s_col, l_col, r_col, offset = ch["step_key"], ch["loss_key"], ch["lr_key"], ch["step_offset"]
        trainer = self.format == "run_log" and s_col == "step" and l_col == "loss"
        rows = []
        for where, r in self.records:
            lr = _num(r.get(r_col), where, r_col) if r_col else None
            loss = _num(r.get(l_col), where, l_col)
            if isinstance(loss, float) and math.isnan(loss) and self.format not in ("csv", "run_log"):
                loss = None                          # pandas/W&B exports write NaN for "not logged"
            if isinstance(lr, float) and math.isnan(lr) and self.format not in ("csv", "run_log"):
                lr = None
            t = _step_value(r.get(s_col), where, s_col, offset)
            if t is None:
                if loss is not None or lr is not None:
                    if self.format in ("csv", "lightning_csv"):
                        raise ValueError(f"{where}: empty {s_col!r} cell; every row needs a step")
                continue
            if trainer and loss is not None:
                # train loss of event t was measured before update t+1: it is the loss at step t-1
                if t - 1 >= 0:
                    rows.append(_Row(where, t - 1, None, loss))
                loss = None
            if loss is None and lr is None:
                continue
            rows.append(_Row(where, t, lr, loss))
        meta = {"format": self.format, "loss_key": l_col, "run": self.name, "choices": ch}
        sched = schedule if schedule is not None else self.schedule
        label = name if name is not None else (_run_name(self.path) if self.name == "." else self.name)
        return _assemble(rows, self.path, name=label, meta=meta, schedule=sched,
                         lrs=None if sched is not None else self.lrs, lrs_source=self.lrs_source)


def describe_choices(ch: dict) -> str:
    """One line saying which keys a curve was read with (what the CLI prints)."""
    off = ch["step_offset"]
    text = (f"run {ch['run']!r} ({ch['format']}): step key {ch['step_key']!r}"
            + (f" {off:+d} ({ch['offset_reason']})" if off else "")
            + f", loss key {ch['loss_key']!r}, LR from {ch['lr_source']}")
    return text + "".join(f"; note: {n}" for n in ch.get("notes", ()))


# --------------------------------------------------------------------------- loaders (one run each)
def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw[:65536]:
        raise ValueError(f"{path}: binary data, not a text log; pass a CSV (step,lr,loss), a JSON/JSONL log, "
                         "a W&B export or a TensorBoard events file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); pass a CSV (step,lr,loss), a JSON/JSONL "
                         "log, a W&B export or a TensorBoard events file") from None


def _load_csv(path: str) -> Run:
    text = _read_text(path)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file; expected a header line 'step,lr,loss'") from None
        records = []
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(not c.strip() for c in rec):
                continue
            records.append((f"{path}, line {lineno}", dict(zip(header, rec))))
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}); expected a header line 'step,lr,loss'") from None
    lightning = os.path.basename(path) == "metrics.csv" and "epoch" in header and "step" in header
    return Run(".", path, "lightning_csv" if lightning else "csv", records, header_where=f"{path}, line 1")


def _load_jsonl(path: str) -> Run:
    lines = _read_text(path).split("\n")
    records = _parse_jsonl_lines(lines, path)
    if not records:
        raise ValueError(f"{path}: no JSON records; a run log has one JSON object per line")
    fmt = "run_log" if any("step" in r for _, r in records) and os.path.basename(path) != "wandb-history.jsonl" \
        else "wandb_jsonl"
    return Run(".", path, fmt, records)


def _parse_jsonl_lines(lines: list[str], path: str) -> list[tuple[str, dict]]:
    from workbench.runlog import parse_jsonl_lines

    return [(f"{path}, line {n}", rec) for n, rec in parse_jsonl_lines(lines, path)]


def _columns_to_records(cols: dict, path: str, what: str) -> list[dict]:
    cols = {k: (list(v.values()) if isinstance(v, dict) else v) for k, v in cols.items()}
    if not all(isinstance(v, list) for v in cols.values()):
        raise ValueError(f"{path}: {what}: expected a list of records or a dict of columns (lists); "
                         "export with run.history().to_json(orient='records')")
    n = max((len(v) for v in cols.values()), default=0)
    return [{k: (v[i] if i < len(v) else None) for k, v in cols.items()} for i in range(n)]


def _load_json(path: str) -> Run:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); export the history "
                         "with run.history().to_json(orient='records')") from None
    if isinstance(data, dict) and isinstance(data.get("log_history"), list):
        return _hf_run(path, data)
    hist = data.get("history") if isinstance(data, dict) else None
    if isinstance(hist, dict) and hist and all(isinstance(v, dict) for v in hist.values()):
        return _run_124m(path, data)
    if isinstance(hist, list):
        data = hist
    if isinstance(data, dict):
        data = _columns_to_records(data, path, "columns")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of JSON objects (one per logged row), a W&B history export "
                         "or an HF trainer_state.json")
    return Run(".", path, "wandb_json", [(f"{path}, record {i + 1}", r) for i, r in enumerate(data)])


def _load_parquet(path: str) -> Run:
    try:
        import pandas as pd
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise ValueError(f"{path}: reading Parquet needs pyarrow ({exc}); pip install pyarrow") from None
    except Exception as exc:  # pyarrow raises its own error types on a damaged file
        raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {str(exc)[:120]})") from None
    recs = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return Run(".", path, "wandb_parquet", [(f"{path}, row {i + 1}", r) for i, r in enumerate(recs)])


def _hf_run(path: str, state: dict) -> Run:
    """An HF ``trainer_state.json``: ``log_history`` keyed by ``step`` = ``global_step``."""
    records = [(f"{path}, log_history[{i}]", r) for i, r in enumerate(state["log_history"]) if isinstance(r, dict)]
    run = Run(".", path, "hf_trainer_state", records, step_offset=-1,
              offset_reason="HF global_step counts completed updates")
    folder = os.path.dirname(os.path.abspath(path))
    for d in (folder, os.path.dirname(folder)):       # the output folder, or above a checkpoint-N folder
        spec = os.path.join(d, SCHEDULE_FILE)
        if os.path.exists(spec):
            from workbench.schedules import load_schedule

            run.schedule = load_schedule(spec)
            run.lrs_source = f"the schedule saved with the run ({spec})"
            break
    return run


def _lrs_124m(config: dict) -> np.ndarray | None:
    """Per-step LRs of the 124M runs (epfml/schedules-and-scaling), from their ``config``."""
    try:
        peak, total, warm = float(config["lr"]), int(config["iterations"]), int(config["warmup_steps"])
        kind = config["scheduler"]
    except (KeyError, TypeError, ValueError):
        return None
    if not (0 < total <= MAX_STEPS) or warm < 1 or kind not in ("wsd", "cos"):
        return None
    t = np.arange(total + 1, dtype=np.float64)
    if kind == "wsd":
        frac = float(config.get("wsd_fract_decay") or 0.0)
        n_decay = int(frac * total)
        start = total - n_decay
        s = np.clip((t - start) / max(n_decay, 1), 0.0, 1.0)
        shape = config.get("decay_type", "linear")
        if shape not in ("linear", "sqrt"):
            return None
        cool = 1.0 - s if shape == "linear" else 1.0 - np.sqrt(s)
        lrs = np.where(t < start, peak, peak * cool)
        lrs = np.where(t < warm, peak * (t / warm + (1 - t / warm) / 100), lrs)
        lrs[t >= total] = 0.0
    else:
        final = float(config.get("cos_final_lr", 0.0))
        e1, e2 = warm - 1, total - 1

        def half_cos(a, b, pct):
            return b + (a - b) / 2 * (np.cos(np.pi * pct) + 1)

        lrs = np.where(t <= e1, half_cos(peak / 100, peak, t / e1), half_cos(peak, final, (t - e1) / (e2 - e1)))
    return lrs


def _run_124m(path: str, data: dict) -> Run:
    """The W&B-style JSON of ``shared/data/curves-124m``: ``history`` sections of columns, ``config``."""
    records = []
    for section, cols in data["history"].items():
        for i, r in enumerate(_columns_to_records(cols, path, f"history.{section}")):
            records.append((f"{path}, history.{section}[{i}]", r))
    run = Run(".", path, "curves124m_json", records)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    lrs = _lrs_124m(config)
    if lrs is not None:
        run.lrs = lrs
        run.lrs_source = f"the run's config ({config['scheduler']}, peak {config['lr']}, {config['iterations']} steps)"
    return run


def _load_tensorboard(folder: str, files: list[str], name: str) -> Run:
    records = [(where, {"step": step, tag: value}) for f in files for where, tag, step, value in _tb_scalars(f)]
    tags = {t for _, r in records for t in r}
    hf = bool({"train/learning_rate", "train/epoch"} & tags)
    return Run(name, folder, "tensorboard", records, step_offset=-1 if hf else 0,
               offset_reason="HF tag names: the global step counts completed updates" if hf else "")


def _tb_scalars(path: str):
    from workbench.tfevents import scalars

    return scalars(path)


def _load_wandb_api(run_path: str) -> Run:
    """A W&B run's full history through the optional ``wandb`` API (``scan_history``)."""
    try:
        import wandb
    except ImportError:
        raise ValueError(f"wandb:{run_path}: reading a run from W&B needs the wandb package (pip install wandb); "
                         "or export the history (run.history().to_csv()) and pass the file") from None
    run = wandb.Api().run(run_path)
    records = [(f"wandb:{run_path}, row {i + 1}", dict(r)) for i, r in enumerate(run.scan_history())]
    if not records:
        raise ValueError(f"wandb:{run_path}: the run's history is empty")
    return Run(".", f"wandb:{run_path}", "wandb_api", records)


def _load_file(path: str) -> Run:
    base = os.path.basename(path)
    if "tfevents" in base:
        return _load_tensorboard(path, [path], ".")
    ext = os.path.splitext(base)[1].lower()
    if ext == ".jsonl":
        return _load_jsonl(path)
    if ext == ".json":
        return _load_json(path)
    if ext == ".parquet":
        return _load_parquet(path)
    if ext in (".csv", ".tsv", ".txt", ""):
        return _load_csv(path)
    raise ValueError(f"{path}: unknown loss-log format {ext!r}; use .csv (step,lr,loss), .jsonl (run log), .json "
                     "(W&B history, HF trainer_state.json), .parquet (W&B) or a TensorBoard events file")


# --------------------------------------------------------------------------- finding runs
SCHEDULE_FILE = "schedule.json"
_NOT_RUNS = {"config.json", SCHEDULE_FILE, "summary.json", "tokenizer.json", "tokenizer_config.json",
             "generation_config.json", "special_tokens_map.json", "vocab.json", "FIT.json", "adapter_config.json",
             "preprocessor_config.json", "model.safetensors.index.json", "training_args.json", "hparams.json",
             "wandb-summary.json", "wandb-metadata.json", "all_results.json", "train_results.json",
             "eval_results.json"}
_RUN_EXTS = (".csv", ".json", ".jsonl", ".parquet")


def _hf_state_file(d: str, entries: list[str]) -> str | None:
    if "trainer_state.json" in entries:
        return os.path.join(d, "trainer_state.json")
    ckpts = []
    for e in entries:
        if e.startswith("checkpoint-") and e[11:].isdigit() and os.path.exists(os.path.join(d, e, "trainer_state.json")):
            ckpts.append((int(e[11:]), e))
    return os.path.join(d, max(ckpts)[1], "trainer_state.json") if ckpts else None


def read_runs(path: str | os.PathLike) -> list[Run]:
    """Every run found at ``path`` (a file, or a folder searched at any depth), format detected.

    * a workbench run folder (``log.jsonl``; its ``tensorboard/``/``wandb/`` sinks are not listed again);
    * an HF ``Trainer`` output folder (``trainer_state.json``, else the latest ``checkpoint-N/``'s);
    * a TensorBoard logdir: every folder holding ``*tfevents*`` files is a run, named by its relative path;
    * a Lightning ``CSVLogger`` folder (``metrics.csv``), W&B exports (``.csv``, ``.json``, ``.parquet``,
      ``wandb-history.jsonl``), the 124M curves' JSON, plain ``step,lr,loss`` CSVs;
    * ``wandb:ENTITY/PROJECT/RUN_ID``: a W&B run's full history (``scan_history``; needs ``wandb``).

    Files inside a folder that do not read as a run (a ``config.json``, a tokenizer) are skipped.
    Runs are sorted by name; a run at ``path`` itself is named ``"."``.

    >>> import os, tempfile, json
    >>> d = tempfile.mkdtemp(); os.makedirs(os.path.join(d, "a", "b"))
    >>> _ = open(os.path.join(d, "a", "b", "hist.csv"), "w").write("iter,lr,val_loss\\n0,1e-3,4.0\\n10,1e-3,3.0\\n")
    >>> [(r.name, r.format, r.metrics) for r in read_runs(d)]
    [('a/b/hist.csv', 'csv', ['iter', 'lr', 'val_loss'])]
    """
    p = os.fspath(path)
    if p.startswith("wandb:"):
        return [_load_wandb_api(p[len("wandb:"):].strip("/"))]
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p!r} does not exist; pass a log file or a folder of runs")
    if not os.path.isdir(p):
        return [_load_file(p)]
    runs: list[Run] = []
    for d, dirs, files in os.walk(p):
        dirs.sort()
        files.sort()
        rel = os.path.relpath(d, p).replace(os.sep, "/")
        entries = dirs + files
        if "log.jsonl" in files:
            runs.append(_named(_load_jsonl(os.path.join(d, "log.jsonl")), rel))
            dirs[:] = [x for x in dirs if x not in ("tensorboard", "wandb", "checkpoints")]
            continue
        state = _hf_state_file(d, entries)
        if state is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    runs.append(_named(_load_json(state), rel))
                except ValueError:
                    pass
            dirs[:] = [x for x in dirs if not x.startswith("checkpoint-")]
        tb = [os.path.join(d, f) for f in files if "tfevents" in f]
        if tb:
            runs.append(_load_tensorboard(d, tb, rel))
        for f in files:
            if f in _NOT_RUNS or f == "trainer_state.json" or "tfevents" in f or not f.endswith(_RUN_EXTS):
                continue
            fp = os.path.join(d, f)
            frel = f if rel == "." else f"{rel}/{f}"
            try:
                run = _load_file(fp)
            except ValueError:
                continue
            if run.format == "lightning_csv":
                frel = rel
            if _has_loss(run):
                runs.append(_named(run, frel))
    if not runs:
        raise ValueError(f"{p}: no runs found (no log.jsonl, trainer_state.json, TensorBoard events, metrics.csv "
                         "or W&B export in it); pass the run's log file")
    return sorted(runs, key=lambda r: r.name)


def _named(run: Run, name: str) -> Run:
    run.name = name
    return run


def _has_loss(run: Run) -> bool:
    return any(k in VAL_LOSS_KEYS + TRAIN_LOSS_KEYS for k in run.metrics)


def select_run(runs: list[Run], run: str | None = None, path: str = "") -> Run:
    """The run of ``runs`` (from :func:`read_runs`) that :func:`read_curve` reads: the one named ``run``,
    else the only one, else the one at the path itself (``"."``: an HF output folder's own log rather
    than its TensorBoard events); a ValueError naming the runs otherwise."""
    return _select_run(runs, run, path)


def _select_run(runs: list[Run], run: str | None, path: str) -> Run:
    if run is not None:
        want = run.strip("/") or "."
        for r in runs:
            if r.name == want:
                return r
        raise ValueError(f"{path}: no run {run!r}; runs found: {', '.join(r.name for r in runs)}")
    if len(runs) == 1:
        return runs[0]
    here = [r for r in runs if r.name == "."]
    if here:
        return here[0]
    raise ValueError(f"{path} holds {len(runs)} runs ({', '.join(r.name for r in runs)}); choose one with "
                     "run= (--run NAME)")


# --------------------------------------------------------------------------- readers by format
def read_csv(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
             step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
             name: str | None = None) -> LossCurve:
    """Read a ``step,lr,loss`` CSV (or a W&B history CSV, a Lightning ``metrics.csv``); see the
    module docstring for the rules.

    ``schedule``: the run's workbench Schedule; its LRs replace the file's (the lr column becomes
    optional; a logged LR that disagrees with it gives a warning).

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "run.csv")
    >>> _ = open(p, "w").write("step,lr,loss\\n10,1e-3,\\n20,1e-3,3.0\\n40,5e-4,2.5\\n")
    >>> c = read_csv(p)
    >>> c.lrs[[0, 5, 10, 30]].tolist(), c.steps.tolist(), c.warmup
    ([0.0, 0.0005, 0.001, 0.00075], [20, 40], 10)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"loss-curve file {path!r} does not exist")
    return _load_csv(path).curve(loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                                 schedule=schedule, name=name)


def read_run_log(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
                 step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
                 name: str | None = None) -> LossCurve:
    """Read a trainer run log (a run directory or its ``log.jsonl``) or a W&B ``wandb-history.jsonl``.

    ``loss_key``: the key to fit, default ``val_loss`` if any line has it, else ``loss``. For the
    trainer's log (lines keyed by ``step``) the train ``loss`` of event ``t`` is mapped to step
    ``t-1`` and ``val_loss`` to step ``t`` (see the module docstring). Repeated steps of a resumed
    run keep their last occurrence. Unreadable lines (a crash mid-write) are skipped with a warning.

    >>> import os, tempfile, json
    >>> p = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    >>> lines = [{"step": t, "lr": 1e-3, "loss": 4.0 - t / 10} for t in range(5)]
    >>> lines[3]["val_loss"] = 3.5
    >>> _ = open(p, "w").write("".join(json.dumps(r) + "\\n" for r in lines))
    >>> c = read_run_log(p); c.steps.tolist(), c.losses.tolist(), c.meta["loss_key"]
    ([3], [3.5], 'val_loss')
    >>> read_run_log(p, loss_key="loss").steps.tolist()       # event t's train loss is at step t-1
    [0, 1, 2, 3]
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        cand = os.path.join(path, "log.jsonl")
        if not os.path.exists(cand):
            raise FileNotFoundError(f"{path!r} is a directory without a log.jsonl; pass the run log file")
        path = cand
    if not os.path.exists(path):
        raise FileNotFoundError(f"run log {path!r} does not exist")
    run = _load_jsonl(path)
    return run.curve(loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                     schedule=schedule, name=name if name is not None else _run_name(path))


def _run_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    if base in ("log.jsonl", "wandb-history.jsonl", "trainer_state.json", "metrics.csv"):
        parent = os.path.dirname(os.path.abspath(path))
        if base == "trainer_state.json" and os.path.basename(parent).startswith("checkpoint-"):
            parent = os.path.dirname(parent)
        return os.path.basename(parent) or base
    return os.path.splitext(base)[0]


def read_wandb(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
               step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
               name: str | None = None) -> LossCurve:
    """Read a W&B run history exported as JSON, CSV or Parquet (or a ``wandb-history.jsonl``).

    JSON forms: a list of records (``history.to_json(orient="records")``), ``{"history": [...]}``,
    or columns (``{"_step": [...], "train/loss": [...]}`` or pandas' ``{col: {row: value}}``).
    Names are mapped as in the module docstring (``_step`` is used only when no step column exists,
    with a warning).
    """
    path = os.fspath(path)
    if not path.startswith("wandb:") and not os.path.exists(path):
        raise FileNotFoundError(f"W&B history file {path!r} does not exist")
    run = read_runs(path)[0] if path.startswith("wandb:") else _load_file(path)
    return run.curve(loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                     schedule=schedule, name=name)


def read_tensorboard(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
                     step_offset: int | None = None, schedule: Schedule | None = None, name: str | None = None,
                     run: str | None = None) -> LossCurve:
    """Read scalars from TensorBoard event files: a file, a run folder (all its ``*tfevents*`` files,
    by name order) or a logdir with runs at any depth (choose with ``run=``, the relative path).
    Tags are mapped like columns (``loss_key``/``lr_key`` name them explicitly). Streams the files
    (see :mod:`workbench.tfevents`); no tensorflow or tensorboard needed. Logs with HF's tag names
    (``train/learning_rate``) count completed updates: ``step_offset`` defaults to -1 for them."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TensorBoard events file or folder {path!r} does not exist")
    runs = [r for r in read_runs(path) if r.format == "tensorboard"] if os.path.isdir(path) else [_load_file(path)]
    if not runs:
        raise FileNotFoundError(f"{path!r} holds no TensorBoard events files (events.out.tfevents.*)")
    chosen = _select_run(runs, run, path)
    if not chosen.records:
        raise ValueError(f"{path}: no scalar summaries found; log the loss with add_scalar")
    return chosen.curve(loss_key=loss_key, lr_key=lr_key, step_offset=step_offset, schedule=schedule, name=name)


# --------------------------------------------------------------------------- dispatch
def read_curve(path: str | os.PathLike, *, run: str | None = None, loss_key: str | None = None,
               lr_key: str | None = None, step_key: str | None = None, step_offset: int | None = None,
               schedule: Schedule | None = None, name: str | None = None) -> LossCurve:
    """Read one loss curve from a log file or folder (any format :func:`read_runs` detects).

    ``run``: which run of a folder holding several (its relative path, as ``read_runs`` names it).
    ``step_offset``: added to every step (default: the format's, -1 for HF ``global_step`` logs).
    The keys used are in ``curve.meta["choices"]`` (:func:`describe_choices` prints them).

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "nanogpt.csv"), "w").write("_step,iter,lr,train/loss\\n1,250,1e-3,3.0\\n2,500,1e-3,2.5\\n")
    >>> c = read_curve(d)
    >>> c.steps.tolist(), describe_choices(c.meta["choices"])
    ([250, 500], "run 'nanogpt.csv' (csv): step key 'iter', loss key 'train/loss', LR from the logged 'lr' (linear between logged steps)")
    """
    p = os.fspath(path)
    chosen = _select_run(read_runs(p), run, p)
    return chosen.curve(loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                        schedule=schedule, name=name)


def read_curves(paths: Sequence[str | os.PathLike], **kwargs) -> list[LossCurve]:
    """``read_curve`` for each path (same keyword arguments for all)."""
    return [read_curve(p, **kwargs) for p in paths]
