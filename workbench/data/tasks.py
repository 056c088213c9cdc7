"""A learnable task generated in code: integer arithmetic in prompt/answer form.

Every example is ``template + question + answer + end``, e.g. ``"Compute: 23+58=81\\n"``:

* ``template`` -- the fixed instruction text (``"Compute: "``), the same for every example
  (the "system" segment of GAIN-RL's inter-segment angle);
* ``question`` -- ``"23+58="``; ``prompt`` = ``template + question``;
* ``answer`` -- ``"81"``; ``text`` = ``prompt + answer + end`` (``end`` = ``"\\n"``).

Operands have a digit count drawn uniformly from ``1..digits`` each (so 1-digit and
``digits``-digit operands are equally common), which mixes easy and hard items; each
example also records ``carries`` (carries of ``+``, borrows of ``-``, None for ``*``) as a
difficulty label. Questions are distinct within one call (``exclude=`` keeps another set's
questions out, e.g. to build a disjoint evaluation set).

:func:`encode_examples` builds padded tensors with the segment masks that
:func:`workbench.data.angles.angle_concentration` takes and labels for a loss on the answer
only; :func:`answer_correct` / :func:`exact_match` decode answers greedily;
:func:`train_on_task` fine-tunes a model on the task with uniform sampling, a fixed index
subset (e.g. from :func:`workbench.data.sampler.select_top`) or a
:class:`workbench.data.sampler.GainSampler`.

Example::

    >>> from workbench.data.tasks import arithmetic_examples, encode_examples
    >>> ex = arithmetic_examples(3, digits=2, seed=0)
    >>> sorted(ex[0])
    ['a', 'answer', 'b', 'carries', 'op', 'prompt', 'question', 'template', 'text']
    >>> all(e["text"] == e["prompt"] + e["answer"] + "\\n" for e in ex)
    True
    >>> all(int(e["answer"]) == e["a"] + e["b"] for e in ex)
    True
    >>> enc = encode_examples(ex)
    >>> sorted(enc)
    ['answer_mask', 'attention_mask', 'input_ids', 'labels', 'prompt_mask', 'template_mask']
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Callable, Sequence

import torch

__all__ = ["TEMPLATE", "END", "arithmetic_examples", "encode_examples", "encode_prompts",
           "generate_answers", "answer_correct", "exact_match", "train_on_task",
           "first_step_reaching", "prompt_angles", "per_example_grad_norms", "per_example_losses"]

TEMPLATE = "Compute: "
END = "\n"
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _carries(a: int, b: int, op: str):
    """Carries of ``a + b`` / borrows of ``a - b`` (``a >= b``), digit by digit; None for ``*``."""
    if op == "*":
        return None
    count, carry = 0, 0
    while a or b:
        da, db = a % 10, b % 10
        if op == "+":
            carry = 1 if da + db + carry >= 10 else 0
        else:
            carry = 1 if da - db - carry < 0 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


def _operand(rng: random.Random, digits: int) -> int:
    k = rng.randint(1, digits)
    return rng.randint(0, 9) if k == 1 else rng.randint(10 ** (k - 1), 10 ** k - 1)


def arithmetic_examples(n: int, digits: int = 2, ops: Sequence[str] = ("+",), seed: int = 0,
                        template: str = TEMPLATE, end: str = END,
                        exclude=None) -> list[dict]:
    """``n`` distinct arithmetic examples (dicts, see the module docstring); deterministic.

    ``digits``: the largest operand digit count (each operand's count is uniform in
    ``1..digits``). ``ops``: any of ``"+"``, ``"-"`` (operands ordered so the answer is
    >= 0), ``"*"``. ``exclude``: questions (strings, or example dicts) not to generate.
    Keys: ``template``, ``question``, ``prompt``, ``answer``, ``text``, and ``a``, ``b``,
    ``op``, ``carries``.

    Example::

        >>> ex = arithmetic_examples(2, digits=3, ops=("+", "-"), seed=1)
        >>> [e["text"] for e in ex]
        ['Compute: 967+4=971\\n', 'Compute: 67+93=160\\n']
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 9:
        raise ValueError(f"digits must be an integer in 1..9, got {digits!r}")
    ops = tuple(ops)
    bad = [o for o in ops if o not in _OPS]
    if not ops or bad:
        raise ValueError(f"ops must be a non-empty sequence of {sorted(_OPS)}, got {ops!r}")
    if not isinstance(template, str) or not isinstance(end, str) or not end:
        raise ValueError("template must be a string and end a non-empty string (e.g. '\\n')")
    seen = set()
    for q in exclude or ():
        seen.add(q["question"] if isinstance(q, dict) else str(q))
    n_values = 10 ** digits  # 0 .. 10**digits - 1
    distinct = len(set(ops)) * n_values * n_values
    if n + len(seen) > distinct:
        raise ValueError(f"n={n} distinct questions (+{len(seen)} excluded) exceed the "
                         f"{distinct} possible with digits={digits}, ops={ops}; raise digits or "
                         "lower n")
    rng = random.Random(int(seed))
    out = []
    while len(out) < n:
        op = ops[rng.randrange(len(ops))]
        a, b = _operand(rng, digits), _operand(rng, digits)
        if op == "-" and a < b:
            a, b = b, a
        question = f"{a}{op}{b}="
        if question in seen:
            continue
        seen.add(question)
        answer = str(_OPS[op](a, b))
        prompt = template + question
        out.append({"template": template, "question": question, "prompt": prompt,
                    "answer": answer, "text": prompt + answer + end, "a": a, "b": b, "op": op,
                    "carries": _carries(a, b, op)})
    return out


def _tokenizer(tokenizer):
    if tokenizer is None:
        from .tokenizer import ByteTokenizer
        return ByteTokenizer()
    if not hasattr(tokenizer, "encode"):
        raise ValueError("tokenizer must have an encode(text) -> list[int] method, e.g. "
                         "workbench.data.get_tokenizer('byte')")
    return tokenizer


def _check_examples(examples):
    if not isinstance(examples, (list, tuple)) or not examples:
        raise ValueError("examples must be a non-empty list of dicts from arithmetic_examples()")
    for e in examples[:1]:
        missing = {"template", "question", "answer", "text"} - set(e)
        if missing:
            raise ValueError(f"examples lack keys {sorted(missing)}; build them with "
                             "arithmetic_examples()")


def _end_of(e):
    end = e["text"][len(e["template"]) + len(e["question"]) + len(e["answer"]):]
    if e["text"] != e["template"] + e["question"] + e["answer"] + end or not end:
        raise ValueError(f"example text {e['text']!r} is not template + question + answer + end")
    return end


def _pad_rows(rows, pad, pad_id, max_len):
    """rows: list of (ids, segment-code list). Returns ids, attn, codes tensors [B, L]."""
    longest = max(len(r[0]) for r in rows)
    if max_len is None:
        length = longest
    else:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < longest:
            raise ValueError(f"max_len={max_len!r} is shorter than the longest example "
                             f"({longest} tokens); pass max_len >= {longest} or None")
        length = max_len
    B = len(rows)
    ids = torch.full((B, length), int(pad_id), dtype=torch.long)
    codes = torch.zeros((B, length), dtype=torch.long)  # 0 pad, 1 template, 2 question, 3 answer
    for i, (r, c) in enumerate(rows):
        sl = slice(0, len(r)) if pad == "right" else slice(length - len(r), length)
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        codes[i, sl] = torch.tensor(c, dtype=torch.long)
    return ids, codes


def _check_pad(pad):
    if pad not in ("right", "left"):
        raise ValueError(f"pad must be 'right' or 'left', got {pad!r}")


def _encode_segments(examples, tokenizer, pad, pad_id, max_len, answer: bool):
    """Token ids and segment codes (0 pad, 1 template, 2 question, 3 answer + end), padded."""
    _check_examples(examples)
    _check_pad(pad)
    tok = _tokenizer(tokenizer)
    pad_id = getattr(tok, "eos_id", 0) if pad_id is None else pad_id
    rows = []
    for e in examples:
        parts = [e["template"], e["question"]] + ([e["answer"] + _end_of(e)] if answer else [])
        ids, codes = [], []
        for code, text in enumerate(parts, start=1):
            toks = tok.encode(text)
            ids += toks
            codes += [code] * len(toks)
        rows.append((ids, codes))
    return _pad_rows(rows, pad, pad_id, max_len)


def encode_examples(examples, tokenizer=None, pad: str = "right", max_len: int | None = None,
                    pad_id: int | None = None) -> dict:
    """Padded tensors for a batch of examples: ``{input_ids, attention_mask, labels,
    prompt_mask, template_mask, answer_mask}``, all ``[B, L]``.

    Segments are tokenized separately and concatenated (identical to tokenizing ``text``
    with the byte tokenizer, the default). ``labels`` are ``input_ids`` on the answer and
    end-marker tokens and -100 elsewhere (loss on the answer only; the model shifts them, as
    ``transformers`` does). ``prompt_mask``: the question tokens; ``template_mask``: the
    template tokens; ``answer_mask``: the answer + end tokens; masks are bool, padding is
    ``pad_id`` (default ``tokenizer.eos_id`` or 0) with ``attention_mask`` 0. ``pad``:
    ``"right"`` or ``"left"``. ``max_len``: pad to this length (must fit every example).

    Example::

        >>> enc = encode_examples(arithmetic_examples(2, seed=0), pad="left")
        >>> enc["input_ids"].shape == enc["labels"].shape
        True
    """
    ids, codes = _encode_segments(examples, tokenizer, pad, pad_id, max_len, answer=True)
    answer = codes == 3
    labels = torch.where(answer, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": (codes > 0).long(), "labels": labels,
            "prompt_mask": codes == 2, "template_mask": codes == 1, "answer_mask": answer}


def encode_prompts(examples, tokenizer=None, pad: str = "left", pad_id: int | None = None) -> dict:
    """Prompts only (template + question), for generation and angle scoring:
    ``{input_ids, attention_mask, prompt_mask, template_mask}`` (left padding by default)."""
    ids, codes = _encode_segments(examples, tokenizer, pad, pad_id, None, answer=False)
    return {"input_ids": ids, "attention_mask": (codes > 0).long(), "prompt_mask": codes == 2,
            "template_mask": codes == 1}


def _positions(attn):
    return (attn.cumsum(-1) - 1).clamp(min=0)


def _decode(tok, ids):
    if hasattr(tok, "decode"):
        return tok.decode(ids)
    return bytes(ids).decode("utf-8", errors="replace")


def _batches(n, batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for s in range(0, n, batch_size):
        yield slice(s, min(n, s + batch_size))


@contextlib.contextmanager
def _eval_mode(model):
    """``model.eval()`` inside the block; its previous train/eval mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _generate_ids(model, examples, tok, batch_size, max_new_tokens):
    """Greedy continuations of the prompts: list of token-id lists (``max_new_tokens`` each)."""
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model):
        for sl in _batches(len(examples), batch_size):
            enc = encode_prompts(examples[sl], tok, pad="left")
            ids = enc["input_ids"].to(device)
            attn = enc["attention_mask"].to(device)
            new = []
            for _ in range(max_new_tokens):
                logits = model(input_ids=ids, attention_mask=attn, position_ids=_positions(attn),
                               use_cache=False).logits
                nxt = logits[:, -1].argmax(-1)
                new.append(nxt)
                ids = torch.cat([ids, nxt[:, None]], 1)
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            out.extend(torch.stack(new, 1).cpu().tolist())
    return out


def _targets(examples, tok):
    return [tok.encode(e["answer"] + _end_of(e)) for e in examples]


def generate_answers(model, examples, tokenizer=None, batch_size: int = 64,
                     max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers (text up to, not including, the example's end marker; batched, no_grad).

    ``max_new_tokens`` defaults to the longest ``answer + end`` among ``examples`` (in tokens),
    so a longer answer is cut (and wrong).
    """
    _check_examples(examples)
    tok = _tokenizer(tokenizer)
    targets = _targets(examples, tok)
    steps = max(len(t) for t in targets) if max_new_tokens is None else int(max_new_tokens)
    gen = _generate_ids(model, examples, tok, batch_size, steps)
    answers = []
    for e, g in zip(examples, gen):
        text = _decode(tok, g)
        end = _end_of(e)
        answers.append(text.split(end, 1)[0])
    return answers


def answer_correct(model, examples, tokenizer=None, batch_size: int = 64) -> torch.Tensor:
    """Per example: does greedy decoding emit exactly ``answer + end``? ``bool [n]``.

    Example::

        >>> from workbench.models import build_model
        >>> ex = arithmetic_examples(4, seed=0)
        >>> answer_correct(build_model("tiny", seed=0), ex).tolist()  # untrained: all wrong
        [False, False, False, False]
    """
    _check_examples(examples)
    tok = _tokenizer(tokenizer)
    targets = _targets(examples, tok)
    gen = _generate_ids(model, examples, tok, batch_size, max(len(t) for t in targets))
    return torch.tensor([g[:len(t)] == t for g, t in zip(gen, targets)], dtype=torch.bool)


def exact_match(model, examples, tokenizer=None, batch_size: int = 64) -> float:
    """Fraction of ``examples`` answered exactly (greedy, see :func:`answer_correct`)."""
    return float(answer_correct(model, examples, tokenizer, batch_size).float().mean())


def prompt_angles(model, examples, tokenizer=None, **kwargs) -> dict:
    """Angle concentration of each example's prompt (template + question), via
    :func:`workbench.data.angles.angle_concentration` with the question tokens as
    ``prompt_mask`` and the template tokens as ``template_mask`` (right padding).
    ``kwargs`` go to ``angle_concentration`` (``inter_weight``, ``layer``, ``faithful``...).
    Returns its dict ``{"intra", "inter", "score"}`` of float32 ``[n]``.

    Example::

        >>> from workbench.models import build_model
        >>> out = prompt_angles(build_model("tiny", seed=0), arithmetic_examples(3, seed=0))
        >>> tuple(out["score"].shape)
        (3,)
    """
    from .angles import angle_concentration

    _check_examples(examples)
    enc = encode_prompts(examples, _tokenizer(tokenizer), pad="right")
    return angle_concentration(model, enc["input_ids"], attention_mask=enc["attention_mask"],
                               prompt_mask=enc["prompt_mask"], template_mask=enc["template_mask"],
                               **kwargs)


def per_example_grad_norms(model, examples, tokenizer=None, batch_size: int = 32,
                           params=None) -> torch.Tensor:
    """L2 norm of each example's loss gradient (mean cross-entropy on the answer + end tokens),
    over ``params`` (names; default all trainable parameters): float32 ``[n]``. Uses
    :func:`workbench.data.alignment.per_example_grads` ``batch_size`` examples at a time.

    Example::

        >>> from workbench.models import build_model
        >>> g = per_example_grad_norms(build_model("tiny", seed=0), arithmetic_examples(3, seed=0))
        >>> tuple(g.shape), bool((g > 0).all())
        ((3,), True)
    """
    from .alignment import per_example_grads

    _check_examples(examples)
    tok = _tokenizer(tokenizer)
    out = []
    for sl in _batches(len(examples), batch_size):
        enc = encode_examples(examples[sl], tok, pad="right")
        grads = per_example_grads(model, enc["input_ids"], labels=enc["labels"],
                                  attention_mask=enc["attention_mask"], params=params)
        sq = sum(g.float().pow(2).flatten(1).sum(1) for g in grads.values())
        out.append(sq.sqrt().cpu())
        del grads
    return torch.cat(out)


@torch.no_grad()
def per_example_losses(model, examples, tokenizer=None, batch_size: int = 128) -> torch.Tensor:
    """Mean cross-entropy of each example on its answer + end tokens (teacher forcing): ``[n]``."""
    _check_examples(examples)
    tok = _tokenizer(tokenizer)
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model):
        for sl in _batches(len(examples), batch_size):
            enc = encode_examples(examples[sl], tok, pad="right")
            logits = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device),
                           use_cache=False).logits[:, :-1].float()
            target = enc["labels"][:, 1:].to(device)
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0),
                                                   reduction="none")
            keep = (target != -100).float()
            out.append(((ce * keep).sum(1) / keep.sum(1).clamp(min=1)).cpu())
    return torch.cat(out)


def _task_loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                use_cache=False)
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             target.reshape(-1), ignore_index=-100)


def _is_gain(sampler):
    from .sampler import GainSampler
    return isinstance(sampler, GainSampler)


def first_step_reaching(history: list[dict], target: float, key: str = "accuracy"):
    """``(step, time)`` of the first history entry with ``key >= target``; ``(None, None)`` if none.

    Example::

        >>> first_step_reaching([{"step": 0, "time": 0.0, "accuracy": 0.1},
        ...                      {"step": 50, "time": 2.5, "accuracy": 0.9}], 0.8)
        (50, 2.5)
    """
    for h in history:
        v = h.get(key)
        if v is not None and v >= target:
            return h["step"], h["time"]
    return None, None


def train_on_task(model, examples, steps: int, batch_size: int = 32, lr: float = 1e-3,
                  sampler=None, eval_examples=None, eval_every: int = 50, seed: int = 0,
                  tokenizer=None, weight_decay: float = 0.0,
                  angle_signal: float | Callable[[list[int]], float] = 0.0,
                  eval_batch_size: int = 128, progress: bool = False,
                  optimizer: torch.optim.Optimizer | None = None) -> list[dict]:
    """Fine-tune ``model`` in place on ``examples`` (loss on the answer tokens only; AdamW,
    constant ``lr``); returns the history, a list of dicts.

    ``sampler``:

    * ``None`` / ``"uniform"``: each epoch is a seeded random permutation of all examples;
    * a sequence of indices (e.g. from :func:`~workbench.data.sampler.select_top`): the same,
      restricted to those examples;
    * a :class:`~workbench.data.sampler.GainSampler` over the examples: each epoch trains on
      ``list(sampler)`` (``subset_size`` items drawn by the Gaussian over the ranks), in
      batches of ``batch_size``; before each batch's update the model greedily answers the
      batch (as RL rollouts are generated before the update; this decoding is counted in
      ``time``), and after the epoch ``sampler.update(accuracy, angle_signal)`` is called
      with the accuracy on the epoch's drawn items. ``angle_signal``: a number or a callable
      ``(drawn indices) -> float``. The sampler is advanced in place.

    ``optimizer``: use this optimizer (built on ``model``'s parameters; ``lr`` and
    ``weight_decay`` are then ignored) instead of a fresh AdamW, e.g. to keep its Adam moments
    for :func:`~workbench.data.alignment.gradient_features`.

    A batch never straddles two epochs (the last batch of an epoch may be smaller).
    History: one entry every ``eval_every`` steps (and at step 0 and at the end) with
    ``step``, ``time`` (seconds of training so far, held-out evaluation excluded), ``loss``
    (mean training loss since the previous entry; None at step 0), ``accuracy`` (exact match
    on ``eval_examples``; None without them), ``eval_loss`` (their mean answer loss, see
    :func:`per_example_losses`; None without them) and ``epoch`` (finished epochs); with a
    GainSampler also ``mu`` and ``epoch_accuracy`` (of the last finished epoch).
    Deterministic in ``seed``.

    Example::

        >>> from workbench.models import build_model
        >>> model = build_model("tiny", seed=0)
        >>> ex = arithmetic_examples(16, seed=0)
        >>> hist = train_on_task(model, ex, steps=2, batch_size=8, eval_examples=ex[:4],
        ...                      eval_every=1)
        >>> [h["step"] for h in hist], sorted(hist[-1])
        ([0, 1, 2], ['accuracy', 'epoch', 'eval_loss', 'loss', 'step', 'time'])
    """
    _check_examples(examples)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    list(_batches(1, batch_size))  # validates batch_size
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if eval_examples is not None:
        _check_examples(eval_examples)
    tok = _tokenizer(tokenizer)
    gain = _is_gain(sampler)
    n = len(examples)
    if gain:
        if sampler.num_items != n:
            raise ValueError(f"the GainSampler ranks {sampler.num_items} items but there are {n} "
                             "examples; build it with one score per example")
    elif sampler is None or (isinstance(sampler, str) and sampler == "uniform"):
        pool = torch.arange(n)
    elif isinstance(sampler, str):
        raise ValueError(f"sampler must be None, 'uniform', a GainSampler or a sequence of "
                         f"indices, got {sampler!r}")
    else:
        pool = torch.as_tensor(sampler, dtype=torch.long).flatten()
        if pool.numel() == 0 or int(pool.min()) < 0 or int(pool.max()) >= n:
            raise ValueError(f"sampler indices must be a non-empty set of indices in 0..{n - 1}")
    # pre-encode everything once (right padding: the causal model never sees the pads)
    enc = encode_examples(examples, tok, pad="right")
    lengths = enc["attention_mask"].sum(1)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(int(seed))
    if optimizer is None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got "
                         f"{type(optimizer).__name__}")

    def batch_of(idx):
        L = int(lengths[idx].max())
        return {k: enc[k][idx, :L].to(device) for k in ("input_ids", "attention_mask", "labels")}

    def evaluate():
        if eval_examples is None:
            return None, None
        return (exact_match(model, eval_examples, tok, eval_batch_size),
                float(per_example_losses(model, eval_examples, tok, eval_batch_size).mean()))

    history, losses = [], []
    state = {"epoch": 0, "epoch_acc": None}
    train_time = 0.0

    def record(step):
        acc, eval_loss = evaluate()
        entry = {"step": step, "time": train_time,
                 "loss": (sum(losses) / len(losses)) if losses else None,
                 "accuracy": acc, "eval_loss": eval_loss, "epoch": state["epoch"]}
        if gain:
            entry["mu"] = float(sampler.mu)
            entry["epoch_accuracy"] = state["epoch_acc"]
        history.append(entry)
        losses.clear()

    def epochs():
        while True:
            if gain:
                order = torch.tensor(list(sampler), dtype=torch.long)
            else:
                order = pool[torch.randperm(pool.numel(), generator=g)]
            yield order

    record(0)
    was_training = model.training
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train_on_task")
    step = 0
    try:
        for order in epochs():
            if step >= steps:
                break
            correct, drawn = 0, 0
            slices = list(_batches(order.numel(), batch_size))
            for j, sl in enumerate(slices):
                if step >= steps:
                    break
                idx = order[sl]
                t0 = time.perf_counter()
                if gain:
                    ok = answer_correct(model, [examples[i] for i in idx.tolist()], tok,
                                        eval_batch_size)
                    correct += int(ok.sum())
                    drawn += ok.numel()
                    model.train()
                loss = _task_loss(model, batch_of(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if j == len(slices) - 1:  # the epoch ran to its end
                    if gain:
                        acc = correct / max(1, drawn)
                        sig = angle_signal(order.tolist()) if callable(angle_signal) \
                            else angle_signal
                        sampler.update(acc, float(sig))
                        state["epoch_acc"] = acc
                    state["epoch"] += 1
                train_time += time.perf_counter() - t0
                losses.append(float(loss.detach()))
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % eval_every == 0 and step != steps:
                    record(step)
                    model.train()
        if steps > 0 or not history:
            record(step)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return history
