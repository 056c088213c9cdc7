"""Corpora bigger than memory: tokenise once into memory-mapped token shards, then stream blocks.

:func:`prepare_shards` (CLI: ``workbench data prepare PATH --out DIR``) reads a local corpus
(``.txt`` / ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` files or a directory of them, a folder
saved with ``datasets.Dataset.save_to_disk``, a built-in corpus name, or a ``datasets.Dataset``),
tokenises it with ``datasets.map(num_proc=...)`` and writes each split as one packed token stream
(every document followed by the tokenizer's ``eos_id``, exactly as :func:`load_blocks` packs it)
cut into raw binary shards ``train-00000.bin``, ``val-00000.bin``, ... of ``shard_tokens`` tokens,
plus ``manifest.json`` (tokenizer, dtype, the shards and their token counts) and, for a BPE
tokenizer, its ``tokenizer.json``. Documents go to ``val`` by the same SHA-1 rule as
:func:`load_blocks` (5%), so a prepared folder holds the very streams ``load_blocks`` would build.
The folder is assembled under a temporary name and renamed when complete: an interrupted
``prepare`` never leaves a folder that looks finished.

:class:`TokenBlocks` is the prepared split seen as ``[n_blocks, block_size + 1]`` blocks (the
same rows as :func:`load_blocks`) without loading it: rows are read from the memory-mapped shards
when indexed. :func:`load_blocks` returns one when given a prepared folder, so
``TrainConfig(data=DIR)`` and ``workbench train --data DIR`` train from it. A
:class:`~workbench.data.BlockLoader` over ``TokenBlocks`` draws each epoch's order from
:class:`FeistelPermutation`, a keyed bijection of ``range(n_blocks)`` computed on the fly, so
memory stays bounded whatever the corpus size; batches, resume and the split across ranks follow
the ``BlockLoader`` rules (a global batch is the same whatever the number of processes).

Example::

    >>> import tempfile, os
    >>> from workbench.data import load_blocks
    >>> from workbench.data.shards import prepare_shards, TokenBlocks
    >>> out = os.path.join(tempfile.mkdtemp(), "prepared")
    >>> docs = [f"document number {i}" for i in range(200)]
    >>> manifest = prepare_shards(docs, out, progress=False)
    >>> blocks = TokenBlocks(out, "train", block_size=16)
    >>> bool((blocks[:5] == load_blocks(docs, "train", block_size=16)[:5]).all())
    True
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import corpora
from .blocks import _stream_dtype
from ._cache import stable_hash
from .tokenizer import get_tokenizer

__all__ = ["prepare_shards", "read_manifest", "is_prepared", "TokenBlocks", "FeistelPermutation",
           "MANIFEST", "FORMAT"]

MANIFEST = "manifest.json"
FORMAT = "workbench-token-shards"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 28          # 256M tokens: 256 MB (bytes) or 512 MB (uint16) per shard
_MASK64 = (1 << 64) - 1


# ====================================================================== preparing
def _tokenize_batch(batch: dict, *, column: str, tokenizer, fixed_split: str | None, dtype: str,
                    paragraphs: bool = False) -> dict:
    """``datasets.map`` function: a batch of documents -> one packed blob per split, in order."""
    by_split: dict[str, list[str]] = {}
    for text in batch[column]:
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"text column {column!r} holds {type(text).__name__} values, not strings; "
                             "pass --text-column naming a string column")
        if paragraphs:                    # .txt paragraphs: newlines at either end are separators (as load_blocks)
            text = text.strip("\n")
        if not text:
            continue
        split = fixed_split or corpora.split_of(text)
        by_split.setdefault(split, []).append(text)
    out = {"split": [], "ids": [], "docs": []}
    for split, docs in by_split.items():
        ids = np.asarray(tokenizer.encode_documents(docs)).astype(dtype, copy=False)
        out["split"].append(split)
        out["ids"].append(ids.tobytes())
        out["docs"].append(len(docs))
    return out


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json",
                                                                 "dataset_dict.json"))


def _parts(data, text_column: str, cache: Path) -> tuple[list[tuple[str | None, Any]], str, str]:
    """``[(split or None for the hash rule, Dataset)]``, a label and a fingerprint of the source."""
    from workbench import hf_offline

    from .blocks import _VAL_SPLIT_NAMES, _import_datasets, data_files

    datasets = _import_datasets()
    if isinstance(data, str) and data in corpora.list_corpora():
        parts = [(s, datasets.Dataset.from_dict({text_column: corpora.load_corpus(data, s)})) for s in SPLITS]
        return parts, data, corpora.corpus_fingerprint(data)
    if isinstance(data, (list, tuple)):
        if not all(isinstance(d, str) for d in data):
            raise ValueError("a list given as data must hold strings (documents)")
        return ([(None, datasets.Dataset.from_dict({text_column: list(data)}))], "list",
                "list|" + stable_hash("\x00".join(data), 40))
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if _is_saved_dataset(path):
            with hf_offline():
                data = datasets.load_from_disk(str(path))
        else:
            files, builder, stats = data_files(path)
            kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
            with hf_offline():           # local files: never ask the Hub
                ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                           cache_dir=str(cache / "load"), **kwargs)
            return [(None, ds)], path.stem or path.name, f"files|{builder}|{text_column}|{stats}"
    if isinstance(data, datasets.DatasetDict):
        val_key = next((k for k in _VAL_SPLIT_NAMES if k in data), None)
        if "train" in data and val_key is not None:
            fp = "dsdict|" + "|".join(f"{k}:{data[k]._fingerprint}" for k in ("train", val_key))
            return [("train", data["train"]), ("val", data[val_key])], "datasetdict", fp
        if len(data) != 1:
            raise ValueError(f"DatasetDict splits {list(data)}: need 'train' plus one of "
                             f"{list(_VAL_SPLIT_NAMES)}, or a single split")
        data = data[next(iter(data))]
    if isinstance(data, datasets.Dataset):
        return [(None, data)], "dataset", f"dataset|{data._fingerprint}"
    raise ValueError(f"cannot prepare {type(data).__name__}; pass a corpus name {corpora.list_corpora()}, "
                     "a file or directory path, a saved datasets folder, a datasets.Dataset or a list of strings")


class _ShardWriter:
    """Appends one split's stream to ``{split}-NNNNN.bin`` files of at most ``shard_tokens`` tokens."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._f = None
        self._in_shard = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._in_shard = 0

    def _close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def write(self, ids: np.ndarray, docs: int) -> None:
        self.documents += docs
        while len(ids):
            if self._f is None or self._in_shard >= self.shard_tokens:
                self._close()
                self._open()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            self._f.write(ids[:take].tobytes())
            self._in_shard += take
            self.shards[-1]["tokens"] += take
            self.tokens += take
            ids = ids[take:]

    def finish(self) -> dict:
        self._close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


def prepare_shards(data, out: str | os.PathLike, *, tokenizer="byte", num_proc: int | None = None,
                   text_column: str = "text", shard_tokens: int = DEFAULT_SHARD_TOKENS,
                   batch_size: int = 1000, overwrite: bool = False, progress: bool = True) -> dict:
    """Tokenise ``data`` once into memory-mapped token shards in the folder ``out``; returns the manifest.

    ``tokenizer``: ``"byte"``, ``"bpe"``, a ``tokenizer.json`` path or a tokenizer object (as
    :func:`workbench.data.get_tokenizer`). ``num_proc``: tokenising processes (``None``: one per
    core). ``shard_tokens``: tokens per shard file. An existing prepared ``out`` is replaced only
    with ``overwrite=True``; any other existing non-empty folder is refused.

    Example::

        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "p")
        >>> m = prepare_shards(["a b c", "d e"] * 50, out, shard_tokens=64, progress=False)
        >>> m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"], len(m["splits"]["train"]["shards"]) > 1
        (500, True)
    """
    from tqdm.auto import tqdm

    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, (int, np.integer)) or shard_tokens < 2:
        raise ValueError(f"shard_tokens must be an integer >= 2, got {shard_tokens!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be an integer >= 1 or None (one per core), got {num_proc!r}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder to create")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise ValueError(f"--out {str(out)!r} exists and is not a prepared folder; give a new folder")
        if not overwrite:
            raise ValueError(f"{str(out)!r} already holds prepared shards; pass --overwrite to replace them")
    tok = get_tokenizer(tokenizer)
    dtype = np.dtype(_stream_dtype(tok.vocab_size))
    num_proc = num_proc or (os.cpu_count() or 1)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".cache").mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        parts, label, fingerprint = _parts(data, text_column, tmp / ".cache")
        paragraphs = fingerprint.startswith("files|text|")     # .txt: one document per paragraph
        writers = {s: _ShardWriter(tmp, s, dtype, int(shard_tokens)) for s in SPLITS}
        for i, (fixed, ds) in enumerate(parts):
            if text_column not in ds.column_names:
                raise ValueError(f"the data has no column {text_column!r}; columns present: "
                                 f"{list(ds.column_names)}; pass --text-column <one of them>")
            mapped = ds.map(_tokenize_batch, batched=True, batch_size=batch_size,
                            num_proc=min(num_proc, max(1, len(ds) // batch_size)) if len(ds) else None,
                            remove_columns=ds.column_names, cache_file_name=str(tmp / ".cache" / f"tok-{i}.arrow"),
                            fn_kwargs={"column": text_column, "tokenizer": tok, "fixed_split": fixed,
                                       "dtype": dtype.str, "paragraphs": paragraphs}, desc="tokenizing")
            bar = tqdm(total=len(mapped), desc="writing shards", unit="blob", disable=not progress)
            for rows in mapped.iter(batch_size=64):
                for split, blob, docs in zip(rows["split"], rows["ids"], rows["docs"]):
                    writers[split].write(np.frombuffer(blob, dtype=dtype), docs)
                bar.update(len(rows["split"]))
            bar.close()
            del mapped
        manifest = {
            "format": FORMAT, "version": VERSION, "source": label, "fingerprint": stable_hash(fingerprint, 40),
            "tokenizer": getattr(tok, "name", None), "vocab_size": int(tok.vocab_size), "eos_id": int(tok.eos_id),
            "dtype": dtype.name, "text_column": text_column,
            "splits": {s: w.finish() for s, w in writers.items()},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if manifest["splits"]["train"]["tokens"] < 2:
            raise ValueError("the train split got no tokens: the data holds no non-empty documents")
        if hasattr(tok, "save"):
            tok.save(tmp / "tokenizer.json")
            manifest["tokenizer_file"] = "tokenizer.json"
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        with open(tmp / MANIFEST, "w") as f:          # written last: a folder without it is unfinished
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ====================================================================== reading
def is_prepared(path) -> bool:
    """True when ``path`` is a folder written by :func:`prepare_shards`."""
    try:
        return isinstance(path, (str, os.PathLike)) and (Path(path).expanduser() / MANIFEST).is_file()
    except OSError:
        return False


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a prepared folder, checked against its shard files."""
    folder = Path(path).expanduser()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(f"{str(folder)!r} is not a prepared folder (no {MANIFEST}); make one with "
                         "`workbench data prepare DATA --out DIR`") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(folder / MANIFEST)!r} is unreadable ({e}); prepare the data again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{str(folder / MANIFEST)!r} is not a {FORMAT} manifest; prepare the data again")
    dtype = np.dtype(manifest["dtype"])
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            name = shard["file"]
            if os.path.basename(name) != name or name.startswith("."):
                raise ValueError(f"manifest of {str(folder)!r} names a shard outside its folder ({name!r}); refused")
            size = (folder / name).stat().st_size if (folder / name).is_file() else -1
            if size != shard["tokens"] * dtype.itemsize:
                raise ValueError(f"shard {str(folder / name)!r} is missing or has {size} bytes, expected "
                                 f"{shard['tokens'] * dtype.itemsize}; prepare the data again")
    return manifest


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed bijection of ``range(n)``, evaluated on demand (no ``n``-sized array).

    A 4-round Feistel network on ``2h`` bits (``4**h >= n``), SplitMix64 as round function,
    with cycle-walking for values ``>= n``. ``perm[i:j]`` returns a ``LongTensor``.

    Example::

        >>> p = FeistelPermutation(10, seed=0, epoch=0)
        >>> sorted(p[0:10].tolist()) == list(range(10))
        True
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: int, epoch: int):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        base = (int(seed) * 1_000_003 + int(epoch)) & _MASK64
        self.keys = [_splitmix64(np.array([(base + 0x632BE59BD9B4E019 * (k + 1)) & _MASK64], np.uint64))[0]
                     for k in range(self.ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def _once(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_splitmix64(right ^ key) & self.mask)
        return (left << h) | right

    def apply(self, idx) -> np.ndarray:
        x = np.asarray(idx, dtype=np.uint64)
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"index out of range for a permutation of {self.n}")
        y = self._once(x)
        bad = y >= np.uint64(self.n)
        while bad.any():                 # cycle-walking: stays a bijection of range(n)
            y[bad] = self._once(y[bad])
            bad = y >= np.uint64(self.n)
        return y.astype(np.int64)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            idx = np.arange(*key.indices(self.n), dtype=np.int64)
        else:
            idx = np.asarray(key, dtype=np.int64).reshape(-1)
        return torch.from_numpy(self.apply(idx))


class TokenBlocks:
    """A prepared split as ``[n_blocks, block_size + 1]`` blocks, read from memory-mapped shards.

    Row ``i`` is ``stream[i*block_size : i*block_size + block_size + 1]`` (rows overlap by one
    token), the same as :func:`workbench.data.load_blocks`. Indexing with an int, a slice, or a
    tensor/array of row indices returns a ``LongTensor``; nothing else is loaded.

    Example::

        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "p")
        >>> _ = prepare_shards(["hello world"] * 40, out, progress=False)
        >>> b = TokenBlocks(out, "train", block_size=8)
        >>> b.shape[1], b[0].shape, b[[0, 2]].shape
        (9, torch.Size([9]), torch.Size([2, 9]))
    """

    dtype = torch.int64

    def __init__(self, path: str | os.PathLike, split: str = "train", block_size: int = 128,
                 max_tokens: int | None = None):
        split = corpora.normalize_split(split)
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path)
        self.split = split
        self.block_size = int(block_size)
        dtype = np.dtype(self.manifest["dtype"])
        shards = [s for s in self.manifest["splits"][split]["shards"] if s["tokens"]]
        self._maps = [np.memmap(self.path / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
                      for s in shards]
        self._starts = np.cumsum([0] + [s["tokens"] for s in shards])
        total = int(self._starts[-1]) if max_tokens is None else min(int(self._starts[-1]), int(max_tokens))
        n = (total - 1) // self.block_size
        if n < 1:
            raise ValueError(f"too little data for one block: the {split!r} split of {str(self.path)!r} has "
                             f"{total} tokens but block_size={block_size} needs {block_size + 1}; lower "
                             "block_size or prepare more data")
        self.shape = torch.Size([n, self.block_size + 1])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.tokenizer = self.manifest.get("tokenizer")

    def dim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        start, stop = i * self.block_size, i * self.block_size + self.block_size + 1
        k = int(np.searchsorted(self._starts, start, side="right") - 1)
        if stop <= self._starts[k + 1]:
            lo = start - self._starts[k]
            return np.asarray(self._maps[k][lo:lo + self.block_size + 1])
        parts = []
        while start < stop:                      # a row that straddles shard files
            k = int(np.searchsorted(self._starts, start, side="right") - 1)
            end = min(stop, int(self._starts[k + 1]))
            parts.append(np.asarray(self._maps[k][start - self._starts[k]:end - self._starts[k]]))
            start = end
        return np.concatenate(parts)

    def __getitem__(self, key) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"block {key} out of range for {n} blocks")
            return torch.from_numpy(self._row(i).astype(np.int64))
        if isinstance(key, slice):
            idx = range(*key.indices(n))
        else:
            idx = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"block index out of range for {n} blocks")
            idx = np.where(idx < 0, idx + n, idx)
        rows = [self._row(int(i)) for i in idx]
        if not rows:
            return torch.zeros(0, self.block_size + 1, dtype=torch.int64)
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def permutation(self, seed: int, epoch: int, shuffle: bool = True):
        """The order of the rows in ``epoch`` for a :class:`BlockLoader` (lazy; see module docstring)."""
        if not shuffle:
            return _Identity(self.shape[0])
        return FeistelPermutation(self.shape[0], seed, epoch)

    def __repr__(self) -> str:
        return (f"TokenBlocks({str(self.path)!r}, split={self.split!r}, shape={tuple(self.shape)}, "
                f"tokenizer={self.tokenizer!r})")


class _Identity:
    def __init__(self, n: int):
        self.n = n

    def __getitem__(self, key) -> torch.Tensor:
        return torch.arange(*key.indices(self.n)) if isinstance(key, slice) else torch.as_tensor(key)
