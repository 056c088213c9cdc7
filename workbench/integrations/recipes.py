"""Workbench schedules in accelerate and Lightning loops: one LR per optimizer update, whatever the setup.

A workbench :class:`~workbench.schedules.Schedule` is a function of the optimizer update ``t``; the
scheduler must advance exactly once per update. Two frameworks make that easy to get wrong:

* **accelerate**: ``accelerator.prepare(scheduler)`` wraps it so that, with the default
  ``step_scheduler_with_optimizer=True`` and without ``split_batches``, each ``scheduler.step()``
  advances it ``num_processes`` times (accelerate assumes a schedule counted in per-process
  batches). A workbench schedule would then run N times too fast on N processes.
  :func:`accelerate_scheduler` returns a prepared scheduler that advances one schedule step per
  update on any number of processes (and skips with the optimizer under gradient accumulation or
  an fp16 overflow, as accelerate's wrapper does)::

      accelerator = Accelerator(gradient_accumulation_steps=2)
      model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
      scheduler = accelerate_scheduler(schedule, optimizer, accelerator)
      for batch in loader:
          with accelerator.accumulate(model):
              accelerator.backward(model(**batch).loss)
              optimizer.step(); scheduler.step(); optimizer.zero_grad()

* **Lightning**: a scheduler returned from ``configure_optimizers`` steps once per *epoch* unless
  its config says ``"interval": "step"``. :func:`lightning_scheduler` returns that config::

      def configure_optimizers(self):
          opt = torch.optim.AdamW(self.parameters(), lr=schedule.peak_lr)
          return {"optimizer": opt, "lr_scheduler": lightning_scheduler(schedule, opt)}

Example:
    >>> import torch
    >>> from workbench import schedules
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> cfg = lightning_scheduler(schedules.cosine(peak_lr=0.1, total_steps=10), opt)
    >>> cfg["interval"], cfg["frequency"], opt.param_groups[0]["lr"]
    ('step', 1, 0.1)
"""
from __future__ import annotations

from typing import Any

import torch

from workbench.schedules import Schedule, ScheduleLR

__all__ = ["accelerate_scheduler", "lightning_scheduler", "scheduler_calls_per_update"]


def scheduler_calls_per_update(accelerator: Any) -> int:
    """How many times a scheduler prepared by ``accelerator`` advances per optimizer update."""
    if not getattr(accelerator, "step_scheduler_with_optimizer", True):
        return 1
    if getattr(accelerator, "split_batches", False):
        return 1
    return int(getattr(accelerator, "num_processes", 1) or 1)


def accelerate_scheduler(schedule: Schedule, optimizer: torch.optim.Optimizer, accelerator: Any):
    """A scheduler for an accelerate loop, already prepared: call ``scheduler.step()`` after each
    ``optimizer.step()`` and the LR of update ``t`` is ``schedule(t)`` on 1 or N processes."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a workbench Schedule, got {type(schedule).__name__}")
    sched = ScheduleLR(optimizer, schedule, steps_per_update=scheduler_calls_per_update(accelerator))
    return accelerator.prepare_scheduler(sched)


def lightning_scheduler(schedule: Schedule, optimizer: torch.optim.Optimizer) -> dict:
    """The ``lr_scheduler`` entry of ``configure_optimizers``: a :class:`ScheduleLR` stepped every
    optimizer update (``interval="step"``, ``frequency=1``)."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a workbench Schedule, got {type(schedule).__name__}")
    return {"scheduler": ScheduleLR(optimizer, schedule), "interval": "step", "frequency": 1}
