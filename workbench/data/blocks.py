"""Training blocks: documents -> one packed token stream -> ``[n_blocks, block_size + 1]``.

:func:`load_blocks` accepts a built-in corpus name (``"stdlib"``, ``"docs"``), a local
``.txt`` / ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file or a directory of them
(read offline with ``datasets.load_dataset``), a ``datasets.Dataset`` /
``datasets.DatasetDict``, or a plain list of strings.

Packing: every document is followed by the tokenizer's ``eos_id`` (byte 0 for the byte
tokenizer) and all are concatenated into one stream; row ``i`` of the result is
``stream[i*block_size : i*block_size + block_size + 1]``, so consecutive rows overlap by
one token and ``x, y = row[:-1], row[1:]`` gives inputs and next-token targets. The
incomplete tail is dropped.

Documents and splits for user data: a ``.txt`` file yields one document per paragraph
(blank-line separated, ``sample_by="paragraph"`` in ``datasets``; newlines at either
end removed), json/csv/parquet one
per row of ``text_column``. Without a given split, a document goes to ``"val"`` when the
SHA-1 of its text maps below ``VAL_FRACTION`` (5%) - deterministic, order-independent,
and duplicates always share a split. A ``DatasetDict`` with a ``"validation"``, ``"val"``
or ``"test"`` split uses that split for ``"val"``.

Caching: the packed stream (not the blocks, so any ``block_size`` reuses it) is saved as
``.npy`` under ``<cache>/blocks/`` (cache root: ``cache_dir`` argument, else
``$WORKBENCH_CACHE``, else ``~/.cache/workbench``), written atomically and keyed by the
data's fingerprint (corpus + Python version; file names, sizes and mtimes; a Dataset's
fingerprint), split, tokenizer vocabulary and ``max_tokens``. A repeated load reads that
file. Tokenizer objects without a ``name`` attribute are not cached.

Example::

    >>> from workbench.data import load_blocks
    >>> blocks = load_blocks("docs", split="val", block_size=64, max_tokens=10_000)
    >>> blocks.shape, blocks.dtype
    (torch.Size([156, 65]), torch.int64)
    >>> bool((blocks[0, -1] == blocks[1, 0]).item())   # consecutive rows overlap by one token
    True
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import corpora
from ._cache import atomic_save_npy, cache_root, cache_subdir, stable_hash
from .corpora import normalize_split
from .tokenizer import get_tokenizer

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json",
             ".csv": "csv", ".parquet": "parquet"}
_VAL_SPLIT_NAMES = ("validation", "val", "valid", "test")


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40].strip("_.") or "data"


@dataclass
class _Source:
    """Something that yields documents per split, with a label and a cache fingerprint."""
    label: str
    fingerprint: str
    _docs: Callable[[str], list[str]]

    def documents(self, split: str) -> list[str]:
        return self._docs(normalize_split(split))


def _hash_split(texts, text_column_hint: str = "") -> Callable[[str], list[str]]:
    def docs(split: str) -> list[str]:
        out = []
        for t in texts():
            if t is None:
                continue
            if not isinstance(t, str):
                raise ValueError(f"text column{text_column_hint} holds {type(t).__name__} values, "
                                 "not strings; pass text_column= naming a string column")
            if t and corpora.split_of(t) == split:
                out.append(t)
        return out
    return docs


def _import_datasets():
    import datasets      # offline switches: only around the calls (workbench.hf_offline)

    return datasets


def _column(ds, text_column: str, what: str):
    if text_column not in ds.column_names:
        raise ValueError(f"{what} has no column {text_column!r}; columns present: "
                         f"{list(ds.column_names)}; pass text_column=<one of them>")
    return ds[text_column]


def _find_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ValueError(f"no such file or directory: {str(path)!r} (give a built-in corpus "
                         f"name {corpora.list_corpora()}, or a path to .txt/.json/.jsonl/.csv/"
                         ".parquet data)")
    if path.is_file():
        if path.suffix.lower() not in _BUILDERS:
            raise ValueError(f"unknown file extension {path.suffix!r} of {str(path)!r}; "
                             f"supported: {sorted(_BUILDERS)}")
        return [path]
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in _BUILDERS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise ValueError(f"directory {str(path)!r} holds no data files with a supported "
                         f"extension {sorted(_BUILDERS)}")
    return files


def data_files(path: Path) -> tuple[list[Path], str, list]:
    """The data files under ``path``, their ``datasets`` builder (one format only) and their stats."""
    files = _find_files(path)
    builders = {_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise ValueError(f"{str(path)!r} mixes data formats {sorted(builders)}; put files of one "
                         "format (text, json/jsonl, csv or parquet) in a directory")
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return files, builders.pop(), stats


def _file_source(path: Path, text_column: str, cache_dir) -> _Source:
    files, builder, stats = data_files(path)
    fingerprint = f"files|{builder}|{text_column}|v{corpora.CORPUS_VERSION}|{stats}"
    loaded = {}

    def texts():
        if "ds" not in loaded:
            from workbench import hf_offline

            datasets = _import_datasets()
            kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
            with hf_offline():
                ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                           cache_dir=str(cache_root(cache_dir) / "datasets"), **kwargs)
            col = _column(ds, text_column, f"data {str(path)!r}")
            if builder == "text":  # paragraphs: newlines at either end are separators
                col = [t.strip("\n") for t in col]
            loaded["ds"] = col
        return loaded["ds"]

    return _Source(_safe(path.stem or path.name), fingerprint, _hash_split(texts, f" {text_column!r}"))


def _dataset_source(data, text_column: str) -> _Source:
    datasets = _import_datasets()
    if isinstance(data, datasets.DatasetDict):
        keys = list(data.keys())
        val_key = next((k for k in _VAL_SPLIT_NAMES if k in data), None)
        if "train" in data and val_key is not None:
            fp = "dsdict|" + "|".join(f"{k}:{data[k]._fingerprint}" for k in ("train", val_key))

            def docs(split: str) -> list[str]:
                col = _column(data["train" if split == "train" else val_key], text_column,
                              f"the {split!r} split of the DatasetDict")
                return [t for t in col if isinstance(t, str) and t]

            return _Source("datasetdict", f"{fp}|{text_column}", docs)
        if len(keys) == 1:
            data = data[keys[0]]
        else:
            raise ValueError(f"DatasetDict splits {keys}: need 'train' plus one of "
                             f"{list(_VAL_SPLIT_NAMES)}, or a single split; pass one Dataset")
    _column(data, text_column, "the Dataset")
    fp = f"dataset|{data._fingerprint}|{text_column}"
    return _Source("dataset", fp, _hash_split(lambda: data[text_column], f" {text_column!r}"))


def _source(data, text_column: str = "text", cache_dir=None) -> _Source:
    """Turn anything :func:`load_blocks` accepts into a :class:`_Source`."""
    if isinstance(data, str) and data in corpora.list_corpora():
        return _Source(data, corpora.corpus_fingerprint(data),
                       lambda split: corpora.load_corpus(data, split))
    if isinstance(data, (str, os.PathLike)):
        return _file_source(Path(data).expanduser(), text_column, cache_dir)
    if isinstance(data, (list, tuple)):
        if not all(isinstance(d, str) for d in data):
            raise ValueError("a list given as data must hold strings (documents)")
        fp = "list|" + stable_hash("\x00".join(data), 40)
        return _Source("list", fp, _hash_split(lambda: data))
    mod = type(data).__module__ or ""
    if mod.startswith("datasets"):
        return _dataset_source(data, text_column)
    raise ValueError(f"cannot load blocks from {type(data).__name__}; pass a corpus name "
                     f"{corpora.list_corpora()}, a file or directory path, a datasets.Dataset "
                     "or a list of strings")


def load_documents(data, split: str = "train", text_column: str = "text") -> list[str]:
    """The documents of ``data`` (anything :func:`load_blocks` accepts) in ``split``.

    Example::

        >>> from workbench.data.blocks import load_documents
        >>> load_documents(["first doc", "second doc"], split="train")
        ['first doc', 'second doc']
    """
    return _source(data, text_column).documents(split)


def _encode(tok, docs: Sequence[str], max_tokens: int | None) -> np.ndarray:
    def enc(chunk):
        if hasattr(tok, "encode_documents"):
            return np.asarray(tok.encode_documents(chunk))
        parts = []
        for d in chunk:
            parts += [np.asarray(tok.encode(d), dtype=np.int64), np.asarray([tok.eos_id], np.int64)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    if max_tokens is None:
        return enc(docs)
    parts, total, i, step = [], 0, 0, 16
    while i < len(docs) and total < max_tokens:
        arr = enc(docs[i:i + step])
        parts.append(arr)
        total += len(arr)
        i += step
        step = min(step * 2, 1024)
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return out[:max_tokens]


def _stream_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32


def token_stream(data, split: str = "train", tokenizer="byte", max_tokens: int | None = None,
                 text_column: str = "text", cache_dir=None) -> np.ndarray:
    """The packed token stream (documents each followed by ``eos_id``), cached on disk.

    Example::

        >>> from workbench.data.blocks import token_stream
        >>> token_stream(["ab", "c"], split="train").tolist()
        [97, 98, 0, 99, 0]
    """
    split = normalize_split(split)
    if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    tok = get_tokenizer(tokenizer, cache_dir=cache_dir)
    src = _source(data, text_column, cache_dir)
    name = getattr(tok, "name", None)
    path = None
    if name is not None:
        key = f"{src.fingerprint}|{split}|{name}|{max_tokens}"
        path = cache_subdir("blocks", cache_dir) / f"{src.label}-{split}-{_safe(name)}-{stable_hash(key)}.npy"
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError):  # corrupt entry: rebuild below
                pass
    stream = _encode(tok, src.documents(split), max_tokens).astype(_stream_dtype(tok.vocab_size))
    if path is not None:
        atomic_save_npy(path, stream)
    return stream


def load_blocks(data, split: str = "train", block_size: int = 128, tokenizer="byte",
                max_tokens: int | None = None, text_column: str = "text",
                cache_dir=None) -> torch.Tensor:
    """Packed training blocks: a ``torch.LongTensor`` of shape ``[n_blocks, block_size + 1]``.

    Given a folder made by ``workbench data prepare`` (:func:`workbench.data.shards.prepare_shards`),
    returns a :class:`~workbench.data.shards.TokenBlocks` instead: the same rows, read from the
    memory-mapped shards on demand (for corpora bigger than memory).

    ``data``: ``"stdlib"`` / ``"docs"``, a data file or directory, a ``datasets.Dataset``
    (or ``DatasetDict``) or a list of strings. ``tokenizer``: ``"byte"`` (default),
    ``"bpe"`` (the default BPE of :func:`get_tokenizer`: trained on ``stdlib``, 4096
    entries), a ``tokenizer.json`` path or a tokenizer object - pass the same object for
    every split and corpus you compare. ``max_tokens`` keeps only the first that many
    tokens of the stream (documents come in a fixed order, see module docstring).

    Example::

        >>> from workbench.data import load_blocks
        >>> b = load_blocks(["hello world"] * 3, block_size=4)
        >>> b.shape                      # 3 * (11 + 1) = 36 tokens -> (36 - 1) // 4 rows
        torch.Size([8, 5])
        >>> x, y = b[:, :-1], b[:, 1:]   # next-token targets
    """
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    from .shards import TokenBlocks, is_prepared

    if is_prepared(data):                  # a folder from `workbench data prepare`: read lazily from disk
        blocks = TokenBlocks(data, split, block_size, max_tokens=max_tokens)
        tok = get_tokenizer(tokenizer, cache_dir=cache_dir)
        if getattr(tok, "name", None) != blocks.tokenizer or tok.vocab_size != blocks.vocab_size:
            hint = (f"'{Path(data) / blocks.manifest['tokenizer_file']}'" if blocks.manifest.get("tokenizer_file")
                    else repr(blocks.tokenizer))
            raise ValueError(f"{str(data)!r} was prepared with tokenizer {blocks.tokenizer!r} (vocab "
                             f"{blocks.vocab_size}) but tokenizer {getattr(tok, 'name', tok)!r} was given; "
                             f"pass tokenizer={hint} (CLI: --tokenizer {hint})")
        return blocks
    stream = token_stream(data, split, tokenizer, max_tokens, text_column, cache_dir)
    n = (len(stream) - 1) // block_size
    if n < 1:
        raise ValueError(f"too little data for one block: the {split!r} split has {len(stream)} "
                         f"tokens but block_size={block_size} needs {block_size + 1}; lower "
                         "block_size, raise max_tokens or add data")
    windows = np.lib.stride_tricks.sliding_window_view(stream[: n * block_size + 1], block_size + 1)
    return torch.from_numpy(windows[::block_size].astype(np.int64))
