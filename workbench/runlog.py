"""The run log: an append-only JSONL file, one JSON object per training step.

``RunLog(path)`` appends one line per event and flushes it at once, so a run that crashes or
is killed loses nothing that was logged; ``sync()`` additionally fsyncs (the trainer calls it at
every checkpoint). Opening an existing log appends to it: nothing is ever truncated.

Step convention (the trainer's): the event with ``"step": t`` is written after the (t+1)-th
``optimizer.step()``, and its ``lr`` is the learning rate that update used, ``schedule(t)``.
``val_loss`` at step t is the loss of the model after those t+1 updates.

A resumed run repeats the steps between its last checkpoint and the crash, so a log can hold the
same step twice; the later line is the one that belongs to the run that went on. ``read_run_log``
returns every line in file order; ``latest_per_step`` (or ``read_run_log(..., dedupe=True)``)
keeps the last occurrence of each step, in step order.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with RunLog(os.path.join(d, "log.jsonl")) as log:
    ...     log.write({"step": 0, "lr": 1e-3, "loss": 5.5})
    ...     log.write({"step": 1, "lr": 1e-3, "loss": 5.1})
    >>> [r["loss"] for r in read_run_log(os.path.join(d, "log.jsonl"))]
    [5.5, 5.1]
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Iterable

from .files import atomic_write_text

__all__ = ["RunLog", "read_run_log", "latest_per_step", "write_json_atomic", "read_json"]


def _jsonable(value: Any) -> Any:
    """Plain Python numbers for JSON (tensors/numpy scalars via ``.item()``)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


class RunLog:
    """Append-only JSONL writer; every ``write`` is flushed, ``sync()`` fsyncs.

    If the file ends in a partial line (a crash in the middle of a write), a newline is added
    before appending so the partial line stays a line of its own (``read_run_log`` skips it with
    a warning) and the new lines stay readable.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        needs_newline = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._f = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")
            self._f.flush()

    def write(self, record: dict) -> None:
        """Append one record as a JSON line and flush it to the OS."""
        self._f.write(json.dumps(_jsonable(record)) + "\n")
        self._f.flush()

    def sync(self) -> None:
        """Flush and fsync: the lines written so far survive a power loss."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_run_log(path: str | os.PathLike, *, dedupe: bool = False) -> list[dict]:
    """Read a run log (``log.jsonl``, or a run directory holding one) into a list of dicts.

    Lines that are not valid JSON (a final line cut short by a crash) are skipped with a
    ``RuntimeWarning`` naming the line. With ``dedupe=True`` the records are passed through
    ``latest_per_step`` (last occurrence of each step wins, sorted by step).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "log.jsonl")
        >>> _ = open(p, "w").write('{"step": 0, "loss": 3.0}\\n{"step": 1, "lo')
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     read_run_log(p)
        [{'step': 0, 'loss': 3.0}]
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "log.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"run log {path!r} does not exist; pass a run directory or its log.jsonl")
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = [rec for _, rec in parse_jsonl_lines(lines, path)]
    return latest_per_step(records) if dedupe else records


def parse_jsonl_lines(lines: list[str], path: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each JSON-object line; unreadable lines are skipped with a
    ``RuntimeWarning`` naming the file and line (the final one is usually cut short by a crash)."""
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            where = "final line" if i == last else f"line {i + 1}"
            warnings.warn(f"{path}: skipped unreadable {where} (cut short by a crash?): {line[:80]!r}",
                          RuntimeWarning, stacklevel=3)
            continue
        out.append((i + 1, rec))
    return out


def latest_per_step(records: Iterable[dict]) -> list[dict]:
    """Keep the last record of each ``step`` (a resumed run's repeat wins), sorted by step.

    Records without a ``step`` key are dropped.

    >>> latest_per_step([{"step": 0, "loss": 3}, {"step": 1, "loss": 9}, {"step": 1, "loss": 2}])
    [{'step': 0, 'loss': 3}, {'step': 1, 'loss': 2}]
    """
    by_step: dict[int, dict] = {}
    bad = 0
    for rec in records:
        if "step" in rec:
            step = rec["step"]
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
                bad += 1          # not a step number: a hand-edited or foreign line
                continue
            by_step[int(step)] = rec
    if bad:
        warnings.warn(f"skipped {bad} log records whose 'step' is not an integer", RuntimeWarning, stacklevel=2)
    return [by_step[k] for k in sorted(by_step)]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON via a temp file + fsync + ``os.replace`` (never half-written).

    Non-finite floats are written as ``null``.
    """
    text = json.dumps(_finite_or_none(_jsonable(obj)), indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ValueError (naming the file) if it is not valid JSON."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
