"""Choosing and mixing training data: the GAIN-RL sampler, top-fraction selection, replay and
domain mixing for continual pre-training.

* :class:`GainSampler` (GAIN-RL, Wang et al. 2506.02281): items ranked by a score (e.g.
  :func:`workbench.data.angles.angle_concentration`), a Gaussian over ranks whose centre
  ``mu`` moves toward lower-ranked items as accuracy rises.
* :func:`select_top`: the indices of the top fraction of items by score.
* :class:`ReplayLoader`: a fixed fraction of every batch from the old domain (Abbes et al.
  2508.01908).
* :class:`DomainMix` with :func:`upsample_end`: batches composed row-wise from several
  domains by shares that depend on the step, e.g. raising a small high-quality domain over
  the last 10-20% of training.

All are deterministic from their seeds and resumable from ``state_dict()``.

Example::

    >>> import torch
    >>> from workbench.data.sampler import GainSampler, select_top
    >>> s = GainSampler(torch.tensor([0.1, 0.9, 0.5]), subset_size=2, sigma=1.0)
    >>> [round(p, 3) for p in s.weights().tolist()]      # rank 0 is item 1 (score 0.9)
    [0.078, 0.574, 0.348]
    >>> len(list(s))
    2
    >>> select_top(torch.tensor([0.1, 0.9, 0.5, 0.9]), 0.5).tolist()
    [1, 3]
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["GainSampler", "select_top", "ReplayLoader", "DomainMix", "upsample_end"]

_SEED_MULT = 1_000_003


def _generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) * _SEED_MULT + int(step))
    return g


def _scores(scores) -> torch.Tensor:
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    if s.numel() == 0:
        raise ValueError("scores is empty; pass one score per item")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or inf; drop those items or replace their scores "
                         "(e.g. torch.nan_to_num(scores, nan=-1e9)) before ranking")
    return s


def _rank_order(s: torch.Tensor) -> torch.Tensor:
    """Item indices from highest to lowest score, ties broken by lower index first."""
    return torch.sort(s, descending=True, stable=True).indices


def _nonneg_int(name, v, minimum=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _finite(name, v):
    try:
        out = float(v)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return out


def select_top(scores, fraction: float) -> torch.Tensor:
    """Indices of the ``ceil(fraction * n)`` highest scores, best first (ties: lower index).

    Example::

        >>> import torch
        >>> select_top(torch.tensor([3.0, 1.0, 3.0, 2.0]), 0.6).tolist()
        [0, 2, 3]
    """
    s = _scores(scores)
    fraction = _finite("fraction", fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * s.numel() - 1e-9))
    return _rank_order(s)[:k]


class GainSampler(Sampler[int]):
    """GAIN-RL's Gaussian sampler over score ranks; a ``torch.utils.data.Sampler``.

    Items are ranked by ``scores`` descending (ties: lower index first). Rank ``i`` has
    weight ``exp(-((i - mu) / sigma)^2 / 2)``; iterating draws ``subset_size`` distinct
    items with ``torch.multinomial`` (without replacement) from a generator seeded with
    ``(seed, epoch)``, so iterating twice in one epoch gives the same items (when the
    weights of a narrow ``sigma`` underflow to 0 for all but fewer than ``subset_size``
    items, the same draw is done in log space by Gumbel top-k). After each
    epoch call :meth:`update`, which moves ``mu`` by
    ``clamp(n*tanh(a*(accuracy - beta)) + n*tanh(a*angle_signal), adj_min, adj_max)`` and
    advances the epoch. ``state_dict()`` holds ints and floats only; a sampler that loads it
    makes the same future draws.

    Example::

        >>> import torch
        >>> s = GainSampler(torch.arange(10.0), subset_size=3, sigma=2.0)
        >>> _ = s.update(accuracy=0.8); round(s.mu, 2)      # 500 * tanh(0.6)
        268.52
        >>> t = GainSampler(torch.arange(10.0), subset_size=3); t.load_state_dict(s.state_dict())
        >>> list(t) == list(s)
        True
        >>> list(GainSampler(torch.arange(6.0), subset_size=3, sigma=1e-3))   # narrow: the top 3
        [5, 4, 3]
    """

    def __init__(self, scores, subset_size: int, mu: float = 0.0, sigma: float = 1000.0,
                 n: float = 500.0, a: float = 2.0, beta: float = 0.5, adj_min: float = 0.0,
                 adj_max: float = 1000.0, seed: int = 0):
        s = _scores(scores)
        self.num_items = s.numel()
        self.subset_size = _nonneg_int("subset_size", subset_size, 1)
        if self.subset_size > self.num_items:
            raise ValueError(f"subset_size={subset_size} exceeds the {self.num_items} items; draws "
                             "are without replacement, so lower subset_size")
        self.order = _rank_order(s)
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(self.num_items)
        self.mu = _finite("mu", mu)
        self.sigma = _finite("sigma", sigma)
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.n, self.a, self.beta = _finite("n", n), _finite("a", a), _finite("beta", beta)
        self.adj_min, self.adj_max = _finite("adj_min", adj_min), _finite("adj_max", adj_max)
        if self.adj_min > self.adj_max:
            raise ValueError(f"adj_min={adj_min} > adj_max={adj_max}; swap them")
        self.seed = _nonneg_int("seed", seed)
        self.epoch = 0

    def log_weights(self) -> torch.Tensor:
        """Unnormalised log weight ``-((rank - mu) / sigma)^2 / 2`` of each item (float64)."""
        z = (self.rank.double() - self.mu) / self.sigma
        return -0.5 * z * z

    def weights(self) -> torch.Tensor:
        """Current draw probability of each item (float64, sums to 1; item order, not rank)."""
        return torch.softmax(self.log_weights(), 0)  # shifted by the max: never all zero

    def __len__(self) -> int:
        return self.subset_size

    def __iter__(self) -> Iterator[int]:
        g = _generator(self.seed, self.epoch)
        w = self.weights()
        if int((w > 0).sum()) >= self.subset_size:
            idx = torch.multinomial(w, self.subset_size, replacement=False, generator=g)
        else:
            # A narrow sigma underflows far ranks to probability 0, and torch.multinomial then
            # fills the subset with arbitrary zero-weight items. Draw in log space instead:
            # Gumbel top-k is the same sequential draw without replacement (each pick with
            # probability proportional to the remaining weights), computed without underflow.
            u = torch.rand(self.num_items, generator=g, dtype=torch.float64)
            u = u.clamp(min=torch.finfo(torch.float64).tiny)
            keys = self.log_weights() - torch.log(-torch.log(u))
            idx = torch.topk(keys, self.subset_size).indices
        return iter(idx.tolist())

    def subset(self) -> np.ndarray:
        """This epoch's draw as sorted item indices (``int64``): the subset a view highlights.

        Example::

            >>> s = GainSampler([0.9, 0.1, 0.5, 0.7], subset_size=2, sigma=1e-3)
            >>> s.subset().tolist()                 # mu = 0: the two most concentrated items
            [0, 3]
        """
        return np.sort(np.fromiter(iter(self), dtype=np.int64, count=self.subset_size))

    def set_epoch(self, epoch: int) -> None:
        """Draw as in ``epoch`` (``update`` advances the epoch by itself)."""
        self.epoch = _nonneg_int("epoch", epoch)

    def adjustment(self, accuracy: float, angle_signal: float = 0.0) -> float:
        """The step ``update`` would add to ``mu``."""
        acc, sig = _finite("accuracy", accuracy), _finite("angle_signal", angle_signal)
        raw = self.n * math.tanh(self.a * (acc - self.beta)) + self.n * math.tanh(self.a * sig)
        return min(max(raw, self.adj_min), self.adj_max)

    def update(self, accuracy: float, angle_signal: float = 0.0) -> float:
        """Move ``mu`` after an epoch (see the class docstring); returns the new ``mu``."""
        self.mu += self.adjustment(accuracy, angle_signal)
        self.epoch += 1
        return self.mu

    _KEYS = ("mu", "sigma", "n", "a", "beta", "adj_min", "adj_max", "seed", "epoch",
             "num_items", "subset_size")

    def state_dict(self) -> dict:
        return {"mu": float(self.mu), "sigma": float(self.sigma), "n": float(self.n),
                "a": float(self.a), "beta": float(self.beta), "adj_min": float(self.adj_min),
                "adj_max": float(self.adj_max), "seed": int(self.seed), "epoch": int(self.epoch),
                "num_items": int(self.num_items), "subset_size": int(self.subset_size)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self._KEYS) - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; pass the dict from "
                             "GainSampler.state_dict()")
        if int(state["num_items"]) != self.num_items:
            raise ValueError(f"state is for {state['num_items']} items, this sampler has "
                             f"{self.num_items}; build it with the same scores")
        if int(state["subset_size"]) > self.num_items:
            raise ValueError(f"state subset_size={state['subset_size']} exceeds the items")
        for k in ("mu", "sigma", "n", "a", "beta", "adj_min", "adj_max"):
            setattr(self, k, float(state[k]))
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.subset_size = int(state["subset_size"])


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_rows(x, y, where):
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"{where} must yield (x, y) of equal 2-D shape; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")


def _compose(sources, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Take ``k`` rows from the next batch of each ``(label, loader, k)`` (loaders with k=0 are not
    advanced) and shuffle them together, seeded by ``(seed, step)``."""
    parts = []
    for label, loader, k in sources:
        if k:
            x, y = next(loader)
            _check_rows(x, y, label)
            if x.shape[0] < k:
                raise ValueError(f"{label} gave {x.shape[0]} rows, {k} needed")
            parts.append((x[:k], y[:k]))
    return _cat_shuffled(parts, seed, step)


def _cat_shuffled(parts, seed, step):
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    if len({p[0].shape[1] for p in parts}) != 1:
        raise ValueError("the loaders yield different sequence lengths "
                         f"{[p[0].shape[1] for p in parts]}; build their blocks with one block_size")
    perm = torch.randperm(x.shape[0], generator=_generator(seed, step))
    return x[perm], y[perm]


class ReplayLoader:
    """Batches ``(x, y)`` with ``round(replay_fraction * batch)`` rows from ``old_loader``.

    ``batch`` is ``new_loader.batch_size`` (or ``batch_size``). Each step takes the first
    ``batch - k`` rows of the next new-domain batch and the first ``k`` rows of the next
    old-domain batch (a loader is not advanced when it contributes no rows) and shuffles the
    rows with a generator seeded from ``(seed, step)``. Rounding is half up.
    ``state_dict()`` combines both loaders' states with the step.

    Example::

        >>> import torch
        >>> from workbench.data import BlockLoader
        >>> new = BlockLoader(torch.zeros(40, 9, dtype=torch.long), batch_size=8)
        >>> old = BlockLoader(torch.ones(40, 9, dtype=torch.long), batch_size=8)
        >>> x, y = next(ReplayLoader(new, old, replay_fraction=0.25))
        >>> int(x[:, 0].sum())                               # 2 of 8 rows from the old domain
        2
    """

    def __init__(self, new_loader, old_loader, replay_fraction: float, seed: int = 0,
                 batch_size: int | None = None):
        self.new, self.old = new_loader, old_loader
        f = _finite("replay_fraction", replay_fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {replay_fraction}")
        self.replay_fraction = f
        if batch_size is None:
            batch_size = getattr(new_loader, "batch_size", None)
            if batch_size is None:
                raise ValueError("new_loader has no batch_size attribute; pass batch_size=")
        self.batch_size = _nonneg_int("batch_size", batch_size, 1)
        self.n_old = _round_half_up(f * self.batch_size)
        self.n_new = self.batch_size - self.n_old
        for name, loader, need in (("new_loader", new_loader, self.n_new),
                                   ("old_loader", old_loader, self.n_old)):
            bs = getattr(loader, "batch_size", None)
            if need and bs is not None and bs < need:
                raise ValueError(f"{name} yields {bs} rows per batch but {need} are needed; give "
                                 f"it batch_size >= {need}")
        self.seed = _nonneg_int("seed", seed)
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = _compose([("new_loader", self.new, self.n_new), ("old_loader", self.old, self.n_old)],
                       self.seed, self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": int(self.step), "seed": int(self.seed),
                "replay_fraction": float(self.replay_fraction),
                "new": self.new.state_dict(), "old": self.old.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        missing = {"step", "seed", "new", "old"} - set(state)
        if missing:
            raise ValueError(f"replay state lacks {sorted(missing)}; pass the dict from "
                             "ReplayLoader.state_dict()")
        if "replay_fraction" in state and float(state["replay_fraction"]) != self.replay_fraction:
            raise ValueError(f"state has replay_fraction={state['replay_fraction']}, this loader "
                             f"{self.replay_fraction}; build it with the same fraction")
        self.new.load_state_dict(state["new"])
        self.old.load_state_dict(state["old"])
        self.step, self.seed = int(state["step"]), int(state["seed"])


def _row_counts(shares: dict, names: list, batch: int) -> dict:
    """Largest-remainder split of ``batch`` rows by ``shares`` (ties: dict order of loaders)."""
    unknown = sorted(set(shares) - set(names))
    if unknown:
        raise ValueError(f"shares name unknown domains {unknown}; domains are {names}")
    vals = {k: _finite(f"share of {k!r}", shares.get(k, 0.0)) for k in names}
    if any(v < 0 for v in vals.values()) or sum(vals.values()) <= 0:
        raise ValueError(f"shares must be >= 0 with a positive sum, got {shares}")
    total = sum(vals.values())
    exact = {k: v / total * batch for k, v in vals.items()}
    counts = {k: math.floor(e) for k, e in exact.items()}
    left = batch - sum(counts.values())
    by_rem = sorted(names, key=lambda k: (-(exact[k] - counts[k]), names.index(k)))
    for k in by_rem[:left]:
        counts[k] += 1
    return counts


class DomainMix:
    """Batches composed row-wise from several domains, by shares that depend on the step.

    ``loaders``: ``{domain: loader}`` (e.g. :class:`~workbench.data.BlockLoader`, each with
    ``batch_size >= batch_size``); ``weights_fn(step) -> {domain: share}`` (shares are
    normalised; missing domains get 0). Row counts per batch: largest-remainder rounding of
    ``share * batch_size`` (ties: loader order); a domain's loader is advanced only when it
    contributes rows, and the rows are shuffled with a generator seeded from ``(seed, step)``.
    ``batch_size`` defaults to the smallest loader batch size. ``counts(step)`` gives the row
    counts; ``state_dict()`` holds the step and every loader's state.

    Example::

        >>> import torch
        >>> from workbench.data import BlockLoader
        >>> web = BlockLoader(torch.zeros(40, 9, dtype=torch.long), batch_size=10)
        >>> code = BlockLoader(torch.ones(40, 9, dtype=torch.long), batch_size=10)
        >>> mix = DomainMix({"web": web, "code": code},
        ...                 upsample_end({"web": 0.9, "code": 0.1}, "code", 0.5, 0.8, 10))
        >>> mix.counts(0), mix.counts(8)
        ({'web': 9, 'code': 1}, {'web': 5, 'code': 5})
    """

    def __init__(self, loaders: dict, weights_fn: Callable[[int], dict], seed: int = 0,
                 batch_size: int | None = None):
        if not isinstance(loaders, dict) or not loaders:
            raise ValueError("loaders must be a non-empty dict {domain: loader}")
        if not callable(weights_fn):
            raise ValueError("weights_fn must be callable: step -> {domain: share}")
        self.loaders, self.names, self.weights_fn = loaders, list(loaders), weights_fn
        sizes = [getattr(ld, "batch_size", None) for ld in loaders.values()]
        if batch_size is None:
            if any(s is None for s in sizes):
                raise ValueError("a loader has no batch_size attribute; pass batch_size=")
            batch_size = min(sizes)
        self.batch_size = _nonneg_int("batch_size", batch_size, 1)
        small = [n for n, s in zip(self.names, sizes) if s is not None and s < self.batch_size]
        if small:
            raise ValueError(f"loaders {small} yield fewer rows than batch_size="
                             f"{self.batch_size}; give them batch_size >= {self.batch_size}")
        self.seed = _nonneg_int("seed", seed)
        self.step = 0

    def counts(self, step: int | None = None) -> dict:
        step = self.step if step is None else step
        return _row_counts(dict(self.weights_fn(step)), self.names, self.batch_size)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = _compose([(f"loader {n!r}", self.loaders[n], k) for n, k in self.counts().items()],
                       self.seed, self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": int(self.step), "seed": int(self.seed),
                "loaders": {n: ld.state_dict() for n, ld in self.loaders.items()}}

    def load_state_dict(self, state: dict) -> None:
        if not {"step", "seed", "loaders"} <= set(state):
            raise ValueError("mix state must be the dict from DomainMix.state_dict() (keys step, "
                             "seed, loaders)")
        if set(state["loaders"]) != set(self.names):
            raise ValueError(f"state has domains {sorted(state['loaders'])}, this mix "
                             f"{sorted(self.names)}; build it with the same loaders")
        for n, ld in self.loaders.items():
            ld.load_state_dict(state["loaders"][n])
        self.step, self.seed = int(state["step"]), int(state["seed"])


def upsample_end(base_shares: dict, domain: str, share: float, start_fraction: float,
                 total_steps: int) -> Callable[[int], dict]:
    """``weights_fn`` for :class:`DomainMix`: ``base_shares`` until step
    ``floor(start_fraction * total_steps)``, then ``domain`` gets ``share`` and the other
    domains split ``1 - share`` in their base proportions (a step change; e.g.
    ``start_fraction=0.85`` upsamples over the last 15% of steps).

    Example::

        >>> fn = upsample_end({"web": 0.8, "code": 0.1, "math": 0.1}, "math", 0.3, 0.9, 100)
        >>> fn(89)["math"], round(fn(90)["math"], 6), round(fn(90)["web"], 6)
        (0.1, 0.3, 0.622222)
    """
    base = {k: _finite(f"share of {k!r}", v) for k, v in dict(base_shares).items()}
    if domain not in base:
        raise ValueError(f"domain {domain!r} is not in base_shares {sorted(base)}; add it "
                         "(its share may be 0)")
    total = sum(base.values())
    if any(v < 0 for v in base.values()) or total <= 0:
        raise ValueError(f"base_shares must be >= 0 with a positive sum, got {base_shares}")
    base = {k: v / total for k, v in base.items()}
    share = _finite("share", share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    start_fraction = _finite("start_fraction", start_fraction)
    if not 0.0 <= start_fraction <= 1.0:
        raise ValueError(f"start_fraction must be in [0, 1] (0.8-0.9 upsamples over the last "
                         f"10-20%), got {start_fraction}")
    _nonneg_int("total_steps", total_steps, 1)
    start = math.floor(start_fraction * total_steps)
    rest = 1.0 - base[domain]
    late = {}
    for k, v in base.items():
        if k == domain:
            late[k] = share
        elif rest > 0:
            late[k] = v / rest * (1.0 - share)
        else:
            late[k] = 0.0
    if sum(late.values()) <= 0:
        raise ValueError("with these shares the late mix is empty; give other domains a share "
                         "or use share > 0")

    def weights_fn(step: int) -> dict:
        return dict(late) if step >= start else dict(base)

    return weights_fn
