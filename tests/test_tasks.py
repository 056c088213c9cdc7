"""The arithmetic task: generator, encoding masks, greedy exact match and the training loop,
checked against answers computed here with Python ints and against an oracle model."""
import math
import re
from types import SimpleNamespace

import pytest
import torch

from workbench.data.sampler import GainSampler
from workbench.data.tasks import (answer_correct, arithmetic_examples, encode_examples,
                                  encode_prompts, exact_match, first_step_reaching,
                                  generate_answers, train_on_task)
from workbench.models import build_model

Q = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def _truth(question):
    a, op, b = Q.match(question).groups()
    a, b = int(a), int(b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _carries_brute(a, b):
    sa, sb = str(a).zfill(12), str(b).zfill(12)
    carry, count = 0, 0
    for da, db in zip(reversed(sa), reversed(sb)):
        carry = int(int(da) + int(db) + carry >= 10)
        count += carry
    return count


def test_answers_are_right_and_difficulty_is_mixed():
    ex = arithmetic_examples(400, digits=3, ops=("+", "-", "*"), seed=3)
    assert len(ex) == 400 and len({e["question"] for e in ex}) == 400  # distinct
    for e in ex:
        assert e["answer"] == str(_truth(e["question"]))
        assert e["prompt"] == e["template"] + e["question"] == "Compute: " + e["question"]
        assert e["text"] == e["prompt"] + e["answer"] + "\n"
        assert int(e["answer"]) >= 0
        if e["op"] == "+":
            assert e["carries"] == _carries_brute(e["a"], e["b"])
    lens = {len(str(e["a"])) for e in ex} | {len(str(e["b"])) for e in ex}
    assert lens == {1, 2, 3}
    plus = [e for e in ex if e["op"] == "+"]
    assert {e["carries"] for e in plus} >= {0, 1, 2}
    assert {e["op"] for e in ex} == {"+", "-", "*"}


def test_deterministic_and_exclude():
    a = arithmetic_examples(50, seed=7)
    assert a == arithmetic_examples(50, seed=7)
    assert a != arithmetic_examples(50, seed=8)
    b = arithmetic_examples(50, seed=7, exclude=a)
    assert not {e["question"] for e in a} & {e["question"] for e in b}


@pytest.mark.parametrize("kwargs", [dict(n=-1), dict(n=5, digits=0), dict(n=5, ops=("/",)),
                                    dict(n=101, digits=1)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        arithmetic_examples(**kwargs)


def _chars(ids, mask):
    return bytes(int(t) for t, m in zip(ids, mask) if m).decode()


@pytest.mark.parametrize("pad", ["right", "left"])
def test_masks_cover_exactly_the_segments(pad):
    ex = arithmetic_examples(20, digits=3, ops=("+", "*"), seed=1)
    enc = encode_examples(ex, pad=pad)
    L = max(len(e["text"]) for e in ex)
    assert tuple(enc["input_ids"].shape) == (20, L)
    for i, e in enumerate(ex):
        ids = enc["input_ids"][i].tolist()
        attn = enc["attention_mask"][i].tolist()
        n = len(e["text"])
        real = [1] * n + [0] * (L - n) if pad == "right" else [0] * (L - n) + [1] * n
        assert attn == real
        assert _chars(ids, attn) == e["text"]
        assert _chars(ids, enc["template_mask"][i]) == e["template"]
        assert _chars(ids, enc["prompt_mask"][i]) == e["question"]
        lab = enc["labels"][i].tolist()
        kept = [t for t in lab if t != -100]
        assert bytes(kept).decode() == e["answer"] + "\n"
        # labels are -100 exactly outside the answer (+ end) tokens, and equal ids inside
        start = (0 if pad == "right" else L - n) + len(e["prompt"])
        for j in range(L):
            inside = start <= j < start + len(e["answer"]) + 1
            assert (lab[j] != -100) == inside
            if inside:
                assert lab[j] == ids[j]
        # the three segments do not overlap
        seg = (enc["template_mask"][i].long() + enc["prompt_mask"][i].long()
               + enc["answer_mask"][i].long())
        assert seg.tolist() == attn


def test_prompt_encoding_and_max_len():
    ex = arithmetic_examples(5, seed=2)
    enc = encode_prompts(ex)
    for i, e in enumerate(ex):
        assert _chars(enc["input_ids"][i], enc["attention_mask"][i]) == e["prompt"]
        assert bool(enc["attention_mask"][i, -1])  # left padded: real token last
    assert encode_examples(ex, max_len=30)["input_ids"].shape[1] == 30
    with pytest.raises(ValueError, match="max_len"):
        encode_examples(ex, max_len=3)
    with pytest.raises(ValueError, match="pad"):
        encode_examples(ex, pad="middle")


class Oracle(torch.nn.Module):
    """Emits the next byte of a known text (or of a wrong answer for chosen questions);
    logs the prompts it sees in training mode."""

    def __init__(self, examples, wrong=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.texts = {}
        for e in examples:
            ans = str(int(e["answer"]) + 1) if e["question"] in wrong else e["answer"]
            self.texts[e["prompt"]] = e["prompt"] + ans + "\n"
        self.seen = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        B, L = input_ids.shape
        logits = torch.full((B, L, 256), -10.0)
        for b in range(B):
            real = [int(t) for t, m in zip(input_ids[b], attention_mask[b]) if m]
            s = bytes(real).decode()
            prompt = next(p for p in self.texts if s.startswith(p))
            if self.training:
                self.seen.append(prompt)
            text = self.texts[prompt]
            nxt = text[len(s)] if len(s) < len(text) else "\n"
            logits[b, -1, ord(nxt)] = 10.0
        return SimpleNamespace(logits=logits + 0.0 * self.w)


def test_exact_match_with_an_oracle():
    ex = arithmetic_examples(10, digits=3, seed=4)
    assert exact_match(Oracle(ex), ex, batch_size=3) == 1.0
    wrong = {e["question"] for e in ex[::2]}
    ok = answer_correct(Oracle(ex, wrong), ex, batch_size=4)
    assert ok.tolist() == [e["question"] not in wrong for e in ex]
    assert exact_match(Oracle(ex, wrong), ex) == pytest.approx(0.5)
    answers = generate_answers(Oracle(ex, wrong), ex)
    assert answers == [str(int(e["answer"]) + (e["question"] in wrong)) for e in ex]


def test_untrained_fails_and_training_memorises(one_thread):
    from workbench.assets import pretrained_dir

    ex = arithmetic_examples(8, seed=0)
    assert exact_match(build_model("tiny", seed=0), ex) == 0.0
    model = build_model(pretrained_dir())
    hist = train_on_task(model, ex, steps=40, batch_size=8, lr=3e-3, eval_examples=ex,
                         eval_every=20, seed=0)
    assert [h["step"] for h in hist] == [0, 20, 40]
    assert hist[0]["accuracy"] == 0.0 and hist[-1]["accuracy"] == 1.0
    assert hist[-1]["loss"] < 0.1 * hist[1]["loss"]
    assert first_step_reaching(hist, 1.0)[0] in (20, 40)


def test_index_sampler_trains_only_on_the_subset():
    ex = arithmetic_examples(12, seed=5)
    oracle = Oracle(ex)
    keep = [1, 4, 7]
    train_on_task(oracle, ex, steps=5, batch_size=2, sampler=keep, eval_every=10)
    assert len(oracle.seen) == 2 + 1 + 2 + 1 + 2  # epochs of 3 items: batches of 2 then 1
    assert set(oracle.seen) == {ex[i]["prompt"] for i in keep}


def test_gain_sampler_epochs_and_update():
    ex = arithmetic_examples(30, seed=6)
    oracle = Oracle(ex, wrong={e["question"] for e in ex[:15]})
    scores = torch.arange(30.0)
    s = GainSampler(scores, subset_size=6, sigma=5.0, n=10.0, a=2.0, beta=0.5, adj_max=100.0,
                    seed=1)
    ref = GainSampler(scores, subset_size=6, sigma=5.0, n=10.0, a=2.0, beta=0.5, adj_max=100.0,
                      seed=1)
    hist = train_on_task(oracle, ex, steps=4, batch_size=4, sampler=s, eval_every=3,
                         eval_examples=ex)
    # 4 steps = 2 epochs of 6 drawn items each (batches 4 + 2); mu moved by the drawn accuracy
    seen = [p for p in oracle.seen]
    for epoch in range(2):
        drawn = list(ref)
        assert len(set(drawn)) == 6
        assert seen[6 * epoch:6 * (epoch + 1)] == [ex[i]["prompt"] for i in drawn]
        acc = sum(i >= 15 for i in drawn) / 6
        ref.update(acc)
    assert s.epoch == 2 and s.mu == pytest.approx(ref.mu)
    assert hist[-1]["mu"] == pytest.approx(ref.mu) and hist[-1]["epoch"] == 2
    assert hist[-1]["accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="GainSampler"):
        train_on_task(oracle, ex[:10], steps=1, sampler=s)


def _answer_loss_by_hand(model, e):
    ids = torch.tensor([list(e["text"].encode())])
    labels = ids.clone()
    labels[0, :len(e["prompt"])] = -100  # loss on answer + "\n" only
    return model(input_ids=ids, labels=labels).loss


def test_per_example_losses_and_grad_norms_match_single_example_backward(one_thread):
    model = build_model("tiny", seed=0)
    ex = arithmetic_examples(4, digits=3, ops=("+", "*"), seed=9)
    from workbench.data.tasks import per_example_grad_norms, per_example_losses

    losses = per_example_losses(model, ex, batch_size=3)
    norms = per_example_grad_norms(model, ex, batch_size=3)
    for i, e in enumerate(ex):
        model.zero_grad()
        loss = _answer_loss_by_hand(model, e)
        loss.backward()
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()
                             if p.grad is not None))
        assert float(losses[i]) == pytest.approx(float(loss.detach()), rel=1e-4)
        assert float(norms[i]) == pytest.approx(norm, rel=1e-3)


def test_prompt_angles_match_a_brute_force_loop():
    from workbench.data.tasks import prompt_angles

    model = build_model("tiny", seed=1)
    ex = arithmetic_examples(3, digits=2, seed=3)
    out = prompt_angles(model, ex)
    norm = model.model.layers[-1].post_attention_layernorm
    for i, e in enumerate(ex):
        cap = {}
        h = norm.register_forward_hook(lambda m, a, o: cap.update(h=o))
        with torch.no_grad():
            model(input_ids=torch.tensor([list(e["prompt"].encode())]))
        h.remove()
        x = torch.nn.functional.normalize(cap["h"][0], dim=-1)
        T, L = len(e["template"]), len(e["prompt"])
        intra = [float(x[a] @ x[b]) for a in range(T, L) for b in range(a + 1, L)]
        inter = [float(x[a] @ x[b]) for a in range(T, L) for b in range(T)]
        intra, inter = sum(intra) / len(intra), sum(inter) / len(inter)
        assert float(out["intra"][i]) == pytest.approx(intra, abs=1e-5)
        assert float(out["inter"][i]) == pytest.approx(inter, abs=1e-5)
        assert float(out["score"][i]) == pytest.approx(intra + 8 * inter, abs=1e-4)


def test_given_optimizer_is_used_and_eval_loss_recorded():
    model = build_model("tiny", seed=0)
    ex = arithmetic_examples(8, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hist = train_on_task(model, ex, steps=2, batch_size=4, optimizer=opt, eval_examples=ex[:2])
    assert len(opt.state) == len(list(model.parameters()))
    assert all(int(s["step"]) == 2 for s in opt.state.values())
    from workbench.data.tasks import per_example_losses
    assert hist[-1]["eval_loss"] == pytest.approx(float(per_example_losses(model, ex[:2]).mean()))
    with pytest.raises(ValueError, match="optimizer"):
        train_on_task(model, ex, steps=1, optimizer="adam")
