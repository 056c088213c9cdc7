"""A workspace: the directory where the dashboard (``workbench serve``) keeps everything that matters.

Layout under ``root``::

    schedules/NAME.json     designed schedules (SPEC.json, ``Schedule.to_dict()``)
    runs/NAME/              training runs (the trainer's run directories: config, log.jsonl, checkpoint)
    fits/NAME.json          fitted loss laws (``FittedLaw.save``)
    selections/NAME.json    exported data selections (indices and the sampler settings)
    diffs/NAME.json         checkpoint diffs (``SparsityDiff.to_json``)

Every write is atomic and nothing is kept only in memory, so restarting the server loses nothing.
Runs started here train in background threads of this process (:meth:`Workspace.start_run`); a
run interrupted by a restart is continued from its checkpoint with :meth:`Workspace.resume_run`.
Several browser sessions share one workspace: they see the same files, and names are checked so
that one session never overwrites another's run.

No UI here: the dashboard and the CLI are views over this.

Example:
    >>> import tempfile
    >>> from workbench import schedules
    >>> ws = Workspace(tempfile.mkdtemp())
    >>> ws.save_schedule("short-cosine", schedules.cosine(peak_lr=1e-3, total_steps=100))
    >>> ws.schedule_names(), ws.load_schedule("short-cosine").total_steps
    (['short-cosine'], 100)
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from . import schedules as _schedules
from .runlog import read_json, write_json_atomic

__all__ = ["Workspace", "check_name", "default_law", "SOURCES"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KINDS = ("schedules", "runs", "fits", "selections", "diffs")


def check_name(name: str, what: str = "name") -> str:
    """A file-safe name (letters, digits, ``.``, ``_``, ``-``; up to 64 characters), or a ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not usable as a file name: use 1-64 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit (e.g. 'cosine-3e-3')")
    return name


_LAW_LOCK = threading.Lock()
_LAWS: dict[str, Any] = {}


SOURCES = {"124m": "law fitted to real 124M runs", "tiny": "law fitted to the bundled tiny-model runs"}


def default_law(law: str = "multipower", cache: str | os.PathLike | None = None, source: str = "tiny"):
    """A loss law to predict the loss of a designed schedule, cached in memory.

    ``source="tiny"``: fitted to the six bundled runs of the tiny model (:mod:`workbench.assets`: 1000
    steps at a peak LR of 3e-3), on first use, and cached on disk when ``cache`` (a JSON path) is
    given. ``source="124m"``: the precomputed fit to real 124M-parameter runs (15k-50k steps at a
    peak LR of 1e-3, :func:`workbench.assets.fitted_law`). Predictions outside a fit's LRs and
    lengths are extrapolations: :meth:`~workbench.laws.FittedLaw.check_domain` says so.
    """
    from . import laws

    if source not in SOURCES:
        raise ValueError(f"unknown law source {source!r}; choose one of {', '.join(SOURCES)}")
    key = law if source == "tiny" else f"{source}:{law}"
    with _LAW_LOCK:
        if key in _LAWS:
            return _LAWS[key]
        fitted = None
        if source != "tiny":
            from . import assets

            fitted = assets.fitted_law(source, law=law)
        if fitted is None and cache is not None and os.path.exists(cache):
            try:
                fitted = laws.FittedLaw.load(cache)
                if "domain" not in fitted.info:    # written before fits knew their domain
                    fitted = None
            except (ValueError, OSError):
                fitted = None    # a stale or broken cache is refitted and rewritten
        if fitted is None:
            from . import assets
            from .curves import read_curve

            curves = [read_curve(assets.run_dir(n)) for n in assets.RUNS]
            fitted = laws.fit(curves, law=law)
            if cache is not None:
                fitted.save(cache)
        _LAWS[key] = fitted
        return fitted


class _Running:
    def __init__(self, trainer, thread: threading.Thread):
        self.trainer, self.thread = trainer, thread
        self.error: BaseException | None = None


# runs training in this process, shared by every Workspace object on the same root
_RUNNING: dict[str, _Running] = {}
_RUN_LOCK = threading.Lock()


class Workspace:
    """Files of the dashboard under ``root`` (created if missing). See the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def path(self, kind: str, name: str) -> Path:
        """The file (or run directory) of ``name`` among ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        check_name(name)
        return self.root / kind / (name if kind == "runs" else f"{name}.json")

    def names(self, kind: str) -> list[str]:
        """Names saved under ``kind``, sorted."""
        folder = self.root / kind
        if kind == "runs":
            return sorted(p.name for p in folder.iterdir() if (p / "config.json").exists())
        return sorted(p.stem for p in folder.glob("*.json"))

    def unique_name(self, kind: str, stem: str) -> str:
        """``stem`` if it is free among ``kind``, else ``stem-2``, ``stem-3``, ..."""
        check_name(stem)
        taken = set(self.names(kind)) | ({p.name for p in (self.root / kind).iterdir()} if kind == "runs" else set())
        if stem not in taken:
            return stem
        i = 2
        while f"{stem}-{i}" in taken:
            i += 1
        return f"{stem}-{i}"

    # ------------------------------------------------------------------ schedules
    def save_schedule(self, name: str, schedule) -> None:
        _schedules.save_schedule(schedule, self.path("schedules", name))

    def load_schedule(self, name: str):
        return _schedules.load_schedule(self.path("schedules", name))

    def schedule_names(self) -> list[str]:
        return self.names("schedules")

    # ------------------------------------------------------------------ json records
    def save_json(self, kind: str, name: str, data: dict) -> Path:
        p = self.path(kind, name)
        write_json_atomic(p, data)
        return p

    def load_json(self, kind: str, name: str) -> dict:
        return read_json(self.path(kind, name))

    def law(self, law: str = "multipower"):
        """The default loss law (fitted to the bundled runs), cached as ``fits/bundled-LAW.json``."""
        return default_law(law, cache=self.path("fits", f"bundled-{law}"))

    # ------------------------------------------------------------------ runs
    def run_dir(self, name: str) -> Path:
        return self.path("runs", name)

    def start_run(self, name: str, config, callbacks=()) -> Path:
        """Train ``config`` (a :class:`~workbench.train.TrainConfig`) in a background thread, in
        ``runs/NAME``. Refuses a name that already holds a run (pick another or resume it)."""
        import dataclasses

        from .train import Trainer

        run = self.run_dir(name)
        with _RUN_LOCK:
            if run.exists() and any(run.iterdir()):
                raise ValueError(f"run {name!r} already exists in {run.parent}; choose another name or "
                                 f"resume it")
            cfg = dataclasses.replace(config, run_dir=str(run), progress=False)
            trainer = Trainer(cfg, callbacks=callbacks)
            self._launch(str(run), trainer)
        return run

    def resume_run(self, name: str, steps: int | None = None) -> Path:
        """Continue a stopped or interrupted run from its last checkpoint, in the background."""
        from .train import Trainer, load_config

        run = self.run_dir(name)
        with _RUN_LOCK:
            if self.is_running(name):
                raise ValueError(f"run {name!r} is already training")
            cfg = load_config(run)
            cfg.progress = False
            if steps is not None:
                cfg.steps = int(steps)
            trainer = Trainer(cfg, resume=True)
            self._launch(str(run), trainer)
        return run

    @staticmethod
    def _launch(key: str, trainer) -> None:
        def work():
            try:
                trainer.run()
            except BaseException as exc:   # kept for status(); the run log and checkpoint stay on disk
                entry.error = exc

        thread = threading.Thread(target=work, name=f"workbench-run:{os.path.basename(key)}", daemon=True)
        entry = _Running(trainer, thread)
        _RUNNING[key] = entry
        thread.start()

    def is_running(self, name: str) -> bool:
        entry = _RUNNING.get(str(self.run_dir(name)))
        return entry is not None and entry.thread.is_alive()

    def stop_run(self, name: str, wait: float | None = 30.0) -> None:
        """Ask a run of this process to stop after its current step (it checkpoints first)."""
        entry = _RUNNING.get(str(self.run_dir(name)))
        if entry is None:
            return
        entry.trainer.stop_event.set()
        if wait:
            entry.thread.join(wait)

    def run_status(self, name: str) -> dict:
        """``{"state": "running"|"completed"|"stopped"|"diverged"|"failed"|"interrupted"|"new", ...}``
        with the last logged step and the summary when there is one."""
        from .runlog import read_run_log

        run = self.run_dir(name)
        entry = _RUNNING.get(str(run))
        out: dict[str, Any] = {"name": name, "state": "new", "step": None, "error": None}
        log = run / "log.jsonl"
        if log.exists():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recs = read_run_log(log)
            if recs:
                out["step"] = recs[-1].get("step")
        summary = run / "summary.json"
        if entry is not None and entry.thread.is_alive():
            out["state"] = "running"
        elif entry is not None and entry.error is not None:
            out["state"], out["error"] = "failed", repr(entry.error)
        elif summary.exists():
            s = read_json(summary)
            out["state"], out["summary"] = s.get("status", "completed"), s
        elif log.exists():
            out["state"] = "interrupted"
        return out

    def wait(self, name: str, timeout: float | None = None) -> dict:
        """Block until the run's thread ends (or ``timeout``); returns :meth:`run_status`."""
        entry = _RUNNING.get(str(self.run_dir(name)))
        if entry is not None:
            end = None if timeout is None else time.monotonic() + timeout
            entry.thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return self.run_status(name)
