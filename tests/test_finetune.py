"""workbench.sparsity.finetune: SFT, DPO and GRPO loops against values computed independently here."""
import copy
import math

import pytest
import torch

from workbench.assets import pretrained_dir
from workbench.models import build_model
from workbench.sparsity.finetune import answer_loss, dpo, grpo, preference_pairs, sft


def _examples(n, seed):
    """Arithmetic prompts/answers built here (not by the task module): 'a+b=' -> 'sum\\n'."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = (int(v) for v in torch.randint(10, 50, (2,), generator=g))
        out.append({"template": "", "question": f"{a}+{b}=", "prompt": f"{a}+{b}=", "answer": str(a + b),
                    "text": f"{a}+{b}={a + b}\n"})
    return out


def _encode(examples, pad="right"):
    """Byte ids, labels = ids on answer + newline, -100 elsewhere; padded with 0."""
    rows = [(list(e["prompt"].encode()), list((e["text"][len(e["prompt"]):]).encode())) for e in examples]
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(rows):
        off = 0 if pad == "right" else length - len(p) - len(a)
        ids[i, off:off + len(p) + len(a)] = torch.tensor(p + a)
        labels[i, off + len(p):off + len(p) + len(a)] = torch.tensor(a)
        mask[i, off:off + len(p) + len(a)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def _brute_logprob(model, example):
    """Sum over answer bytes of log p(byte | all earlier bytes), one unpadded sequence at a time."""
    text = list(example["text"].encode())
    start = len(example["prompt"].encode())
    logits = model(input_ids=torch.tensor([text])).logits[0].double()
    total = 0.0
    for t in range(start, len(text)):
        row = logits[t - 1]
        total += float(row[text[t]] - torch.logsumexp(row, 0))
    return total


@pytest.fixture(scope="module")
def base():
    return build_model(pretrained_dir())


def test_dpo_loss_equals_hand_computed_value(base, one_thread):
    ex = _examples(4, seed=0)
    chosen, rejected = preference_pairs(ex, seed=0)
    for c, r in zip(chosen, rejected):
        assert c["text"] != r["text"] and r["text"].startswith(c["prompt"]) and int(r["answer"]) != int(c["answer"])
    # a policy that differs from the reference: a few SFT steps away from the base
    policy, _ = sft(copy.deepcopy(base), _encode(ex), steps=3, lr=1e-3)
    beta = 0.1
    margins = [beta * ((_brute_logprob(policy, c) - _brute_logprob(base, c))
                       - (_brute_logprob(policy, r) - _brute_logprob(base, r))) for c, r in zip(chosen, rejected)]
    assert max(abs(m) for m in margins) > 1e-3                 # not the trivial log(2) of policy == reference
    expected = sum(-math.log(1.0 / (1.0 + math.exp(-m))) for m in margins) / len(margins)
    # left padding for the rejected answers: positions must not depend on padding
    _, hist = dpo(copy.deepcopy(policy), base, _encode(chosen), _encode(rejected, pad="left"), beta=beta,
                  steps=1, lr=1e-4)
    assert hist["loss"][0] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert hist["margin"][0] == pytest.approx(sum(margins) / len(margins), rel=1e-3, abs=1e-6)
    assert hist["accuracy"][0] == sum(m > 0 for m in margins) / len(margins)


def test_dpo_learns_the_preference(base, one_thread):
    ex = _examples(16, seed=1)
    chosen, rejected = preference_pairs(ex, seed=1)
    model, hist = dpo(copy.deepcopy(base), base, _encode(chosen), _encode(rejected), steps=15, lr=1e-3)
    assert hist["loss"][0] == pytest.approx(math.log(2), abs=1e-5)     # policy == reference at step 0
    assert hist["loss"][-1] < 0.6 and hist["accuracy"][-1] > 0.8


def test_sft_lowers_answer_loss(base, one_thread):
    train, held = _examples(32, seed=2), _examples(16, seed=3)

    def nll(model, examples):           # brute force: mean NLL per answer byte
        n = sum(len(e["text"]) - len(e["prompt"]) for e in examples)
        return -sum(_brute_logprob(model, e) for e in examples) / n

    before_train, before_held = nll(base, train), nll(base, held)
    assert answer_loss(base, _encode(train)).item() == pytest.approx(before_train, rel=1e-4)
    model, hist = sft(copy.deepcopy(base), _encode(train), steps=20, lr=1e-3, batch_size=16, seed=0)
    assert len(hist["loss"]) == 20 and hist["loss"][-1] < hist["loss"][0]
    assert nll(model, train) < 0.7 * before_train
    assert nll(model, held) < 0.85 * before_held


def test_bf16_keeps_bf16_params_and_loses_small_updates(base, one_thread):
    """One AdamW step from zero state moves each weight by ``lr * g / (|g| + eps)`` (~lr): stored in bf16,
    the move survives only where it exceeds half a bf16 spacing of the weight."""
    batch = _encode(_examples(8, seed=4))
    lr = 1e-4
    m16 = copy.deepcopy(base).to(torch.bfloat16)
    ref = copy.deepcopy(m16)
    answer_loss(ref, batch).backward()                # the gradient the step will use
    model, _ = sft(m16, batch, steps=1, lr=lr, dtype="bf16", grad_clip=None)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    tuned = dict(model.named_parameters())
    checked_small = checked_big = 0
    for name, p0 in ref.named_parameters():
        w = p0.detach().float()
        g = p0.grad.float()
        expected = (w - lr * g / (g.abs() + 1e-8)).to(torch.bfloat16)        # Adam's first step, then bf16
        got = tuned[name].detach()
        assert (got != expected).float().mean() < 1e-3, name                  # rounding-boundary ties only
        live = g.abs() > 1e-5                                                 # |g| >> eps: the move is ~lr
        spacing = 2.0 ** (torch.floor(torch.log2(w.abs().clamp(min=1e-30))) - 7)   # bf16 spacing at |w|
        small = live & (lr < 0.25 * spacing)
        big = live & (lr > 1.0 * spacing)
        assert torch.equal(got[small], p0.detach()[small]), name             # lost to rounding
        assert bool((got[big] != p0.detach()[big]).all()), name               # kept
        checked_small += int(small.sum())
        checked_big += int(big.sum())
    assert checked_small > 10_000 and checked_big > 1_000
    # the same step in fp32 moves every live weight
    m32, _ = sft(copy.deepcopy(base), batch, steps=1, lr=lr, dtype="fp32", grad_clip=None)
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    moved = sum(int((p.detach() != q.detach()).sum()) for p, q in zip(m32.parameters(), base.parameters()))
    assert moved > 0.95 * sum(p.numel() for p in base.parameters())


def test_deterministic_for_a_seed(base, one_thread):
    ex = _examples(24, seed=5)
    batch = _encode(ex)
    runs = [sft(copy.deepcopy(base), batch, steps=4, lr=1e-3, batch_size=8, seed=s, dtype="bf16")[0]
            for s in (7, 7, 8)]
    same = all(torch.equal(p, q) for p, q in zip(runs[0].parameters(), runs[1].parameters()))
    other = all(torch.equal(p, q) for p, q in zip(runs[0].parameters(), runs[2].parameters()))
    assert same and not other
    c, r = preference_pairs(ex, seed=5)
    d = [dpo(copy.deepcopy(base), base, _encode(c), _encode(r), steps=3, lr=1e-3, batch_size=8, seed=1)[0]
         for _ in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(d[0].parameters(), d[1].parameters()))
    g = [grpo(copy.deepcopy(base), [e["prompt"] for e in ex[:4]], [e["answer"] for e in ex[:4]], steps=2,
              lr=1e-3, group_size=4, prompts_per_step=2, seed=3) for _ in range(2)]
    assert g[0][1] == g[1][1] and len(g[0][1]["reward"]) == 2
    assert all(torch.equal(p, q) for p, q in zip(g[0][0].parameters(), g[1][0].parameters()))


def test_bad_input_names_the_fix(base):
    batch = _encode(_examples(2, seed=6))
    with pytest.raises(ValueError, match="dtype"):
        sft(copy.deepcopy(base), batch, steps=1, lr=1e-3, dtype="fp16")
    with pytest.raises(ValueError, match="labels"):
        sft(copy.deepcopy(base), {"input_ids": batch["input_ids"]}, steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="rows"):
        dpo(copy.deepcopy(base), base, batch, _encode(_examples(3, seed=6)), steps=1)
    with pytest.raises(ValueError, match="steps"):
        sft(copy.deepcopy(base), batch, steps=0, lr=1e-3)


def test_grpo_reward_is_exact_match(base, one_thread):
    """A model drilled on one example answers it (nearly) greedily: reward 1 for the true answer, 0 for another."""
    ex = [{"template": "", "question": "7+5=", "prompt": "7+5=", "answer": "12", "text": "7+5=12\n"}]
    drilled, hist = sft(copy.deepcopy(base), _encode(ex), steps=30, lr=3e-3)
    assert hist["loss"][-1] < 0.01
    kw = dict(steps=1, lr=1e-6, group_size=4, prompts_per_step=1, temperature=0.05, seed=0)
    _, right = grpo(copy.deepcopy(drilled), ["7+5="], ["12"], **kw)
    _, wrong = grpo(copy.deepcopy(drilled), ["7+5="], ["13\n"], **kw)
    assert right["reward"] == [1.0] and wrong["reward"] == [0.0]
    assert right["loss"] == [0.0]                  # equal rewards in the group: zero advantage, zero loss
