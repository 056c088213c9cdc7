"""A workspace: the directory where the dashboard (``workbench serve``) keeps everything that matters.

Layout under ``root``::

    schedules/NAME.json     designed schedules (SPEC.json, ``Schedule.to_dict()``)
    runs/NAME/              training runs (the trainer's run directories: config, log.jsonl, checkpoint)
    fits/NAME.json          fitted loss laws (``FittedLaw.save``)
    selections/NAME.json    exported data selections (indices and the sampler settings)
    diffs/NAME.json         checkpoint diffs (``SparsityDiff.to_json``)
    uploads/NAME.csv        run logs users uploaded to fit (:meth:`Workspace.save_upload`)

Every write is atomic and nothing is kept only in memory, so restarting the server loses nothing.
Runs started here train in background threads of this process (:meth:`Workspace.start_run`), at
most ``max_runs`` at once (default: the number of cores); the others wait in a queue, first come
first served, and :meth:`Workspace.run_status` says their position. Each run records its owner
(``runs/NAME/owner.json``, the user id the dashboard gives a browser): :meth:`Workspace.can_control`
says who may stop or resume it (the owner, or an admin). A run interrupted by a restart is
continued from its checkpoint with :meth:`Workspace.resume_run` (:meth:`Workspace.interrupted_runs`
lists them). Several browser sessions share one workspace: they see the same files, and names are
checked so that one session never overwrites another's run. Run logs are read incrementally
(:class:`LogTail`): a session showing a finished run costs nothing per poll.

Checkpoint paths typed by users are resolved by :meth:`Workspace.checkpoint_path`: only the
workspace's runs, the bundled assets and the folders given as ``data_dirs`` are readable, and a
refused path gets the same error whether it exists or not.

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

import json
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import schedules as _schedules
from .runlog import read_json, write_json_atomic

__all__ = ["Workspace", "LogTail", "check_name", "default_law", "SOURCES", "UPLOAD_MAX_BYTES"]

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


class LogTail:
    """Follow a run log (``log.jsonl``) by reading only what was appended since the last call.

    A shrunk file (a new run in the same place) is read again from the start. Lines that are not
    JSON objects are skipped; an incomplete last line waits for the next call.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "log.jsonl")
        >>> _ = open(p, "w").write('{"step": 0, "loss": 3.0}\\n{"step": 1, "lo')
        >>> t = LogTail(p)
        >>> t.read(), t.last
        ([{'step': 0, 'loss': 3.0}], {'step': 0, 'loss': 3.0})
        >>> _ = open(p, "a").write('ss": 2.5}\\n')
        >>> t.read(), t.records
        ([{'step': 1, 'loss': 2.5}], 2)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.offset, self.records = 0, 0
        self.last: dict | None = None
        self._partial = b""
        self.lock = threading.Lock()       # for readers that share one tail across threads

    def read(self) -> list[dict]:
        """The records appended since the last call (``[]`` when nothing changed or no file yet)."""
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:                 # truncated or replaced: start again
            self.offset, self.records, self.last, self._partial = 0, 0, None, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        if out:
            self.records += len(out)
            self.last = out[-1]
        return out


class _Running:
    """A run of this process: queued (no thread yet) or training in ``thread``."""

    def __init__(self, key: str, make_trainer, owner: str | None):
        self.key, self.make_trainer, self.owner = key, make_trainer, owner
        self.stop_event = threading.Event()
        self.trainer = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.cancelled = self.done = False

    @property
    def alive(self) -> bool:
        return self.thread is not None and not self.done and self.thread.is_alive()


# runs of this process, shared by every Workspace object: key = the run directory
_RUNNING: dict[str, _Running] = {}
_QUEUE: deque = deque()            # _Running entries waiting for a free slot, first come first served
_RUN_LOCK = threading.RLock()
_TAILS: dict[str, LogTail] = {}    # one incremental reader per run log, for run_status
_FORBIDDEN = ("{what} is not an allowed checkpoint: choose a run of this workspace or the bundled model, "
              "or a path inside a folder the teacher listed with --data-dir")


UPLOADS = "uploads"                # uploaded run logs (Workspace.save_upload)
UPLOAD_EXTS = (".csv", ".jsonl", ".json")
UPLOAD_MAX_BYTES = 10 * 2**20      #: the largest uploaded run log (base64 in a websocket message: bokeh allows 20 MB)
_FORBIDDEN_LOG = ("{what} is not an allowed run log: choose a run of this workspace, an uploaded file, a bundled "
                  "run (runs/NAME), or a path inside a folder the teacher listed with --data-dir")


def _default_max_runs() -> int:
    return max(1, os.cpu_count() or 1)


class Workspace:
    """Files of the dashboard under ``root`` (created if missing). See the module docstring."""

    #: largest number of runs training at once in this process (the server sets it: ``--max-runs``)
    max_runs: int = _default_max_runs()

    def __init__(self, root: str | os.PathLike, data_dirs=(), max_runs: int | None = None):
        self.root = Path(root).expanduser().resolve()
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self.data_dirs = [Path(d).expanduser().resolve() for d in data_dirs]
        for d in self.data_dirs:
            if not d.is_dir():
                raise ValueError(f"--data-dir {str(d)!r} is not a folder; list folders that hold checkpoints")
        if max_runs is not None:
            if int(max_runs) < 1:
                raise ValueError(f"max_runs must be at least 1, got {max_runs}")
            Workspace.max_runs = int(max_runs)      # one limit per process: runs share its cores

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

    def start_run(self, name: str, config, callbacks=(), owner: str | None = None) -> Path:
        """Train ``config`` (a :class:`~workbench.train.TrainConfig`) in a background thread, in
        ``runs/NAME``, as ``owner``. Refuses a name that already holds a run (pick another or resume
        it). When ``max_runs`` runs are training, the run waits in the queue (state ``queued``)."""
        import dataclasses

        from .train import Trainer

        run = self.run_dir(name)
        with _RUN_LOCK:
            if run.exists() and any(run.iterdir()):
                raise ValueError(f"run {name!r} already exists in {run.parent}; choose another name or "
                                 f"resume it")
            cfg = dataclasses.replace(config, run_dir=str(run), progress=False)
            run.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run / "config.json", cfg.to_dict())   # visible (queued) before it starts
            self._set_owner(run, owner)
            self._submit(str(run), lambda ev: Trainer(cfg, callbacks=callbacks, stop_event=ev), owner)
        return run

    def resume_run(self, name: str, steps: int | None = None, owner: str | None = None) -> Path:
        """Continue a stopped or interrupted run from its last checkpoint, in the background (queued
        like :meth:`start_run` when ``max_runs`` runs are training)."""
        from .train import Trainer, load_config

        run = self.run_dir(name)
        with _RUN_LOCK:
            if self.is_running(name) or self.queue_position(name):
                raise ValueError(f"run {name!r} is already training or queued")
            cfg = load_config(run)
            cfg.progress = False
            if steps is not None:
                cfg.steps = int(steps)
            self._submit(str(run), lambda ev: Trainer(cfg, resume=True, stop_event=ev),
                         owner if owner is not None else self.owner(name))
        return run

    @staticmethod
    def _submit(key: str, make_trainer, owner: str | None) -> None:
        entry = _Running(key, make_trainer, owner)
        _RUNNING[key] = entry
        _QUEUE.append(entry)
        Workspace._dispatch()

    @staticmethod
    def _dispatch() -> None:
        """Start queued runs while fewer than ``max_runs`` are training."""
        with _RUN_LOCK:
            while _QUEUE and sum(e.alive for e in _RUNNING.values()) < Workspace.max_runs:
                entry = _QUEUE.popleft()
                Workspace._launch(entry)

    @staticmethod
    def _launch(entry: _Running) -> None:
        def work():
            try:
                entry.trainer = entry.make_trainer(entry.stop_event)
                if not entry.stop_event.is_set():
                    entry.trainer.run()
            except BaseException as exc:   # kept for status(); the run log and checkpoint stay on disk
                entry.error = exc
            finally:
                entry.done = True          # this slot is free: start the next queued run
                Workspace._dispatch()

        entry.thread = threading.Thread(target=work, name=f"workbench-run:{os.path.basename(entry.key)}",
                                        daemon=True)
        entry.thread.start()

    # ------------------------------------------------------------------ ownership
    @staticmethod
    def _set_owner(run: Path, owner: str | None) -> None:
        write_json_atomic(run / "owner.json", {"owner": owner})

    def owner(self, name: str) -> str | None:
        """The user id that started run ``name`` (None: unknown, e.g. a run written by the CLI)."""
        try:
            return read_json(self.run_dir(name) / "owner.json").get("owner")
        except (OSError, ValueError, AttributeError):
            return None

    def can_control(self, name: str, user: str | None, admin: bool = False) -> bool:
        """Whether ``user`` may stop or resume run ``name``: its owner, or an admin (the teacher)."""
        if admin:
            return True
        owner = self.owner(name)
        return owner is not None and user is not None and owner == user

    # ------------------------------------------------------------------ state
    def is_running(self, name: str) -> bool:
        entry = _RUNNING.get(str(self.run_dir(name)))
        return entry is not None and entry.alive

    def queue_position(self, name: str) -> int | None:
        """1 for the next run to start, 2 for the one after, ...; None when ``name`` is not queued."""
        key = str(self.run_dir(name))
        with _RUN_LOCK:
            for i, e in enumerate(_QUEUE):
                if e.key == key:
                    return i + 1
        return None

    def running_count(self) -> int:
        """Runs training now in this process (all workspaces)."""
        return sum(e.alive for e in list(_RUNNING.values()))

    def stop_run(self, name: str, wait: float | None = 30.0) -> None:
        """Ask a run of this process to stop after its current step (it checkpoints first); a queued
        run is taken out of the queue (its folder, which holds only its config, is removed)."""
        key = str(self.run_dir(name))
        with _RUN_LOCK:
            entry = _RUNNING.get(key)
            if entry is None:
                return
            entry.stop_event.set()
            if entry in _QUEUE:
                _QUEUE.remove(entry)
                entry.cancelled = True
                del _RUNNING[key]
                run = Path(key)
                if not (run / "log.jsonl").exists():           # never started: nothing but config/owner
                    for f in ("config.json", "owner.json"):
                        (run / f).unlink(missing_ok=True)
                    try:
                        run.rmdir()
                    except OSError:
                        pass
                return
        if wait and entry.thread is not None:
            entry.thread.join(wait)

    @staticmethod
    def stop_all(wait: float | None = 120.0, signame: str = "SIGINT") -> list[str]:
        """Interrupt every run of this process (each finishes its step, checkpoints and writes its
        summary with status ``"interrupted"``, as :mod:`workbench.interrupts` does for a signal) and
        empty the queue (queued runs keep their folder and config; they never started). The server
        calls this when it is stopped (Ctrl-C, SIGTERM); the next start resumes interrupted runs."""
        from . import interrupts

        with _RUN_LOCK:
            _QUEUE.clear()
            for key in [k for k, e in _RUNNING.items() if e.thread is None]:
                del _RUNNING[key]
            entries = [e for e in _RUNNING.values() if e.alive]
            interrupts.request_stop(signame)
            for e in entries:
                e.stop_event.set()         # a run still being built never registered: it does not start
        for e in entries:
            e.thread.join(wait)
        return [os.path.basename(e.key) for e in entries]

    def interrupted_runs(self) -> list[str]:
        """Runs with a log but no summary and nothing training them: cut short by a crash or restart."""
        return [n for n in self.names("runs") if self.run_status(n)["state"] == "interrupted"]

    def run_status(self, name: str) -> dict:
        """``{"state": "running"|"queued"|"completed"|"stopped"|"diverged"|"failed"|"interrupted"|"new",
        "step": ..., "position": ..., "owner": ...}`` with the last logged step (read incrementally) and the
        summary when there is one; ``position`` is the place in the queue (1 = next) when queued."""
        run = self.run_dir(name)
        entry = _RUNNING.get(str(run))
        out: dict[str, Any] = {"name": name, "state": "new", "step": None, "error": None, "position": None,
                               "owner": self.owner(name)}
        log = run / "log.jsonl"
        with _RUN_LOCK:
            tail = _TAILS.setdefault(str(log), LogTail(log))
        with tail.lock:
            tail.read()
            last = tail.last
        if last is not None:
            out["step"] = last.get("step")
        summary = run / "summary.json"
        position = self.queue_position(name)
        if position is not None:
            out["state"], out["position"] = "queued", position
        elif entry is not None and entry.alive:
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
        """Block until the run ends, queued time included (or ``timeout``); returns :meth:`run_status`."""
        end = None if timeout is None else time.monotonic() + timeout
        key = str(self.run_dir(name))
        while True:
            entry = _RUNNING.get(key)
            if entry is None or entry.cancelled:
                break
            if entry.thread is None:                 # still queued
                if end is not None and time.monotonic() >= end:
                    break
                time.sleep(0.05)
                continue
            entry.thread.join(None if end is None else max(0.0, end - time.monotonic()))
            break
        return self.run_status(name)

    # ------------------------------------------------------------------ checkpoints typed by users
    def allowed_roots(self) -> list[Path]:
        """Folders whose checkpoints users may read: the workspace's runs, the bundled assets, ``data_dirs``."""
        from . import assets

        return [self.root / "runs", Path(assets.ASSETS_DIR).resolve(), *self.data_dirs]

    def checkpoint_path(self, typed: str, what: str = "path") -> str:
        """A checkpoint path a user typed, if it lies inside :meth:`allowed_roots` (after resolving
        ``..`` and links); a ValueError that reads the same whether the path exists or not."""
        return _inside(typed, self.allowed_roots(), [], ValueError(_FORBIDDEN.format(what=what)))

    # ------------------------------------------------------------------ users' own run logs
    def log_roots(self) -> list[Path]:
        """Folders whose run logs users may read: the workspace's runs and uploads, the bundled assets,
        ``data_dirs`` (never the rest of the server, nor the workspace's own secret)."""
        return [self.root / "runs", self.root / UPLOADS, *self.allowed_roots()[1:]]

    def log_path(self, typed: str, what: str = "path") -> str:
        """A run log file or folder a user typed (to read with :func:`workbench.curves.read_runs`), if
        it lies inside :meth:`log_roots` after resolving ``..`` and links; a relative path is taken
        from the workspace (``uploads/x.csv``, ``runs/NAME``) or from each allowed folder
        (``runs/cosine`` is the bundled run). A ValueError that reads the same whether the path exists
        or not.

        >>> import tempfile
        >>> ws = Workspace(tempfile.mkdtemp())
        >>> ws.log_path("runs/cosine").endswith("assets/runs/cosine")
        True
        >>> ws.log_path("/etc/passwd")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: path is not an allowed run log: choose a run of this workspace, an uploaded file, ...
        """
        return _inside(typed, self.log_roots(), [self.root], ValueError(_FORBIDDEN_LOG.format(what=what)))

    def save_upload(self, filename: str, data: bytes) -> Path:
        """Keep an uploaded run log (CSV, JSONL or JSON, at most :data:`UPLOAD_MAX_BYTES`) as
        ``uploads/NAME`` (a checked name, never overwriting: ``NAME-2.csv``, ...), written atomically.

        >>> import tempfile
        >>> ws = Workspace(tempfile.mkdtemp())
        >>> ws.save_upload("run.csv", b"step,lr,loss\\n1,1e-3,3.0\\n").name
        'run.csv'
        >>> ws.save_upload("run.csv", b"step,lr,loss\\n").name
        'run-2.csv'
        """
        base = os.path.basename(str(filename or "").replace("\\", "/"))
        stem, ext = os.path.splitext(base)
        if ext.lower() not in UPLOAD_EXTS:
            raise ValueError(f"upload {base!r}: only {', '.join(UPLOAD_EXTS)} files are accepted (a CSV or W&B "
                             f"export, a run log); for a folder (HF output, TensorBoard) ask for it in --data-dir")
        check_name(stem, "upload name")
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError(f"upload {base!r} is empty; choose the run's log file")
        if len(data) > UPLOAD_MAX_BYTES:
            raise ValueError(f"upload {base!r} is {len(data) / 2**20:.1f} MB; at most "
                             f"{UPLOAD_MAX_BYTES // 2**20} MB (thin the log or ask for it in --data-dir)")
        folder = self.root / UPLOADS
        folder.mkdir(exist_ok=True)
        with _RUN_LOCK:
            name, i = f"{stem}{ext.lower()}", 2
            while (folder / name).exists():
                name, i = f"{stem}-{i}{ext.lower()}", i + 1
            target = folder / name
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(bytes(data))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        return target


def _inside(typed: str, roots: list[Path], bases: list[Path], refused: ValueError) -> str:
    """``typed`` resolved (``..`` and links) if it exists inside one of ``roots``, else ``refused``;
    a relative path is tried from each of ``bases`` and ``roots``."""
    text = (typed or "").strip()
    if not text or "\x00" in text:
        raise refused
    p = Path(text)
    candidates = [p] if p.is_absolute() else [b / p for b in [*bases, *roots]]
    for c in candidates:
        try:
            real = c.resolve()
        except (OSError, RuntimeError):
            continue
        for r in roots:
            if (real == r or r in real.parents) and real.exists():
                return str(real)
    raise refused
