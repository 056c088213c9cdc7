"""Gradient-alignment data selection (LESS, Xia et al. 2402.04333).

A training example ``z`` is scored by how well its (preconditioned) gradient points along
the gradients of a few target-task examples ``z'``::

    score(z) = max over tasks t of  mean over z' in t of  sum_i eta_i * cos(Gamma_i(z), g_i(z'))

with ``i`` running over checkpoints (``eta_i`` the mean learning rate of the training
segment that ended at checkpoint ``i``), ``g`` the per-example gradient of the mean
next-token cross-entropy, randomly projected to ``d`` dimensions (Rademacher, ``d = 8192``
in the paper) and L2-normalised.

``Gamma`` (the Adam-preconditioned gradient). REFERENCE.md section 4 writes it as
``m / sqrt(v + eps)``. With ``m, v`` the *stored* Adam moments that quantity is the same
for every example, so, like the public LESS code, the example's gradient ``g`` is plugged
into one Adam moment update first::

    m_z = beta1 * m + (1 - beta1) * g
    v_z = beta2 * v + (1 - beta2) * g**2
    Gamma(z) = m_z / sqrt(v_z + eps)        # eps inside the sqrt, no bias correction

i.e. the Adam update direction the example would cause (Adam proper divides by
``sqrt(v) + eps``; we keep REFERENCE's ``sqrt(v + eps)`` form, as the LESS code does). Target
examples use plain gradients (``optimizer_state=None``), as in LESS.

The projection is generated chunk by chunk from a seeded CPU generator, so memory stays
bounded by ``chunk x d`` whatever the number of parameters; pass ``params=`` (names) to
restrict the gradient to some parameters (LESS uses the LoRA parameters only).

Example::

    >>> import torch
    >>> from workbench.models import build_model
    >>> from workbench.data.alignment import gradient_features, alignment_scores
    >>> model = build_model("tiny", seed=0)
    >>> ids = torch.randint(1, 256, (4, 8), generator=torch.Generator().manual_seed(0))
    >>> names = ["model.norm.weight"]
    >>> train = gradient_features(model, [ids], d=64, params=names)
    >>> target = gradient_features(model, [ids[:2]], d=64, params=names)
    >>> tuple(train.shape), bool(torch.allclose(train.norm(dim=1), torch.ones(4)))
    ((4, 64), True)
    >>> alignment_scores(train, {"task": target}).shape
    torch.Size([4])
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import torch

__all__ = ["per_example_grads", "RademacherProjector", "gradient_features", "alignment_scores"]

DEFAULT_CHUNK = 1024  # input rows of the projection generated at once (x d floats)


def _named_params(model, params):
    named = dict(model.named_parameters())
    if params is None:
        return {k: p for k, p in named.items() if p.requires_grad}
    missing = [n for n in params if n not in named]
    if missing:
        raise ValueError(f"params {missing[:3]} are not parameters of the model; pass names from "
                         "model.named_parameters(), e.g. 'model.norm.weight'")
    if not params:
        raise ValueError("params is empty; pass None for all trainable parameters or some names")
    return {n: named[n] for n in params}


def _example_loss(logits, labels, mask):
    """Mean next-token cross-entropy of one example: targets ``labels[1:]`` where kept."""
    logits = logits[:-1].float()
    target = labels[1:]
    keep = mask[1:] & (target != -100)
    ce = torch.nn.functional.cross_entropy(logits, target.clamp(min=0), reduction="none")
    return (ce * keep).sum() / keep.sum().clamp(min=1)


def _check_inputs(input_ids, labels, attention_mask):
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be 2-D [batch, seq] with seq >= 2, got shape "
                         f"{tuple(input_ids.shape)}; add a batch dimension with input_ids[None]")
    labels = input_ids if labels is None else torch.as_tensor(labels)
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else torch.as_tensor(attention_mask).bool())
    for name, t in (("labels", labels), ("attention_mask", mask)):
        if t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(t.shape)}")
    return input_ids, labels.long(), mask


def per_example_grads(model, input_ids, labels=None, attention_mask=None, params=None,
                      vectorize: bool = True) -> dict:
    """Gradients of each example's loss: ``{name: [batch, *param.shape]}``.

    The loss of example ``b`` is the mean next-token cross-entropy over the targets
    ``labels[b, 1:]`` whose ``attention_mask`` is 1 and whose label is not -100
    (``labels`` default to ``input_ids``; right padding). ``params``: parameter names
    (default: all that require grad). Uses ``torch.func`` (``functional_call`` +
    ``vmap(grad)``) when ``vectorize`` and the model supports it, else a loop of
    single-example backward passes (same numbers). Dropout is off (eval mode, restored).

    Example::

        >>> import torch
        >>> from workbench.models import build_model
        >>> m = build_model("tiny")
        >>> g = per_example_grads(m, torch.ones(3, 5, dtype=torch.long), params=["model.norm.weight"])
        >>> tuple(g["model.norm.weight"].shape)
        (3, 128)
    """
    input_ids, labels, mask = _check_inputs(input_ids, labels, attention_mask)
    named = _named_params(model, params)
    device = next(iter(named.values())).device
    input_ids, labels, mask = input_ids.to(device), labels.to(device), mask.to(device)
    was_training = model.training
    model.eval()
    try:
        right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all())
        if vectorize and right_padded:
            try:
                return _vmap_grads(model, named, input_ids, labels, mask)
            except Exception:  # noqa: BLE001 - ops without batching rules: fall back
                pass
        return _loop_grads(model, named, input_ids, labels, mask)
    finally:
        model.train(was_training)


def _vmap_grads(model, named, input_ids, labels, mask):
    from torch.func import functional_call, grad, vmap

    detached = {k: p.detach() for k, p in named.items()}

    def loss(p, ids, lab, m):
        # right padding + causal attention: real tokens never see the pads, so no mask is
        # needed for the logits that count (a mask would need data-dependent control flow)
        out = functional_call(model, p, args=(), kwargs={"input_ids": ids[None], "use_cache": False})
        return _example_loss(out.logits[0], lab, m)

    with warnings.catch_warnings():  # "no batching rule for ...": slower, still correct
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(grad(loss), in_dims=(None, 0, 0, 0), randomness="different")(
            detached, input_ids, labels, mask)


def _loop_grads(model, named, input_ids, labels, mask):
    names = list(named)
    tensors = [named[n] for n in names]
    flags = [p.requires_grad for p in tensors]
    rows = {n: [] for n in names}
    try:
        for p in tensors:
            p.requires_grad_(True)
        for b in range(input_ids.shape[0]):
            out = model(input_ids=input_ids[b:b + 1], attention_mask=mask[b:b + 1].long(),
                        use_cache=False)
            gs = torch.autograd.grad(_example_loss(out.logits[0], labels[b], mask[b]), tensors,
                                     allow_unused=True)
            for n, p, g in zip(names, tensors, gs):
                rows[n].append(torch.zeros_like(p) if g is None else g)
    finally:
        for p, f in zip(tensors, flags):
            p.requires_grad_(f)
    return {n: torch.stack(v) for n, v in rows.items()}


class RademacherProjector:
    """Seeded random projection ``x -> x @ P`` with ``P`` in ``{+1, -1}/sqrt(d)``, ``[dim_in, d]``.

    ``P`` is drawn row block by row block (``chunk`` rows of ``d`` at a time) from one CPU
    generator seeded with ``seed``: each row is ``ceil(d/8)`` random bytes
    (``torch.randint(0, 256, dtype=uint8)``), unpacked least significant bit first, bit 1 ->
    ``+1/sqrt(d)``, bit 0 -> ``-1/sqrt(d)``, the first ``d`` kept. The blocks are sequential
    draws, so ``P`` depends on ``seed``, ``dim_in`` and ``d`` only (tests check it is the
    same for any ``chunk``). No more than ``chunk x d`` entries of ``P`` exist at once (one
    float block, plus its uint8 bits while it is built: about ``5 * chunk * d`` bytes at the
    peak). :meth:`matrix` materialises ``P`` (small dims only, for checks).

    Example::

        >>> import torch
        >>> proj = RademacherProjector(10, d=4, seed=0, chunk=3)
        >>> [tuple(b.shape) for _, b in proj.blocks()]
        [(3, 4), (3, 4), (3, 4), (1, 4)]
        >>> x = torch.randn(2, 10)
        >>> bool(torch.allclose(proj.project(x), x @ proj.matrix(), atol=1e-6))
        True
    """

    def __init__(self, dim_in: int, d: int = 8192, seed: int = 0, chunk: int = DEFAULT_CHUNK):
        for name, v in (("dim_in", dim_in), ("d", d), ("chunk", chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.dim_in, self.d, self.seed, self.chunk = dim_in, d, seed, chunk

    def blocks(self, dtype=torch.float32, device=None):
        """Yield ``(row_start, block)``: ``block`` = rows ``row_start ..`` of ``P``, ``[<=chunk, d]``.

        The random bytes are drawn on the CPU and unpacked on ``device`` (default CPU).
        """
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        scale = 1.0 / math.sqrt(self.d)
        nbytes = (self.d + 7) // 8
        shifts = torch.arange(8, dtype=torch.uint8, device=device)
        for start in range(0, self.dim_in, self.chunk):
            rows = min(self.chunk, self.dim_in - start)
            # 8 signs per random byte (least significant bit first): 8x fewer generator draws
            raw = torch.randint(0, 256, (rows, nbytes), generator=g, dtype=torch.uint8).to(device)
            bits = (raw[:, :, None] >> shifts).bitwise_and_(1).reshape(rows, nbytes * 8)
            del raw
            block = bits[:, :self.d].to(dtype).mul_(2 * scale).sub_(scale)
            del bits
            yield start, block
            del block  # the caller holds the only reference: one block alive at a time

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ P`` for ``x`` of shape ``[n, dim_in]`` (float32 result on ``x``'s device)."""
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[1] != self.dim_in:
            raise ValueError(f"x must have shape [n, {self.dim_in}], got {tuple(x.shape)}; "
                             "flatten the gradients per example first")
        x = x.float()
        out = torch.zeros(x.shape[0], self.d, device=x.device)
        for start, block in self.blocks(device=x.device):
            out.addmm_(x[:, start:start + block.shape[0]], block)
            del block
        return out

    def matrix(self) -> torch.Tensor:
        """The full ``[dim_in, d]`` matrix (allocates it all: small dims only)."""
        return torch.cat([b for _, b in self.blocks()])


def _unpack(batch):
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch.get("labels"), batch.get("attention_mask")
    if isinstance(batch, (tuple, list)):
        ids, mask = (tuple(batch) + (None,))[:2]
        return ids, None, mask
    return batch, None, None


def _adam_moments(model, named, optimizer_state):
    """``{name: (exp_avg, exp_avg_sq)}`` and ``(beta1, beta2)`` from an optimizer or a dict."""
    betas = (0.9, 0.999)
    if isinstance(optimizer_state, torch.optim.Optimizer):
        betas = tuple(optimizer_state.param_groups[0].get("betas", betas))
        state = {n: optimizer_state.state.get(p, {}) for n, p in named.items()}
    elif isinstance(optimizer_state, Mapping):
        state = {n: optimizer_state.get(n, {}) for n in named}
    else:
        raise ValueError("optimizer_state must be a torch Adam optimizer or a dict "
                         "{param_name: {'exp_avg': m, 'exp_avg_sq': v}}")
    out = {}
    for n, s in state.items():
        if "exp_avg" not in s or "exp_avg_sq" not in s:
            raise ValueError(f"optimizer_state has no exp_avg/exp_avg_sq for {n!r}; take at least "
                             "one Adam step first or restrict params= to parameters it holds")
        out[n] = (s["exp_avg"], s["exp_avg_sq"])
    return out, betas


def gradient_features(model, batches: Iterable, d: int = 8192, seed: int = 0,
                      optimizer_state=None, eps: float = 1e-8, chunk: int = DEFAULT_CHUNK,
                      params=None) -> torch.Tensor:
    """LESS features: ``[n, d]`` L2-normalised projected per-example gradients (float32, CPU).

    ``batches``: an iterable of ``input_ids`` tensors, ``(input_ids, attention_mask)`` pairs
    or dicts with ``input_ids`` and optional ``attention_mask``/``labels`` (right padding).
    ``optimizer_state``: None (plain gradients: target examples) or an Adam optimizer /
    ``{name: {"exp_avg", "exp_avg_sq"}}`` dict (training examples): the gradient becomes
    ``Gamma = m_z / sqrt(v_z + eps)`` (see the module docstring). ``params``: parameter
    names (default all trainable). Projection: :class:`RademacherProjector` ``(dim, d,
    seed, chunk)``, the same matrix for every batch.
    """
    named = _named_params(model, params)
    dim = sum(p.numel() for p in named.values())
    proj = RademacherProjector(dim, d=d, seed=seed, chunk=chunk)
    moments, betas = (None, None) if optimizer_state is None else \
        _adam_moments(model, named, optimizer_state)
    feats = []
    for batch in batches:
        ids, labels, mask = _unpack(batch)
        grads = per_example_grads(model, ids, labels=labels, attention_mask=mask,
                                  params=list(named))
        flat = []
        for n, g in grads.items():
            g = g.float()
            if moments is not None:
                m, v = (t.to(g.device, torch.float32) for t in moments[n])
                m_z = betas[0] * m + (1 - betas[0]) * g
                v_z = betas[1] * v + (1 - betas[1]) * g * g
                g = m_z / torch.sqrt(v_z + eps)
            flat.append(g.reshape(g.shape[0], -1))
        x = torch.cat(flat, dim=1)
        del grads, flat
        feats.append(torch.nn.functional.normalize(proj.project(x), dim=1).cpu())
    if not feats:
        raise ValueError("batches is empty; pass at least one batch of input_ids")
    return torch.cat(feats)


def _as_tasks(targets, where):
    if isinstance(targets, Mapping):
        if not targets:
            raise ValueError(f"{where}: no target tasks; pass {{task_name: [m, d] features}}")
        return {k: torch.as_tensor(v).float() for k, v in targets.items()}
    return {"target": torch.as_tensor(targets).float()}


def alignment_scores(train_feats, target_feats_by_task, lr_weights=None) -> torch.Tensor:
    """LESS score per training example: ``[n]`` float32.

    One checkpoint: ``train_feats`` ``[n, d]``; ``target_feats_by_task`` a dict
    ``{task: [m_t, d]}`` or one ``[m, d]`` tensor (one task). Several checkpoints: lists
    of those, one entry per checkpoint (same tasks, same target examples per task), with
    ``lr_weights`` the mean learning rates ``eta_i`` (default 1 each). Score =
    ``max_t mean_{z' in t} sum_i eta_i cos(train_i[z], target_i[t][z'])``; rows are
    renormalised, so unnormalised features work too.

    Example::

        >>> import torch
        >>> alignment_scores(torch.tensor([[1., 0.], [0., 1.]]),
        ...                  {"a": torch.tensor([[1., 0.], [1., 1.]]), "b": torch.tensor([[0., 2.]])})
        tensor([0.8536, 1.0000])
    """
    multi = isinstance(train_feats, (list, tuple))
    trains = list(train_feats) if multi else [train_feats]
    if multi != isinstance(target_feats_by_task, (list, tuple)):
        raise ValueError("pass lists for both train_feats and target_feats_by_task (one entry per "
                         "checkpoint) or a single feature set for both")
    targets = list(target_feats_by_task) if multi else [target_feats_by_task]
    if not trains or len(trains) != len(targets):
        raise ValueError(f"got {len(trains)} train and {len(targets)} target feature sets; pass "
                         "one of each per checkpoint")
    weights = [1.0] * len(trains) if lr_weights is None else [float(w) for w in lr_weights]
    if len(weights) != len(trains) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"lr_weights must be {len(trains)} finite numbers (one mean LR per "
                         f"checkpoint), got {lr_weights!r}")
    tasks = [_as_tasks(t, f"checkpoint {i}") for i, t in enumerate(targets)]
    names = list(tasks[0])
    if any(list(t) != names for t in tasks):
        raise ValueError("every checkpoint must have the same target tasks in the same order")
    n = None
    total = {k: 0.0 for k in names}
    for i, (tr, tk, w) in enumerate(zip(trains, tasks, weights)):
        tr = torch.as_tensor(tr).float()
        if tr.dim() != 2 or (n is not None and tr.shape[0] != n):
            raise ValueError(f"train features of checkpoint {i} must be [n, d] with the same n "
                             f"for every checkpoint, got {tuple(tr.shape)}")
        n = tr.shape[0]
        x = torch.nn.functional.normalize(tr, dim=1)
        for k in names:
            t = tk[k]
            if t.dim() != 2 or t.shape[1] != tr.shape[1] or t.shape[0] == 0:
                raise ValueError(f"target features of task {k!r} (checkpoint {i}) must be "
                                 f"[m >= 1, {tr.shape[1]}], got {tuple(t.shape)}")
            cos = x @ torch.nn.functional.normalize(t, dim=1).T
            total[k] = total[k] + w * cos.mean(dim=1)
    return torch.stack([total[k] for k in names]).max(dim=0).values
