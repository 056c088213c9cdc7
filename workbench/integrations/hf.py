"""Bridge to the transformers ``Trainer``: the same events and run log as the workbench trainer.

* ``WorkbenchCallback`` turns a ``Trainer``'s logs into workbench events (``step``, ``lr``, ``loss``,
  ``grad_norm``, ``val_loss``, ``tokens``, ``time``), appends them to a ``log.jsonl`` run log and
  passes them to subscribers (the live view, a live loss-law fit), exactly like
  ``workbench.train`` does. The loss-curve readers read that log directly.
* ``build_optimizers`` builds the ``(optimizer, scheduler)`` pair for ``Trainer(optimizers=...)`` from
  a workbench ``Schedule``.

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

import os
import time
from typing import Callable, Iterable

import torch
from transformers import TrainerCallback

from workbench.runlog import RunLog
from workbench.schedules import Schedule

__all__ = ["WorkbenchCallback", "build_optimizers", "hf_log_to_event"]

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

    def __init__(self, run_dir: str | os.PathLike | None = None, subscribers: Iterable[Callable] = ()):
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.subscribers = list(subscribers)
        self.events: list[dict] = []
        self._log: RunLog | None = None
        self._t0: float | None = None

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        self.subscribers.append(fn)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        if self.run_dir is not None and state.is_world_process_zero and self._log is None:
            self._log = RunLog(os.path.join(self.run_dir, "log.jsonl"))

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


def build_optimizers(model: torch.nn.Module, schedule: Schedule, optimizer: str | Callable = "adamw",
                     weight_decay: float = 0.0, **optimizer_kwargs):
    """The ``(optimizer, scheduler)`` pair for ``Trainer(optimizers=...)``.

    ``optimizer`` is ``"adamw"``, ``"adam"``, ``"sgd"`` or a callable ``params -> Optimizer`` (e.g. a
    ``workbench.optim`` class with its arguments bound). The scheduler sets the LR to exactly
    ``schedule(t)`` at every step, whatever the optimizer's own ``lr``.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a workbench Schedule, got {type(schedule).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    names = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if isinstance(optimizer, str):
        if optimizer not in names:
            raise ValueError(f"optimizer must be one of {', '.join(names)} or a callable, got {optimizer!r}")
        opt = names[optimizer](params, lr=schedule(0) or 1e-3, weight_decay=weight_decay, **optimizer_kwargs)
    elif callable(optimizer):
        opt = optimizer(params)
    else:
        raise ValueError(f"optimizer must be a name or a callable, got {type(optimizer).__name__}")
    return opt, schedule.torch_scheduler(opt)
