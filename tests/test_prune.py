"""FLAP pruning, PERP retraining helpers and MIGU gradient masking against brute force computed here."""
import pytest
import torch
from torch import nn

from workbench.models import build_model
from workbench.sparsity import (MiguHook, flap_prune, flap_scores, input_stats, perp_parameters,
                                restore_masks, wanda_prune)
from workbench.sparsity.prune import FLAP_TARGETS


def _batches(n=3, b=2, t=16, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (b, t), generator=g) for _ in range(n)]


def _capture(model, batches, targets=FLAP_TARGETS, keep=None):
    """All inputs of the target modules (or of those ``keep(name, module)`` picks), stored (the brute
    force the streaming stats must match)."""
    keep = keep or (lambda name, m: any(name.endswith(t) for t in targets) and hasattr(m, "weight"))
    xs, hooks = {}, []
    for name, m in model.named_modules():
        if keep(name, m):
            def fn(mod, args, name=name):
                xs.setdefault(name, []).append(args[0].detach().double().reshape(-1, args[0].shape[-1]))
            hooks.append(m.register_forward_pre_hook(fn))
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


def _w_out_in(m):
    return m.weight.t() if type(m).__name__ == "Conv1D" else m.weight


@pytest.mark.parametrize("preset", ["tiny", "gpt2-1m"])
def test_flap_scores_match_brute_force(preset):
    model = build_model(preset).eval()
    batches = _batches()
    xs = _capture(model, batches)
    stats = input_stats(model, batches)
    assert set(stats) == set(xs) and len(xs) == 8
    for name, x in xs.items():
        mean = x.mean(0)
        var = ((x - mean) ** 2).mean(0)                     # population variance over all tokens
        torch.testing.assert_close(stats[name]["mean"].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[name]["var"].double(), var, rtol=1e-5, atol=1e-7)
        w = _w_out_in(model.get_submodule(name)).detach().double()
        truth = torch.tensor([var[j].item() * float(w[:, j] @ w[:, j])
                              for j in range(w.shape[1])], dtype=torch.float64)
        torch.testing.assert_close(flap_scores(w.float(), stats[name]["var"]).double(), truth,
                                   rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("preset", ["tiny", "gpt2-1m"])
def test_flap_channel_variant_global_threshold_and_compensation(preset):
    model = build_model(preset).eval()
    batches = _batches()
    xs = _capture(model, batches)
    orig = {n: (_w_out_in(model.get_submodule(n)).detach().clone(),
                None if model.get_submodule(n).bias is None else model.get_submodule(n).bias.detach().clone())
            for n in xs}
    ratio = 0.3
    masks = flap_prune(model, batches, ratio, structure="channel")
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == int(ratio * total)
    # brute-force global threshold over per-module standardised scores
    z = {}
    for n, x in xs.items():
        var = ((x - x.mean(0)) ** 2).mean(0)
        s = var * (orig[n][0].double() ** 2).sum(0)
        z[n] = (s - s.mean()) / s.std()
    allz = torch.cat(list(z.values()))
    thr = torch.sort(allz).values[int(ratio * total) - 1]
    for n, mask in masks.items():
        assert torch.equal(mask, z[n] <= thr), n
        m = model.get_submodule(n)
        w = _w_out_in(m)
        assert (w[:, mask] == 0).all() and torch.equal(w[:, ~mask], orig[n][0][:, ~mask])
        # the mean calibration input gives the original output
        mean = xs[n].mean(0).float()[None, None, :]
        w0, b0 = orig[n]
        before = mean @ w0.t() + (0 if b0 is None else b0)
        with torch.no_grad():
            after = m(mean)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
        assert m.bias is not None
    # a pruned model still runs
    with torch.no_grad():
        assert torch.isfinite(model(batches[0]).logits).all()


def test_flap_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="ratio"):
        flap_prune(model, _batches(1), 1.5)
    with pytest.raises(ValueError, match="empty"):
        flap_prune(model, [], 0.2)
    with pytest.raises(ValueError, match="targets"):
        flap_prune(model, _batches(1), 0.2, targets=("nope",))


def test_perp_parameters_and_restore_masks():
    model = build_model("gpt2-1m")
    info = perp_parameters(model)
    names = set(info["names"])
    want = {n for n, _ in model.named_parameters()
            if n.endswith("bias") or ".ln_" in n or n.startswith("transformer.ln_f") or n == "transformer.wte.weight"}
    assert names == want                                   # the head is tied to wte in GPT-2
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())
    model = build_model("tiny")
    info = perp_parameters(model, include=("bias", "norm"))
    assert info["fraction"] < 0.005 and all("norm" in n for n in info["names"])
    assert info["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)

    model = build_model("tiny")
    masks = flap_prune(model, _batches(1), 0.25)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = restore_masks(model, masks, optimizer=opt)
    for _ in range(2):
        model(_batches(1)[0]).logits.square().mean().backward()
        opt.step()
        opt.zero_grad()
    for n, mask in masks.items():
        assert (model.get_submodule(n).weight[:, mask] == 0).all()
    r.handle.remove()
    with pytest.raises(ValueError, match="names no module"):
        restore_masks(model, {"model.nope": torch.zeros(3, dtype=torch.bool)})


def test_migu_masks_rows_below_quantile():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x1, x2 = torch.randn(4, 7, 5), torch.randn(3, 5)
    hook = MiguHook(net, quantile=0.5)
    loss = net(x1).square().sum() + net(x2).sum()
    loss.backward()
    full = {i: (net[i].weight.grad.clone(), net[i].bias.grad.clone()) for i in (0, 2, 4)}
    masks = hook.apply()
    with torch.no_grad():                                   # by hand: |y| summed over both passes
        h = x1
        outs1, outs2, h2 = {}, {}, x2
        for i, layer in enumerate(net):
            h, h2 = layer(h), layer(h2)
            if i in (0, 2, 4):
                outs1[i], outs2[i] = h, h2
    for i in (0, 2, 4):
        mag = [sum(abs(v) for v in outs1[i][..., u].flatten().tolist()) +
               sum(abs(v) for v in outs2[i][..., u].flatten().tolist()) for u in range(outs1[i].shape[-1])]
        srt = sorted(mag)
        pos = 0.5 * (len(srt) - 1)
        lo = int(pos)
        q = srt[lo] + (srt[min(lo + 1, len(srt) - 1)] - srt[lo]) * (pos - lo)   # linear interpolation
        want = torch.tensor([m < q for m in mag])
        assert torch.equal(masks[str(i)], want)
        assert (net[i].weight.grad[want] == 0).all() and (net[i].bias.grad[want] == 0).all()
        assert torch.equal(net[i].weight.grad[~want], full[i][0][~want])
        assert torch.equal(net[i].bias.grad[~want], full[i][1][~want])
    hook.remove()
    assert not net[0]._forward_hooks


def test_migu_with_optimizer_pre_hook_and_no_grad():
    net = nn.Sequential(nn.Linear(4, 6))
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    hook = MiguHook(net, quantile=0.5, optimizer=opt)
    with torch.no_grad():
        net(torch.randn(2, 4))                              # evaluation does not accumulate
    assert hook.magnitude == {}
    before = net[0].weight.detach().clone()
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    rows = hook.masks["0"]
    assert rows.sum() == 3 and torch.equal(net[0].weight[rows], before[rows])
    hook.remove()
    with pytest.raises(ValueError, match="quantile"):
        MiguHook(net, quantile=2)


def test_retraining_with_the_trainer():
    from workbench.data import load_blocks
    from workbench.train import TrainConfig, Trainer

    cfg = TrainConfig(model="tiny", data="stdlib", batch_size=2, seq_len=32, max_tokens=8_000, steps=2,
                      eval_batches=0, checkpoint_interval=0, progress=False, track_update_norm=False)
    calib = load_blocks("stdlib", split="train", block_size=32, max_tokens=2_000)[:4, :-1]
    # full retraining: masks restored after every step, MIGU masks gradients before every step
    model = build_model("tiny")
    masks = flap_prune(model, [calib], 0.3)
    tr = Trainer(cfg, model=model)
    tr.subscribe(restore_masks(tr.raw_model, masks))
    migu = MiguHook(tr.raw_model, optimizer=tr.optimizer)
    tr.run()
    migu.remove()
    assert migu.masks and all(m.sum() > 0 for m in migu.masks.values())
    for n, mask in masks.items():
        assert (tr.raw_model.get_submodule(n).weight[:, mask] == 0).all()
    # PERP: only biases, norms and the head move
    model = build_model("tiny")
    flap_prune(model, [calib], 0.3)
    info = perp_parameters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = Trainer(cfg, model=model)
    tr.run()
    for n, p in tr.raw_model.named_parameters():
        assert torch.equal(p.detach(), before[n]) != (n in info["names"]), n


# ------------------------------------------------------------------ Wanda: sequential calibration
def _linear_inputs(model, prefix, batches):
    return _capture(model, batches, keep=lambda name, m: isinstance(m, nn.Linear) and name.startswith(prefix))


def _wanda_by_hand(model, prefix, batches, sparsity):
    """Prune the linears under ``prefix`` by |W| * ||X||_2 from the model as it is now (brute force)."""
    masks = {}
    for name, x in _linear_inputs(model, prefix, batches).items():
        w = model.get_submodule(name).weight
        norm = x.pow(2).sum(0).sqrt()
        score = w.detach().double().abs() * norm[None, :]
        k = int(sparsity * w.shape[1])
        mask = torch.zeros_like(w, dtype=torch.bool)
        for i in range(w.shape[0]):
            mask[i, sorted(range(w.shape[1]), key=lambda j: float(score[i, j]))[:k]] = True
        with torch.no_grad():
            w[mask] = 0
        masks[name] = mask
    return masks


def test_wanda_sequential_feeds_pruned_outputs_on():
    batches = _batches(2)
    ref = build_model("tiny", num_hidden_layers=2, seed=0)
    want = _wanda_by_hand(ref, "model.layers.0.", batches, 0.5)          # layer 0 from the unpruned model
    want.update(_wanda_by_hand(ref, "model.layers.1.", batches, 0.5))    # layer 1 after layer 0 is pruned
    seq = build_model("tiny", num_hidden_layers=2, seed=0)
    got = wanda_prune(seq, batches, 0.5)                                  # the default: sequential
    assert set(got) == set(want) and len(want) == 14                      # 7 linears per layer, no lm_head
    for n in want:
        assert torch.equal(got[n], want[n]), n
    for (n, p), (_, q) in zip(seq.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    one = build_model("tiny", num_hidden_layers=2, seed=0)
    once = wanda_prune(one, batches, 0.5, sequential=False)
    for n in want:                          # one-shot: layer 0 the same, layer 1 calibrated on unpruned inputs
        assert torch.equal(once[n], want[n]) == n.startswith("model.layers.0."), n
