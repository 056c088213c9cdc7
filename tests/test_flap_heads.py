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
