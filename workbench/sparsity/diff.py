"""Update sparsity between two checkpoints, streamed one tensor pair at a time.

``sparsity = 1 - ||theta1 - theta0||_0 / n`` where an entry counts as changed when
``|delta| > atol`` (strictly), or, for the relative variant, when ``|delta| > rtol * |w_base|``.
Much published update sparsity is bf16 rounding (updates below about ``|w| * 2**-8`` vanish), so every
result records the dtype, ``atol`` and (when given) the ``rtol`` variant next to the figure.

Checkpoints may be transformers model directories (sharded safetensors with
``model.safetensors.index.json``, or one ``model.safetensors``), single ``.safetensors`` files,
``.bin``/``.pt`` files (read only with ``torch.load(weights_only=True)``), ``nn.Module``s or state dicts.
Safetensors are read with plain file reads of each tensor's byte range, in chunks, aligned by name across
shards (no memory map, so the file pages stay in the OS page cache, not in the process); each shard's file
is closed as soon as the walk leaves it.

Tied tensors (an output head sharing the input embedding) are compared once. When the two checkpoints store
one under different names (``save_pretrained`` keeps ``model.embed_tokens.weight``, safetensors' ``save_model``
``lm_head.weight``), the diff pairs them from the ties it can see (safetensors metadata, shared storage in
state dicts and modules, a transformers ``config.json``); the row records the other name as ``tuned_name``
or ``base_name``.

Example:
    >>> import torch
    >>> base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 3)}
    >>> tuned = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 3)}
    >>> tuned["model.layers.0.mlp.up_proj.weight"][1, 2] = 0.5
    >>> d = diff_checkpoints(base, tuned)
    >>> d.overall
    {'sparsity': 0.9166666666666666, 'numel': 12, 'changed': 1}
    >>> t = d.tensors[0]
    >>> (t["layer"], t["type"], t["rank"], t["row_sparsity"], t["col_sparsity"])
    (0, 'up_proj', 1, 0.75, 0.6666666666666666)
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.files import atomic_write_text
from workbench.tensorfiles import load_weights_only, read_safetensors_header, read_sharded_index

__all__ = ["SparsityDiff", "diff_checkpoints", "overlap", "parse_name", "matrix_type", "snap_tolerance",
           "DEFAULT_MAX_RANK_NUMEL", "TOLERANCE_GRID", "GRID_TYPES", "CHUNK_ELEMENTS"]

DEFAULT_MAX_RANK_NUMEL = 1 << 22  # 2-D deltas above this many entries get rank None (SVD cost)
_FORMAT = "workbench.sparsity.diff/1"

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def parse_name(name: str) -> tuple[int | None, str]:
    """``(layer, module type)`` of a parameter name; layer is None outside the numbered blocks.

    >>> parse_name("model.layers.3.self_attn.q_proj.weight")
    (3, 'q_proj')
    >>> parse_name("model.norm.weight")
    (None, 'norm')
    """
    m = _LAYER_RE.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        kind = parts[-2]
        if parts[-1] == "bias":
            kind += ".bias"
    else:
        kind = parts[-1]
    return layer, kind


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------------------- readers
class _Reader:
    """Name -> (shape, dtype) metadata, flat element ranges on demand; ``group(name)`` orders the walk.

    ``read(name, start, stop)`` returns elements ``[start, stop)`` of the flattened tensor; the result may
    be a view of a buffer the reader reuses on its next call, so callers use it before reading again.
    """

    def __init__(self, meta: dict, describe: str, tied: dict | None = None):
        self.meta = meta
        self.describe = describe
        self.tied = dict(tied or {})  # alias -> the name this checkpoint stores the tied tensor under
        self.model_dir = None  # a transformers model directory, whose config can name more tied tensors

    def group(self, name: str) -> int:
        return 0

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        pass


class _DictReader(_Reader):
    def __init__(self, state: dict, describe: str):
        bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise ValueError(f"{describe}: entries {bad[:5]} are not tensors; pass a state dict that maps "
                             "parameter names to tensors (e.g. model.state_dict())")
        from workbench.models import tied_names

        tied = tied_names(state)  # a tied tensor is compared once, under its first name
        self.state = {k: v for k, v in state.items() if k not in tied}
        self._flat = (None, None)
        super().__init__({k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in self.state.items()}, describe,
                         tied)

    def read(self, name, start, stop):
        if self._flat[0] != name:
            self._flat = (name, self.state[name].detach().reshape(-1))  # a view unless non-contiguous
        return self._flat[1][start:stop]

    def release(self):
        self._flat = (None, None)


def _st_header(path: Path, with_metadata: bool = False):
    """The safetensors header (checked; without ``__metadata__``) and the byte offset where the data starts
    (and the ``__metadata__`` dict when ``with_metadata``)."""
    header, start = read_safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    return (header, start, metadata) if with_metadata else (header, start)


class _SafetensorsReader(_Reader):
    """One or more safetensors shards, read with plain file reads of each tensor's byte range.

    Nothing is memory-mapped: element ranges are read (``readinto``) into one reused buffer, so the
    process holds at most one chunk per checkpoint however large the files are (the OS page cache keeps
    the file data, outside the process's RSS). At most one shard file is open at a time.
    """

    def __init__(self, files: dict[str, Path], describe: str):
        self.files = files  # name -> shard path
        shards = sorted(set(files.values()))
        self._shard_idx = {p: i for i, p in enumerate(shards)}
        meta, self._where, tied = {}, {}, {}
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{describe}: shard {shard} listed in the index is missing")
            header, data_start, metadata = _st_header(shard, with_metadata=True)
            # safetensors' save_model (and workbench checkpoints) record each dropped tied name -> kept name
            tied.update({k: v for k, v in metadata.items() if v in files and k not in files})
            for name, info in header.items():
                if files.get(name) == shard:
                    dtype = _ST_DTYPES.get(info["dtype"], info["dtype"])
                    shape = tuple(info["shape"])
                    begin, end = info["data_offsets"]
                    tdtype = getattr(torch, dtype, None)
                    if not isinstance(tdtype, torch.dtype):
                        raise ValueError(f"{describe}: tensor {name!r} has dtype {info['dtype']}, which torch "
                                         "cannot read; convert the checkpoint to a float dtype")
                    elem = torch.empty((), dtype=tdtype).element_size()
                    if end - begin != math.prod(shape) * elem:
                        raise ValueError(f"{describe}: tensor {name!r} in {shard.name} has {end - begin} bytes "
                                         f"for shape {list(shape)} {dtype}; the file is corrupt, re-save it")
                    meta[name] = (shape, dtype)
                    self._where[name] = (data_start + begin, tdtype, elem)
        missing = sorted(set(files) - set(meta))
        if missing:
            raise ValueError(f"{describe}: tensors {missing[:5]} are in the index but not in their shard; "
                             "the checkpoint is incomplete, re-save it")
        super().__init__(meta, describe, tied)
        self._path = None
        self._handle = None
        self._buf = torch.empty(0, dtype=torch.uint8)
        self.opened = 0  # how many times a shard was opened (tests check the streaming)

    def group(self, name):
        return self._shard_idx[self.files[name]]

    def read(self, name, start, stop):
        path = self.files[name]
        if path != self._path:
            self.release()
            self._handle = open(path, "rb", buffering=0)
            self._path = path
            self.opened += 1
        offset, dtype, elem = self._where[name]
        nbytes = (stop - start) * elem
        if self._buf.numel() < nbytes:
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(self._buf.numpy())[:nbytes]
        self._handle.seek(offset + start * elem)
        got = 0
        while got < nbytes:
            n = self._handle.readinto(view[got:])
            if not n:
                raise ValueError(f"{self.describe}: {path} ends before the data of {name!r}; the file is "
                                 "truncated, re-save it")
            got += n
        return self._buf[:nbytes].view(dtype)

    def release(self):
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._path = None
        self._buf = torch.empty(0, dtype=torch.uint8)


def _torch_load(path: Path):
    return load_weights_only(path, mmap=True)    # refuses pickles that need code execution, one-line errors


def _state_from_obj(obj, describe: str) -> dict:
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    if not isinstance(obj, dict):
        raise ValueError(f"{describe}: holds a {type(obj).__name__}, not a state dict; save "
                         "model.state_dict() instead")
    return obj


def _open(src, role: str) -> _Reader:
    if isinstance(src, torch.nn.Module):
        return _DictReader(src.state_dict(), f"{role} (module {type(src).__name__})")
    if isinstance(src, dict):
        return _DictReader(src, f"{role} (state dict)")
    if not isinstance(src, (str, os.PathLike)):
        raise ValueError(f"{role} must be a model directory, a .safetensors/.bin/.pt file, an nn.Module or "
                         f"a state dict, got {type(src).__name__}")
    path = Path(src)
    describe = f"{role} {str(path)!r}"
    if path.is_dir():
        reader = _open_dir(path, describe)
        reader.model_dir = path
        return reader
    if not path.exists():
        raise FileNotFoundError(f"{describe} does not exist")
    if path.suffix == ".safetensors":
        return _st_single(path, describe)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _DictReader(_state_from_obj(_torch_load(path), describe), describe)
    raise ValueError(f"{describe}: unknown checkpoint type {path.suffix!r}; use a model directory, "
                     ".safetensors, .bin or .pt")


def _open_dir(path: Path, describe: str) -> _Reader:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_sharded_index(index)     # refuses shards outside the folder
        return _SafetensorsReader({k: Path(v) for k, v in weight_map.items()}, describe)
    single = path / "model.safetensors"
    if single.is_file():
        return _st_single(single, describe)
    for name in ("pytorch_model.bin", "model.pt"):
        if (path / name).is_file():
            return _DictReader(_state_from_obj(_torch_load(path / name), describe), describe)
    raise ValueError(f"{describe} holds no model.safetensors(.index.json) or pytorch_model.bin; "
                     "save the model there with model.save_pretrained(dir)")


def _config_tied(model_dir) -> dict:
    """Tied tensors of the transformers model whose ``config.json`` is in ``model_dir`` (built on the meta
    device, no weights); {} when there is no such config (a run directory's config.json is the run's)."""
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return {}
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or "model_type" not in config:
        return {}
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.models import tied_names

    try:
        cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, OSError, ImportError):  # not a causal LM transformers can build
        return {}
    return tied_names(model)


def _ties(reader: _Reader) -> dict:
    """alias -> kept name of a checkpoint's tied tensors: safetensors metadata (alias -> kept name), tensors
    sharing storage in state dicts and modules, and a transformers ``config.json`` next to the weights."""
    return {**_config_tied(reader.model_dir), **reader.tied}


def _tied_pairs(btied: dict, ttied: dict, only_b: list, only_t: list) -> list[tuple[str, str]]:
    """Pairs (base name, tuned name) of one tied tensor stored under different names by the two checkpoints
    (``btied``/``ttied``: their :func:`_ties`). A name pairs only when its tie group holds exactly one unmatched
    name on the other side."""
    if not (only_b and only_t):
        return []
    links = {**btied, **ttied}
    parent: dict = {}

    def root(n):
        while parent.get(n, n) != n:
            n = parent[n]
        return n

    for a, b in links.items():
        ra, rb_ = root(a), root(b)
        if ra != rb_:
            parent[ra] = rb_
    pairs = []
    for nb in only_b:
        cands = [nt for nt in only_t if root(nt) == root(nb)]  # disjoint lists: equal roots means tied
        if len(cands) == 1:
            pairs.append((nb, cands[0]))
    return pairs


def _st_single(path: Path, describe: str) -> _SafetensorsReader:
    return _SafetensorsReader({name: path for name in _st_header(path)[0]}, describe)


# ------------------------------------------------------------------------------------- statistics
_CELL_SHIFT = 15  # float32 bits >> 15: sign, exponent and the top 8 mantissa bits, 2**16 cells


def _make_grid() -> tuple:
    """``10**(k/8)`` for k = -80..8, each moved (by under 0.4%) to the largest float32 of its cell of the
    top 16 bits, so that ``x > edge`` is exactly ``cell(x) > cell(edge)`` for float32 ``x >= 0``."""
    out = []
    for k in range(-80, 9):
        c = int(np.array(10 ** (k / 8), dtype=np.float32).view(np.int32)) >> _CELL_SHIFT
        tops = [float(np.array((cc << _CELL_SHIFT) | ((1 << _CELL_SHIFT) - 1), dtype=np.int32).view(np.float32))
                for cc in (c - 1, c)]
        out.append(min(tops, key=lambda v: abs(math.log10(v) - k / 8)))
    return tuple(out)


#: Tolerance grid of the cached histograms: 8 log-spaced edges per decade from 1e-10 to 10 (``10**(k/8)``,
#: each within 0.4% of that: the largest float32 of its 16-bit cell, see ``_make_grid``; ``f"{e:.2g}"``
#: reads 1e-05, 1.3e-05, 1.8e-05, 2.4e-05, 3.2e-05, 4.2e-05, 5.6e-05, 7.5e-05, 0.0001, ...).
TOLERANCE_GRID: tuple = _make_grid()
_EDGE_CELLS = np.array([int(np.array(e, dtype=np.float32).view(np.int32)) >> _CELL_SHIFT for e in TOLERANCE_GRID])
_CELL_STARTS = np.concatenate([[0], _EDGE_CELLS + 1])  # np.add.reduceat boundaries: cells -> grid bins
CHUNK_ELEMENTS = 1 << 20  # elements per streamed chunk (4 MiB of float32 per checkpoint)
# Columns of SparsityDiff.grid, in order (other module types follow, sorted).
GRID_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norms", "embed")


def _pack(mask: torch.Tensor) -> bytes:
    return np.packbits(mask.reshape(-1).numpy()).tobytes()


def _unpack(data: bytes, shape) -> np.ndarray:
    numel = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel)
    return bits.astype(bool).reshape(shape)


def matrix_type(kind: str) -> str:
    """The :meth:`SparsityDiff.grid` column of a module type from :func:`parse_name`.

    >>> [matrix_type(k) for k in ("q_proj", "input_layernorm", "embed_tokens", "lm_head")]
    ['q_proj', 'norms', 'embed', 'lm_head']
    """
    base = kind[:-5] if kind.endswith(".bias") else kind
    if "norm" in base or base in ("ln_1", "ln_2", "ln_f"):
        return "norms" if base == kind else "norms.bias"
    if "embed" in base or base in ("wte", "wpe"):
        return "embed" if base == kind else "embed.bias"
    return kind


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


class _Acc:
    """Running per-tensor statistics over the streamed chunks of one tensor pair."""

    def __init__(self, shape, n_edges, keep_mask):
        self.shape = shape
        self.cols = shape[1] if len(shape) == 2 else None
        self.changed = 0
        self.changed_rtol = 0
        self.nan_changed = 0  # entries whose delta is NaN (a NaN in one checkpoint): changed at every tolerance
        self.zeros = 0
        self.abs_hist = np.zeros(n_edges + 1, dtype=np.int64)
        self.rel_hist = np.zeros(n_edges + 1, dtype=np.int64)
        self.delta_sq = 0.0
        self.base_sq = 0.0
        self.max_abs = 0.0
        self.row_changed = np.zeros(shape[0], dtype=np.int64) if self.cols is not None else None
        self.col_changed = np.zeros(self.cols, dtype=np.int64) if self.cols is not None else None
        self.mask_parts = [] if keep_mask else None
        self.dense = False  # a chunk of this tensor had >= 1/4 of its entries changed


_NAN_CELLS = (0x7F800000 >> _CELL_SHIFT) + 1  # cells above +inf's hold only (quiet) NaNs


def _hist(values: torch.Tensor, edges: torch.Tensor) -> tuple[np.ndarray, int]:
    """Counts of ``values >= 0`` (or NaN) per grid bin (bin i: ``edges[i-1] < v <= edges[i]``), NaNs in
    bin 0 (unchanged at every tolerance); also returns how many NaNs there were.

    float32: one ``bincount`` of the top 16 bits, summed per bin (exact: every edge is the top of a cell;
    far faster than a binary search per value); float64: ``bucketize`` against the same edges.
    """
    if values.dtype == torch.float32 and len(edges) == len(TOLERANCE_GRID):
        cells = torch.bincount(values.view(torch.int32) >> _CELL_SHIFT, minlength=1 << 16).numpy()
        nans = int(cells[_NAN_CELLS:].sum())
        hist = np.add.reduceat(cells[:_NAN_CELLS], _CELL_STARTS)
    else:
        isnan = torch.isnan(values)
        nans = int(isnan.sum())
        hist = torch.bincount(torch.bucketize(values.masked_fill(isnan, 0.0), edges),
                              minlength=len(edges) + 1).numpy()
    hist[0] += nans
    return hist, nans


def _chunk_stats(acc: _Acc, bf, tf, start, compute, atol, rtol, edges):
    """Fold the flat chunk pair ``bf``, ``tf`` (elements ``start..``) into ``acc``.

    Floating chunks first find the entries that differ at all (``tuned != base``, exact in the stored
    dtype); when fewer than a quarter differ only those are converted and examined, otherwise the whole
    chunk is (and the rest of that tensor's chunks skip the search). Both paths give the same numbers.
    """
    n = bf.numel()
    idx = None
    bits = _BITS.get(bf.dtype)
    if bits is not None and not acc.dense:
        # bit patterns differ wherever the values do (bit-equal NaNs and +0/-0 pairs have delta NaN/0, which
        # count as unchanged either way); numpy's flatnonzero is several times faster than torch.nonzero
        ne = np.not_equal(tf.view(bits).numpy(), bf.view(bits).numpy())
        if 4 * np.count_nonzero(ne) < n:
            found = np.flatnonzero(ne)
            idx = torch.from_numpy(found)
            bv, tv = bf[idx].to(compute), tf[idx].to(compute)
        else:
            acc.dense = True
    if idx is None:
        bv, tv = bf.to(compute), tf.to(compute)
    absd = (tv - bv).abs_()  # abs_ clears the sign bit of NaNs too
    # a NaN delta is a changed entry (NaN != NaN) at every tolerance, unless both stored values are the same
    # bits; its magnitude is left out of the max and the norms (set to 0 here, counted apart)
    nan_changed = None
    isnan = torch.isnan(absd)
    if bool(isnan.any()):
        if idx is None and bits is not None:
            isnan &= torch.from_numpy(np.not_equal(tf.view(bits).numpy(), bf.view(bits).numpy()))
        nan_changed = isnan
        absd.nan_to_num_(nan=0.0, posinf=math.inf)
    n_nan = int(nan_changed.sum()) if nan_changed is not None else 0
    acc.nan_changed += n_nan
    hist, _ = _hist(absd, edges)
    acc.zeros += n - int(np.count_nonzero(absd.numpy())) - n_nan  # numpy's counts are several times faster
    absb = bv.abs()
    rel = (absd / absb).abs_()  # 0/0 -> NaN (unchanged), x/0 -> inf (changed at every rtol); abs_: NaN sign
    rhist, _ = _hist(rel, edges)
    if idx is not None:  # the entries equal in both sit below every edge
        hist[0] += n - len(idx)
        rhist[0] += n - len(idx)
    if n_nan:  # NaN deltas: moved from "0" to "above every edge"
        if nan_changed is not None:
            rel[nan_changed] = 0.0
        hist[0] -= n_nan
        hist[-1] += n_nan
        rhist[0] -= n_nan
        rhist[-1] += n_nan
    acc.abs_hist += hist
    acc.rel_hist += rhist
    changed = absd > atol
    if n_nan:
        changed |= nan_changed
    ch = changed.numpy()
    acc.changed += int(np.count_nonzero(ch))
    if rtol is not None:
        changed_rtol = absd > rtol * absb
        if n_nan:
            changed_rtol |= nan_changed
        acc.changed_rtol += int(np.count_nonzero(changed_rtol.numpy()))
    if absd.numel():
        acc.max_abs = max(acc.max_abs, float(absd.max()))
        acc.delta_sq += float(torch.dot(absd, absd))
    full = bf if bf.dtype == compute else (bv if idx is None else bf.to(compute))
    base_sq = float(torch.dot(full, full))
    if math.isnan(base_sq):  # NaNs in the base are left out of its norm
        full = full.nan_to_num(nan=0.0)
        base_sq = float(torch.dot(full, full))
    acc.base_sq += base_sq
    if acc.cols is not None:
        if idx is None:  # chunks of 2-D tensors hold whole rows (see _tensor_stats)
            ch2 = ch.reshape(-1, acc.cols)
            r0 = start // acc.cols
            acc.row_changed[r0:r0 + ch2.shape[0]] += np.count_nonzero(ch2, axis=1)
            acc.col_changed += np.count_nonzero(ch2, axis=0)
        else:
            g = found[ch] + start
            acc.row_changed += np.bincount(g // acc.cols, minlength=acc.shape[0])
            acc.col_changed += np.bincount(g % acc.cols, minlength=acc.cols)
    if acc.mask_parts is not None:
        if idx is None:
            acc.mask_parts.append(ch)
        else:
            m = np.zeros(n, dtype=bool)
            m[found[ch]] = True
            acc.mask_parts.append(m)


def _tensor_stats(name, rb, rt, shape, atol, rtol, max_rank_numel, keep_mask, chunk=None, tname=None, bname=None):
    """Stream one tensor pair in chunks (``bname``/``tname``: its names in ``rb``/``rt`` when a tied tensor is
    stored under another name); returns (row dict, stats dict, packed mask or None)."""
    tname = name if tname is None else tname
    bname = name if bname is None else bname
    dtype = getattr(torch, rb.meta[bname][1])
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    numel = math.prod(shape)
    edges = torch.tensor(TOLERANCE_GRID, dtype=compute)
    acc = _Acc(shape, len(edges), keep_mask)
    want_svd = len(shape) == 2 and 0 < numel <= max_rank_numel
    chunk = CHUNK_ELEMENTS if chunk is None else chunk
    if len(shape) == 2 and shape[1]:  # whole rows, a multiple of 8 entries (keeps the packed mask aligned)
        rows = max(1, chunk // shape[1])
        step = shape[1] * (rows if shape[1] * rows % 8 == 0 else 8 * rows)
    else:
        step = max(8, chunk // 8 * 8)
    delta = torch.empty(numel, dtype=torch.float32) if want_svd else None
    for start in range(0, numel, step):
        stop = min(numel, start + step)
        bf, tf = rb.read(bname, start, stop), rt.read(tname, start, stop)
        _chunk_stats(acc, bf, tf, start, compute, atol, rtol, edges)
        if want_svd:
            delta[start:stop] = tf.to(compute) - bf.to(compute)
        del bf, tf
    if want_svd:
        delta = delta.reshape(shape)
    layer, kind = parse_name(name)
    base_norm, delta_norm = math.sqrt(acc.base_sq), math.sqrt(acc.delta_sq)
    row = {
        "name": name, "layer": layer, "type": kind, "dtype": _dtype_name(dtype),
        "shape": list(shape), "numel": numel, "changed": acc.changed,
        "sparsity": 1.0 - acc.changed / numel if numel else 1.0,
        "atol": atol, "rtol": rtol, "changed_rtol": None, "sparsity_rtol": None,
        "delta_norm": delta_norm, "base_norm": base_norm,
        "rel_update": delta_norm / base_norm if base_norm > 0 else None,
        "max_abs_delta": acc.max_abs, "nan_changed": acc.nan_changed,
        "row_sparsity": None, "col_sparsity": None,
        "rank": None, "rank_tol": None, "rank_max": None, "effective_rank": None,
    }
    if tname != name:
        row["tuned_name"] = tname  # the same tied tensor, stored under another name in the tuned checkpoint
    if bname != name:
        row["base_name"] = bname   # ... or in the base checkpoint
    if rtol is not None:
        row["changed_rtol"] = acc.changed_rtol
        row["sparsity_rtol"] = 1.0 - acc.changed_rtol / numel if numel else 1.0
    stats = {"zeros": acc.zeros, "abs_hist": acc.abs_hist, "rel_hist": acc.rel_hist,
             "row_changed": acc.row_changed, "col_changed": acc.col_changed, "svals": None}
    if len(shape) == 2 and numel:
        row["row_sparsity"] = int((acc.row_changed == 0).sum()) / shape[0]
        row["col_sparsity"] = int((acc.col_changed == 0).sum()) / shape[1]
        row["rank_max"] = min(shape)
        if delta is not None and not bool(torch.isfinite(delta).all()):
            delta = None     # NaN/inf entries: no rank (an SVD of them fails or means nothing)
        if delta is not None:
            s = torch.linalg.svdvals(delta)
            smax = float(s.max())
            tol = smax * max(shape) * torch.finfo(torch.float32).eps  # matrix_rank's default
            row["rank"] = int((s > tol).sum())
            row["rank_tol"] = tol
            total = float(s.sum())
            if total > 0:
                p = (s / total).double()
                p = p[p > 0]
                row["effective_rank"] = float(torch.exp(-(p * p.log()).sum()))
            else:
                row["effective_rank"] = 0.0
            stats["svals"] = s.numpy().astype(np.float32)
    mask = None
    if keep_mask:
        mask = np.packbits(np.concatenate(acc.mask_parts) if acc.mask_parts else
                           np.zeros(0, dtype=bool)).tobytes()
    return row, stats, mask


def _snap_to(value: float, what: str, edges=TOLERANCE_GRID) -> tuple[int, float]:
    """Index of the grid edge nearest ``value`` in log space (-1 for 0) and that edge."""
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating)) and value >= 0
                                       and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    if value == 0:
        return -1, 0.0
    logs = np.log10(np.asarray(edges))
    k = int(np.argmin(np.abs(logs - math.log10(value))))
    return k, float(edges[k])


def snap_tolerance(value: float) -> float:
    """The grid edge (:data:`TOLERANCE_GRID`) nearest ``value`` in log space; 0 stays 0.

    >>> [f"{snap_tolerance(x):.4e}" for x in (1e-5, 1.1e-5, 1.2e-5, 1e-12, 0)]
    ['1.0014e-05', '1.0014e-05', '1.3322e-05', '1.0004e-10', '0.0000e+00']
    """
    return _snap_to(value, "the tolerance")[1]


def _b64(arr, dtype: str) -> str:
    """base64 of the zlib-compressed little-endian bytes (row/column counts are mostly repeats)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(arr, dtype=dtype).tobytes())).decode("ascii")


def _unb64(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).copy()


def _hist_to_json(h: np.ndarray) -> list:
    nz = np.flatnonzero(h)
    return [[int(i), int(h[i])] for i in nz]  # sparse [bin, count] pairs


def _hist_from_json(pairs, n_bins: int) -> np.ndarray:
    h = np.zeros(n_bins, dtype=np.int64)
    for i, c in pairs:
        h[int(i)] = int(c)
    return h


def _stats_to_json(s: dict) -> dict:
    out = {"zeros": int(s["zeros"]), "abs_hist": _hist_to_json(s["abs_hist"]),
           "rel_hist": _hist_to_json(s["rel_hist"])}
    for key, dt in (("row_changed", "<u4"), ("col_changed", "<u4"), ("svals", "<f4")):
        out[key] = None if s[key] is None else _b64(s[key], dt)
    return out


def _stats_from_json(d: dict, n_bins: int) -> dict:
    out = {"zeros": int(d["zeros"]), "abs_hist": _hist_from_json(d["abs_hist"], n_bins),
           "rel_hist": _hist_from_json(d["rel_hist"], n_bins)}
    for key, dt in (("row_changed", "<u4"), ("col_changed", "<u4"), ("svals", "<f4")):
        out[key] = None if d.get(key) is None else _unb64(d[key], dt).astype(
            np.float32 if key == "svals" else np.int64)
    return out


class SparsityDiff:
    """The result of :func:`diff_checkpoints`: per-tensor rows, overall figures and optional masks.

    ``tensors``: list of dicts (name, layer, type, dtype, shape, numel, changed, sparsity, changed_rtol,
    sparsity_rtol, delta_norm, base_norm, rel_update, row_sparsity, col_sparsity, rank, rank_tol,
    rank_max, effective_rank, ...). ``overall``: ``{"sparsity", "numel", "changed"}`` at ``atol``;
    ``overall_rtol`` the same at ``rtol`` (None without it). ``masks``: name -> bit-packed bytes of the
    changed-at-atol mask (only with ``keep_masks=True``); :meth:`mask` unpacks one.

    Cached statistics for re-thresholding without re-reading the checkpoints, ``stats[name]``: ``zeros``
    (entries with ``delta == 0``; NaN deltas count here too), ``abs_hist``/``rel_hist`` (counts of
    ``|delta|`` and ``|delta| / |base|`` per bin of :data:`TOLERANCE_GRID` ``e``: bin 0 holds values
    ``<= e[0]`` (zeros included), bin ``i`` values in ``(e[i-1], e[i]]``, the last bin values ``> e[-1]``),
    ``row_changed``/``col_changed`` (changed entries per row / column at the diff's ``atol``, 2-D only) and
    ``svals`` (singular values of the float32 delta, 2-D tensors up to ``max_rank_numel`` entries, else
    None). :meth:`sparsity_at`, :meth:`grid` and :meth:`detail` read them.

    >>> import torch
    >>> d = diff_checkpoints({"w": torch.zeros(3)}, {"w": torch.tensor([0., 1., 0.])}, keep_masks=True)
    >>> d.mask("w").tolist()
    [False, True, False]
    """

    def __init__(self, tensors: list[dict], atol: float, rtol: float | None, masks: dict | None = None,
                 skipped: list[str] | None = None, meta: dict | None = None, stats: dict | None = None,
                 grid_edges=TOLERANCE_GRID):
        self.tensors = tensors
        self.stats = stats or {}
        self.grid_edges = tuple(float(e) for e in grid_edges)
        self.atol = atol
        self.rtol = rtol
        self.masks = masks
        self.skipped = skipped or []
        self.meta = meta or {}
        numel = sum(t["numel"] for t in tensors)
        changed = sum(t["changed"] for t in tensors)
        self.overall = {"sparsity": 1.0 - changed / numel if numel else 1.0, "numel": numel,
                        "changed": changed}
        self.overall_rtol = None
        if rtol is not None:
            cr = sum(t["changed_rtol"] for t in tensors)
            self.overall_rtol = {"sparsity": 1.0 - cr / numel if numel else 1.0, "numel": numel,
                                 "changed": cr}

    def __repr__(self):
        o = self.overall
        tol = f"atol={self.atol:g}" + (f", rtol={self.rtol:g}" if self.rtol is not None else "")
        return (f"SparsityDiff({len(self.tensors)} tensors, {o['numel']} entries, "
                f"sparsity {o['sparsity']:.4f} at {tol})")

    def mask(self, name: str) -> np.ndarray:
        """The boolean changed-entry mask of tensor ``name`` (needs ``keep_masks=True``)."""
        if self.masks is None:
            raise ValueError("this diff holds no masks; run diff_checkpoints(..., keep_masks=True) "
                             "(CLI: --masks)")
        shapes = {t["name"]: t["shape"] for t in self.tensors}
        if name not in shapes:
            raise ValueError(f"no tensor {name!r} in this diff; names are e.g. {list(shapes)[:5]}")
        return _unpack(self.masks[name], shapes[name])

    def to_frame(self):
        """The per-tensor rows as a pandas DataFrame (one row per tensor)."""
        import pandas as pd

        return pd.DataFrame(self.tensors)

    def summary_by(self, key: str = "type"):
        """Aggregate per ``"layer"`` (non-layer tensors under ``"other"``) or per module ``"type"``.

        Columns: tensors, numel, changed, sparsity (and sparsity_rtol), delta_norm (root of the summed
        squares), mean rel_update, mean rank / rank_max over tensors with a rank.
        """
        import pandas as pd

        if key not in ("layer", "type"):
            raise ValueError(f"summary_by takes 'layer' or 'type', got {key!r}")
        groups: dict = {}
        for t in self.tensors:
            g = t[key] if t[key] is not None else "other"
            groups.setdefault(g, []).append(t)
        order = sorted(groups, key=lambda g: (isinstance(g, str), g if isinstance(g, int) else 0, str(g)))
        rows = []
        for g in order:
            ts = groups[g]
            numel = sum(t["numel"] for t in ts)
            changed = sum(t["changed"] for t in ts)
            ranked = [t["rank"] / t["rank_max"] for t in ts if t["rank"] is not None and t["rank_max"]]
            rel = [t["rel_update"] for t in ts if t["rel_update"] is not None]
            row = {key: g, "tensors": len(ts), "numel": numel, "changed": changed,
                   "sparsity": 1.0 - changed / numel if numel else 1.0}
            if self.rtol is not None:
                cr = sum(t["changed_rtol"] for t in ts)
                row["sparsity_rtol"] = 1.0 - cr / numel if numel else 1.0
            row["delta_norm"] = math.sqrt(sum(t["delta_norm"] ** 2 for t in ts))
            row["rel_update"] = float(np.mean(rel)) if rel else None
            row["rank_frac"] = float(np.mean(ranked)) if ranked else None
            rows.append(row)
        return pd.DataFrame(rows).set_index(key)

    # ------------------------------------------------------------------ re-thresholding from stats
    def _need_stats(self):
        if not self.stats:
            raise ValueError("this diff holds no cached statistics (it was saved by an older version); "
                             "re-run diff_checkpoints (CLI: workbench sparsity diff ... --json OUT.json)")

    def _changed_at(self, atol, rtol) -> tuple[dict, str, float]:
        """name -> changed count at the (snapped) tolerance; also which one and the edge used."""
        self._need_stats()
        if atol is not None and rtol is not None:
            raise ValueError("pass atol or rtol, not both: the cached histograms hold each criterion alone")
        if atol is None and rtol is None:
            atol = self.atol
        if atol is not None and float(atol) == self.atol:  # the diff's own tolerance: the exact counts
            return {t["name"]: t["changed"] for t in self.tensors}, "atol", self.atol
        if rtol is not None and self.rtol is not None and float(rtol) == self.rtol:
            return {t["name"]: t["changed_rtol"] for t in self.tensors}, "rtol", self.rtol
        which, value = ("atol", atol) if atol is not None else ("rtol", rtol)
        k, edge = _snap_to(value, which, self.grid_edges)
        key = "abs_hist" if which == "atol" else "rel_hist"
        out = {}
        for t in self.tensors:
            s = self.stats[t["name"]]
            if k < 0:  # tolerance 0: every nonzero delta is a change
                out[t["name"]] = t["numel"] - s["zeros"]
            else:
                out[t["name"]] = int(s[key][k + 1:].sum())
        return out, which, edge

    def sparsity_at(self, atol: float | None = None, rtol: float | None = None) -> dict:
        """Per-tensor and overall sparsity at another tolerance, from the cached histograms.

        Give ``atol`` (changed when ``|delta| > atol``) or ``rtol`` (changed when ``|delta| / |base| >
        rtol``), neither for the diff's own ``atol``. The diff's own ``atol``/``rtol`` give its exact counts;
        any other value is snapped to the nearest edge of :data:`TOLERANCE_GRID` in log space (0 stays 0,
        values beyond the ends go to the end edges; the edges are ``10**(k/8)`` within 0.4%, e.g. the one
        shown as 1e-05 is 1.0013579e-05) and the result is exact for that edge, compared in the diff's compute
        dtype (float32, float64 for float64 checkpoints; the relative ratio ``|delta| / |base|`` is one
        rounded division, so an entry within a rounding error of ``rtol * |base|`` may fall on either side).
        :func:`snap_tolerance` shows the edge. Returns ``{name: sparsity, ..., "overall": sparsity}``.

        >>> import torch
        >>> d = diff_checkpoints({"w": torch.zeros(4)}, {"w": torch.tensor([0., 1e-6, 1e-4, 1e-2])})
        >>> d.sparsity_at(atol=1e-5)["w"], d.sparsity_at(atol=1e-3)["w"], d.sparsity_at(atol=0)["w"]
        (0.5, 0.75, 0.25)
        """
        changed, _, _ = self._changed_at(atol, rtol)
        out = {t["name"]: 1.0 - changed[t["name"]] / t["numel"] if t["numel"] else 1.0 for t in self.tensors}
        numel = self.overall["numel"]
        out["overall"] = 1.0 - sum(changed.values()) / numel if numel else 1.0
        return out

    def cells(self) -> dict:
        """``(layer, column) -> [tensor names]`` of :meth:`grid` (layer ``"other"`` outside the blocks)."""
        out: dict = {}
        for t in self.tensors:
            layer = t["layer"] if t["layer"] is not None else "other"
            out.setdefault((layer, matrix_type(t["type"])), []).append(t["name"])
        return out

    def grid(self, atol: float | None = None, rtol: float | None = None):
        """Sparsity per layer (rows; ``"other"`` last for tensors outside the blocks) x matrix type (columns).

        Columns in order q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, norms, embed, then
        any other module type (see :func:`matrix_type`); a cell pools the changed entries of its tensors
        over their entries; NaN where a layer has no such tensor. Tolerances as in :meth:`sparsity_at`.

        >>> import torch
        >>> z = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2), "model.norm.weight": torch.ones(2)}
        >>> t = {"model.layers.0.self_attn.q_proj.weight": torch.eye(2), "model.norm.weight": torch.ones(2)}
        >>> float(diff_checkpoints(z, t).grid().loc[0, "q_proj"])
        0.5
        """
        import pandas as pd

        changed, _, _ = self._changed_at(atol, rtol)
        numel = {t["name"]: t["numel"] for t in self.tensors}
        cells = self.cells()
        layers = sorted({k[0] for k in cells if k[0] != "other"}) + \
            (["other"] if any(k[0] == "other" for k in cells) else [])
        present = {k[1] for k in cells}
        cols = [c for c in GRID_TYPES if c in present] + sorted(present - set(GRID_TYPES))
        frame = pd.DataFrame(np.nan, index=pd.Index(layers, name="layer", dtype=object), columns=cols)
        for (layer, col), names in cells.items():
            n = sum(numel[x] for x in names)
            frame.loc[layer, col] = 1.0 - sum(changed[x] for x in names) / n if n else 1.0
        return frame

    def detail(self, name: str, atol: float | None = None, rtol: float | None = None) -> dict:
        """Drill-down data of one tensor at a tolerance (``atol`` or ``rtol``, snapped as in :meth:`sparsity_at`;
        neither: the diff's ``atol``): its row, ``sparsity`` and ``tolerance`` (``{"atol": edge}`` or
        ``{"rtol": edge}``), per-row/column changed counts and the fraction of unchanged entries per row/column
        (None for non-2-D tensors) and the singular values of its update (None when not computed).

        Row/column counts are cached at the diff's ``atol``; at another ``atol`` they are recounted from the
        two checkpoints when the diff was made from files that are still there and unchanged (one tensor pair
        is read), else, and for ``rtol``, they stay at the diff's ``atol``. ``rows_atol`` says which ``atol``
        they are at.

        >>> import torch
        >>> d = diff_checkpoints({"w": torch.zeros(2, 3)}, {"w": torch.tensor([[0., 1., 1.], [0., 0., 0.]])})
        >>> x = d.detail("w")
        >>> x["row_changed"].tolist(), x["col_sparsity"].tolist(), [round(float(v), 4) for v in x["svals"]]
        ([2, 0], [1.0, 0.5, 0.5], [1.4142, 0.0])
        >>> x = d.detail("w", atol=3)              # nothing moved by more than 3 (in-memory: rows stay at 1e-05)
        >>> x["sparsity"], x["tolerance"], x["rows_atol"], x["row_changed"].tolist()
        (1.0, {'atol': 3.164062261581421}, 1e-05, [2, 0])
        """
        self._need_stats()
        rows = {t["name"]: t for t in self.tensors}
        if name not in rows:
            raise ValueError(f"no tensor {name!r} in this diff; names are e.g. {list(rows)[:5]}")
        t, s = rows[name], self.stats[name]
        changed, which, edge = self._changed_at(atol, rtol)
        row_changed, col_changed, rows_atol = s["row_changed"], s["col_changed"], self.atol
        if which == "atol" and edge != self.atol and row_changed is not None:
            recount = self._recount_rows(t, edge, changed[name])
            if recount is not None:
                row_changed, col_changed, rows_atol = recount[0], recount[1], edge
        out = {"row": t, "sparsity": 1.0 - changed[name] / t["numel"] if t["numel"] else 1.0,
               "tolerance": {which: edge}, "rows_atol": rows_atol, "row_changed": row_changed,
               "col_changed": col_changed, "row_sparsity": None, "col_sparsity": None, "svals": s["svals"]}
        if row_changed is not None:
            out["row_sparsity"] = 1.0 - row_changed / t["shape"][1]
            out["col_sparsity"] = 1.0 - col_changed / t["shape"][0]
        return out

    def _recount_rows(self, t: dict, atol: float, expected: int):
        """Per-row/column changed counts of tensor row ``t`` at ``atol``, re-read from the diff's checkpoint
        files; None when they are not files any more, or no longer hold what was diffed."""
        base, tuned = self.meta.get("base"), self.meta.get("tuned")
        if not (isinstance(base, str) and isinstance(tuned, str) and os.path.exists(base) and os.path.exists(tuned)):
            return None
        name, shape = t["name"], tuple(t["shape"])
        bname, tname = t.get("base_name", name), t.get("tuned_name", name)
        try:
            rb, rt = _open(base, "base"), _open(tuned, "tuned")
        except (ValueError, OSError):
            return None
        try:
            if rb.meta.get(bname) != (shape, t["dtype"]) or rt.meta.get(tname) != (shape, t["dtype"]):
                return None
            _, st, _ = _tensor_stats(name, rb, rt, shape, float(atol), None, 0, False, tname=tname, bname=bname)
        finally:
            rb.release()
            rt.release()
        if int(st["row_changed"].sum()) != expected:  # the files changed since the diff was made
            return None
        return st["row_changed"], st["col_changed"]

    def to_dict(self) -> dict:
        out = {"format": _FORMAT, "overall": dict(self.overall), "tensors": self.tensors,
               "atol": self.atol, "rtol": self.rtol, "overall_rtol": self.overall_rtol,
               "skipped": self.skipped, **self.meta}
        if self.stats:
            out["grid_edges"] = list(self.grid_edges)
            out["stats"] = {k: _stats_to_json(v) for k, v in self.stats.items()}
        if self.masks is not None:
            out["masks"] = {k: base64.b64encode(v).decode("ascii") for k, v in self.masks.items()}
        return out

    def to_json(self, path) -> None:
        """Write the diff (with masks, base64 of numpy.packbits, when kept) to ``path`` atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def load(cls, path) -> "SparsityDiff":
        """Read a diff written by :meth:`to_json`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or "tensors" not in data or "overall" not in data:
            raise ValueError(f"{str(path)!r} is not a sparsity diff (no 'overall'/'tensors'); write one "
                             "with SparsityDiff.to_json or `workbench sparsity diff --json`")
        masks = data.get("masks")
        if masks is not None:
            masks = {k: base64.b64decode(v) for k, v in masks.items()}
        meta = {k: data[k] for k in ("base", "tuned") if k in data}
        edges = data.get("grid_edges", TOLERANCE_GRID)
        stats = {k: _stats_from_json(v, len(edges) + 1) for k, v in (data.get("stats") or {}).items()}
        return cls(data["tensors"], data.get("atol", 1e-5), data.get("rtol"), masks,
                   data.get("skipped"), meta, stats, edges)


# ------------------------------------------------------------------------------------------ diff
def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return type(src).__name__


def diff_checkpoints(base, tuned, atol: float = 1e-5, rtol: float | None = None, intersect: bool = False,
                     keep_masks: bool = False, max_rank_numel: int = DEFAULT_MAX_RANK_NUMEL,
                     progress: bool | None = None) -> SparsityDiff:
    """Compare two checkpoints tensor by tensor; see the module docstring for what they may be.

    An entry is changed when ``|tuned - base| > atol`` (strictly), and for ``sparsity_rtol`` when
    ``|tuned - base| > rtol * |base|``. Names, shapes and dtypes must match (ValueError listing the
    differences); ``intersect=True`` compares only the names in both with equal shape and dtype and lists
    the rest in ``.skipped``. 2-D tensors up to ``max_rank_numel`` entries get the rank of the delta
    (float32, matrix_rank's default tolerance, recorded as ``rank_tol``) and the effective rank
    ``exp(entropy of s / sum(s))``; larger ones get None.

    Tensors are streamed in chunks of about :data:`CHUNK_ELEMENTS` entries (whole rows for 2-D tensors),
    safetensors read with plain file reads of each tensor's byte range (no memory map), so memory stays
    near one chunk per checkpoint plus the largest delta that gets an SVD. Every tensor also caches
    the statistics that :meth:`SparsityDiff.sparsity_at` and :meth:`SparsityDiff.grid` re-threshold
    from. ``progress``: a tqdm bar (default: only above 2**27 entries).
    """
    if not (isinstance(atol, (int, float)) and atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be None or a finite number >= 0, got {rtol!r}")
    rb, rt = _open(base, "base"), _open(tuned, "tuned")
    only_b = sorted(set(rb.meta) - set(rt.meta))
    only_t = sorted(set(rt.meta) - set(rb.meta))
    common = set(rb.meta) & set(rt.meta)
    pairs = {n: (n, n) for n in common}   # row name -> (name in base, name in tuned)
    btied, ttied = (_ties(rb), _ties(rt)) if (only_b or only_t) else ({}, {})
    for nb, nt in _tied_pairs(btied, ttied, only_b, only_t):  # one tied tensor, kept under another name
        only_b.remove(nb)
        only_t.remove(nt)
        pairs[nb] = (nb, nt)
    # a tensor tied on one side and stored twice on the other (e.g. a fine-tune that untied its head)
    for nt in [n for n in only_t if btied.get(n) in rb.meta]:
        only_t.remove(nt)
        pairs[nt] = (btied[nt], nt)
    for nb in [n for n in only_b if ttied.get(n) in rt.meta]:
        only_b.remove(nb)
        pairs[nb] = (nb, ttied[nb])
    bad = sorted(n for n, (b, t) in pairs.items() if rb.meta[b] != rt.meta[t])
    skipped = only_b + only_t + bad
    if skipped and not intersect:
        lines = []
        if only_b:
            lines.append(f"only in base ({len(only_b)}): {only_b[:10]}")
        if only_t:
            lines.append(f"only in tuned ({len(only_t)}): {only_t[:10]}")
        for n in bad[:10]:
            (sb, db), (st, dt) = rb.meta[pairs[n][0]], rt.meta[pairs[n][1]]
            lines.append(f"{n}: base {db}{list(sb)} vs tuned {dt}{list(st)}")
        raise ValueError("the checkpoints do not line up:\n  " + "\n  ".join(lines) +
                         "\npass intersect=True (CLI: --intersect) to compare only the tensors in both with "
                         "the same shape and dtype, or convert one checkpoint to match the other")
    names = sorted(set(pairs) - set(bad), key=lambda n: (rb.group(pairs[n][0]), rt.group(pairs[n][1]), n))
    if not names:
        raise ValueError("the checkpoints share no tensor with the same name, shape and dtype; check that "
                         "both are the same architecture")
    rows, stats, masks = [], {}, ({} if keep_masks else None)
    total = sum(math.prod(rb.meta[pairs[n][0]][0]) for n in names)
    show = total > (1 << 27) if progress is None else bool(progress)
    bar = tqdm(total=total, unit="entries", unit_scale=True, desc="diff", disable=not show)
    try:
        for name in names:
            bname, tname = pairs[name]
            row, st, mask = _tensor_stats(name, rb, rt, rb.meta[bname][0], float(atol), rtol, max_rank_numel,
                                          keep_masks, tname=tname, bname=bname)
            rows.append(row)
            stats[name] = st
            if keep_masks:
                masks[name] = mask
            bar.update(row["numel"])
    finally:
        bar.close()
        rb.release()
        rt.release()
    nan_rows = [r for r in rows if r["nan_changed"]]
    if nan_rows:
        warnings.warn(f"{sum(r['nan_changed'] for r in nan_rows):,} entries in {len(nan_rows)} tensors "
                      f"(e.g. {nan_rows[0]['name']!r}) are NaN in one checkpoint but not the other; they count "
                      "as changed at every tolerance and are left out of the norms and ranks - check the "
                      "fine-tune for divergence", RuntimeWarning, stacklevel=2)
    return SparsityDiff(rows, float(atol), rtol, masks, skipped,
                        {"base": _describe(base), "tuned": _describe(tuned)}, stats)


# --------------------------------------------------------------------------------------- overlap
def _ratio(a, b):
    return a / b if b else None


def _overlap_row(na, nb, nab, n):
    pa, pb = na / n if n else 0.0, nb / n if n else 0.0
    union = na + nb - nab
    jc = pa * pb / (pa + pb - pa * pb) if (pa + pb - pa * pb) > 0 else None
    return {"numel": n, "changed_a": na, "changed_b": nb, "both": nab,
            "o1": _ratio(nab, na), "o1_chance": pb, "o2": _ratio(nab, nb), "o2_chance": pa,
            "jaccard": _ratio(nab, union), "jaccard_chance": jc}


def overlap(diff_a: SparsityDiff, diff_b: SparsityDiff) -> dict:
    """Overlap of the changed-entry sets A and B of two diffs (both made with ``keep_masks=True``).

    ``o1 = |A&B|/|A|`` (chance: density of B), ``o2 = |A&B|/|B|`` (chance: density of A),
    Jaccard ``|A&B|/|A|B|`` (chance ``pa*pb/(pa+pb-pa*pb)`` for independent sets of those densities),
    per shared tensor and overall. Returns ``{"tensors": [...], "overall": {...}}``.

    >>> import torch
    >>> z = {"w": torch.zeros(4)}
    >>> a = diff_checkpoints(z, {"w": torch.tensor([1., 1., 0., 0.])}, keep_masks=True)
    >>> b = diff_checkpoints(z, {"w": torch.tensor([1., 0., 0., 0.])}, keep_masks=True)
    >>> o = overlap(a, b)["overall"]
    >>> (o["o1"], o["o1_chance"], o["o2"], o["o2_chance"], o["jaccard"])
    (0.5, 0.25, 1.0, 0.5, 0.5)
    """
    for d, which in ((diff_a, "diff_a"), (diff_b, "diff_b")):
        if d.masks is None:
            raise ValueError(f"{which} holds no masks; make it with diff_checkpoints(..., keep_masks=True) "
                             "(CLI: workbench sparsity diff ... --masks --json OUT.json)")
    shapes_a = {t["name"]: list(t["shape"]) for t in diff_a.tensors}
    shapes_b = {t["name"]: list(t["shape"]) for t in diff_b.tensors}
    bad = sorted(n for n in set(shapes_a) & set(shapes_b) if shapes_a[n] != shapes_b[n])
    if bad:
        raise ValueError(f"tensors {bad[:10]} have different shapes in the two diffs; overlap needs diffs "
                         "of the same architecture")
    names = [t["name"] for t in diff_a.tensors if t["name"] in shapes_b]
    if not names:
        raise ValueError("the two diffs share no tensor names; compare diffs of the same architecture")
    rows, tot = [], [0, 0, 0, 0]
    for name in names:
        a, b = diff_a.mask(name), diff_b.mask(name)
        na, nb, nab, n = int(a.sum()), int(b.sum()), int((a & b).sum()), a.size
        rows.append({"name": name, **_overlap_row(na, nb, nab, n)})
        for i, v in enumerate((na, nb, nab, n)):
            tot[i] += v
    return {"tensors": rows, "overall": _overlap_row(*tot)}
