"""Reading weight files safely: checked safetensors headers, sharded indexes, weights-only torch files.

* :func:`read_safetensors_header` checks a ``.safetensors`` header before anything trusts it (at least
  8 bytes, a header length inside the file, every tensor with a known dtype, a shape and a byte range
  that fits the data) and raises ``ValueError`` naming the file otherwise.
* :func:`read_sharded_index` reads ``model.safetensors.index.json`` and refuses a ``weight_map`` entry
  that points outside the index's folder (``../../etc/passwd``, an absolute path).
* :func:`load_weights_only` is ``torch.load(weights_only=True)`` with one-line errors for a file that
  needs unpickling (refused: unpickling runs code from the file), is truncated or is not a torch file.

Example:
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": torch.zeros(2, 3)}, p)
    >>> header, data_start = read_safetensors_header(p)
    >>> header["w"]["dtype"], header["w"]["shape"]
    ('F32', [2, 3])
"""
from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from typing import Any

__all__ = ["read_safetensors_header", "read_sharded_index", "load_weights_only", "SAFETENSORS_DTYPES",
           "MAX_HEADER_BYTES"]

#: safetensors dtype -> (torch dtype name, bytes per element)
SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "F8_E8M0": ("float8_e8m0fnu", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8), "BOOL": ("bool", 1),
    "C64": ("complex64", 8),
}
#: the safetensors library's own limit on the JSON header (100 MB)
MAX_HEADER_BYTES = 100_000_000


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; it is not a valid safetensors file (truncated, corrupt or another "
                      "format) - re-save it with safetensors.torch.save_file / save_pretrained")


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors file, checked; ``header`` keeps ``__metadata__``.

    Raises ``ValueError`` (naming the file) for fewer than 8 bytes, a header length past the end of
    the file or over 100 MB, a header that is not a JSON object, or a tensor entry without a known
    ``dtype``, an integer ``shape`` or ``data_offsets`` matching its size inside the data section.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a .safetensors file; pass the file inside it")
    size = os.path.getsize(path)
    if size < 8:
        raise _bad(path, f"the file has {size} bytes, fewer than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise _bad(path, f"its header length {n} is larger than the file ({size} bytes)"
                       if n > size - 8 else f"its header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise _bad(path, "its __metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict):
            raise _bad(path, f"tensor {name!r} has no entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise _bad(path, f"tensor {name!r} has no dtype" if dtype is None else
                       f"tensor {name!r} has unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise _bad(path, f"tensor {name!r} has no valid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise _bad(path, f"tensor {name!r} has data_offsets {str(offsets)[:40]} outside the "
                       f"{data_len}-byte data section")
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]:
            raise _bad(path, f"tensor {name!r} has {offsets[1] - offsets[0]} bytes for shape {shape} {dtype}")
    return header, 8 + n


def read_sharded_index(index_path: str | os.PathLike) -> dict[str, str]:
    """``{tensor name: shard path}`` from a ``model.safetensors.index.json``, every shard inside its folder.

    Raises ``ValueError`` (naming the file) for invalid JSON, a missing ``weight_map`` or an entry
    that is not a plain relative path inside the index's folder.
    """
    index_path = os.fspath(index_path)
    folder = os.path.realpath(os.path.dirname(os.path.abspath(index_path)))
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{index_path}: not valid JSON; re-save the model with save_pretrained") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: has no weight_map (tensor name -> shard file); re-save the model "
                         "with save_pretrained")
    out = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"{index_path}: weight_map[{name!r}] is not a file name")
        full = os.path.realpath(os.path.join(folder, shard))
        if os.path.isabs(shard) or os.path.commonpath([folder, full]) != folder:
            raise ValueError(f"{index_path}: weight_map[{name!r}] = {shard[:80]!r} points outside the "
                             "model folder; refusing it (shards must be files next to the index)")
        out[str(name)] = full
    return out


def load_weights_only(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors naming the file.

    A file that needs full unpickling is refused (unpickling runs arbitrary code from the file);
    a truncated or garbage file gets a clear ``ValueError`` instead of torch's traceback.
    """
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a torch file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if mmap and "mmap" in str(exc):         # legacy (non-zip) torch.save format cannot be mapped
                return torch.load(path, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:   # a class/function reference: code would run on load
            raise ValueError(
                f"refusing to load {path!r}: it holds objects that only full unpickling could build, and "
                "unpickling runs arbitrary code from the file, so checkpoints are read only with "
                "torch.load(weights_only=True) (tensors, dicts, numbers). Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), path)) or as safetensors, from a source you trust.") from None
        raise ValueError(f"{path}: not a readable torch file (its pickle stream is invalid); it is truncated, "
                         "corrupt or not a torch.save file") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError, TypeError,
            KeyError, IndexError, struct.error, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not a readable torch file ({first[:120]}); it is truncated, corrupt or "
                         "not a torch.save file") from None
