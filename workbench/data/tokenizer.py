"""Tokenizers: byte-level (vocab 256, the default) and locally trained byte-level BPE.

Both have the same small interface: ``encode(text) -> list[int]``,
``encode_array(text) -> np.ndarray``, ``decode(ids) -> str``, ``vocab_size``, ``eos_id``
(the separator put after every document when packing) and ``name`` (a string that
identifies the exact vocabulary, used in cache keys).

:class:`ByteTokenizer` maps text to its UTF-8 bytes; ``eos_id`` is byte 0 (NUL, which
does not occur in ordinary text). :class:`BPETokenizer` is a Hugging Face ``tokenizers``
byte-level BPE trained on a corpus on this machine (nothing is downloaded) with
``<|endoftext|>`` as id 0. Trained tokenizers are cached as ``tokenizer.json`` files in
``<cache>/tokenizers/`` (cache root: ``cache_dir`` argument, else ``$WORKBENCH_CACHE``,
else ``~/.cache/workbench``), keyed by corpus, vocab size and training-text limit.

Example::

    >>> from workbench.data import get_tokenizer
    >>> tok = get_tokenizer("byte")
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode([104, 195, 169])
    'hé'
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._cache import atomic_write_bytes, cache_subdir, stable_hash

EOS_TOKEN = "<|endoftext|>"
DEFAULT_MAX_TRAIN_BYTES = 4_000_000


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``vocab_size == 256``, ``eos_id == 0``.

    A NUL character inside a document is encoded as byte 0 like the separator; ordinary
    text has none.

    Example::

        >>> tok = ByteTokenizer()
        >>> tok.encode_array("ab").tolist(), tok.decode([0xff, 97])
        ([97, 98], '\ufffda')
    """

    vocab_size = 256
    eos_id = 0
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="replace"))

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as a ``uint8`` array (no Python loop: fast for tens of MB)."""
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        """All ``docs`` packed into one stream, ``eos_id`` after each (``uint8`` array)."""
        if not docs:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(("\x00".join(docs) + "\x00").encode("utf-8", errors="replace"),
                             dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not hasattr(ids, "__array__") else ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("byte token ids must be in 0..255; got "
                             f"{int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class BPETokenizer:
    """A Hugging Face ``tokenizers`` byte-level BPE behind the same interface.

    Build one with :func:`get_tokenizer` (``"bpe"``) or from a ``tokenizer.json`` file
    with :meth:`from_file`. Decoding is lossless: ``decode(encode(s)) == s``.
    """

    def __init__(self, tokenizer, name: str):
        self._tok = tokenizer
        self.name = name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        eos = tokenizer.token_to_id(EOS_TOKEN)
        self.eos_id = int(eos) if eos is not None else self.vocab_size - 1

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file {str(path)!r} does not exist; pass the path of "
                             "a tokenizer.json written by the `tokenizers` library")
        raw = path.read_bytes()
        return cls(Tokenizer.from_str(raw.decode("utf-8")), f"bpe-{stable_hash(raw.decode('utf-8'))}")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def encode_documents(self, docs: Sequence[str], batch: int = 256, progress: bool = False) -> np.ndarray:
        """All ``docs`` packed into one ``int32`` stream, ``eos_id`` after each."""
        from tqdm.auto import tqdm

        parts = []
        starts = range(0, len(docs), batch)
        for i in tqdm(starts, desc="tokenizing", disable=not progress, leave=False):
            for enc in self._tok.encode_batch(list(docs[i:i + batch]), add_special_tokens=False):
                parts.append(np.asarray(enc.ids, dtype=np.int32))
                parts.append(np.asarray([self.eos_id], dtype=np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return self._tok.decode(ids, skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, self._tok.to_str().encode("utf-8"))

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def _training_sample(docs: Sequence[str], max_train_bytes: int) -> list[str]:
    """A prefix of ``docs`` holding about ``max_train_bytes`` UTF-8 bytes (last doc cut)."""
    out, total = [], 0
    for d in docs:
        n = len(d.encode("utf-8", errors="replace"))
        if total + n > max_train_bytes:
            rest = max_train_bytes - total
            if rest > 0:
                out.append(d.encode("utf-8", errors="replace")[:rest].decode("utf-8", errors="ignore"))
            break
        out.append(d)
        total += n
    return out


def train_bpe(docs: Sequence[str], vocab_size: int) -> "BPETokenizer":
    """Train a byte-level BPE with ``vocab_size`` entries (incl. ``<|endoftext|>``) on ``docs``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs "
                         "the 256 bytes, <|endoftext|> and at least one merge (use >= 258), "
                         "or use get_tokenizer('byte')")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(docs), trainer=trainer)
    return BPETokenizer(tok, f"bpe-{stable_hash(tok.to_str())}")


def get_tokenizer(kind="byte", corpus="stdlib", vocab_size: int = 4096,
                  max_train_bytes: int = DEFAULT_MAX_TRAIN_BYTES, cache_dir=None,
                  text_column: str = "text"):
    """A tokenizer: ``"byte"`` (default), ``"bpe"``, a ``tokenizer.json`` path, or a tokenizer.

    ``"bpe"`` trains (once; then loads from the cache) a byte-level BPE with
    ``vocab_size`` entries on the train split of ``corpus`` - a built-in corpus name or
    anything :func:`workbench.data.load_blocks` accepts (file, directory,
    ``datasets.Dataset``) - using at most ``max_train_bytes`` of its text (the corpus's
    documents come in a fixed pseudo-random order, so the prefix is a fair sample).
    Passing a tokenizer object returns it unchanged.

    Example::

        >>> from workbench.data import get_tokenizer
        >>> get_tokenizer("byte").vocab_size
        256
        >>> tok = get_tokenizer("bpe", corpus="docs", vocab_size=300,
        ...                     max_train_bytes=20_000)  # doctest: +SKIP
        >>> tok.decode(tok.encode("def f(): pass")) # doctest: +SKIP
        'def f(): pass'
    """
    if not isinstance(kind, (str, os.PathLike)):
        if all(hasattr(kind, a) for a in ("encode", "decode", "vocab_size", "eos_id")):
            return kind
        raise ValueError(f"tokenizer must be 'byte', 'bpe', a tokenizer.json path or a tokenizer "
                         f"object with encode/decode/vocab_size/eos_id; got {type(kind).__name__}")
    if kind == "byte":
        return ByteTokenizer()
    if kind != "bpe":
        if str(kind).endswith(".json"):
            return BPETokenizer.from_file(kind)
        raise ValueError(f"unknown tokenizer {kind!r}; use 'byte', 'bpe' or the path of a "
                         "tokenizer.json file")
    if max_train_bytes < 1:
        raise ValueError(f"max_train_bytes must be >= 1, got {max_train_bytes}")
    from .blocks import _source  # late import: blocks imports this module

    src = _source(corpus, text_column=text_column, cache_dir=cache_dir)
    key = f"{src.fingerprint}|v{vocab_size}|b{max_train_bytes}"
    label = src.label if len(src.label) <= 40 else src.label[:40]
    path = cache_subdir("tokenizers", cache_dir) / f"bpe-{label}-v{vocab_size}-{stable_hash(key, 12)}.json"
    if path.is_file():
        try:
            return BPETokenizer.from_file(path)
        except Exception:  # corrupt cache entry: retrain below
            pass
    sample = _training_sample(src.documents("train"), max_train_bytes)
    if not sample:
        raise ValueError(f"no training text in the train split of {src.label!r}")
    tok = train_bpe(sample, vocab_size)
    tok.save(path)
    meta = {"corpus": src.label, "fingerprint": src.fingerprint, "vocab_size": vocab_size,
            "max_train_bytes": max_train_bytes, "trained_on_bytes": sum(len(s.encode()) for s in sample)}
    atomic_write_bytes(path.with_suffix(".meta.json"), json.dumps(meta, indent=1).encode())
    return BPETokenizer.from_file(path)
