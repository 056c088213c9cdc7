"""FLAP with whole attention heads (structure="head") against a brute force written here."""
import pytest
import torch

from workbench.models import build_model
from workbench.sparsity import flap_prune

from test_prune import _capture   # every input of o_proj/down_proj, stored


def _batches(n=2, b=2, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (b, t), generator=g) for _ in range(n)]


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_head_pruning_matches_brute_force(ratio):
    model = build_model("tiny", num_hidden_layers=2, seed=1).eval()
    heads = model.config.num_attention_heads
    batches = _batches()
    xs = _capture(model, batches)
    names = [n for n, _ in model.named_modules() if n.endswith(("o_proj", "down_proj"))]
    orig = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    # brute force: units (score, module order, unit index, channels)
    units = []
    for order, n in enumerate(names):
        x, w = xs[n], orig[n].double()
        var = ((x - x.mean(0)) ** 2).mean(0)
        s = [float(var[j]) * float(w[:, j] @ w[:, j]) for j in range(w.shape[1])]
        if n.endswith("o_proj"):
            d = len(s) // heads
            groups = [list(range(h * d, (h + 1) * d)) for h in range(heads)]
        else:
            groups = [[j] for j in range(len(s))]
        vals = torch.tensor([sum(s[j] for j in g) for g in groups], dtype=torch.float64)
        z = (vals - vals.mean()) / vals.std()
        units += [(float(z[u]), order, u, n, g) for u, g in enumerate(groups)]
    total = sum(orig[n].shape[1] for n in names)
    budget, used, want = int(ratio * total), 0, {n: set() for n in names}
    for z, order, u, n, g in sorted(units, key=lambda t: (t[0], t[1], t[2])):
        if used + len(g) > budget:
            break
        want[n] |= set(g)
        used += len(g)
    masks = flap_prune(model, batches, ratio, structure="head")
    assert any(want[n] for n in names if n.endswith("o_proj")), "pick a ratio that prunes a head"
    for n in names:
        assert set(torch.nonzero(masks[n]).flatten().tolist()) == want[n], n
        m = model.get_submodule(n)
        if n.endswith("o_proj"):   # whole heads only
            per_head = masks[n].reshape(heads, -1)
            assert (per_head.all(1) | ~per_head.any(1)).all()
        assert (m.weight[:, masks[n]] == 0).all()
        mean = xs[n].mean(0).float()[None, None, :]
        with torch.no_grad():
            torch.testing.assert_close(m(mean), mean @ orig[n].t(), rtol=1e-5, atol=1e-5)
    assert sum(int(m.sum()) for m in masks.values()) == used <= budget
    with torch.no_grad():
        assert torch.isfinite(model(batches[0]).logits).all()


def test_head_structure_errors():
    model = build_model("tiny", num_hidden_layers=1)
    with pytest.raises(ValueError, match="structure"):
        flap_prune(model, _batches(1), 0.2, structure="block")
    with pytest.raises(ValueError, match="num_heads"):
        flap_prune(model, _batches(1), 0.2, structure="head", num_heads=5)


# ------------------------------------------------------------ the official AL-AM mode, re-implemented here
def _official_al_am(xs, weights, heads, head_w, mlp_w, ratio):
    """FLAP's ``prune_flap`` with ``structure="AL-AM"``, ``metrics="WIFV"`` as its code reads: per layer the
    o_proj metric ``(var * ||W_:,j||^2) ** 2`` and the down_proj metric ``var * ||W_:,j||^2``; each stacked
    over layers and standardised per layer (row); attention reshaped to (layers, heads, d) and averaged over
    d; all units sorted descending with weights (head_w per head, mlp_w per MLP channel); the threshold is
    the sorted score where the cumulative weight is closest to (1 - ratio) of the total; keep score > it."""
    attn = [n for n in xs if n.endswith(("o_proj", "attn.c_proj"))]
    mlp = [n for n in xs if n not in attn]

    def metric(n):
        x, w = xs[n], weights[n]
        var = ((x - x.mean(0)) ** 2).mean(0)
        return var * (w ** 2).sum(0)

    std = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)   # noqa: E731
    a = std(torch.stack([metric(n) ** 2 for n in attn])).reshape(len(attn), heads, -1).mean(2)
    m = std(torch.stack([metric(n) for n in mlp]))
    allm = torch.cat([a.reshape(-1), m.reshape(-1)])
    srt, idx = torch.sort(allm, descending=True)
    wts = torch.where(idx < a.numel(), torch.tensor(head_w, dtype=torch.float64),
                      torch.tensor(mlp_w, dtype=torch.float64))
    thr = srt[torch.argmin((torch.cumsum(wts, 0) - wts.sum() * (1 - ratio)).abs())]
    keep = {n: (a[i] > thr).repeat_interleave(xs[n].shape[1] // heads) for i, n in enumerate(attn)}
    keep.update({n: m[i] > thr for i, n in enumerate(mlp)})
    return {n: ~k for n, k in keep.items()}


@pytest.mark.parametrize("preset,mlp_mats", [("tiny", 3), ("gpt2-1m", 2)])   # gate, up, down / fc, proj
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_al_am_default_matches_the_official_scoring(preset, mlp_mats, ratio):
    model = build_model(preset, num_hidden_layers=2, seed=1).eval()
    cfg = model.config
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    d = hidden // heads
    batches = _batches()
    xs = _capture(model, batches)
    weights = {n: (model.get_submodule(n).weight.t() if preset.startswith("gpt2") else
                   model.get_submodule(n).weight).detach().double().clone() for n in xs}
    # a head removes its q, k, v rows and o columns (4 * hidden * d weights), an MLP channel mlp_mats * hidden
    want = _official_al_am(xs, weights, heads, 4 * hidden * d, mlp_mats * hidden, ratio)
    masks = flap_prune(model, batches, ratio)             # the default structure
    assert set(masks) == set(want)
    for n in want:
        assert torch.equal(masks[n].cpu(), want[n]), n
    attn = [n for n in want if n.endswith(("o_proj", "attn.c_proj"))]
    if ratio == 0.5:                                       # at 0.2 only MLP channels go, at 0.5 heads too
        assert sum(int(masks[n].sum()) for n in attn) > 0, "pick a ratio that prunes a head"
    for n in attn:                                         # whole heads only: no single attention channel
        per_head = masks[n].reshape(heads, d)
        assert (per_head.all(1) | ~per_head.any(1)).all()
    # the budget is in parameters: pruned parameters within one unit (a head) of ratio * total
    inter = xs[[n for n in want if n not in attn][0]].shape[1]
    total = 2 * (heads * 4 * hidden * d + inter * mlp_mats * hidden)
    pruned = sum(int(masks[n].sum()) * (4 * hidden if n in attn else mlp_mats * hidden) for n in want)
    assert abs(pruned - ratio * total) <= 4 * hidden * d, (pruned, ratio * total)


def test_al_am_ratio_zero_prunes_nothing_and_needs_heads():
    model = build_model("tiny", num_hidden_layers=1)
    masks = flap_prune(model, _batches(1), 0.0)
    assert not any(m.any() for m in masks.values())

    class NoConfig(torch.nn.Module):                       # a model without config.num_attention_heads
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(ValueError, match="num_heads"):
        flap_prune(NoConfig(model), _batches(1), 0.2)
    masks = flap_prune(NoConfig(model), _batches(1), 0.5, num_heads=4)
    assert masks["inner.model.layers.0.self_attn.o_proj"].reshape(4, 32).all(1).any()
