"""Small fine-tuning loops (SFT, DPO, GRPO) for studying which parameters fine-tuning changes.

Made for the bundled pretrained tiny model (``build_model(pretrained_dir())``, Llama, byte vocabulary) on
CPU, to measure update sparsity with :func:`workbench.sparsity.diff_checkpoints`:

* :func:`sft`: supervised fine-tuning, mean negative log-likelihood of the answer tokens;
* :func:`dpo`: Direct Preference Optimisation (Rafailov et al. 2305.18290),
  ``loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` with ``pi``/``ref`` the summed
  answer log-probabilities of the policy and the frozen reference for the chosen and rejected answers;
* :func:`grpo`: group-relative policy gradient (Shao et al. 2402.03300) on a verifiable task: ``G``
  sampled answers per prompt, reward 1 for an exact match, advantage ``(r - mean_group) / (std_group + eps)``,
  one on-policy update per batch (ratio 1, so no clipping is active) and no KL term.

Batches are dicts of tensors: ``input_ids`` (B, T), ``attention_mask`` (B, T, optional) and ``labels``
(B, T), aligned with ``input_ids`` and ``-100`` outside the answer (the layout of
``workbench.data.tasks.encode_examples``); the shift to next-token targets happens here.

``dtype``: ``"fp32"`` trains fp32 parameters; ``"bf16"`` casts the model to bfloat16 and keeps the
parameters in bf16 throughout (forward and backward in bf16, as RL frameworks store them). The AdamW
moments and the update are computed in fp32 in both modes, then the update is added to the stored
parameter: in bf16 the sum is rounded to bf16, so an update smaller than about half a bf16 spacing of the
weight (``|w| * 2**-9``) is lost (no fp32 master copy). Both modes use the same AdamW (betas (0.9, 0.999),
eps 1e-8, weight decay 0 by default), LR and steps. Everything is deterministic given ``seed`` (minibatch
order, sampling); the model is trained **in place** (after the cast) and returned with a history dict of
lists. Keep the base with ``copy.deepcopy(base)``.

Example:
    >>> import torch
    >>> from workbench.models import build_model
    >>> from workbench.sparsity.finetune import sft, answer_logprobs
    >>> model = build_model("tiny", num_hidden_layers=1)
    >>> ids = torch.tensor([[49, 43, 49, 61, 50, 10]])        # "1+1=2\\n"
    >>> batch = {"input_ids": ids, "labels": torch.tensor([[-100, -100, -100, -100, 50, 10]])}
    >>> model, hist = sft(model, batch, steps=5, lr=1e-3)
    >>> hist["loss"][-1] < hist["loss"][0]
    True
    >>> answer_logprobs(model, batch).shape
    torch.Size([1])
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DTYPES", "answer_logprobs", "answer_loss", "dpo_loss", "preference_pairs", "sft", "dpo", "grpo",
           "cast_model"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SEED_MULT = 1_000_003


# --------------------------------------------------------------------------------------- helpers
def _check_dtype(dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)} (the dtype the parameters are stored in), "
                         f"got {dtype!r}")
    return DTYPES[dtype]


def cast_model(model: nn.Module, dtype: str) -> nn.Module:
    """Cast ``model`` in place to ``"fp32"`` or ``"bf16"`` and return it."""
    return model.to(_check_dtype(dtype))


def _check_batch(batch, what: str = "batch") -> dict:
    if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
        raise ValueError(f"{what} must be a dict with 'input_ids' and 'labels' (and optionally "
                         "'attention_mask'), e.g. from workbench.data.tasks.encode_examples(examples)")
    ids, labels = batch["input_ids"], batch["labels"]
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2):
        raise ValueError(f"{what}['input_ids'] must be a 2-D (batch, tokens) tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != ids.shape:
        raise ValueError(f"{what}['labels'] must be a tensor of the shape of input_ids {list(ids.shape)}, "
                         "-100 outside the answer")
    mask = batch.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
        raise ValueError(f"{what}['attention_mask'] must have the shape of input_ids {list(ids.shape)}")
    if not bool((labels[:, 1:] != -100).any(dim=1).all()):
        raise ValueError(f"every row of {what}['labels'] needs at least one answer token after the first "
                         "position (labels != -100); drop empty examples")
    return {"input_ids": ids, "labels": labels,
            "attention_mask": mask if mask is not None else torch.ones_like(ids)}


def _rows(batch: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def _token_logprobs(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) log p(token t+1 | <= t) of the label tokens (float32) and the (B, T-1) answer mask."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    device = next(model.parameters()).device
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    # positions count real tokens only, so left padding gives the same result as right padding
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, :-1]
    targets = labels[:, 1:]
    answer = targets != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return tok * answer, answer


def answer_logprobs(model: nn.Module, batch: dict, average: bool = False) -> torch.Tensor:
    """Per-row sum (``average=True``: mean) of the answer-token log-probabilities, shape (B,), float32.

    Differentiable (wrap it in ``torch.no_grad()`` to evaluate).
    """
    batch = _check_batch(batch)
    tok, answer = _token_logprobs(model, batch)
    s = tok.sum(-1)
    return s / answer.sum(-1) if average else s


def answer_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean negative log-likelihood over all answer tokens of the batch (the SFT loss), a scalar."""
    batch = _check_batch(batch)
    tok, answer = _token_logprobs(model, batch)
    return -tok.sum() / answer.sum()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO loss (mean over pairs) and the per-pair margins ``beta * ((pi_c - ref_c) - (pi_r - ref_r))``.

    >>> z = torch.zeros(2)
    >>> loss, margin = dpo_loss(z, z, z, z)
    >>> round(loss.item(), 6) == round(math.log(2), 6), margin.tolist()
    (True, [0.0, 0.0])
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin


def preference_pairs(examples: list[dict], seed: int = 0,
                     offsets=(-10, -2, -1, 1, 2, 10)) -> tuple[list[dict], list[dict]]:
    """Synthetic preference pairs for DPO: ``(chosen, rejected)`` lists of task examples.

    ``examples``: dicts with ``prompt``, ``answer`` (an integer as text) and ``text`` (prompt + answer +
    end marker), e.g. from ``workbench.data.tasks.arithmetic_examples``. The chosen example is the correct
    one; the rejected one is a copy whose answer is the correct value plus an offset drawn (seeded) from
    ``offsets``, kept >= 0 and different from the correct value.

    >>> ex = [{"template": "", "question": "2+3=", "prompt": "2+3=", "answer": "5", "text": "2+3=5\\n"}]
    >>> chosen, rejected = preference_pairs(ex, seed=0)
    >>> chosen[0]["text"], rejected[0]["text"] != "2+3=5\\n", rejected[0]["text"].startswith("2+3=")
    ('2+3=5\\n', True, True)
    """
    import random

    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError("examples must be a non-empty list of task examples (dicts with prompt, answer, "
                         "text), e.g. workbench.data.tasks.arithmetic_examples(n)")
    rng = random.Random(int(seed))
    chosen, rejected = [], []
    for e in examples:
        missing = {"prompt", "answer", "text"} - set(e)
        if missing:
            raise ValueError(f"an example lacks {sorted(missing)}; build examples with "
                             "workbench.data.tasks.arithmetic_examples")
        right = int(e["answer"])
        end = e["text"][len(e["prompt"]) + len(e["answer"]):]
        choices = [right + o for o in offsets if o != 0 and right + o >= 0]
        if not choices:
            raise ValueError(f"no offset in {offsets} gives a wrong answer >= 0 for {e['text']!r}; pass "
                             "offsets with positive values")
        wrong = str(rng.choice(choices))
        chosen.append(dict(e))
        rejected.append({**e, "answer": wrong, "text": e["prompt"] + wrong + end})
    return chosen, rejected


class _AdamW:
    """AdamW whose moments and update are fp32 whatever the parameter dtype; the update is added to the
    stored parameter (rounded to its dtype). For fp32 parameters it is torch's AdamW (foreach=False)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (requires_grad=False everywhere)")
        self.proxies = [p if p.dtype == torch.float32 else
                        nn.Parameter(p.detach().float(), requires_grad=True) for p in self.params]
        self.opt = torch.optim.AdamW(self.proxies, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                     foreach=False)

    def zero_grad(self):
        for p, q in zip(self.params, self.proxies):
            p.grad = None
            q.grad = None

    @torch.no_grad()
    def step(self):
        for p, q in zip(self.params, self.proxies):
            if q is not p:
                q.copy_(p)                                  # exact: bf16 -> fp32
                q.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        for p, q in zip(self.params, self.proxies):
            if q is not p:
                p.copy_(q)                                  # rounds to the stored dtype


def _setup(model, dtype, lr, steps):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module (e.g. build_model(pretrained_dir())), got "
                         f"{type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    cast_model(model, dtype)
    model.train()


def _order(n: int, batch_size: int | None, seed: int, step: int) -> torch.Tensor:
    """Row indices of step ``step``: full batch, or a slice of a seeded per-epoch permutation."""
    if batch_size is None or batch_size >= n:
        return torch.arange(n)
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(int(seed) * _SEED_MULT + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[k * batch_size:(k + 1) * batch_size]


def _check_bs(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None (full batch) or an integer >= 1, got {batch_size!r}")


def _bar(progress, steps, desc):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, leave=False)


def _clip(model, grad_clip):
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)


def _record(rec: dict, hist: dict, callback, bar, **postfix) -> None:
    """One step's record: into the history, to the callback, onto the progress bar."""
    for k in hist:
        hist[k].append(rec[k])
    if callback is not None:
        callback(rec)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(**postfix)


def _finish(model, opt, bar) -> None:
    if bar is not None:
        bar.close()
    opt.zero_grad()
    model.eval()


# ------------------------------------------------------------------------------------------- SFT
def sft(model: nn.Module, batch: dict, steps: int, lr: float, *, dtype: str = "fp32", seed: int = 0,
        batch_size: int | None = None, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
        grad_clip: float | None = 1.0, progress: bool = False,
        callback: Callable[[dict], None] | None = None) -> tuple[nn.Module, dict]:
    """Supervised fine-tuning: ``steps`` AdamW steps on the mean answer-token NLL (:func:`answer_loss`).

    ``batch``: the whole training set as one dict of tensors (see the module docstring); each step uses
    all rows (``batch_size=None``) or ``batch_size`` rows of a per-epoch permutation seeded by ``seed``.
    Returns ``(model, history)``, history ``{"step", "loss"}`` (loss before each step's update).
    ``callback(record)`` gets each step's record.
    """
    batch = _check_batch(batch)
    _check_bs(batch_size)
    _setup(model, dtype, lr, steps)
    opt = _AdamW(model.parameters(), lr, betas, eps, weight_decay)
    hist = {"step": [], "loss": []}
    bar = _bar(progress, steps, f"SFT {dtype}")
    n = batch["input_ids"].shape[0]
    for step in range(steps):
        loss = answer_loss(model, _rows(batch, _order(n, batch_size, seed, step)))
        opt.zero_grad()
        loss.backward()
        _clip(model, grad_clip)
        opt.step()
        rec = {"step": step, "loss": float(loss.detach())}
        _record(rec, hist, callback, bar, loss=f"{rec['loss']:.3f}")
    _finish(model, opt, bar)
    return model, hist


# ------------------------------------------------------------------------------------------- DPO
def dpo(model: nn.Module, ref_model: nn.Module, chosen: dict, rejected: dict, beta: float = 0.1,
        steps: int = 100, lr: float = 1e-5, *, dtype: str = "fp32", seed: int = 0,
        batch_size: int | None = None, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
        grad_clip: float | None = 1.0, progress: bool = False,
        callback: Callable[[dict], None] | None = None) -> tuple[nn.Module, dict]:
    """Direct Preference Optimisation of ``model`` against the frozen ``ref_model``.

    ``chosen`` / ``rejected``: batches of the same rows (row i of both is one preference pair; the prompts
    should match, the answers differ). The reference log-probabilities are computed once, before training,
    with ``ref_model`` in the training ``dtype`` (a bf16 copy in bf16 mode; ``ref_model`` itself is not
    changed). Each step minimises :func:`dpo_loss` on all pairs or on ``batch_size`` of them.
    Returns ``(model, history)``, history ``{"step", "loss", "margin", "accuracy"}`` measured before each
    step's update (margin: mean ``beta * ...`` over the step's pairs; accuracy: fraction with margin > 0).
    """
    chosen, rejected = _check_batch(chosen, "chosen"), _check_batch(rejected, "rejected")
    if chosen["input_ids"].shape[0] != rejected["input_ids"].shape[0]:
        raise ValueError(f"chosen has {chosen['input_ids'].shape[0]} rows and rejected "
                         f"{rejected['input_ids'].shape[0]}; pass one rejected answer per chosen answer")
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive number (DPO's KL strength, e.g. 0.1), got {beta!r}")
    if not isinstance(ref_model, nn.Module):
        raise ValueError("ref_model must be an nn.Module: the frozen reference (usually the base model)")
    _check_bs(batch_size)
    target = _check_dtype(dtype)
    ref = ref_model
    if next(ref_model.parameters()).dtype != target:
        import copy

        ref = copy.deepcopy(ref_model).to(target)
    was_training = ref.training
    ref.eval()
    with torch.no_grad():
        ref_c, ref_r = answer_logprobs(ref, chosen), answer_logprobs(ref, rejected)
    ref.train(was_training)
    del ref
    _setup(model, dtype, lr, steps)
    opt = _AdamW(model.parameters(), lr, betas, eps, weight_decay)
    hist = {"step": [], "loss": [], "margin": [], "accuracy": []}
    bar = _bar(progress, steps, f"DPO {dtype}")
    n = chosen["input_ids"].shape[0]
    for step in range(steps):
        idx = _order(n, batch_size, seed, step)
        pc = answer_logprobs(model, _rows(chosen, idx))
        pr = answer_logprobs(model, _rows(rejected, idx))
        loss, margin = dpo_loss(pc, pr, ref_c[idx].to(pc.device), ref_r[idx].to(pc.device), beta)
        opt.zero_grad()
        loss.backward()
        _clip(model, grad_clip)
        opt.step()
        rec = {"step": step, "loss": float(loss.detach()), "margin": float(margin.detach().mean()),
               "accuracy": float((margin > 0).float().mean())}
        _record(rec, hist, callback, bar, loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.2f}")
    _finish(model, opt, bar)
    return model, hist


# ------------------------------------------------------------------------------------------ GRPO
@torch.no_grad()
def _sample(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float,
            g: torch.Generator) -> torch.Tensor:
    """(N, max_new_tokens) sampled continuations of equal-length prompts (no KV cache: short answers)."""
    ids = prompt_ids
    out = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()
        probs = torch.softmax(logits / temperature, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=g).to(ids.device)
        out.append(nxt)
        ids = torch.cat([ids, nxt], dim=1)
    return torch.cat(out, dim=1)


def grpo(model: nn.Module, prompts: list[str], answers: list[str], steps: int, lr: float, *,
         group_size: int = 8, prompts_per_step: int = 4, max_new_tokens: int | None = None,
         temperature: float = 1.0, stop: str = "\n", tokenizer=None, dtype: str = "fp32", seed: int = 0,
         weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8, grad_clip: float | None = 1.0,
         adv_eps: float = 1e-4, progress: bool = False,
         callback: Callable[[dict], None] | None = None) -> tuple[nn.Module, dict]:
    """GRPO-style policy gradient on a verifiable task (exact match of the answer string).

    Each step takes ``prompts_per_step`` prompts (a seeded per-epoch permutation), samples
    ``group_size`` continuations of ``max_new_tokens`` bytes each (default: longest answer + 1), cuts each
    at the first ``stop`` (kept) and scores reward 1 if the text up to and including ``stop`` equals the
    answer followed by ``stop`` (``stop`` is appended to answers that lack it). Advantages are
    group-normalised ``(r - mean) / (std + adv_eps)`` (population std); the loss is
    ``-mean over completions of (A * sum of the completion's token log-probs) / max_new_tokens``
    (one on-policy update per batch, so PPO's ratio is 1; no KL term). A group whose rewards are all
    equal has zero advantage and contributes no gradient (AdamW still steps, so its momentum moves). Returns ``(model, history)`` with
    ``{"step", "reward", "loss"}``.
    """
    from workbench.data import get_tokenizer

    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts ({len(prompts)}) and answers ({len(answers)}) must be non-empty lists of "
                         "the same length")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (advantages are relative within a group), got {group_size}")
    tok = tokenizer if tokenizer is not None else get_tokenizer("byte")
    enc = [tok.encode(p) for p in prompts]
    ans = [a if a.endswith(stop) else a + stop for a in answers]
    if max_new_tokens is None:
        max_new_tokens = max(len(tok.encode(a)) for a in ans) + 1
    _setup(model, dtype, lr, steps)
    opt = _AdamW(model.parameters(), lr, betas, eps, weight_decay)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(int(seed))
    hist = {"step": [], "reward": [], "loss": []}
    bar = _bar(progress, steps, f"GRPO {dtype}")
    n = len(prompts)
    for step in range(steps):
        idx = _order(n, min(prompts_per_step, n), seed, step).tolist()
        rows, rewards = [], []
        model.eval()
        for i in idx:
            p = torch.tensor([enc[i]] * group_size, device=device)
            comp = _sample(model, p, max_new_tokens, temperature, g)
            for c in comp.tolist():
                text = tok.decode(c)
                done = stop in text
                rewards.append(float(done and text[:text.index(stop) + len(stop)] == ans[i]))
                rows.append((enc[i], c))
        model.train()
        r = torch.tensor(rewards).view(len(idx), group_size)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + adv_eps)).view(-1)
        length = max(len(pr) + len(c) for pr, c in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for k, (pr, c) in enumerate(rows):
            seq = pr + c
            ids[k, :len(seq)] = torch.tensor(seq)
            labels[k, len(pr):len(seq)] = torch.tensor(c)
            mask[k, :len(seq)] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        opt.zero_grad()
        logp = answer_logprobs(model, batch)
        loss = -(adv.to(logp.device) * logp).mean() / max_new_tokens
        loss.backward()
        _clip(model, grad_clip)
        opt.step()                          # also when every advantage is 0: Adam's momentum still moves
        rec = {"step": step, "reward": float(r.mean()), "loss": float(loss.detach())}
        _record(rec, hist, callback, bar, reward=f"{rec['reward']:.2f}")
    _finish(model, opt, bar)
    return model, hist
