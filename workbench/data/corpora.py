"""Built-in text corpora made from what every Python installation carries (no download).

Two domains, for distribution-shift experiments:

``stdlib``
    The running interpreter's standard-library ``.py`` source files, one document per
    file (``sysconfig.get_paths()["stdlib"]``). Left out: ``site-packages``, the test
    suites (``test/``, ``tests/``, ``idle_test/`` directories; many Linux distributions
    ship Python without them, so dropping them keeps the corpus closer to the same on
    every machine), ``config-*`` build directories, ``_sysconfigdata*.py`` and
    ``pydoc_data/topics.py`` (a data file, which belongs to ``docs``). Files are decoded
    with their declared source encoding (PEP 263), bad bytes replaced.
``docs``
    English prose: every topic of the interpreter's bundled documentation
    (``pydoc_data.topics.topics``, one document per topic) plus the docstrings of the
    same stdlib files (module, class and function docstrings, extracted with ``ast``
    without importing anything; one document per file, docstrings separated by blank
    lines).

Split: a document goes to ``"val"`` when the SHA-1 of its key (the ``/``-separated file
name relative to the stdlib root, or ``topic:<name>``) maps below :data:`VAL_FRACTION`
(5%), otherwise to ``"train"``. The split never depends on file order or
``PYTHONHASHSEED``, and a file's docstrings (``docs``) land in the same split as its
source (``stdlib``). 5% rather than 1-2% because the split is by file and there are only
~730 files: a smaller fraction puts just a handful of files in validation.

Documents come in a fixed pseudo-random order (sorted by the SHA-1 of their key), so any
prefix of the list - or of the token stream built from it - is a representative sample.

Sizes measured with CPython 3.11.7 (UTF-8 bytes of the documents; other versions differ
a little):

======  =====  =========  ==========
corpus  split  documents  bytes
======  =====  =========  ==========
stdlib  train  703        10,847,503
stdlib  val    28         475,222
docs    train  695        2,157,153
docs    val    29         110,913
======  =====  =========  ==========

(``docs``: 74 + 5 of the 79 documentation topics, the rest per-file docstring
collections; files without any docstring contribute no document.) :func:`corpus_stats` recomputes these.

Example::

    >>> from workbench.data import list_corpora, load_corpus
    >>> list_corpora()
    ['docs', 'stdlib']
    >>> docs = load_corpus("stdlib", split="val")
    >>> isinstance(docs[0], str) and len(docs) > 10
    True
"""
from __future__ import annotations

import ast
import functools
import io
import os
import sys
import sysconfig
import tokenize as _pytokenize

from ._cache import unit_hash

VAL_FRACTION = 0.05
CORPUS_VERSION = 1  # bump when the recipe below changes (invalidates on-disk caches)
_CORPORA = ("docs", "stdlib")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_SKIP_FILES = {"pydoc_data/topics.py"}


def list_corpora() -> list[str]:
    """Names of the built-in corpora: ``['docs', 'stdlib']``."""
    return list(_CORPORA)


def _check_name(name: str) -> str:
    if name not in _CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid corpora are {list(_CORPORA)} "
                         "(or pass a file, a directory or a datasets.Dataset to load_blocks)")
    return name


def normalize_split(split: str) -> str:
    """``"train"`` or ``"val"`` (``"validation"`` is accepted for ``"val"``)."""
    s = {"validation": "val", "valid": "val"}.get(split, split)
    if s not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
    return s


def split_of(key: str) -> str:
    """The split (``"train"``/``"val"``) a document with this key belongs to."""
    return "val" if unit_hash(key) < VAL_FRACTION else "train"


def corpus_fingerprint(name: str) -> str:
    """A string that changes when the corpus content may change (cache keys)."""
    _check_name(name)
    v = sys.version_info
    return f"{name}-py{v.major}.{v.minor}.{v.micro}-{sys.implementation.name}-v{CORPUS_VERSION}"


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[str, ...]:
    """Relative, ``/``-separated names of the stdlib ``.py`` files in the corpus, sorted."""
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith("config-"))
        for fn in filenames:
            if not fn.endswith(".py") or fn.startswith("_sysconfigdata"):
                continue
            key = fn if rel == "." else f"{rel.replace(os.sep, '/')}/{fn}"
            if key not in _SKIP_FILES:
                out.append(key)
    return tuple(sorted(out))


def _read_source(key: str) -> str:
    with open(os.path.join(stdlib_root(), *key.split("/")), "rb") as f:
        raw = f.read()
    try:
        encoding, _ = _pytokenize.detect_encoding(io.BytesIO(raw).readline)
    except SyntaxError:
        encoding = "utf-8"
    text = raw.decode(encoding, errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _docstrings(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                parts.append(doc.strip())
    return "\n\n".join(parts)


def _hash_order(items: list[tuple[str, str]]) -> list[str]:
    return [text for key, text in sorted(items, key=lambda kv: (unit_hash(kv[0]), kv[0]))]


@functools.lru_cache(maxsize=4)
def _load(name: str, split: str) -> tuple[str, ...]:
    items: list[tuple[str, str]] = []
    for key in _stdlib_files():
        if split_of(key) != split:
            continue
        src = _read_source(key)
        if name == "stdlib":
            items.append((key, src))
        else:
            doc = _docstrings(src)
            if doc:
                items.append((key, doc))
    if name == "docs":
        from pydoc_data.topics import topics

        for topic, text in topics.items():
            key = f"topic:{topic}"
            if split_of(key) == split and text.strip():
                items.append((key, text.strip()))
    return tuple(_hash_order(items))


def load_corpus(name: str, split: str = "train") -> list[str]:
    """The documents of a built-in corpus (``"stdlib"`` or ``"docs"``), one string each.

    Repeated calls are cheap (cached in memory per name and split); the returned list is
    a fresh copy, so changing it does not affect later calls.

    Example::

        >>> from workbench.data import load_corpus
        >>> val = load_corpus("docs", split="val")
        >>> all(isinstance(d, str) and d for d in val)
        True
    """
    return list(_load(_check_name(name), normalize_split(split)))


def corpus_stats(name: str) -> dict[str, dict[str, int]]:
    """``{"train": {"documents", "bytes"}, "val": {...}}`` (UTF-8 bytes) for a corpus."""
    out = {}
    for split in ("train", "val"):
        docs = _load(_check_name(name), split)
        out[split] = {"documents": len(docs), "bytes": sum(len(d.encode("utf-8")) for d in docs)}
    return out
