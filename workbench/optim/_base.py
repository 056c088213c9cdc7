"""Shared machinery of :mod:`workbench.optim`: validation, seeds, same-shape buckets, stacked state.

Nothing here synchronises host and device: step counters are Python ints kept in the state
(numbers, so ``state_dict()`` loads with ``weights_only=True``), decisions such as "refresh the
projection now" depend only on them, and everything computed from tensor values stays a tensor.

Same-shape parameters of a group form a *bucket*: their gradients are stacked into one
``[B, m, n]`` tensor so a projection is one batched matmul and the moment updates are one kernel
each. The moments of a bucket live in one stacked buffer whose rows are what ``self.state[p]``
holds (views), so ``state_dict()`` stays the usual per-parameter dict and no copy is made per step.

Example:
    >>> derive_seed(0, 3, 1) == derive_seed(0, 3, 1) != derive_seed(0, 3, 2)
    True
    >>> check_range("lr", -1.0, low=0.0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number >= 0.0, got -1.0
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["check_range", "check_betas", "check_int", "check_choice", "derive_seed", "cpu_generator",
           "to_device", "StackedStateMixin", "adamw_foreach", "ProjectedOptimizer", "buckets", "numel_chunks",
           "default_bucket_numel", "local", "ShardInfo", "shard_info", "global_sq_norms", "wrap_like"]

_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------- validation
def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """Raise ``ValueError`` naming ``name``, the allowed range and ``value`` unless it is a finite number in range."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high}")
        what = "a finite number" + (" " + " and ".join(parts) if parts else "")
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")


def check_int(name: str, value: Any, low: int = 0, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= low`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")


def check_betas(value: Any, name: str = "betas") -> None:
    """``betas`` must be a pair of numbers in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) of numbers in [0, 1), got {value!r}")
    for i, b in enumerate(value):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, high_open=True)


def check_choice(name: str, value: Any, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------------- seeds and generators
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. ``(seed, param index, refresh count)``); pure Python,
    so it is the same on every machine, device and rank."""
    h = 0x5EED
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: random matrices drawn from it are identical
    whatever device they are moved to afterwards."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Move a CPU tensor to ``device``/``dtype``; to CUDA through pinned memory without blocking the host."""
    t = t.to(dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---------------------------------------------------------------------- sharded (FSDP2 DTensor) parameters
def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:          # pragma: no cover - torch without distributed
        return None
    return DTensor


def local(t):
    """The local shard of a ``DTensor`` (a view: in-place ops on it update the DTensor), else ``t``."""
    D = _dtensor_type()
    return t.to_local() if D is not None and isinstance(t, D) else t


class ShardInfo:
    """Where a parameter sharded on its first dimension (FSDP2: ``Shard(0)``, optionally with
    ``Replicate`` mesh dimensions as in HSDP) lives: its mesh, placements, the process group of the
    sharded mesh dimension, its global shape and the global row offset of the local rows."""

    def __init__(self, p):
        from torch.distributed.tensor import Replicate, Shard

        self.mesh, self.placements = p.device_mesh, tuple(p.placements)
        sharded = [i for i, pl in enumerate(self.placements) if isinstance(pl, Shard)]
        if (len(sharded) != 1 or self.placements[sharded[0]].dim != 0
                or not all(isinstance(pl, (Shard, Replicate)) for pl in self.placements)):
            raise ValueError(f"workbench.optim supports parameters sharded on their first dimension over one "
                             f"mesh dimension (FSDP2 fully_shard, HSDP), got placements {self.placements}; "
                             f"shard with workbench.distributed.shard_model")
        dim = sharded[0]
        self.group = self.mesh.get_group(dim)
        self.global_shape = tuple(p.shape)
        ranks, coord = self.mesh.size(dim), self.mesh.get_local_rank(dim)
        rows = self.global_shape[0]
        chunk = -(-rows // ranks) if rows else 0          # torch.chunk sizes, as DTensor's Shard(0)
        self.start = min(coord * chunk, rows)
        self.rows = local(p).shape[0]

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks that hold the other rows (in place; returns ``t``)."""
        import torch.distributed as dist

        dist.all_reduce(t, group=self.group)
        return t

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Overwrite ``t`` (contiguous) with the first shard-rank's copy (in place; returns ``t``)."""
        import torch.distributed as dist

        dist.broadcast(t, src=dist.get_global_rank(self.group, 0), group=self.group)
        return t

    def rows_of(self, t: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The slice of a full tensor (e.g. a projection with one row per parameter row) along ``dim``
        that matches this rank's rows."""
        return t.narrow(dim, self.start, self.rows)

    def wrap(self, local_tensor: torch.Tensor, global_shape: tuple) -> torch.Tensor:
        """A ``DTensor`` sharded like the parameter around ``local_tensor`` (no copy)."""
        from torch.distributed.tensor import DTensor

        shape = torch.Size(global_shape)
        return DTensor.from_local(local_tensor, self.mesh, self.placements, run_check=False, shape=shape,
                                  stride=torch.empty(shape, device="meta").stride())


def shard_info(p) -> ShardInfo | None:
    """:class:`ShardInfo` of a DTensor parameter, None for a plain tensor."""
    D = _dtensor_type()
    return ShardInfo(p) if D is not None and isinstance(p, D) else None


def wrap_like(local_tensor: torch.Tensor, info: ShardInfo | None, global_shape: tuple) -> torch.Tensor:
    """``local_tensor`` as state of a parameter with ``info``: a DTensor sharded like it (so
    ``torch.distributed.checkpoint`` saves and reshards it), or the tensor itself when ``info`` is None."""
    return local_tensor if info is None else info.wrap(local_tensor, global_shape)


def global_sq_norms(tensors: list, like: list | None = None) -> torch.Tensor:
    """Squared L2 norms ``[N]`` (fp32, or fp64 if any tensor is) of ``tensors``; a sharded DTensor's
    norm is over all its shards (local squares summed over its mesh: one all-reduce per process group).
    ``like``: the tensors whose sharding counts (e.g. the parameters, when ``tensors`` are local
    shards computed from them)."""
    locs = [local(t) for t in tensors]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in locs) else torch.float32
    device = locs[0].device
    sq = torch.stack([n.to(device, dtype) for n in torch._foreach_norm(locs)]).square()
    groups: dict = {}
    for i, t in enumerate(tensors if like is None else like):
        info = shard_info(t)
        if info is not None:
            groups.setdefault(info.group, []).append(i)
    for group, idx in groups.items():
        import torch.distributed as dist

        part = sq[idx]
        dist.all_reduce(part, group=group)
        sq[idx] = part
    return sq


# ---------------------------------------------------------------------- stacked per-bucket state
class StackedStateMixin:
    """State tensors of same-shape parameters stored as rows of one buffer (``self.state[p][name]``
    are views), so that a bucket updates its moments with one kernel and no per-step copy."""

    def _init_stacks(self) -> None:
        self._stacks: dict = {}      # (bucket key, name) -> (param ids, buffer, views)
        self._caches: dict = {}      # transient, regenerable tensors (projections, indices)

    def _stacked(self, key, params: list, name: str, shape: tuple, dtype, device,
                 shard: ShardInfo | None = None) -> torch.Tensor:
        """The ``[len(params), *shape]`` buffer whose rows are ``self.state[p][name]`` (zeros when new).

        ``shard``: the state's first dimension runs over the parameters' local rows (FSDP2); the
        buffer is local and ``self.state[p][name]`` a DTensor view of it with the global row count.
        """
        ids = tuple(id(p) for p in params)
        entry = self._stacks.get((key, name))
        if entry is not None and entry[0] == ids and all(
                self.state[p].get(name) is v for p, v in zip(params, entry[2])):
            return entry[1]
        buf = torch.zeros((len(params), *shape), dtype=dtype, device=device)
        for i, p in enumerate(params):        # carry over what exists (resume, bucket change)
            old = local(self.state[p].get(name))
            if isinstance(old, torch.Tensor) and tuple(old.shape) == tuple(shape):
                buf[i].copy_(old)
        global_shape = (shard.global_shape[0], *shape[1:]) if shard is not None else None
        views = [wrap_like(v, shard, global_shape) for v in buf.unbind(0)]
        for p, v in zip(params, views):
            self.state[p][name] = v
        self._forget_stacks(set(ids), (name,))      # a parameter's state lives in one buffer only
        self._stacks[(key, name)] = (ids, buf, views)
        return buf

    def _forget_stacks(self, ids: set, names: tuple) -> None:
        for k in [k for k, e in self._stacks.items() if k[1] in names and ids.intersection(e[0])]:
            del self._stacks[k]

    def _drop_state(self, params: list, *names: str) -> None:
        """Free the named state of ``params`` (their rows in stacked buffers too)."""
        for p in params:
            for name in names:
                self.state[p].pop(name, None)
        self._forget_stacks({id(p) for p in params}, names)

    def extra_state_tensors(self) -> list[torch.Tensor]:
        """Tensors the optimizer holds outside ``self.state`` (counted by ``state_bytes``)."""
        out = [entry[1] for entry in self._stacks.values()]
        for value in self._caches.values():
            out.extend(t for t in value if isinstance(t, torch.Tensor))
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        self._stacks.clear()      # rebuilt from the loaded per-parameter tensors at the next step
        self._caches.clear()
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict) -> None:       # unpickling / deepcopy: fresh stacks and caches
        super().__setstate__(state)
        self._init_stacks()


def default_bucket_numel(device: torch.device) -> int:
    """Stacked elements per bucket chunk: small on CPU (temporaries stay in malloc's reused heap
    instead of being mapped and page-faulted at every step), large on accelerators (fewer kernels)."""
    return (1 << 20) if device.type == "cpu" else (1 << 27)


def buckets(items: list, key_fn, max_numel) -> list[tuple[tuple, list]]:
    """Group ``items`` by ``key_fn(item)`` (a hashable ``(shape, dtype, device, ...)``), then split each
    group into chunks of at most ``max_numel`` stacked elements (an int, or None for
    :func:`default_bucket_numel` of the device). Returns ``[(key + (chunk,), items)]``."""
    groups: dict = {}
    for it in items:
        groups.setdefault(key_fn(it), []).append(it)
    out = []
    for key, its in groups.items():
        numel = math.prod(key[0]) if key[0] else 1
        limit = max_numel if max_numel is not None else default_bucket_numel(key[2])
        per = max(1, limit // max(numel, 1))
        for c in range(0, len(its), per):
            out.append(((*key, c // per), its[c:c + per]))
    return out


# ---------------------------------------------------------------------- plain AdamW (foreach)
def adamw_foreach(state: dict, params: list[torch.Tensor], group: dict) -> None:
    """``torch.optim.AdamW`` (decay first, bias-corrected moments) on ``params``, all with grads.

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq``. Parameters are grouped by
    (device, dtype, step) and each run of up to :func:`default_bucket_numel` elements is updated
    with ``torch._foreach_*`` kernels.
    """
    by_key: dict = {}
    for p in params:
        st = state[p]
        if "exp_avg" not in st or "exp_avg_sq" not in st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        by_key.setdefault((p.device, p.dtype, int(st.get("step", 0))), []).append(p)
    for (device, _, step), group_params in by_key.items():
        for ps in numel_chunks(group_params, default_bucket_numel(device)):
            _adamw_chunk(state, ps, group, step + 1)


def numel_chunks(params: list, max_numel: int) -> list[list]:
    """Consecutive runs of ``params`` of at most ``max_numel`` elements (at least one tensor each)."""
    out, cur, size = [], [], 0
    for p in params:
        if cur and size + p.numel() > max_numel:
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.numel()
    if cur:
        out.append(cur)
    return out


def _adamw_chunk(state: dict, ps: list, group: dict, step: int) -> None:
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    grads = [local(p.grad) for p in ps]           # sharded (FSDP2): elementwise on the local shards
    m = [local(state[p]["exp_avg"]) for p in ps]
    v = [local(state[p]["exp_avg_sq"]) for p in ps]
    params, ps = ps, [local(p) for p in ps]
    if wd != 0:
        torch._foreach_mul_(ps, 1.0 - lr * wd)
    torch._foreach_lerp_(m, grads, 1.0 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(bc2))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, m, denom, value=-lr / bc1)
    for p in params:
        state[p]["step"] = step


def adam_direction(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, beta1: float, beta2: float,
                   eps: float, step: int) -> torch.Tensor:
    """``m_hat / (sqrt(v_hat) + eps)`` as a new tensor (the bias-corrected Adam direction)."""
    denom = exp_avg_sq.div(1.0 - beta2 ** step).sqrt_().add_(eps)
    return exp_avg.div(1.0 - beta1 ** step).div_(denom)


def update_moments(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
                   beta1: float, beta2: float) -> None:
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


# ---------------------------------------------------------------------- projected optimizers
class ProjectedOptimizer(StackedStateMixin, Optimizer):
    """Base of the low-rank optimizers (APOLLO, GaLore, FRUGAL).

    A parameter is *projected* when it is 2-D and its group has ``lowrank`` true (the default)
    and ``group[self.rank_key]`` is not None; every other parameter with a gradient gets plain
    AdamW (the group's ``lr``, ``betas``, ``eps``, ``weight_decay``). Subclasses implement
    ``_check_group(group)`` and ``_step_bucket(key, group, index, params, step)`` where ``index``
    are the parameters' positions in the optimizer (over all groups, in order) and ``step`` the
    1-based step number of this update.
    """

    rank_key = "rank"
    #: stacked gradient elements per batched update (bounds a bucket's temporary memory);
    #: None: :func:`default_bucket_numel` of the device
    max_bucket_numel: int | None = None
    #: stack a bucket's gradients for batched matmuls (True), or run one matmul per parameter and
    #: update with foreach ops straight from ``.grad`` (False: no gradient copy); None: stack on
    #: accelerators (fewer kernel launches), not on CPU (less memory traffic)
    stack_gradients: bool | None = None

    def __init__(self, params, defaults: dict):
        self._init_stacks()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters "
                                 f"(got one of shape {tuple(p.shape)})")
        if not isinstance(group.get("lowrank", True), bool):
            raise ValueError(f"lowrank must be True or False, got {group['lowrank']!r}")
        self._check_group(group)

    def _check_group(self, group: dict) -> None:     # pragma: no cover - abstract
        raise NotImplementedError

    def is_projected(self, p: torch.Tensor, group: dict) -> bool:
        """True when ``p`` takes the low-rank path in ``group`` (2-D, ``lowrank`` and a rank set)."""
        return p.dim() == 2 and group.get("lowrank", True) and group.get(self.rank_key) is not None

    def _index_of(self, param: torch.Tensor) -> tuple[int, dict]:
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p is param:
                    return i, group
                i += 1
        raise ValueError("this parameter is not in the optimizer")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; ``closure`` (re-evaluates the model and
        returns the loss) is called first, with gradients enabled, and its loss returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for gi, group in enumerate(self.param_groups):
            plain, projected = [], []
            for p in group["params"]:
                i, index = index, index + 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
                if self.is_projected(p, group):
                    projected.append((i, p))
                else:
                    plain.append(p)
            if plain:
                adamw_foreach(self.state, plain, group)
            if not projected:
                continue
            key_fn = lambda it: (tuple(it[1].shape), it[1].dtype, it[1].device,  # noqa: E731
                                 int(self.state[it[1]].get("step", 0)))
            for key, items in buckets(projected, key_fn, self.max_bucket_numel):
                step = key[3] + 1
                bucket_key = (gi, *key[:3], key[4])      # stable across steps
                idx = [i for i, _ in items]
                ps = [p for _, p in items]
                self._step_bucket(bucket_key, group, idx, ps, step)
                for p in ps:
                    self.state[p]["step"] = step
        return loss

    def _step_bucket(self, key, group: dict, index: list[int], params: list[torch.Tensor], step: int):
        raise NotImplementedError  # pragma: no cover

    # helpers for subclasses -------------------------------------------------
    def _stacking(self, device: torch.device) -> bool:
        return self.stack_gradients if self.stack_gradients is not None else device.type != "cpu"

    @staticmethod
    def _project(grads: list, P: torch.Tensor, tall: bool, G: torch.Tensor | None) -> torch.Tensor:
        """``R = G P^T`` (tall) or ``P^T G`` for a bucket: one bmm on the stacked ``G`` if given,
        else one matmul per gradient."""
        if G is not None:
            return torch.bmm(G, P.mT) if tall else torch.bmm(P.mT, G)
        return torch.stack([g @ Pi.mT if tall else Pi.mT @ g for g, Pi in zip(grads, P.unbind(0))])

    @staticmethod
    def _apply(params: list[torch.Tensor], update: torch.Tensor, lr: float, weight_decay: float) -> None:
        """``p -= lr * update_i`` then decoupled decay ``p -= lr * wd * p`` (REFERENCE section 3 order)."""
        torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr)
        if weight_decay != 0:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)

    @staticmethod
    def _check_common(group: dict) -> None:
        check_range("lr", group["lr"], 0.0)
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_int("update_proj_gap", group["update_proj_gap"], 1)
        check_int("seed", group["seed"], 0)
