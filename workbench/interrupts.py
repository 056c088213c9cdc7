"""Stop training runs cleanly on SIGINT / SIGTERM: finish the current step, checkpoint, exit.

Every running :class:`~workbench.train.Trainer` registers a stop callback here. While
:func:`stop_on_signals` is active (``Trainer.run()`` enters it in the main thread; a server that
runs trainers in background threads enters it around its own loop), the first SIGINT or SIGTERM
prints one line and asks every registered run to stop after its current step (each writes a
checkpoint and its summary); a second one aborts at once (``KeyboardInterrupt`` for SIGINT, the
default action for SIGTERM). :func:`wait_for_runs` lets such a server wait for its runs to finish
their checkpoint before the process exits.

Example:
    >>> import threading
    >>> stop = threading.Event()
    >>> with stop_on_signals(message=False):
    ...     token = register(lambda signame: stop.set())
    ...     n = request_stop("SIGTERM")   # what the handler does on a signal
    ...     unregister(token)
    >>> stop.is_set()
    True
"""
from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import threading
import time
from typing import Callable, Iterator

__all__ = ["stop_on_signals", "register", "unregister", "request_stop", "active_runs", "wait_for_runs"]

_lock = threading.Lock()
_runs: dict[int, Callable[[str], None]] = {}
_ids = itertools.count()
_state = {"depth": 0, "received": None}


def register(stop: Callable[[str], None]) -> int:
    """Add a run's stop callback (called with the signal's name); returns a token for :func:`unregister`."""
    with _lock:
        token = next(_ids)
        _runs[token] = stop
        return token


def unregister(token: int) -> None:
    with _lock:
        _runs.pop(token, None)


def active_runs() -> int:
    """How many registered runs are going."""
    with _lock:
        return len(_runs)


def request_stop(signame: str = "SIGINT") -> int:
    """Ask every registered run to stop after its current step; returns how many were asked."""
    with _lock:
        callbacks = list(_runs.values())
    for stop in callbacks:
        stop(signame)
    return len(callbacks)


def wait_for_runs(timeout: float | None = None) -> bool:
    """Wait until no run is registered (they checkpointed and ended); False on timeout."""
    end = None if timeout is None else time.monotonic() + timeout
    while active_runs():
        if end is not None and time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def stop_on_signals(message: bool = True) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM stop the registered runs cleanly (a no-op outside the main thread).

    Nested uses share the outer handlers.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or _state["depth"]:           # another thread, or inside an outer use: nothing to install
        _state["depth"] += int(main)
        try:
            yield
        finally:
            _state["depth"] -= int(main)
        return
    previous = {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if _state["received"] is not None:           # the second signal: abort now
            _restore(previous)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        _state["received"] = name
        n = request_stop(name)
        if message:
            what = (f"stopping {n} run(s) after the current step, with a checkpoint" if n else "stopping")
            print(f"\n{name}: {what} ({name} again to abort)", file=sys.stderr, flush=True)

    signums = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    for s in signums:
        previous[s] = signal.signal(s, handler)
    _state["depth"], _state["received"] = 1, None
    try:
        yield
    finally:
        _restore(previous)
        _state["depth"], _state["received"] = 0, None


def _restore(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)   # None: a handler installed from C
