"""Run-log sinks: write a training run's events where people's tools read them (TensorBoard, W&B).

The run log (``log.jsonl``) stays the source of truth; a sink is a copy for a dashboard. Tag names
and steps follow the transformers ``Trainer`` (its TensorBoard and W&B callbacks), so a workbench
run and an HF run sit side by side in the same dashboard:

=====================  ==========================  =============================================
event key              tag                         global step
=====================  ==========================  =============================================
``loss``               ``train/loss``              number of updates done (event ``step`` + 1)
``lr``                 ``train/learning_rate``
``grad_norm``          ``train/grad_norm``
``tokens``             ``train/num_input_tokens_seen``
``val_loss``           ``eval/loss``
=====================  ==========================  =============================================

* ``tensorboard``: ``RUN_DIR/tensorboard/events.out.tfevents.*`` through ``torch.utils.tensorboard``
  (needs the ``tensorboard`` package: ``pip install tensorboard`` or ``workbench[tensorboard]``).
* ``wandb``: a W&B run in ``RUN_DIR/wandb`` (needs ``wandb``), offline unless ``WANDB_MODE`` says
  otherwise: nothing leaves the machine until you ``wandb sync`` it.

Example:
    >>> parse_log_targets("tensorboard, wandb"), parse_log_targets(None)
    (('tensorboard', 'wandb'), ())
"""
from __future__ import annotations

import os
from typing import Any, Iterable

__all__ = ["SINKS", "TAGS", "parse_log_targets", "open_sinks", "TensorBoardSink", "WandbSink"]

SINKS = ("tensorboard", "wandb")
TAGS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
        "tokens": "train/num_input_tokens_seen", "val_loss": "eval/loss"}


def parse_log_targets(value: Any) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` (or a list) -> ``("tensorboard", "wandb")``; a clear error otherwise."""
    if value is None or value == "" or value == () or value == []:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"log must be a comma-separated string or a list of sink names, got {value!r}")
    out = []
    for x in (x.strip().lower() for x in items):
        if x not in SINKS:
            raise ValueError(f"unknown log sink {x!r}; choose from {', '.join(SINKS)} (e.g. --log tensorboard,wandb)")
        if x not in out:
            out.append(x)
    return tuple(out)


def _scalars(event: dict) -> dict[str, float]:
    return {tag: float(event[k]) for k, tag in TAGS.items() if isinstance(event.get(k), (int, float))
            and not isinstance(event.get(k), bool)}


class TensorBoardSink:
    """Writes each event's scalars with ``SummaryWriter.add_scalar`` (global step = updates done)."""

    def __init__(self, run_dir: str | os.PathLike, config: dict | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError(f"--log tensorboard needs the tensorboard package ({exc}); pip install tensorboard "
                             "(or drop tensorboard from --log)") from None
        self.log_dir = os.path.join(os.fspath(run_dir), "tensorboard")
        self.writer = SummaryWriter(log_dir=self.log_dir)
        if config:
            import json

            self.writer.add_text("workbench/config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def __call__(self, event: dict) -> None:
        step = int(event["step"]) + 1
        for tag, value in _scalars(event).items():
            self.writer.add_scalar(tag, value, step)
        if "val_loss" in event:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Logs each event's scalars to a W&B run (offline by default) with ``step`` = updates done."""

    def __init__(self, run_dir: str | os.PathLike, config: dict | None = None, project: str = "workbench"):
        try:
            import wandb
        except ImportError as exc:
            raise ValueError(f"--log wandb needs the wandb package ({exc}); pip install wandb "
                             "(or drop wandb from --log)") from None
        run_dir = os.fspath(run_dir)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", project), dir=run_dir,
                              name=os.path.basename(os.path.abspath(run_dir)), config=config or {},
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")

    def __call__(self, event: dict) -> None:
        values = _scalars(event)
        values["train/global_step"] = int(event["step"]) + 1
        self.run.log(values, step=int(event["step"]) + 1)

    def close(self) -> None:
        self.run.finish()


def open_sinks(targets: Iterable[str], run_dir: str | os.PathLike | None, config: dict | None = None) -> list:
    """The sinks named in ``targets`` for ``run_dir`` (each a callable taking an event, with ``close()``)."""
    targets = parse_log_targets(tuple(targets) if not isinstance(targets, str) else targets)
    if targets and run_dir is None:
        raise ValueError("log sinks (--log) write next to the run log: give the run a run_dir")
    made = []
    try:
        for t in targets:
            made.append(TensorBoardSink(run_dir, config) if t == "tensorboard" else WandbSink(run_dir, config))
    except BaseException:
        for s in made:
            s.close()
        raise
    return made
