"""Bridge to the transformers ``Trainer``: the same events and run log as the workbench trainer.

* ``WorkbenchCallback`` turns a ``Trainer``'s logs into workbench events (``step``, ``lr``, ``loss``,
  ``grad_norm``, ``val_loss``, ``tokens``, ``time``), appends them to a ``log.jsonl`` run log and
  passes them to subscribers (the live view, a live loss-law fit), exactly like
  ``workbench.train`` does. The loss-curve readers read that log directly.
* ``build_optimizers`` builds the ``(optimizer, scheduler)`` pair for ``Trainer(optimizers=...)`` from
  a workbench ``Schedule`` and any optimizer name the workbench trainer accepts, with HF's weight-decay
  groups (no decay on biases and norms).
* ``to_hf(schedule)`` gives the ``TrainingArguments`` fields (``lr_scheduler_type`` + kwargs) for the
  families transformers has, else a ``LambdaLR``; ``schedule_from_hf(args)`` (``Schedule.from_hf``)
  goes the other way.
* The callback saves the run's schedule as ``schedule.json`` next to its log, so ``LiveFit`` and the
  readers forecast an HF run with no extra argument.

Step convention (the workbench's): the event with ``"step": t`` describes the (t+1)-th optimizer
update and its ``lr`` is the LR that update used, ``schedule(t)``. A ``Trainer`` logs at
``state.global_step = t + 1`` with ``learning_rate`` = the LR that update used, so
``step = global_step - 1``. Its ``loss`` is the mean train loss since the previous log.

Example:
    >>> import os, tempfile, torch
    >>> os.environ.setdefault("HF_HUB_OFFLINE", "1")
    '1'
    >>> from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    >>> from workbench import schedules
    >>> from workbench.integrations.hf import WorkbenchCallback, build_optimizers
    >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=1))
    >>> data = [{"input_ids": torch.arange(8) % 32, "labels": torch.arange(8) % 32}] * 8
    >>> sched = schedules.cosine(peak_lr=1e-3, total_steps=4)
    >>> run_dir = tempfile.mkdtemp()
    >>> args = TrainingArguments(output_dir=run_dir, max_steps=4, per_device_train_batch_size=2,
    ...                          logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    >>> cb = WorkbenchCallback(run_dir)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb],
    ...                   optimizers=build_optimizers(model, sched))
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its logs without tqdm
    ...     _ = trainer.train()
    >>> [e["step"] for e in cb.events], [e["lr"] for e in cb.events] == [sched(t) for t in range(4)]
    ([0, 1, 2, 3], True)
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterable

import torch
from transformers import TrainerCallback

from workbench import schedules
from workbench.runlog import RunLog
from workbench.schedules import Schedule

__all__ = ["WorkbenchCallback", "build_optimizers", "hf_log_to_event", "to_hf", "schedule_from_hf",
           "decay_parameter_names", "SCHEDULE_FILE"]

SCHEDULE_FILE = "schedule.json"

# transformers log key -> workbench event key
_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "eval_loss": "val_loss",
         "num_input_tokens_seen": "tokens", "epoch": "epoch"}


def hf_log_to_event(logs: dict, global_step: int) -> dict:
    """Map one ``Trainer`` log dict to a workbench event (``step = global_step - 1``)."""
    event = {"step": int(global_step) - 1}
    for k, v in logs.items():
        if k in _KEYS and isinstance(v, (int, float)):
            event[_KEYS[k]] = float(v) if k != "num_input_tokens_seen" else int(v)
    return event


class WorkbenchCallback(TrainerCallback):
    """Write a ``Trainer``'s logs as workbench events to ``run_dir/log.jsonl`` and to subscribers.

    Args:
        run_dir: directory for the run log (``None``: no file, events only in ``.events``).
        subscribers: callables receiving each event dict (e.g. ``LiveTraining.update``).

    Only the main process writes (``state.is_world_process_zero``). Train and evaluation logs at the
    same step are merged into one event when they arrive together, as separate lines otherwise (the
    readers keep the last line per step and merge keys).
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, subscribers: Iterable[Callable] = (),
                 schedule: Schedule | None = None):
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.subscribers = list(subscribers)
        self.schedule = schedule
        self.events: list[dict] = []
        self._log: RunLog | None = None
        self._t0: float | None = None

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        self.subscribers.append(fn)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        if self.schedule is None:
            self.schedule = _run_schedule(kwargs.get("lr_scheduler"), args, state)
        if self.run_dir is not None and state.is_world_process_zero and self._log is None:
            self._log = RunLog(os.path.join(self.run_dir, "log.jsonl"))
            if self.schedule is not None:
                schedules.save_schedule(self.schedule, os.path.join(self.run_dir, SCHEDULE_FILE))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        event = hf_log_to_event(logs, state.global_step)
        if not {"loss", "val_loss", "lr"} & event.keys():  # e.g. the final train summary
            return
        if self._t0 is not None:
            event["time"] = time.perf_counter() - self._t0
        self.events.append(event)
        if self._log is not None:
            self._log.write(event)
        for fn in self.subscribers:
            fn(event)

    def on_save(self, args, state, control, **kwargs):
        if self._log is not None:
            self._log.sync()

    def on_train_end(self, args, state, control, **kwargs):
        if self._log is not None:
            self._log.close()
            self._log = None


def _run_schedule(lr_scheduler, args, state) -> Schedule | None:
    """The schedule a Trainer runs: the workbench one behind a ScheduleLR, else from its arguments."""
    sched = getattr(lr_scheduler, "schedule", None)
    if isinstance(sched, Schedule):
        return sched
    try:
        return schedule_from_hf(args, total_steps=getattr(state, "max_steps", None) or None)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- schedules both ways
def to_hf(schedule: Schedule, optimizer: torch.optim.Optimizer | None = None) -> Any:
    """The ``TrainingArguments`` fields that make a ``Trainer`` run ``schedule``.

    Returns ``{"learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "max_steps"}`` for the families transformers has (constant, linear (to ``min_lr`` through
    ``polynomial``), cosine (with ``min_lr``), inverse_sqrt, wsd with a linear/cosine/1-sqrt decay);
    for the others, given ``optimizer`` (built with ``lr=schedule.peak_lr``), a
    ``torch.optim.lr_scheduler.LambdaLR`` running it (pass it as ``Trainer(optimizers=(opt, sched))``).

    >>> from workbench import schedules
    >>> kw = to_hf(schedules.wsd(peak_lr=1e-3, total_steps=100, warmup_steps=10, decay_steps=20, min_lr=1e-4))
    >>> kw["lr_scheduler_type"], kw["lr_scheduler_kwargs"]["num_decay_steps"], kw["lr_scheduler_kwargs"]["min_lr_ratio"]
    ('warmup_stable_decay', 20, 0.1)
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"to_hf takes a workbench Schedule, got {type(schedule).__name__}")
    s = schedule
    fam = s.family
    typ, kw = None, {}
    if fam == "constant":
        typ = "constant_with_warmup" if s.warmup_steps else "constant"
    elif fam == "linear":
        typ, kw = ("linear", {}) if s.min_lr == 0 else ("polynomial", {"lr_end": float(s.min_lr), "power": 1.0})
    elif fam == "cosine":
        typ, kw = ("cosine", {}) if s.min_lr == 0 else ("cosine_with_min_lr", {"min_lr": float(s.min_lr)})
    elif fam == "inverse_sqrt":
        typ, kw = "inverse_sqrt", {"timescale": int(s.effective_timescale)}
    elif fam == "wsd" and s.decay in ("linear", "cosine", "1-sqrt"):
        typ, kw = "warmup_stable_decay", {"num_decay_steps": int(s.n_decay), "decay_type": s.decay,
                                          "warmup_type": s.warmup_shape, "min_lr_ratio": float(s.min_lr / s.peak_lr),
                                          "num_cycles": float(s.num_cycles)}
    if typ is not None:
        return {"learning_rate": float(s.peak_lr), "lr_scheduler_type": typ, "lr_scheduler_kwargs": kw,
                "warmup_steps": int(s.warmup_steps), "max_steps": int(s.total_steps)}
    if optimizer is None:
        raise ValueError(f"transformers has no {s!r} schedule; pass optimizer= (built with lr=schedule.peak_lr) "
                         "for a LambdaLR, or use build_optimizers(model, schedule)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, s.as_lambda(max(float(g["lr"]) for g in optimizer.param_groups)))


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return args.get(name, default) if isinstance(args, dict) else getattr(args, name, default)


def schedule_from_hf(args: Any, total_steps: int | None = None) -> Schedule:
    """The workbench schedule a ``Trainer`` with ``args`` runs (``TrainingArguments`` or a dict of its
    fields). ``total_steps``: the run's number of updates when ``max_steps`` is not set.

    >>> s = schedule_from_hf({"learning_rate": 1e-3, "lr_scheduler_type": "cosine_with_min_lr",
    ...                       "lr_scheduler_kwargs": {"min_lr_rate": 0.1}, "warmup_ratio": 0.1, "max_steps": 100})
    >>> s.family, s.warmup_steps, s.min_lr
    ('cosine', 10, 0.0001)
    """
    lr = _arg(args, "learning_rate", 5e-5)
    typ = str(getattr(_arg(args, "lr_scheduler_type", "linear"), "value", _arg(args, "lr_scheduler_type", "linear")))
    kw = dict(_arg(args, "lr_scheduler_kwargs", None) or {})
    total = _arg(args, "max_steps", -1)
    total = int(total) if total and int(total) > 0 else total_steps
    if total is None or int(total) <= 0:
        raise ValueError("schedule_from_hf needs the run's length: set max_steps in the TrainingArguments or pass "
                         "total_steps= (the number of optimizer updates)")
    total = int(total)
    if hasattr(args, "get_warmup_steps"):
        warm = int(args.get_warmup_steps(total))
    else:
        ws, wr = _arg(args, "warmup_steps", 0) or 0, _arg(args, "warmup_ratio", 0.0) or 0.0
        warm = int(ws) if ws and ws >= 1 else int(math.ceil(total * (ws if 0 < ws < 1 else wr)))
    base = dict(peak_lr=float(lr), total_steps=total, warmup_steps=warm)
    if typ == "constant":
        return schedules.constant(peak_lr=float(lr), total_steps=total)
    if typ == "constant_with_warmup":
        return schedules.constant(**base)
    if typ == "linear":
        return schedules.linear(**base)
    if typ == "cosine" and kw.get("num_cycles", 0.5) == 0.5:
        return schedules.cosine(**base)
    if typ == "cosine_with_min_lr" and kw.get("num_cycles", 0.5) == 0.5:
        low = kw.get("min_lr", None)
        low = float(low) if low is not None else float(kw.get("min_lr_rate", 0.0)) * float(lr)
        return schedules.cosine(**base, min_lr=low)
    if typ == "polynomial" and float(kw.get("power", 1.0)) == 1.0:
        return schedules.linear(**base, min_lr=float(kw.get("lr_end", 1e-7)))
    if typ == "inverse_sqrt":
        return schedules.inverse_sqrt(**base, timescale=kw.get("timescale"))
    if typ == "warmup_stable_decay":
        if "num_decay_steps" not in kw:
            raise ValueError("lr_scheduler_type='warmup_stable_decay' needs lr_scheduler_kwargs num_decay_steps")
        stable = kw.get("num_stable_steps")
        n = total if stable is None else warm + int(stable) + int(kw["num_decay_steps"])
        return schedules.wsd(peak_lr=float(lr), total_steps=n, warmup_steps=warm, decay_steps=int(kw["num_decay_steps"]),
                             decay=kw.get("decay_type", "cosine"), warmup_shape=kw.get("warmup_type", "linear"),
                             min_lr=float(kw.get("min_lr_ratio", 0.0)) * float(lr),
                             num_cycles=float(kw.get("num_cycles", 0.5)))
    raise ValueError(f"lr_scheduler_type {typ!r} with {kw or 'no kwargs'} has no workbench family (supported: constant, "
                     "constant_with_warmup, linear, cosine, cosine_with_min_lr, polynomial with power 1, inverse_sqrt, "
                     "warmup_stable_decay); pass the run's schedule as a SPEC.json instead")


# ---------------------------------------------------------------------------- optimizers
def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters a transformers ``Trainer`` applies weight decay to (its own rule:
    not biases, not LayerNorm/RMSNorm weights)."""
    from transformers import Trainer

    return list(Trainer.get_decay_parameter_names(None, model))


def build_optimizers(model: torch.nn.Module, schedule: Schedule, optimizer: str | Callable = "adamw",
                     weight_decay: float = 0.0, **optimizer_kwargs):
    """The ``(optimizer, scheduler)`` pair for ``Trainer(optimizers=...)``.

    ``optimizer``: any name the workbench trainer accepts (``adamw``, ``adam``, ``sgd``, ``apollo``,
    ``apollo-mini``, ``galore``, ``frugal``, ``lamb``, ``lion``) or a callable ``params -> Optimizer``.
    Parameters are grouped as the ``Trainer`` does: ``weight_decay`` on :func:`decay_parameter_names`,
    0 on biases and norms; the projected optimizers (APOLLO, GaLore, FRUGAL) project the attention/MLP
    weights (:func:`workbench.optim.lowrank_parameter_names`) and run plain AdamW on the rest.
    ``optimizer_kwargs`` go to the optimizer (e.g. ``rank=``, ``betas=``). The scheduler sets the LR to
    exactly ``schedule(t)`` at every step, whatever the optimizer's own ``lr``.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a workbench Schedule, got {type(schedule).__name__}")
    lr = float(getattr(schedule, "peak_lr", 0) or schedule.lrs().max())
    if callable(optimizer) and not isinstance(optimizer, str):
        opt = optimizer([p for p in model.parameters() if p.requires_grad])
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"the optimizer callable returned {type(opt).__name__}, not a torch optimizer")
        return opt, schedule.torch_scheduler(opt)
    if not isinstance(optimizer, str):
        raise ValueError(f"optimizer must be a name or a callable, got {type(optimizer).__name__}")
    from workbench import optim as wo
    from workbench.optim._base import ProjectedOptimizer

    name = optimizer.lower().replace("_", "-")
    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD, "apollo": wo.Apollo,
               "apollo-mini": wo.ApolloMini, "galore": wo.GaLore, "frugal": wo.Frugal, "lamb": wo.Lamb,
               "lion": wo.Lion}
    if name not in classes:
        raise ValueError(f"optimizer must be one of {', '.join(classes)} or a callable params -> optimizer, "
                         f"got {optimizer!r}")
    cls = classes[name]
    decay = set(decay_parameter_names(model))
    lowrank = set(wo.lowrank_parameter_names(model)) if issubclass(cls, ProjectedOptimizer) else set()
    low, mats, vecs, seen = [], [], [], set()
    for pname, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (low if pname in lowrank else mats if pname in decay else vecs).append(p)
    if lowrank:
        groups = [{"params": low, "weight_decay": weight_decay},
                  {"params": mats, "weight_decay": weight_decay, "lowrank": False},
                  {"params": vecs, "weight_decay": 0.0, "lowrank": False}]
    else:
        groups = [{"params": mats, "weight_decay": weight_decay}, {"params": vecs, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if isinstance(optimizer_kwargs.get("betas"), list):
        optimizer_kwargs["betas"] = tuple(optimizer_kwargs["betas"])
    try:
        opt = cls(groups, lr=lr, **optimizer_kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {name!r} does not take these arguments ({exc})") from None
    return opt, schedule.torch_scheduler(opt)
