"""Continual pre-training: phases of domains, re-warmed schedules, replay, and the metrics of forgetting.

A continual run trains one model on domain A, then continues on domain B (then optionally C),
as **one** trainer run (:mod:`workbench.train`) over the whole horizon: one log, one checkpoint,
one schedule that spans every phase, and a batch source that switches domains at the phase
boundaries. Every evaluation logs the validation loss of every domain of the run
(``val_losses: {domain: loss}`` in each evaluation event; ``val_loss`` is the last phase's domain).

* :class:`Phase` - a domain, a number of steps and a data policy: ``replay`` (fraction of every
  batch from the earlier domains, Abbes et al. 2508.01908; Ibrahim et al. 2403.08763), a data cap
  ``max_tokens`` (a small subset seen for several epochs, Guo et al. 2406.14833) and end-of-phase
  upsampling of one domain (``upsample``, "Does your data spark joy?").
* :class:`ContinualConfig` - the phases, the schedule family across phases
  (:data:`SCHEDULES`) and the training settings; :func:`build_schedule` turns it into one
  :class:`~workbench.schedules.Schedule`.
* :func:`run_continual` / :func:`make_trainer` - run (or resume) it in a run directory.
* Metrics over run logs (lists of events, a ``log.jsonl`` or a run directory):
  :func:`forgetting`, :func:`adaptation`, :func:`stability_gap`, :func:`compute_to_baseline`.
* :data:`GRIDS`, :func:`run_grid`, :func:`metric_table` - named comparison grids
  (schedules x replay fractions x seeds), resumable, and their metric table.
* :func:`fit_continuation` - fit the annealing law (2408.11029) across the re-warm, where its
  ``S2`` goes negative, and predict the rest of the run.

Schedules (``peak = lr``, ``low = min_lr_ratio * lr``, per-phase warmup
``warmup_fraction * steps``):

``rewarm``    cosine on phase 0, then for each later phase a re-warm from the last LR to ``peak``
              and a cosine decay to ``low`` (:func:`workbench.schedules.rewarm`, Gupta et al. 2308.04014).
``wsd``       WSD per phase: warmup (re-warm from ``low``), stable at ``peak``, linear decay to ``low``
              over the last ``decay_fraction`` of the phase.
``infinite``  Ibrahim et al. / Singh et al.: phase 0 warms up and cools down (inverse-sqrt, alpha 10)
              to ``const_lr_ratio * peak``; the constant LR is reused by every later phase (no
              re-warm). With ``infinite_anneal="each"`` every phase ends with an exponential anneal
              to ``low`` over its last ``anneal_fraction`` and the next phase restarts at the
              constant LR (a single chain: the paper instead branches the anneal off the constant
              run; here the next phase continues from the annealed weights); ``"last"`` anneals only
              at the end of the run.
``constant``  ``peak`` throughout (after the first warmup).

Steps: an event with ``"step": t`` comes after ``t + 1`` updates. Phase ``i`` covers the steps
``[start_i, start_i + steps_i)``; the **shift step** of phase ``i > 0`` is ``start_i``, the first
update on the new domain, so the evaluations "before the shift" are those with ``step < shift``
(the last of them, at ``shift - 1``, is the model at the end of the previous phase).

Example:
    >>> from workbench.continual import ContinualConfig, Phase, build_schedule
    >>> cfg = ContinualConfig([Phase("stdlib", 100), Phase("docs", 100, replay=0.25)],
    ...                       schedule="rewarm", lr=1e-3, eval_interval=10)
    >>> s = build_schedule(cfg)
    >>> s.total_steps, round(s(99), 6), round(s(102), 6), s(105)   # end of A (low), re-warm, peak again
    (200, 1e-05, 0.000406, 0.001)
    >>> cfg.shift_steps, cfg.domains
    ([100], ['stdlib', 'docs'])
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .data.sampler import DomainMix
from .runlog import read_json, read_run_log, write_json_atomic

__all__ = ["Phase", "ContinualConfig", "SCHEDULES", "DOMAINS", "build_schedule", "row_table",
           "ContinualMix", "make_source", "domain_blocks", "make_trainer", "finish", "run_continual",
           "summarize", "domain_losses", "forgetting", "adaptation", "stability_gap",
           "compute_to_baseline", "fit_continuation", "GRIDS", "GridRun", "grid_runs", "run_grid",
           "metric_table", "aggregate_table", "CONTINUAL_FILE", "CONTINUAL_CONFIG_FILE"]

SCHEDULES = ("rewarm", "wsd", "infinite", "constant")
#: built-in domains: the two corpora, and the two parts of ``docs`` (docstrings / language reference)
DOMAINS = ("stdlib", "docs", "docstrings", "topics")
CONTINUAL_FILE = "continual.json"          # written when a continual run has finished
CONTINUAL_CONFIG_FILE = "continual_config.json"


# ---------------------------------------------------------------------------------------- config
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _int_ok(v, low: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low


def _frac_ok(v, low: float = 0.0, high: float = 1.0, low_open: bool = False, high_open: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)


@dataclass
class Phase:
    """One phase of a continual run.

    Args:
        domain: the phase's domain (one of :data:`DOMAINS`, or a key of ``train_blocks``).
        steps: optimizer updates in this phase (a multiple of the config's ``eval_interval``).
        replay: fraction of every batch from the replay domains, in [0, 1). Rows are apportioned
            by error diffusion, so over the phase the replayed rows are ``replay * batch * steps``
            to within one row (exactly, when that is a whole number).
        replay_domains: the domains replayed (split equally); ``None``: every domain of the
            earlier phases.
        max_tokens: cap on this domain's training tokens (default: the config's ``max_tokens``);
            a small cap makes the phase run several epochs over a subset.
        upsample: a domain (the phase's, or a replay domain) whose share becomes
            ``upsample_share`` over the last ``upsample_fraction`` of the phase; the other
            domains keep their relative shares (:func:`workbench.data.upsample_end`).

    Example:
        >>> Phase("docs", 200, replay=0.1).replay
        0.1
    """

    domain: str
    steps: int
    replay: float = 0.0
    replay_domains: tuple | None = None
    max_tokens: int | None = None
    upsample: str | None = None
    upsample_share: float = 0.5
    upsample_fraction: float = 0.15

    def __post_init__(self):
        _check(isinstance(self.domain, str) and bool(self.domain),
               f"Phase.domain must be a domain name such as 'docs', got {self.domain!r}")
        _check(_int_ok(self.steps, 1), f"Phase.steps must be an integer >= 1, got {self.steps!r}")
        _check(_frac_ok(self.replay, 0.0, 1.0, high_open=True),
               f"Phase.replay must be a fraction in [0, 1), got {self.replay!r} (1 would leave no new data)")
        if self.replay_domains is not None:
            if isinstance(self.replay_domains, str):
                self.replay_domains = (self.replay_domains,)
            self.replay_domains = tuple(self.replay_domains)
            _check(all(isinstance(d, str) for d in self.replay_domains) and self.domain not in self.replay_domains,
                   f"Phase.replay_domains must be names of other domains, got {self.replay_domains!r}")
        _check(self.max_tokens is None or _int_ok(self.max_tokens, 2),
               f"Phase.max_tokens must be an integer >= 2 or None, got {self.max_tokens!r}")
        _check(_frac_ok(self.upsample_share), f"Phase.upsample_share must be in [0, 1], got {self.upsample_share!r}")
        _check(_frac_ok(self.upsample_fraction, low_open=True),
               f"Phase.upsample_fraction must be in (0, 1] (0.1-0.2 is usual), got {self.upsample_fraction!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["replay_domains"] is not None:
            d["replay_domains"] = list(d["replay_domains"])
        return d


@dataclass
class ContinualConfig:
    """A continual run: phases, the schedule across them and the training settings.

    ``lr`` is the peak LR of every (re-)warmed phase; ``min_lr_ratio * lr`` the end of every
    decay; ``warmup_fraction`` the (re-)warmup length of each phase. ``eval_interval`` must
    divide every phase length, so that the model is evaluated at the end of every phase.
    ``val_domain`` (default: the last phase's domain) is the run's ``val_loss``.
    ``mer_interval``/``mer_beta`` switch on meta-experience replay (see :mod:`workbench.train`).

    Example:
        >>> cfg = ContinualConfig([Phase("stdlib", 20), Phase("docs", 20, replay=0.25)], eval_interval=10)
        >>> ContinualConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    phases: list
    schedule: str = "rewarm"
    lr: float = 3e-3
    min_lr_ratio: float = 0.01
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2            # wsd
    const_lr_ratio: float = 0.1            # infinite: constant LR = const_lr_ratio * lr
    cooldown_fraction: float = 0.15        # infinite: of phase 0
    anneal_fraction: float = 0.1           # infinite: of each annealed phase
    infinite_anneal: str = "each"
    model: str = "tiny"
    batch_size: int = 8
    seq_len: int = 64
    max_tokens: int | None = 200_000       # training tokens per domain (None: all)
    val_max_tokens: int | None = None      # None: just enough for eval_batches
    eval_interval: int = 10
    eval_batches: int = 4
    checkpoint_interval: int = 0
    seed: int = 0
    mer_interval: int = 0
    mer_beta: float = 0.01
    optimizer: str = "adamw"
    weight_decay: float | None = None
    grad_clip: float | None = 1.0
    device: str = "auto"
    val_domain: str | None = None
    eval_domains: tuple | None = None      # None: every domain of the run
    progress: bool = False

    def __post_init__(self):
        phases = [p if isinstance(p, Phase) else Phase(**p) for p in (self.phases or [])]
        _check(len(phases) >= 1, "ContinualConfig needs at least one Phase, e.g. [Phase('stdlib', 200), "
                                 "Phase('docs', 200, replay=0.1)]")
        self.phases = phases
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.infinite_anneal in ("each", "last"),
               f"infinite_anneal must be 'each' or 'last', got {self.infinite_anneal!r}")
        _check(_frac_ok(self.lr, low_open=True, high=10.0), f"lr must be a number > 0, got {self.lr!r}")
        for name in ("min_lr_ratio", "warmup_fraction", "decay_fraction", "const_lr_ratio",
                     "cooldown_fraction", "anneal_fraction"):
            _check(_frac_ok(getattr(self, name), high_open=name == "warmup_fraction"),
                   f"{name} must be a fraction in [0, 1], got {getattr(self, name)!r}")
        if self.schedule == "infinite":
            _check(0 < self.min_lr_ratio < self.const_lr_ratio,
                   f"the infinite schedule anneals from const_lr_ratio={self.const_lr_ratio} to "
                   f"min_lr_ratio={self.min_lr_ratio}: need 0 < min_lr_ratio < const_lr_ratio")
        _check(_int_ok(self.eval_interval, 1), f"eval_interval must be an integer >= 1, got {self.eval_interval!r}")
        for i, p in enumerate(phases):
            _check(p.steps % self.eval_interval == 0,
                   f"phase {i} has {p.steps} steps, not a multiple of eval_interval={self.eval_interval}; "
                   "make every phase length a multiple so that each phase end is evaluated")
            if p.replay > 0:
                _check(bool(self._replay_domains(i)),
                       f"phase {i} replays {p.replay} of each batch but has no earlier domain; "
                       "set replay_domains=(...) (e.g. a re-training baseline on A+B)")
            if p.upsample is not None:
                _check(p.upsample == p.domain or p.upsample in self._replay_domains(i),
                       f"phase {i} upsamples {p.upsample!r}, which is neither its domain nor a replay domain")
        for name in ("batch_size", "seq_len", "eval_batches"):
            _check(_int_ok(getattr(self, name), 1), f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("checkpoint_interval", "seed", "mer_interval"):
            _check(_int_ok(getattr(self, name), 0), f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.eval_domains is not None:
            self.eval_domains = tuple(self.eval_domains)
        if self.val_domain is not None:
            _check(self.val_domain in self.domains,
                   f"val_domain={self.val_domain!r} is not a domain of the run {self.domains}")

    def _replay_domains(self, i: int) -> tuple:
        p = self.phases[i]
        if p.replay_domains is not None:
            return p.replay_domains
        seen = []
        for q in self.phases[:i]:
            if q.domain != p.domain and q.domain not in seen:
                seen.append(q.domain)
        return tuple(seen)

    @property
    def starts(self) -> list[int]:
        """First step of every phase."""
        return [int(x) for x in np.cumsum([0] + [p.steps for p in self.phases])[:-1]]

    @property
    def shift_steps(self) -> list[int]:
        """The shift step of every phase after the first (its first update)."""
        return self.starts[1:]

    @property
    def total_steps(self) -> int:
        return int(sum(p.steps for p in self.phases))

    @property
    def domains(self) -> list[str]:
        """Every domain of the run in order of first use (phase domains, then replay domains)."""
        out: list[str] = []
        for i, p in enumerate(self.phases):
            for d in (p.domain,) + tuple(self._replay_domains(i) if p.replay > 0 else ()):
                if d not in out:
                    out.append(d)
        if self.eval_domains:
            out += [d for d in self.eval_domains if d not in out]
        return out

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["phases"] = [p.to_dict() for p in self.phases]
        if d["eval_domains"] is not None:
            d["eval_domains"] = list(d["eval_domains"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ContinualConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        _check(not unknown, f"unknown ContinualConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------- schedule
def build_schedule(config: ContinualConfig):
    """The run's LR schedule over all phases (see the module docstring for the families).

    Example:
        >>> cfg = ContinualConfig([Phase("stdlib", 100), Phase("docs", 100)], schedule="infinite",
        ...                       lr=1.0, warmup_fraction=0.05)
        >>> s = build_schedule(cfg)
        >>> round(s(50), 6), round(s(99), 4), round(s(100), 6), round(s(199), 4)   # const, annealed, const again
        (0.1, 0.0126, 0.1, 0.0126)
    """
    from . import schedules as S

    cfg = config
    peak, low = float(cfg.lr), float(cfg.lr) * cfg.min_lr_ratio
    ns = [p.steps for p in cfg.phases]

    def warm(n):
        w = int(round(cfg.warmup_fraction * n))
        return min(w, n - 1)

    if cfg.schedule == "constant":
        return S.constant(peak_lr=peak, total_steps=cfg.total_steps, warmup_steps=warm(ns[0]))
    if cfg.schedule == "rewarm":
        s = S.cosine(peak_lr=peak, total_steps=ns[0], warmup_steps=warm(ns[0]), min_lr=low)
        for n in ns[1:]:
            s = S.rewarm(s, peak_lr=peak, cycle_steps=n, warmup_steps=warm(n), min_lr=low, decay="cosine")
        return s
    if cfg.schedule == "wsd":
        def n_decay(n):
            return max(1, int(round(cfg.decay_fraction * n)))
        s = S.wsd(peak_lr=peak, total_steps=ns[0], warmup_steps=warm(ns[0]), min_lr=low,
                  decay_steps=min(n_decay(ns[0]), ns[0] - warm(ns[0])), decay="linear")
        for n in ns[1:]:
            w = warm(n)
            stable = max(0, n - w - n_decay(n))
            if w + stable >= n:
                stable = n - w - 1
            s = S.rewarm(s, peak_lr=peak, cycle_steps=n, warmup_steps=w, stable_steps=stable, min_lr=low,
                         decay="linear")
        return s
    # infinite
    const = peak * cfg.const_lr_ratio
    parts = []
    last = len(ns) - 1
    for i, n in enumerate(ns):
        anneal = int(round(cfg.anneal_fraction * n)) if (cfg.infinite_anneal == "each" or i == last) else 0
        if i == 0:
            w = warm(n)
            cool = min(int(round(cfg.cooldown_fraction * n)), n - w - anneal)
            parts.append(S.infinite(peak_lr=peak, total_steps=n, warmup_steps=w, cooldown_steps=cool,
                                    anneal_steps=anneal, const_lr=const, min_lr=low))
        else:
            parts.append(S.infinite(peak_lr=const, total_steps=n, warmup_steps=0, cooldown_steps=0,
                                    anneal_steps=anneal, const_lr=const, min_lr=low))
    return parts[0] if len(parts) == 1 else S.join(parts, cfg.starts[1:])


# ---------------------------------------------------------------------------------------- data
def _apportion(want: dict, batch: int) -> dict:
    """Whole rows per domain summing to ``batch``, closest to ``want`` (largest remainder, ties: order)."""
    names = list(want)
    v = {k: max(0.0, want[k]) for k in names}
    k = {n: int(math.floor(v[n] + 1e-9)) for n in names}
    rem = {n: v[n] - k[n] for n in names}
    left = batch - sum(k.values())
    if left > 0:
        for n in sorted(names, key=lambda n: (-rem[n], names.index(n)))[:left]:
            k[n] += 1
    while left < 0:
        n = min((n for n in names if k[n] > 0), key=lambda n: (rem[n], -names.index(n)))
        k[n] -= 1
        left += 1
    return k


def _phase_shares(config: ContinualConfig, i: int, t: int) -> dict:
    from .data.sampler import upsample_end

    p = config.phases[i]
    base = {p.domain: 1.0 - p.replay}
    reps = config._replay_domains(i) if p.replay > 0 else ()
    for d in reps:
        base[d] = base.get(d, 0.0) + p.replay / len(reps)
    if p.upsample is None:
        return base
    base.setdefault(p.upsample, 0.0)
    fn = upsample_end(base, p.upsample, p.upsample_share, 1.0 - p.upsample_fraction, p.steps)
    return fn(t)


def row_table(config: ContinualConfig) -> list[dict]:
    """Rows per domain of every batch of the run, ``[{domain: rows}, ...]`` (one dict per step).

    Within each phase the shares are turned into whole rows by error diffusion (the rounding
    error of a step is carried to the next), so each domain's rows over a phase equal its share
    times ``batch_size * steps`` to within one row.

    Example:
        >>> cfg = ContinualConfig([Phase("stdlib", 10), Phase("docs", 10, replay=0.1)],
        ...                       batch_size=8, eval_interval=10)
        >>> table = row_table(cfg)
        >>> table[0], sum(r.get("stdlib", 0) for r in table[10:])     # 10% of 80 rows
        ({'stdlib': 8}, 8)
    """
    out = []
    b = config.batch_size
    for i, p in enumerate(config.phases):
        carry: dict = {}
        for t in range(p.steps):
            shares = _phase_shares(config, i, t)
            want = {d: s * b + carry.get(d, 0.0) for d, s in shares.items()}
            for d in carry:
                want.setdefault(d, carry[d])
            rows = _apportion(want, b)
            carry = {d: want[d] - rows[d] for d in want}
            out.append({d: n for d, n in rows.items() if n})
    return out


class ContinualMix(DomainMix):
    """The batch source of a continual run: a :class:`~workbench.data.DomainMix` whose row
    counts per step come from a precomputed table (:func:`row_table`). Resumable from
    ``state_dict()`` (the step and every domain loader's position)."""

    def __init__(self, loaders: dict, table: Sequence[dict], seed: int = 0, batch_size: int | None = None):
        self.table = [dict(r) for r in table]
        super().__init__(loaders, lambda step: self.table[min(step, len(self.table) - 1)], seed=seed,
                         batch_size=batch_size)
        for step, rows in enumerate(self.table):
            bad = set(rows) - set(self.names)
            if bad:
                raise ValueError(f"step {step} takes rows from {sorted(bad)}, which have no loader")
            if sum(rows.values()) != self.batch_size:
                raise ValueError(f"step {step} has {sum(rows.values())} rows, not batch_size={self.batch_size}")

    def counts(self, step: int | None = None) -> dict:
        step = self.step if step is None else step
        rows = self.table[min(step, len(self.table) - 1)]
        return {n: int(rows.get(n, 0)) for n in self.names}


def _domain_texts(name: str, split: str):
    if name in ("stdlib", "docs"):
        return name
    from pydoc_data.topics import topics

    from .data import load_corpus
    from .data.corpora import split_of

    topic_texts = {text.strip() for key, text in topics.items() if split_of(f"topic:{key}") == split}
    docs = load_corpus("docs", split=split)
    if name == "topics":
        return [d for d in docs if d in topic_texts]
    return [d for d in docs if d not in topic_texts]


@functools.lru_cache(maxsize=32)
def domain_blocks(name: str, split: str = "train", seq_len: int = 64, max_tokens: int | None = None) -> torch.Tensor:
    """Blocks ``[n, seq_len + 1]`` of a built-in domain (:data:`DOMAINS`), byte tokenizer.

    ``stdlib`` and ``docs`` are the corpora of :mod:`workbench.data.corpora`; ``docstrings``
    and ``topics`` split ``docs`` into its per-file docstrings (API prose) and the interpreter's
    documentation topics (language-reference prose). Cached in memory.

    Example:
        >>> domain_blocks("topics", "val", seq_len=32, max_tokens=3300).shape
        torch.Size([103, 33])
    """
    from .data import get_tokenizer, load_blocks

    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; built-in domains are {DOMAINS} "
                         "(or pass train_blocks=/val_blocks= {domain: blocks})")
    texts = _domain_texts(name, split)
    if isinstance(texts, str):
        return load_blocks(texts, split=split, block_size=seq_len, tokenizer=get_tokenizer("byte"),
                           max_tokens=max_tokens)
    # a list given to load_blocks would be hash-split again: pack the documents of this split here
    stream = get_tokenizer("byte").encode_documents(texts).astype(np.int64)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"too little {name!r} {split} data for one block of {seq_len + 1} tokens; raise max_tokens")
    rows = np.lib.stride_tricks.sliding_window_view(stream[: n * seq_len + 1], seq_len + 1)[::seq_len]
    return torch.from_numpy(np.ascontiguousarray(rows))


def _train_blocks(config: ContinualConfig, given: dict | None) -> dict:
    out = {}
    for d in config.domains:
        if given is not None and d in given:
            out[d] = given[d]
            continue
        if given is not None and d not in DOMAINS:
            raise ValueError(f"train_blocks has no blocks for domain {d!r}")
        caps = [p.max_tokens for p in config.phases if p.domain == d and p.max_tokens is not None]
        cap = caps[0] if caps else config.max_tokens
        out[d] = domain_blocks(d, "train", config.seq_len, cap)
    return out


def _val_blocks(config: ContinualConfig, given: dict | None) -> dict:
    need = config.val_max_tokens or config.eval_batches * config.batch_size * (config.seq_len + 1) + 1
    out = {}
    for d in config.domains:
        if given is not None and d in given:
            out[d] = given[d]
        else:
            out[d] = domain_blocks(d, "val", config.seq_len, need)
    return out


def make_source(config: ContinualConfig, train_blocks: dict | None = None) -> ContinualMix:
    """The run's batch source: one seeded :class:`~workbench.data.BlockLoader` per domain, mixed
    by :func:`row_table`. ``train_blocks`` (``{domain: blocks}``) overrides the built-in domains.

    Example:
        >>> import torch
        >>> cfg = ContinualConfig([Phase("a", 10), Phase("b", 10, replay=0.25)], batch_size=4, eval_interval=10)
        >>> src = make_source(cfg, {"a": torch.zeros(20, 9, dtype=torch.long), "b": torch.ones(20, 9, dtype=torch.long)})
        >>> [int(next(src)[0][:, 0].sum()) for _ in range(12)][-3:]        # rows from b at steps 9, 10, 11
        [0, 3, 3]
    """
    from .data import BlockLoader

    blocks = _train_blocks(config, train_blocks)
    loaders = {d: BlockLoader(b, config.batch_size, seed=config.seed * 7 + 1009 * j, shuffle=True)
               for j, (d, b) in enumerate(blocks.items())}
    return ContinualMix(loaders, row_table(config), seed=config.seed, batch_size=config.batch_size)


# ---------------------------------------------------------------------------------------- running
def _train_config(config: ContinualConfig, run_dir):
    from .train import TrainConfig

    cfg = config
    return TrainConfig(model=cfg.model, run_dir=os.fspath(run_dir) if run_dir is not None else None,
                       steps=cfg.total_steps, schedule=build_schedule(cfg), lr=cfg.lr, optimizer=cfg.optimizer,
                       weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       grad_clip=cfg.grad_clip, eval_interval=cfg.eval_interval, eval_batches=cfg.eval_batches,
                       checkpoint_interval=cfg.checkpoint_interval, seed=cfg.seed, device=cfg.device,
                       progress=cfg.progress, val_domain=cfg.val_domain or cfg.phases[-1].domain,
                       mer_interval=cfg.mer_interval, mer_beta=cfg.mer_beta, track_update_norm=False)


_RUN_FILES = ("log.jsonl", "config.json", "summary.json", "model.safetensors", "state.pt", CONTINUAL_FILE)


def make_trainer(config: ContinualConfig, run_dir: str | os.PathLike | None = None, *,
                 callbacks: Iterable[Callable[[dict], Any]] = (), stop_event: threading.Event | None = None,
                 pause_event: threading.Event | None = None, train_blocks: dict | None = None,
                 val_blocks: dict | None = None, model: torch.nn.Module | None = None):
    """A :class:`~workbench.train.Trainer` for the continual run (not started), for a live view.

    In ``run_dir``: a run with a checkpoint is resumed; one that was killed before its first
    checkpoint is restarted cleanly (its files removed). The config is saved as
    ``continual_config.json``; a different config in the same directory is refused.
    Call :func:`finish` after ``trainer.run()`` to write ``continual.json``.
    """
    from . import checkpoint as ckpt
    from .train import Trainer

    resume = False
    if run_dir is not None:
        run_dir = os.fspath(run_dir)
        path = os.path.join(run_dir, CONTINUAL_CONFIG_FILE)
        if os.path.exists(path):
            saved = read_json(path)
            if saved != config.to_dict():
                raise ValueError(f"{run_dir!r} holds a continual run with another configuration; "
                                 "choose another run_dir or delete it")
        if os.path.exists(os.path.join(run_dir, CONTINUAL_FILE)):
            raise ValueError(f"{run_dir!r} holds a finished continual run; read it with summarize(...) "
                             "or choose another run_dir")
        if ckpt.has_checkpoint(run_dir):
            resume = True
        else:
            for name in _RUN_FILES:
                if os.path.exists(os.path.join(run_dir, name)):
                    os.remove(os.path.join(run_dir, name))
            shutil.rmtree(os.path.join(run_dir, ckpt.CHECKPOINTS_DIR), ignore_errors=True)
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(path, config.to_dict())
    source = make_source(config, train_blocks)
    val = _val_blocks(config, val_blocks)
    return Trainer(_train_config(config, run_dir), model=model, train_data=source, val_data=val,
                   resume=resume, callbacks=callbacks, stop_event=stop_event, pause_event=pause_event)


def finish(config: ContinualConfig, trainer) -> dict:
    """The continual summary of a trainer that ran (written to ``continual.json`` when complete)."""
    out = summarize(config, trainer.history if trainer.run_dir is None else
                    os.path.join(trainer.run_dir, "log.jsonl"))
    out["status"] = trainer.status
    out["train"] = trainer.result
    if trainer.run_dir is not None and trainer.status == "completed":
        write_json_atomic(os.path.join(trainer.run_dir, CONTINUAL_FILE), out)
    return out


def run_continual(config: ContinualConfig, run_dir: str | os.PathLike | None = None, *,
                  callbacks: Iterable[Callable[[dict], Any]] = (), stop_event: threading.Event | None = None,
                  pause_event: threading.Event | None = None, train_blocks: dict | None = None,
                  val_blocks: dict | None = None, model: torch.nn.Module | None = None) -> dict:
    """Run (or resume, or return the finished) continual run; returns its summary (:func:`summarize`).

    Example:
        >>> cfg = ContinualConfig([Phase("stdlib", 10), Phase("docs", 10, replay=0.25)], batch_size=4,
        ...                       seq_len=32, max_tokens=20_000, eval_interval=5, eval_batches=1)
        >>> out = run_continual(cfg)                                    # doctest: +SKIP
        >>> sorted(out["final"]), out["phases"][1]["replay"]            # doctest: +SKIP
        (['docs', 'stdlib'], 0.25)
    """
    if run_dir is not None and os.path.exists(os.path.join(os.fspath(run_dir), CONTINUAL_FILE)):
        saved = read_json(os.path.join(os.fspath(run_dir), CONTINUAL_CONFIG_FILE))
        if saved != config.to_dict():
            raise ValueError(f"{os.fspath(run_dir)!r} holds a finished run with another configuration")
        return read_json(os.path.join(os.fspath(run_dir), CONTINUAL_FILE))
    trainer = make_trainer(config, run_dir, callbacks=callbacks, stop_event=stop_event, pause_event=pause_event,
                           train_blocks=train_blocks, val_blocks=val_blocks, model=model)
    trainer.run()
    return finish(config, trainer)


def summarize(config: ContinualConfig, log) -> dict:
    """Per-phase summaries and the metrics of one continual run from its log.

    Returns ``{"phases": [{phase, domain, start, end, replay, val_losses (at the phase end)}],
    "final": {domain: loss}, "forgetting": {shift: {domain: ...}}, "stability_gap": {shift:
    {domain: {...}}}, "config": ...}`` for every shift and every domain seen before it (forgetting)
    or every domain (gap).
    """
    records = _records(log)
    phases = []
    for i, (p, s) in enumerate(zip(config.phases, config.starts)):
        end = s + p.steps - 1
        at = _losses_at(records, end)
        phases.append({"phase": i, "domain": p.domain, "start": s, "end": end, "replay": p.replay,
                       "val_losses": at})
    out = {"phases": phases, "final": _losses_at(records, config.total_steps - 1),
           "forgetting": {}, "stability_gap": {}, "config": config.to_dict()}
    for i, shift in enumerate(config.shift_steps, start=1):
        seen = [p.domain for p in config.phases[:i]]
        end = config.starts[i] + config.phases[i].steps - 1
        out["forgetting"][str(shift)] = {d: forgetting(records, d, shift, at_step=end) for d in dict.fromkeys(seen)
                                         if d != config.phases[i].domain}
        out["stability_gap"][str(shift)] = {d: stability_gap(records, d, shift, end_step=end)
                                            for d in config.domains}
    return out


# ---------------------------------------------------------------------------------------- metrics
def _records(log) -> list[dict]:
    if isinstance(log, (str, os.PathLike)):
        path = os.fspath(log)
        if os.path.isdir(path):
            path = os.path.join(path, "log.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path!r} does not exist: pass a run directory, a log.jsonl or a list of events")
        return read_run_log(path, dedupe=True)
    if not isinstance(log, (list, tuple)):
        raise ValueError(f"log must be a list of events, a log.jsonl path or a run directory, got {type(log).__name__}")
    by_step = {}
    for r in log:
        by_step[int(r["step"])] = r
    return [by_step[k] for k in sorted(by_step)]


def _losses_at(records: list[dict], step: int) -> dict | None:
    for r in records:
        if int(r["step"]) == step and r.get("val_losses") is not None:
            return dict(r["val_losses"])
    return None


def domain_losses(log, domain) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses)`` of one domain's validation loss at every evaluation of a run.

    ``domain`` is a key of the events' ``val_losses``, a tuple of keys (their mean), or
    ``"val_loss"`` (the events' primary ``val_loss``, for logs of ordinary runs).

    Example:
        >>> log = [{"step": 9, "val_losses": {"a": 2.0, "b": 4.0}}, {"step": 10}, {"step": 19, "val_losses": {"a": 1.5, "b": 3.0}}]
        >>> domain_losses(log, "a")[1].tolist(), domain_losses(log, ("a", "b"))[1].tolist()
        ([2.0, 1.5], [3.0, 2.25])
    """
    records = _records(log)
    names = tuple(domain) if isinstance(domain, (tuple, list)) else (domain,)
    steps, vals = [], []
    for r in records:
        if names == ("val_loss",):
            if r.get("val_loss") is not None:
                steps.append(int(r["step"]))
                vals.append(float(r["val_loss"]))
            continue
        vl = r.get("val_losses")
        if not vl or not all(n in vl and vl[n] is not None for n in names):
            continue
        steps.append(int(r["step"]))
        vals.append(float(np.mean([vl[n] for n in names])))
    if not steps:
        seen = sorted({k for r in records for k in (r.get("val_losses") or {})})
        raise ValueError(f"the log has no validation loss for {domain!r}; its domains are {seen}")
    return np.asarray(steps, dtype=np.int64), np.asarray(vals, dtype=np.float64)


def forgetting(log, domain, shift_step: int, at_step: int | None = None) -> float:
    """Loss on ``domain`` now minus its best before the shift: ``L(now) - min_{s < shift} L(s)``.

    "Now" is the last evaluation at or before ``at_step`` (default: the last of the log);
    "before the shift" are the evaluations with ``step < shift_step``. Positive = forgotten.

    Example:
        >>> log = [{"step": s, "val_losses": {"A": v}} for s, v in [(9, 3.0), (19, 2.5), (29, 2.9), (39, 2.7)]]
        >>> round(forgetting(log, "A", shift_step=20), 6), round(forgetting(log, "A", 20, at_step=29), 6)
        (0.2, 0.4)
    """
    steps, vals = domain_losses(log, domain)
    before = vals[steps < shift_step]
    if before.size == 0:
        raise ValueError(f"no evaluation of {domain!r} before the shift step {shift_step}; evaluate during phase A")
    now = vals if at_step is None else vals[steps <= at_step]
    if now.size == 0:
        raise ValueError(f"no evaluation of {domain!r} at or before step {at_step}")
    return float(now[-1] - before.min())


def adaptation(log, baseline_log, domain, at_step: int | None = None, baseline_step: int | None = None) -> float:
    """Loss on ``domain`` at the end of the run minus that of a baseline (a model trained from
    scratch on the domain with the same compute). Negative = the continual run adapted better.

    Example:
        >>> run = [{"step": 19, "val_losses": {"B": 2.1}}]
        >>> base = [{"step": 9, "val_losses": {"B": 2.4}}]
        >>> round(adaptation(run, base, "B"), 6)
        -0.3
    """
    s, v = domain_losses(log, domain)
    bs, bv = domain_losses(baseline_log, domain)
    v = v if at_step is None else v[s <= at_step]
    bv = bv if baseline_step is None else bv[bs <= baseline_step]
    if v.size == 0 or bv.size == 0:
        raise ValueError("no evaluation at or before the requested step")
    return float(v[-1] - bv[-1])


def stability_gap(log, domain, shift_step: int, end_step: int | None = None) -> dict:
    """Depth and duration of the temporary rise of ``domain``'s loss after the shift.

    Reference ``ref``: the loss at the last evaluation before the shift (``step < shift_step``).
    Over the evaluations from the shift to ``end_step`` (default: the end of the log):

    * ``depth`` = ``max(L) - ref`` over the evaluations up to the recovery (0 if the loss never
      rose above ``ref``), ``peak_step`` where that maximum is;
    * ``duration`` = updates from the shift until the first evaluation after the rise with
      ``L <= ref`` (``step + 1 - shift_step``; 0 without a rise; ``None`` if it never recovers,
      then ``recovered`` is False);
    * ``min_after`` = the lowest loss after the shift.

    Example:
        >>> pts = [(9, 2.0), (19, 2.6), (29, 2.3), (39, 1.9), (49, 1.8)]
        >>> g = stability_gap([{"step": s, "val_losses": {"B": v}} for s, v in pts], "B", shift_step=10)
        >>> round(g["depth"], 6), g["duration"], g["peak_step"], g["recovered"]
        (0.6, 30, 19, True)
    """
    steps, vals = domain_losses(log, domain)
    before = steps < shift_step
    if not before.any():
        raise ValueError(f"no evaluation of {domain!r} before the shift step {shift_step}")
    ref = float(vals[before][-1])
    after = (steps >= shift_step) & (steps <= (end_step if end_step is not None else steps.max()))
    s_after, v_after = steps[after], vals[after]
    out = {"reference": ref, "depth": 0.0, "duration": 0, "peak_step": None, "recovered": True,
           "min_after": float(v_after.min()) if v_after.size else None}
    if v_after.size == 0 or not (v_after > ref).any():
        return out
    first_rise = int(np.argmax(v_after > ref))
    back = np.nonzero(v_after[first_rise:] <= ref)[0]
    stop = first_rise + int(back[0]) if back.size else v_after.size
    window = v_after[:stop]
    k = int(np.argmax(window))
    out.update(depth=float(window[k] - ref), peak_step=int(s_after[k]))
    if back.size:
        out["duration"] = int(s_after[stop] + 1 - shift_step)
    else:
        out.update(duration=None, recovered=False)
    return out


def compute_to_baseline(log, baseline_log, domain, shift_step: int = 0) -> dict:
    """Updates after ``shift_step`` the run needs to reach the baseline's final loss on ``domain``.

    Returns ``{"target", "steps", "fraction", "reached"}``: ``steps`` = ``step + 1 - shift_step``
    at the first evaluation with ``L <= target`` (``None`` if never), ``fraction`` = ``steps``
    over the baseline's number of updates (its last logged step + 1). With a re-training
    baseline on A+B and ``shift_step`` the shift, this is the compute the continual run spends
    on B to match re-training from scratch.

    Example:
        >>> run = [{"step": s, "val_losses": {"B": v}} for s, v in [(9, 3.0), (19, 2.4), (29, 2.1)]]
        >>> base = [{"step": s, "val_losses": {"B": v}} for s, v in [(9, 2.8), (19, 2.3)]]
        >>> compute_to_baseline(run, base, "B", shift_step=10)
        {'target': 2.3, 'steps': 20, 'fraction': 1.0, 'reached': True}
    """
    steps, vals = domain_losses(log, domain)
    bs, bv = domain_losses(baseline_log, domain)
    base_records = _records(baseline_log)
    base_updates = int(base_records[-1]["step"]) + 1
    target = float(bv[-1])
    ok = (steps >= shift_step) & (vals <= target)
    if not ok.any():
        return {"target": target, "steps": None, "fraction": None, "reached": False}
    n = int(steps[np.argmax(ok)] + 1 - shift_step)
    return {"target": target, "steps": n, "fraction": n / base_updates, "reached": True}


# ---------------------------------------------------------------------------------------- annealing law
def fit_continuation(log, config: ContinualConfig, domain: str | None = None, fit_until: int | None = None,
                     lam: float = 0.999, phase: int = -1) -> dict:
    """Fit the annealing law to ``domain``'s loss from the start of ``phase`` up to ``fit_until``,
    then predict the rest of the run.

    The LRs are the whole run's (phase A included), so ``S1`` counts every update, and during
    the re-warm the annealing momentum ``m_i = lam*m_{i-1} + (eta_{i-1} - eta_i)`` turns negative
    (the rise outweighs the remembered drops of phase A), so ``S2 = sum m_i`` falls: the law's
    term ``-C*S2`` raises the predicted loss (2408.11029). ``domain`` defaults to the phase's
    domain, ``fit_until`` to 60% into the phase (at least 5 evaluations are needed). Returns ``{"law", "params", "fit_steps",
    "fit_losses", "fit_pred", "test_steps", "test_losses", "pred", "pred_err", "worst_err",
    "m_min", "S2_drop"}``: ``m_min`` the lowest momentum in the phase (< 0 after a re-warm),
    ``S2_drop`` the total fall of ``S2`` in the phase (the sum of the negative ``m``).
    """
    from .curves import LossCurve
    from .laws import areas, fit

    ph = config.phases[phase]
    i = phase % len(config.phases)
    start = config.starts[i]
    end = start + ph.steps - 1
    domain = domain or ph.domain
    fit_until = fit_until if fit_until is not None else start + int(round(0.6 * ph.steps)) - 1
    steps, vals = domain_losses(log, domain)
    lrs = build_schedule(config).lrs()
    warm = int(round(config.warmup_fraction * config.phases[0].steps))
    sel_fit = (steps >= start) & (steps <= fit_until)
    sel_test = (steps > fit_until) & (steps <= end)
    if sel_fit.sum() < 5:
        raise ValueError(f"only {int(sel_fit.sum())} evaluations of {domain!r} in [{start}, {fit_until}]; "
                         "evaluate more often or fit over a longer window")
    curve = LossCurve(lrs=lrs, steps=steps[sel_fit], losses=vals[sel_fit], name=domain, warmup_steps=warm)
    law = fit([curve], law="annealing", lam=lam)
    pred_all = law.predict(lrs, steps[sel_fit | sel_test], warmup_steps=warm)
    n_fit = int(sel_fit.sum())
    pred = pred_all[n_fit:]
    test = vals[sel_test]
    _, s2 = areas(lrs, lam=lam, warmup_steps=warm)
    m = np.diff(s2, prepend=0.0)
    err = np.abs(pred - test) / test if test.size else np.array([])
    return {"law": law, "params": dict(law.params), "fit_steps": steps[sel_fit], "fit_losses": vals[sel_fit],
            "fit_pred": pred_all[:n_fit], "test_steps": steps[sel_test], "test_losses": test, "pred": pred,
            "pred_err": float(err.mean()) if err.size else None, "worst_err": float(err.max()) if err.size else None,
            "m_min": float(np.min(m[start:end + 1])),
            "S2_drop": float(np.minimum(m[start:end + 1], 0.0).sum())}


# ---------------------------------------------------------------------------------------- grids
@dataclass
class GridRun:
    """One cell of a grid: a name, a config (its seed is set per seed) and labels for the table.

    ``kind`` is ``"continual"``, ``"retrain"`` (from scratch on all domains, same total compute)
    or ``"scratch"`` (from scratch on the last domain with the last phase's compute)."""

    name: str
    config: ContinualConfig
    schedule: str = ""
    replay: float = 0.0
    kind: str = "continual"
    labels: dict = field(default_factory=dict)


def _sizes(quick: bool, steps: int | None = None) -> dict:
    if quick:
        out = dict(steps=10, settings=dict(batch_size=4, seq_len=32, max_tokens=20_000, eval_interval=5,
                                           eval_batches=1))
    else:
        out = dict(steps=200, settings=dict(batch_size=8, seq_len=64, max_tokens=200_000, eval_interval=10,
                                            eval_batches=4))
    if steps is not None:
        iv = out["settings"]["eval_interval"]
        _check(_int_ok(steps, iv) and steps % iv == 0,
               f"steps per phase must be a multiple of eval_interval={iv}, got {steps!r}")
        out["steps"] = int(steps)
    return out


def _two_domain(schedules: Sequence[str], replays: Sequence[float], quick: bool, steps=None, a="stdlib", b="docs",
                extra: dict | None = None) -> list[GridRun]:
    z = _sizes(quick, steps)
    n, st = z["steps"], dict(z["settings"], **(extra or {}))
    runs = []
    for sched in schedules:
        for r in replays:
            cfg = ContinualConfig([Phase(a, n), Phase(b, n, replay=r)], schedule=sched, **st)
            runs.append(GridRun(f"{sched}-r{int(round(r * 100)):02d}", cfg, sched, r))
    # baselines: re-training from scratch on A+B (same total compute, one cosine), B from scratch
    runs.append(GridRun("retrain-AB", ContinualConfig([Phase(b, 2 * n, replay=0.5, replay_domains=(a,))],
                                                      schedule="rewarm", eval_domains=(a,), **st),
                        "cosine", 0.5, "retrain"))
    runs.append(GridRun("scratch-B", ContinualConfig([Phase(b, n)], schedule="rewarm", eval_domains=(a,), **st),
                        "cosine", 0.0, "scratch"))
    return runs


def _grid_replay(quick: bool, steps: int | None = None) -> list[GridRun]:
    return _two_domain(["rewarm"], [0.0, 0.05, 0.25], quick, steps)


def _grid_schedules(quick: bool, steps: int | None = None) -> list[GridRun]:
    return _two_domain(list(SCHEDULES), [0.0, 0.1], quick, steps)


def _grid_three(quick: bool, steps: int | None = None) -> list[GridRun]:
    z = _sizes(quick, steps)
    n, st = z["steps"], dict(z["settings"])
    n = max(st["eval_interval"], (2 * n // 3) // st["eval_interval"] * st["eval_interval"])
    runs = []
    for sched in ("rewarm", "infinite"):
        for r in (0.0, 0.1):
            cfg = ContinualConfig([Phase("stdlib", n), Phase("docstrings", n, replay=r),
                                   Phase("topics", n, replay=r)], schedule=sched, **st)
            runs.append(GridRun(f"{sched}-r{int(round(r * 100)):02d}", cfg, sched, r))
    runs.append(GridRun("retrain-ABC", ContinualConfig([Phase("topics", 3 * n, replay=2 / 3,
                                                              replay_domains=("stdlib", "docstrings"))],
                                                       schedule="rewarm", **st), "cosine", 2 / 3, "retrain"))
    return runs


def _grid_stability(quick: bool, steps: int | None = None) -> list[GridRun]:
    z = _sizes(quick, steps)
    n, st = z["steps"], dict(z["settings"])
    sub = 4_000 if quick else 20_000
    runs = [GridRun("rewarm-full", ContinualConfig([Phase("stdlib", n), Phase("docs", n)], **st), "rewarm", 0.0,
                    labels={"subset_tokens": None}),
            GridRun("rewarm-subset", ContinualConfig([Phase("stdlib", n), Phase("docs", n, max_tokens=sub)], **st),
                    "rewarm", 0.0, labels={"subset_tokens": sub}),
            GridRun("rewarm-r05-mer", ContinualConfig([Phase("stdlib", n), Phase("docs", n, replay=0.05)],
                                                      mer_interval=max(2, n // 10), mer_beta=0.5, **st),
                    "rewarm", 0.05, labels={"mer": f"k={max(2, n // 10)},beta=0.5"})]
    return runs


#: named comparison grids: name -> function(quick, steps=None) -> [GridRun] (steps: per phase)
GRIDS: dict[str, Callable[[bool], list]] = {
    "replay": _grid_replay,          # re-warm + re-decay, replay 0/5/25% vs re-training and B from scratch
    "schedules": _grid_schedules,    # rewarm / wsd / infinite / constant x replay 0/10%
    "three-phase": _grid_three,      # stdlib -> docstrings -> topics, rewarm vs infinite
    "stability": _grid_stability,    # full B vs a small B subset (multi-epoch), MER
}


def grid_runs(name: str, quick: bool = False, steps: int | None = None) -> list[GridRun]:
    """The cells of a named grid (:data:`GRIDS`); ``steps`` overrides the steps per phase
    (200, or 10 with ``quick``; the three-phase grid uses two thirds of it per phase).

    Example:
        >>> [r.name for r in grid_runs("replay", quick=True)]
        ['rewarm-r00', 'rewarm-r05', 'rewarm-r25', 'retrain-AB', 'scratch-B']
    """
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; grids are {sorted(GRIDS)}")
    return GRIDS[name](quick) if steps is None else GRIDS[name](quick, steps)


GRID_FILE = "grid.json"


def run_grid(name: str, out_dir: str | os.PathLike, seeds: Sequence[int] = (0,), quick: bool = False, *,
             steps: int | None = None, runs: list | None = None, callbacks: Iterable[Callable[[dict], Any]] = (),
             stop_event: threading.Event | None = None, progress: bool = True,
             train_blocks: dict | None = None, val_blocks: dict | None = None):
    """Run every cell of a grid for every seed into ``out_dir/<run>/seed<k>/``; returns :func:`metric_table`.

    Resumable: a finished run (its ``continual.json``) is skipped, an interrupted one is resumed
    from its checkpoint (or restarted cleanly if it had none). ``stop_event`` ends the grid after
    the current run stops (with a checkpoint). ``runs`` replaces the named grid's cells (tests,
    custom grids); ``train_blocks``/``val_blocks`` replace the built-in domains' data.
    """
    from tqdm.auto import tqdm

    out_dir = os.fspath(out_dir)
    cells = list(runs) if runs is not None else grid_runs(name, quick, steps)
    seeds = [int(s) for s in seeds]
    _check(len(seeds) >= 1 and all(s >= 0 for s in seeds), f"seeds must be integers >= 0, got {seeds}")
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, GRID_FILE)
    meta = {"grid": name, "quick": bool(quick), "steps": steps, "runs": [
        {"name": c.name, "schedule": c.schedule, "replay": c.replay, "kind": c.kind, "labels": c.labels,
         "shift_steps": c.config.shift_steps, "domains": c.config.domains,
         "phase_domains": [p.domain for p in c.config.phases]} for c in cells]}
    if os.path.exists(meta_path):
        old = read_json(meta_path)
        if old.get("grid") != name or bool(old.get("quick")) != bool(quick) or old.get("steps") != steps:
            raise ValueError(f"{out_dir!r} holds the grid {old.get('grid')!r} (quick={old.get('quick')}, "
                             f"steps={old.get('steps')}); use another --out directory")
        meta["seeds"] = sorted(set(old.get("seeds", [])) | set(seeds))
    else:
        meta["seeds"] = seeds
    write_json_atomic(meta_path, meta)
    todo = [(c, s) for s in seeds for c in cells]
    bar = tqdm(todo, desc=f"grid {name}", disable=not progress)
    stop = stop_event if stop_event is not None else threading.Event()
    for cell, seed in bar:
        if stop.is_set():
            break
        run_dir = os.path.join(out_dir, cell.name, f"seed{seed}")
        if os.path.exists(os.path.join(run_dir, CONTINUAL_FILE)):
            continue
        bar.set_postfix_str(f"{cell.name} seed {seed}")
        cfg = dataclasses.replace(cell.config, seed=seed)
        run_continual(cfg, run_dir, callbacks=callbacks, stop_event=stop, train_blocks=train_blocks,
                      val_blocks=val_blocks)
    bar.close()
    return metric_table(out_dir)


def metric_table(out_dir: str | os.PathLike):
    """One row per finished run of a grid directory: final losses per domain and the metrics.

    Columns: ``run, seed, schedule, replay, kind``, ``final_<domain>``, and for two-or-more-phase
    runs ``forgetting_<A>`` (first shift, at the run's end), ``gap_depth_<d>``/``gap_duration_<d>``
    (first shift, every domain), ``adapt_vs_scratch`` (last domain vs the ``scratch`` baseline of
    the same seed), ``vs_retrain_<d>`` (final loss minus the ``retrain`` baseline's),
    ``steps_to_retrain`` / ``frac_to_retrain`` (updates after the last shift to reach the re-training
    baseline's final loss on the last domain; fraction of the baseline's updates).
    """
    import pandas as pd

    out_dir = os.fspath(out_dir)
    meta_path = os.path.join(out_dir, GRID_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{out_dir!r} has no {GRID_FILE}: not a continual grid directory "
                                "(run `workbench continual run GRID --out DIR` first)")
    meta = read_json(meta_path)
    cells = {c["name"]: c for c in meta["runs"]}
    logs = {}
    for c in meta["runs"]:
        for s in meta.get("seeds", []):
            d = os.path.join(out_dir, c["name"], f"seed{s}")
            if os.path.exists(os.path.join(d, CONTINUAL_FILE)):
                logs[(c["name"], s)] = _records(d)
    rows = []
    for (name, seed), recs in logs.items():
        c = cells[name]
        row = {"run": name, "seed": seed, "schedule": c["schedule"], "replay": c["replay"], "kind": c["kind"]}
        for k, v in (c.get("labels") or {}).items():
            row[k] = v
        last_step = int(recs[-1]["step"])
        final = _losses_at(recs, last_step) or {}
        for d, v in final.items():
            row[f"final_{d}"] = v
        shifts, doms = c["shift_steps"], c["phase_domains"]
        last_dom = doms[-1]
        if shifts:
            first = shifts[0]
            row[f"forgetting_{doms[0]}"] = forgetting(recs, doms[0], first)
            end1 = shifts[1] - 1 if len(shifts) > 1 else None
            for d in c["domains"]:
                g = stability_gap(recs, d, first, end_step=end1)
                row[f"gap_depth_{d}"] = g["depth"]
                row[f"gap_duration_{d}"] = g["duration"]
        for kind, col in (("scratch", "adapt_vs_scratch"), ("retrain", None)):
            base = [n for n, cc in cells.items() if cc["kind"] == kind and (n, seed) in logs]
            if not base or c["kind"] != "continual":
                continue
            brec = logs[(base[0], seed)]
            if kind == "scratch":
                row[col] = adaptation(recs, brec, last_dom)
            else:
                bfinal = _losses_at(brec, int(brec[-1]["step"])) or {}
                for d in final:
                    if d in bfinal:
                        row[f"vs_retrain_{d}"] = final[d] - bfinal[d]
                ctb = compute_to_baseline(recs, brec, last_dom, shift_step=shifts[-1] if shifts else 0)
                row["steps_to_retrain"] = ctb["steps"]
                row["frac_to_retrain"] = ctb["fraction"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        order = {c["name"]: i for i, c in enumerate(meta["runs"])}
        df = df.sort_values(["run", "seed"], key=lambda s: s.map(order) if s.name == "run" else s)
        df = df.reset_index(drop=True)
    return df


def aggregate_table(table):
    """Mean and standard deviation over seeds of every numeric column, one row per run.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"run": ["a", "a"], "seed": [0, 1], "final_B": [2.0, 2.2]})
        >>> agg = aggregate_table(t)
        >>> float(agg.loc["a", ("final_B", "mean")].round(6)), int(agg.loc["a", ("seed", "count")])
        (2.1, 2)
    """
    if len(table) == 0:
        return table
    num = table.drop(columns=[c for c in ("schedule", "kind") if c in table.columns])
    num = num.apply(lambda col: col if col.name == "run" else _numeric(col))
    agg = num.drop(columns=["seed"]).groupby("run", sort=False).agg(["mean", "std"])
    agg[("seed", "count")] = table.groupby("run", sort=False)["seed"].count()
    return agg


def _numeric(col):
    import pandas as pd

    return pd.to_numeric(col, errors="coerce")
