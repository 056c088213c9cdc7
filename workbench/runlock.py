"""One writer per run directory: an exclusive lock on ``RUN/.lock``, released by the OS when the holder dies.

``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows. The holder's PID is written into the file,
so a second writer is refused with an error naming it. A ``kill -9`` of the holder releases the lock
at once (the kernel closes its files); a stale ``.lock`` file left behind is harmless.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d):
    ...     try:
    ...         RunLock(d).acquire()
    ...     except RunLocked as exc:
    ...         print("refused:", "in use by PID" in str(exc))
    refused: True
"""
from __future__ import annotations

import os

__all__ = ["RunLock", "RunLocked", "LOCK_FILE"]

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another process (or another trainer in this one) is writing this run directory."""


def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class RunLock:
    """Exclusive lock of a run directory (created if missing). ``acquire()`` raises :class:`RunLocked`."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            mine = " (this process)" if holder == str(os.getpid()) else ""
            raise RunLocked(f"{self.run_dir!r} is in use by PID {holder}{mine}, which is training in it; "
                            "wait for it to finish or stop it, or choose another run directory")
        if os.name != "nt":   # on Windows the locked byte cannot be rewritten; the PID is best effort there
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays; it is harmless)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.name == "nt":
            import msvcrt

            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            except OSError:
                pass
        os.close(fd)               # closing releases a flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()
