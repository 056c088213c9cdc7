"""Where ``workbench.data`` keeps its on-disk cache, and atomic file writes.

The cache root is, in order of precedence: the ``cache_dir`` argument of the calling
function, the ``WORKBENCH_CACHE`` environment variable, or ``~/.cache/workbench``.
Trained BPE tokenizers go to ``<root>/tokenizers/``, packed token streams to
``<root>/blocks/`` and ``datasets`` Arrow files to ``<root>/datasets/``.

Example::

    >>> from workbench.data._cache import cache_root
    >>> cache_root("/tmp/wb-cache").name
    'wb-cache'
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from workbench.files import atomic_write, atomic_write_bytes  # noqa: F401 (re-exported)

ENV_VAR = "WORKBENCH_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root directory (not created)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "workbench"


def cache_subdir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/<name>``, created if missing."""
    path = cache_root(cache_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(text: str, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-1 of ``text`` (independent of PYTHONHASHSEED)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def unit_hash(text: str) -> float:
    """Map ``text`` to a float in [0, 1) with SHA-1 (stable across runs and machines)."""
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (readers never see a half-written file)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)
