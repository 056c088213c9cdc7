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

Readers (all through ``read_curve(path)``):

* CSV with header columns ``step``, ``lr``, ``loss`` (other columns ignored; the W&B names below
  are accepted too). Rows with an empty ``loss`` carry the LR only. The LR at steps not listed is
  linearly interpolated between listed steps; before the first listed step it is a linear warmup
  from 0 to the first listed LR (so logs may be sparse and may start after the warmup).
* The trainer's JSONL run log (a run directory or its ``log.jsonl``), W&B's ``wandb-history.jsonl``.
* TensorBoard event files (a ``events.out.tfevents.*`` file or a directory of them), read by a
  small TFRecord + protobuf reader here: neither tensorflow nor tensorboard is needed.
* A W&B run history exported as JSON (``run.history().to_json(orient="records")``, a list of
  records, ``{"history": [...]}``, or ``{column: [values]}``) or CSV (``run.history().to_csv()``).

Column / tag names recognised (first match wins; ``loss_key=``, ``lr_key=``, ``step_key=`` override):

=========  =========================================================================================
step       ``step``, ``train/global_step``, ``trainer/global_step``, ``global_step``, ``_step``
lr         ``lr``, ``learning_rate``, ``train/learning_rate``, ``train/lr``, ``lr-AdamW``, ``lr-Adam``,
           ``lr-SGD``, ``optimizer/lr``, ``trainer/learning_rate``
val loss   ``val_loss``, ``eval/loss``, ``eval_loss``, ``val/loss``, ``validation/loss``, ``valid/loss``,
           ``test/loss``
train loss ``loss``, ``train/loss``, ``train_loss``, ``training_loss``, ``train/loss_step``
=========  =========================================================================================

The default loss is a validation loss if the log has one, else the train loss.

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
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from workbench.files import atomic_write_text
from workbench.schedules import Schedule

__all__ = ["LossCurve", "read_curve", "read_curves", "read_csv", "read_run_log", "read_tensorboard",
           "read_wandb", "STEP_KEYS", "LR_KEYS", "VAL_LOSS_KEYS", "TRAIN_LOSS_KEYS"]

STEP_KEYS = ("step", "train/global_step", "trainer/global_step", "global_step", "_step")
LR_KEYS = ("lr", "learning_rate", "train/learning_rate", "train/lr", "lr-AdamW", "lr-Adam", "lr-SGD",
           "optimizer/lr", "trainer/learning_rate")
VAL_LOSS_KEYS = ("val_loss", "eval/loss", "eval_loss", "val/loss", "validation/loss", "valid/loss", "test/loss")
TRAIN_LOSS_KEYS = ("loss", "train/loss", "train_loss", "training_loss", "train/loss_step")


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
        raise ValueError(f"{where}: column {column!r} holds {s!r}, not a number; fix the value or "
                         "leave the cell empty") from None


def _pick(names: Iterable[str], candidates: Sequence[str], given: str | None, what: str, source: str,
          where: str, required: bool = True) -> str | None:
    names = list(names)
    if given is not None:
        if given not in names:
            raise ValueError(f"{where}: no {given!r} column/key for the {what} (found: {', '.join(names) or 'none'}); "
                             f"pass {what}_key= naming one of them")
        return given
    for c in candidates:
        if c in names:
            return c
    if required:
        raise ValueError(f"{where}: no {what} column (found: {', '.join(names) or 'none'}); add a "
                         f"{candidates[0]!r} column, or pass {what}_key= naming the column that holds it")
    return None


def _pick_loss(names: Iterable[str], loss_key: str | None, where: str) -> str:
    names = list(names)
    if loss_key is not None:
        return _pick(names, (), loss_key, "loss", "", where)
    for c in VAL_LOSS_KEYS + TRAIN_LOSS_KEYS:
        if c in names:
            return c
    raise ValueError(f"{where}: no loss column (found: {', '.join(names) or 'none'}); add a 'loss' column, "
                     "or pass loss_key= naming the column that holds it")


def _assemble(rows: list[_Row], source: str, *, name: str | None, meta: dict,
              schedule: Schedule | None) -> LossCurve:
    """Group rows by step (last wins, warn), validate, interpolate the LR, build the curve."""
    if not rows:
        raise ValueError(f"{source}: no data rows")
    by_step: dict[int, _Row] = {}
    lr_at: dict[int, tuple[float, str]] = {}
    repeated = reordered = 0
    last_lr = last_loss = -1
    for r in rows:
        if r.step < 0:
            raise ValueError(f"{r.where}: step {r.step} is negative; steps are 0-based update indices "
                             "(use step_offset= to shift a log that counts differently)")
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
    warm = None
    if schedule is not None:
        n = max(n, schedule.total_steps)
        lrs = schedule(np.arange(n))
        warm = _schedule_warmup(schedule, lrs)
        if lr_at:
            ls = np.array(sorted(lr_at))
            logged = np.array([lr_at[s][0] for s in ls])
            bad = np.abs(logged - lrs[ls]) > 1e-6 * max(float(lrs.max()), 1e-30) + 1e-9 * np.abs(logged)
            if np.any(bad):
                i = int(np.argmax(bad))
                warnings.warn(f"{lr_at[int(ls[i])][1]}: logged lr {float(logged[i])!r} differs from the schedule's "
                              f"{float(lrs[ls[i]])!r} at step {int(ls[i])}; using the schedule (is it the run's "
                              "schedule?)",
                              UserWarning, stacklevel=3)
    else:
        if not lr_at:
            raise ValueError(f"{source}: no learning rates (the lr column is missing or empty); "
                             "add an 'lr' column or pass schedule= (the run's workbench Schedule)")
        ls = np.array(sorted(lr_at), dtype=np.float64)
        lv = np.array([lr_at[int(s)][0] for s in ls])
        t = np.arange(n, dtype=np.float64)
        lrs = np.interp(t, ls, lv)
        if ls[0] > 0:  # before the first listed step: linear warmup from 0
            head = t < ls[0]
            lrs[head] = lv[0] * t[head] / ls[0]
    if not np.any(lrs > 0):
        raise ValueError(f"{source}: every learning rate is 0; check the lr column")
    label = name if name is not None else os.path.splitext(os.path.basename(source.rstrip("/")))[0]
    meta = dict(meta, source=source)
    if repeated or reordered:
        meta["regrouped"] = {"repeated": repeated, "reordered": reordered}
    return LossCurve(lrs=lrs, steps=steps, losses=losses, name=label, meta=meta, warmup_steps=warm)


# --------------------------------------------------------------------------- CSV
def read_csv(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
             step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
             name: str | None = None) -> LossCurve:
    """Read a ``step,lr,loss`` CSV (or a W&B history CSV); see the module docstring for the rules.

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
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    return _read_csv_text(text, path, loss_key=loss_key, lr_key=lr_key, step_key=step_key,
                          step_offset=step_offset, schedule=schedule, name=name)


def _read_csv_text(text: str, path: str, *, loss_key, lr_key, step_key, step_offset, schedule, name):
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: empty file; expected a header line 'step,lr,loss'") from None
    where1 = f"{path}, line 1"
    s_col = _pick(header, STEP_KEYS, step_key, "step", path, where1)
    l_col = _pick_loss(header, loss_key, where1)
    r_col = _pick(header, LR_KEYS, lr_key, "lr", path, where1, required=schedule is None)
    si, li = header.index(s_col), header.index(l_col)
    ri = header.index(r_col) if r_col is not None else None
    rows: list[_Row] = []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        where = f"{path}, line {lineno}"
        if len(rec) < len(header):
            rec = rec + [""] * (len(header) - len(rec))
        step = _num(rec[si], where, s_col)
        if step is None:
            raise ValueError(f"{where}: empty {s_col!r} cell; every row needs a step")
        if not float(step).is_integer():
            raise ValueError(f"{where}: step {rec[si]!r} is not a whole number; steps count optimizer updates")
        rows.append(_Row(where, int(step) + step_offset, _num(rec[ri], where, r_col) if ri is not None else None,
                         _num(rec[li], where, l_col)))
    meta = {"format": "csv", "loss_key": l_col}
    return _assemble(rows, path, name=name, meta=meta, schedule=schedule)


# --------------------------------------------------------------------------- JSONL run logs / W&B
def _records_to_rows(records: list[tuple[str, dict]], path: str, *, loss_key, lr_key, step_key, step_offset,
                     trainer: bool) -> tuple[list[_Row], str]:
    keys: dict[str, None] = {}
    for _, r in records:
        keys.update(dict.fromkeys(r))
    where0 = f"{path}"
    s_col = _pick(keys, STEP_KEYS, step_key, "step", path, where0)
    l_col = _pick_loss(keys, loss_key, where0)
    r_col = _pick(keys, LR_KEYS, lr_key, "lr", path, where0, required=False)
    shift = -1 if (trainer and l_col in ("loss",)) else 0
    rows = []
    for where, r in records:
        if r.get(s_col) is None:
            continue
        step = _num(r[s_col], where, s_col)
        if not float(step).is_integer():
            raise ValueError(f"{where}: step {r[s_col]!r} is not a whole number")
        t = int(step) + step_offset
        lr = _num(r.get(r_col), where, r_col) if r_col else None
        loss = _num(r.get(l_col), where, l_col)
        if shift and loss is not None:
            # train loss of event t was measured before update t+1: it is the loss at step t-1
            if t + shift >= 0:
                rows.append(_Row(where, t + shift, None, loss))
            loss = None
        rows.append(_Row(where, t, lr, loss))
    return rows, l_col


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
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = _parse_jsonl_lines(lines, path)
    if not records:
        raise ValueError(f"{path}: no JSON records; a run log has one JSON object per line")
    trainer = any("step" in r for _, r in records) and step_key in (None, "step")
    rows, l_col = _records_to_rows(records, path, loss_key=loss_key, lr_key=lr_key, step_key=step_key,
                                   step_offset=step_offset, trainer=trainer)
    meta = {"format": "run_log" if trainer else "wandb_jsonl", "loss_key": l_col}
    return _assemble(rows, path, name=name or _run_name(path), meta=meta, schedule=schedule)


def _run_name(path: str) -> str:
    base = os.path.basename(path)
    if base in ("log.jsonl", "wandb-history.jsonl"):
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return parent or base
    return os.path.splitext(base)[0]


def _parse_jsonl_lines(lines: list[str], path: str) -> list[tuple[str, dict]]:
    from workbench.runlog import parse_jsonl_lines

    return [(f"{path}, line {n}", rec) for n, rec in parse_jsonl_lines(lines, path)]


def read_wandb(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
               step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
               name: str | None = None) -> LossCurve:
    """Read a W&B run history exported as JSON or CSV (or a ``wandb-history.jsonl``).

    JSON forms: a list of records (``history.to_json(orient="records")``), ``{"history": [...]}``,
    or columns (``{"_step": [...], "train/loss": [...]}`` or pandas' ``{col: {row: value}}``).
    Names are mapped as in the module docstring (``_step`` is used only when no step column exists).
    """
    path = os.fspath(path)
    if path.endswith(".csv"):
        return read_csv(path, loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                        schedule=schedule, name=name)
    if path.endswith(".jsonl"):
        return read_run_log(path, loss_key=loss_key, lr_key=lr_key, step_key=step_key, step_offset=step_offset,
                            schedule=schedule, name=name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"W&B history file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); export the history "
                             "with run.history().to_json(orient='records')") from None
    if isinstance(data, dict) and isinstance(data.get("history"), list):
        data = data["history"]
    if isinstance(data, dict):  # columns
        cols = {k: (list(v.values()) if isinstance(v, dict) else v) for k, v in data.items()}
        if not all(isinstance(v, list) for v in cols.values()):
            raise ValueError(f"{path}: expected a list of records or a dict of columns (lists); "
                             "export with run.history().to_json(orient='records')")
        n = max((len(v) for v in cols.values()), default=0)
        data = [{k: (v[i] if i < len(v) else None) for k, v in cols.items()} for i in range(n)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of JSON objects (one per logged row)")
    records = [(f"{path}, record {i + 1}", r) for i, r in enumerate(data)]
    rows, l_col = _records_to_rows(records, path, loss_key=loss_key, lr_key=lr_key, step_key=step_key,
                                   step_offset=step_offset, trainer=False)
    return _assemble(rows, path, name=name, meta={"format": "wandb_json", "loss_key": l_col}, schedule=schedule)


# --------------------------------------------------------------------------- TensorBoard
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = _crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of a protobuf message (value: int or bytes)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated protobuf field")
        yield num, wt, v


def _tensor_value(buf: bytes) -> float | None:
    """A scalar from a TensorProto (float_val, double_val or tensor_content)."""
    dtype, content = 1, None
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 0:
            dtype = v
        elif num == 4 and wt == 2:
            content = v
        elif num == 5:  # float_val: packed (wt 2) or single (wt 5)
            return struct.unpack("<f", v[:4])[0]
        elif num == 6:  # double_val
            return struct.unpack("<d", v[:8])[0]
    if content:
        if dtype == 2 and len(content) >= 8:
            return struct.unpack("<d", content[:8])[0]
        if dtype == 1 and len(content) >= 4:
            return struct.unpack("<f", content[:4])[0]
    return None


def _tb_scalars(path: str) -> list[tuple[str, str, int, float]]:
    """``(where, tag, step, value)`` for every scalar in a TFRecord event file, in file order."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    pos = rec = 0
    while pos < len(data):
        rec += 1
        where = f"{path}, record {rec} (byte {pos})"
        if pos + 12 > len(data):
            warnings.warn(f"{where}: truncated record at the end of the file skipped", RuntimeWarning, stacklevel=3)
            break
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if hcrc != _masked_crc(header):
            raise ValueError(f"{where}: corrupt TFRecord length (CRC mismatch); is this a TensorBoard "
                             "events file? Re-export the run or drop the file")
        body = data[pos + 12:pos + 12 + length]
        if len(body) < length or pos + 16 + length > len(data):
            warnings.warn(f"{where}: truncated record at the end of the file skipped", RuntimeWarning, stacklevel=3)
            break
        (dcrc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if dcrc != _masked_crc(body):
            raise ValueError(f"{where}: corrupt TFRecord data (CRC mismatch); the file is damaged")
        pos += 16 + length
        step, summary = 0, None
        try:
            for num, wt, v in _fields(body):
                if num == 2 and wt == 0:
                    step = v - (1 << 64) if v >= 1 << 63 else v
                elif num == 5 and wt == 2:
                    summary = v
            if summary is None:
                continue
            for num, wt, v in _fields(summary):
                if num != 1 or wt != 2:
                    continue
                tag, value = None, None
                for n2, w2, v2 in _fields(v):
                    if n2 == 1 and w2 == 2:
                        tag = v2.decode("utf-8", "replace")
                    elif n2 == 2 and w2 == 5:
                        value = struct.unpack("<f", v2)[0]
                    elif n2 == 8 and w2 == 2 and value is None:
                        value = _tensor_value(v2)
                if tag is not None and value is not None:
                    out.append((where, tag, int(step), float(value)))
        except (ValueError, struct.error) as exc:
            raise ValueError(f"{where}: unreadable Event protobuf ({exc})") from None
    return out


def read_tensorboard(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
                     step_offset: int = 0, schedule: Schedule | None = None, name: str | None = None) -> LossCurve:
    """Read scalars from TensorBoard event files (a file, or a directory: all ``*tfevents*`` files in it,
    by name order). Tags are mapped like columns (``loss_key``/``lr_key`` name them explicitly).
    No tensorflow or tensorboard needed: the TFRecord framing and the Event/Summary protobufs are
    parsed here (CRCs checked)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if "tfevents" in f)
        if not files:
            raise FileNotFoundError(f"{path!r} holds no TensorBoard events files (events.out.tfevents.*)")
    elif os.path.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"TensorBoard events file {path!r} does not exist")
    scalars = [s for f in files for s in _tb_scalars(f)]
    if not scalars:
        raise ValueError(f"{path}: no scalar summaries found; log the loss with add_scalar")
    tags = dict.fromkeys(tag for _, tag, _, _ in scalars)
    l_tag = _pick_loss(tags, loss_key, path)
    r_tag = _pick(tags, LR_KEYS, lr_key, "lr", path, path, required=schedule is None)
    rows = []
    for where, tag, step, value in scalars:
        if tag == l_tag:
            rows.append(_Row(f"{where}, tag {tag!r}", step + step_offset, None, value))
        elif tag == r_tag:
            rows.append(_Row(f"{where}, tag {tag!r}", step + step_offset, value, None))
    return _assemble(rows, path, name=name, meta={"format": "tensorboard", "loss_key": l_tag}, schedule=schedule)


# --------------------------------------------------------------------------- dispatch
def read_curve(path: str | os.PathLike, *, loss_key: str | None = None, lr_key: str | None = None,
               step_key: str | None = None, step_offset: int = 0, schedule: Schedule | None = None,
               name: str | None = None) -> LossCurve:
    """Read a loss curve, choosing the reader by the name: ``.csv``; ``.jsonl`` or a run directory
    (trainer run log, W&B history); ``.json`` (W&B export); ``*tfevents*`` or a directory of them
    (TensorBoard). Keyword arguments go to the reader (see the module docstring)."""
    p = os.fspath(path)
    kw = dict(loss_key=loss_key, lr_key=lr_key, step_offset=step_offset, schedule=schedule, name=name)
    if os.path.isdir(p):
        if os.path.exists(os.path.join(p, "log.jsonl")):
            return read_run_log(p, step_key=step_key, **kw)
        if any("tfevents" in f for f in os.listdir(p)):
            return read_tensorboard(p, **kw)
        raise ValueError(f"{p}: a directory without log.jsonl or TensorBoard event files; pass a log file")
    base = os.path.basename(p)
    if "tfevents" in base:
        return read_tensorboard(p, **kw)
    if base.endswith(".jsonl"):
        return read_run_log(p, step_key=step_key, **kw)
    if base.endswith(".json"):
        return read_wandb(p, step_key=step_key, **kw)
    if base.endswith(".csv") or not os.path.splitext(base)[1]:
        return read_csv(p, step_key=step_key, **kw)
    raise ValueError(f"{p}: unknown loss-log format {os.path.splitext(base)[1]!r}; use .csv (step,lr,loss), "
                     ".jsonl (run log), .json (W&B history) or a TensorBoard events file")


def read_curves(paths: Sequence[str | os.PathLike], **kwargs) -> list[LossCurve]:
    """``read_curve`` for each path (same keyword arguments for all)."""
    return [read_curve(p, **kwargs) for p in paths]
