"""Update sparsity between two checkpoints, streamed one tensor pair at a time.

``sparsity = 1 - ||theta1 - theta0||_0 / n`` where an entry counts as changed when
``|delta| > atol`` (strictly), or, for the relative variant, when ``|delta| > rtol * |w_base|``.
Much published update sparsity is bf16 rounding (updates below about ``|w| * 2**-8`` vanish), so every
result records the dtype, ``atol`` and (when given) the ``rtol`` variant next to the figure.

Checkpoints may be transformers model directories (sharded safetensors with
``model.safetensors.index.json``, or one ``model.safetensors``), single ``.safetensors`` files,
``.bin``/``.pt`` files (read only with ``torch.load(weights_only=True)``), ``nn.Module``s or state dicts.
Safetensors are memory-mapped and read one tensor at a time, aligned by name across shards; each shard's
handle is released as soon as the walk leaves it.

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
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from workbench.files import atomic_write_text

__all__ = ["SparsityDiff", "diff_checkpoints", "overlap", "parse_name", "DEFAULT_MAX_RANK_NUMEL"]

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
    """Name -> (shape, dtype) metadata, tensors on demand; ``group(name)`` orders the walk."""

    def __init__(self, meta: dict, describe: str):
        self.meta = meta
        self.describe = describe

    def group(self, name: str) -> int:
        return 0

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        pass


class _DictReader(_Reader):
    def __init__(self, state: dict, describe: str):
        bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise ValueError(f"{describe}: entries {bad[:5]} are not tensors; pass a state dict that maps "
                             "parameter names to tensors (e.g. model.state_dict())")
        self.state = state
        super().__init__({k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in state.items()}, describe)

    def get(self, name):
        return self.state[name].detach()


def _st_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


class _SafetensorsReader(_Reader):
    """One or more safetensors shards; holds at most one open (memory-mapped) handle."""

    def __init__(self, files: dict[str, Path], describe: str):
        self.files = files  # name -> shard path
        shards = sorted(set(files.values()))
        self._shard_idx = {p: i for i, p in enumerate(shards)}
        meta = {}
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{describe}: shard {shard} listed in the index is missing")
            header = _st_header(shard)
            for name, info in header.items():
                if files.get(name) == shard:
                    meta[name] = (tuple(info["shape"]), _ST_DTYPES.get(info["dtype"], info["dtype"]))
        missing = sorted(set(files) - set(meta))
        if missing:
            raise ValueError(f"{describe}: tensors {missing[:5]} are in the index but not in their shard; "
                             "the checkpoint is incomplete, re-save it")
        super().__init__(meta, describe)
        self._path = None
        self._handle = None
        self.opened = 0  # how many times a shard was opened (tests check the streaming)

    def group(self, name):
        return self._shard_idx[self.files[name]]

    def get(self, name):
        from safetensors import safe_open

        path = self.files[name]
        if path != self._path:
            self.release()
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            self._path = path
            self.opened += 1
        return self._handle.get_tensor(name)

    def release(self):
        if self._handle is not None:
            exit_ = getattr(self._handle, "__exit__", None)
            if exit_ is not None:
                exit_(None, None, None)
        self._handle = None
        self._path = None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if isinstance(exc, RuntimeError) and "mmap" in str(exc):  # legacy (non-zip) torch.save format
            return _torch_load_nommap(path)
        raise ValueError(_refuse_msg(path, exc)) from None


def _torch_load_nommap(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(_refuse_msg(path, exc)) from None


def _refuse_msg(path, exc) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"refusing to load {str(path)!r}: it holds objects that only full unpickling could build, and "
            "unpickling runs arbitrary code from the file, so checkpoints are read only with "
            "torch.load(weights_only=True) (tensors, dicts, numbers). Re-save it as a plain state dict "
            "(torch.save(model.state_dict(), path)) or as safetensors, from a source you trust. "
            f"(torch said: {first})")


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
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return _SafetensorsReader({k: path / v for k, v in weight_map.items()}, describe)
        single = path / "model.safetensors"
        if single.is_file():
            return _st_single(single, describe)
        for name in ("pytorch_model.bin", "model.pt"):
            if (path / name).is_file():
                return _DictReader(_state_from_obj(_torch_load(path / name), describe), describe)
        raise ValueError(f"{describe} holds no model.safetensors(.index.json) or pytorch_model.bin; "
                         "save the model there with model.save_pretrained(dir)")
    if not path.exists():
        raise FileNotFoundError(f"{describe} does not exist")
    if path.suffix == ".safetensors":
        return _st_single(path, describe)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _DictReader(_state_from_obj(_torch_load(path), describe), describe)
    raise ValueError(f"{describe}: unknown checkpoint type {path.suffix!r}; use a model directory, "
                     ".safetensors, .bin or .pt")


def _st_single(path: Path, describe: str) -> _SafetensorsReader:
    return _SafetensorsReader({name: path for name in _st_header(path)}, describe)


# ------------------------------------------------------------------------------------- statistics
def _pack(mask: torch.Tensor) -> bytes:
    return np.packbits(mask.reshape(-1).numpy()).tobytes()


def _unpack(data: bytes, shape) -> np.ndarray:
    numel = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel)
    return bits.astype(bool).reshape(shape)


def _tensor_stats(name, b, t, atol, rtol, max_rank_numel):
    compute = torch.float64 if torch.float64 in (b.dtype, t.dtype) else torch.float32
    bc = b.to(compute)
    delta = t.to(compute) - bc
    absd = delta.abs()
    changed_mask = absd > atol
    numel = b.numel()
    changed = int(changed_mask.sum())
    layer, kind = parse_name(name)
    base_norm = float(torch.linalg.vector_norm(bc))
    delta_norm = float(torch.linalg.vector_norm(delta))
    row = {
        "name": name, "layer": layer, "type": kind, "dtype": _dtype_name(b.dtype),
        "shape": list(b.shape), "numel": numel, "changed": changed,
        "sparsity": 1.0 - changed / numel if numel else 1.0,
        "atol": atol, "rtol": rtol, "changed_rtol": None, "sparsity_rtol": None,
        "delta_norm": delta_norm, "base_norm": base_norm,
        "rel_update": delta_norm / base_norm if base_norm > 0 else None,
        "max_abs_delta": float(absd.max()) if numel else 0.0,
        "row_sparsity": None, "col_sparsity": None,
        "rank": None, "rank_tol": None, "rank_max": None, "effective_rank": None,
    }
    if rtol is not None:
        changed_r = int((absd > rtol * bc.abs()).sum())
        row["changed_rtol"] = changed_r
        row["sparsity_rtol"] = 1.0 - changed_r / numel if numel else 1.0
    if b.dim() == 2 and numel:
        row["row_sparsity"] = int((~changed_mask.any(dim=1)).sum()) / b.shape[0]
        row["col_sparsity"] = int((~changed_mask.any(dim=0)).sum()) / b.shape[1]
        row["rank_max"] = min(b.shape)
        if numel <= max_rank_numel:
            d32 = delta.to(torch.float32)
            s = torch.linalg.svdvals(d32)
            smax = float(s.max())
            tol = smax * max(b.shape) * torch.finfo(torch.float32).eps  # matrix_rank's default
            row["rank"] = int((s > tol).sum())
            row["rank_tol"] = tol
            total = float(s.sum())
            if total > 0:
                p = (s / total).double()
                p = p[p > 0]
                row["effective_rank"] = float(torch.exp(-(p * p.log()).sum()))
            else:
                row["effective_rank"] = 0.0
    return row, changed_mask


class SparsityDiff:
    """The result of :func:`diff_checkpoints`: per-tensor rows, overall figures and optional masks.

    ``tensors``: list of dicts (name, layer, type, dtype, shape, numel, changed, sparsity, changed_rtol,
    sparsity_rtol, delta_norm, base_norm, rel_update, row_sparsity, col_sparsity, rank, rank_tol,
    rank_max, effective_rank, ...). ``overall``: ``{"sparsity", "numel", "changed"}`` at ``atol``;
    ``overall_rtol`` the same at ``rtol`` (None without it). ``masks``: name -> bit-packed bytes of the
    changed-at-atol mask (only with ``keep_masks=True``); :meth:`mask` unpacks one.

    >>> import torch
    >>> d = diff_checkpoints({"w": torch.zeros(3)}, {"w": torch.tensor([0., 1., 0.])}, keep_masks=True)
    >>> d.mask("w").tolist()
    [False, True, False]
    """

    def __init__(self, tensors: list[dict], atol: float, rtol: float | None, masks: dict | None = None,
                 skipped: list[str] | None = None, meta: dict | None = None):
        self.tensors = tensors
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

    def to_dict(self) -> dict:
        out = {"format": _FORMAT, "overall": dict(self.overall), "tensors": self.tensors,
               "atol": self.atol, "rtol": self.rtol, "overall_rtol": self.overall_rtol,
               "skipped": self.skipped, **self.meta}
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
        return cls(data["tensors"], data.get("atol", 1e-5), data.get("rtol"), masks,
                   data.get("skipped"), meta)


# ------------------------------------------------------------------------------------------ diff
def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return type(src).__name__


def diff_checkpoints(base, tuned, atol: float = 1e-5, rtol: float | None = None, intersect: bool = False,
                     keep_masks: bool = False, max_rank_numel: int = DEFAULT_MAX_RANK_NUMEL) -> SparsityDiff:
    """Compare two checkpoints tensor by tensor; see the module docstring for what they may be.

    An entry is changed when ``|tuned - base| > atol`` (strictly), and for ``sparsity_rtol`` when
    ``|tuned - base| > rtol * |base|``. Names, shapes and dtypes must match (ValueError listing the
    differences); ``intersect=True`` compares only the names in both with equal shape and dtype and lists
    the rest in ``.skipped``. 2-D tensors up to ``max_rank_numel`` entries get the rank of the delta
    (float32, matrix_rank's default tolerance, recorded as ``rank_tol``) and the effective rank
    ``exp(entropy of s / sum(s))``; larger ones get None.
    """
    if not (isinstance(atol, (int, float)) and atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be None or a finite number >= 0, got {rtol!r}")
    rb, rt = _open(base, "base"), _open(tuned, "tuned")
    only_b = sorted(set(rb.meta) - set(rt.meta))
    only_t = sorted(set(rt.meta) - set(rb.meta))
    common = set(rb.meta) & set(rt.meta)
    bad = sorted(n for n in common if rb.meta[n] != rt.meta[n])
    skipped = only_b + only_t + bad
    if skipped and not intersect:
        lines = []
        if only_b:
            lines.append(f"only in base ({len(only_b)}): {only_b[:10]}")
        if only_t:
            lines.append(f"only in tuned ({len(only_t)}): {only_t[:10]}")
        for n in bad[:10]:
            (sb, db), (st, dt) = rb.meta[n], rt.meta[n]
            lines.append(f"{n}: base {db}{list(sb)} vs tuned {dt}{list(st)}")
        raise ValueError("the checkpoints do not line up:\n  " + "\n  ".join(lines) +
                         "\npass intersect=True (CLI: --intersect) to compare only the tensors in both with "
                         "the same shape and dtype, or convert one checkpoint to match the other")
    names = sorted(set(common) - set(bad), key=lambda n: (rb.group(n), rt.group(n), n))
    if not names:
        raise ValueError("the checkpoints share no tensor with the same name, shape and dtype; check that "
                         "both are the same architecture")
    rows, masks = [], ({} if keep_masks else None)
    try:
        for name in names:
            b, t = rb.get(name), rt.get(name)
            row, mask = _tensor_stats(name, b, t, float(atol), rtol, max_rank_numel)
            rows.append(row)
            if keep_masks:
                masks[name] = _pack(mask)
            del b, t, mask
    finally:
        rb.release()
        rt.release()
    return SparsityDiff(rows, float(atol), rtol, masks, skipped,
                        {"base": _describe(base), "tuned": _describe(tuned)})


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
