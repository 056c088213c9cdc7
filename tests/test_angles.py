"""angle_concentration against brute-force per-sample loops on tiny Llama and GPT-2 models."""
import math

import pytest
import torch

from workbench.data.angles import angle_concentration, find_mlp_input_module
from workbench.models import build_model

# per sample: (length, template span, prompt span); tokens after the prompt are in neither
SAMPLES = [(10, (0, 3), (3, 9)), (7, (0, 2), (2, 7)), (12, (0, 4), (4, 10))]
T = max(s[0] for s in SAMPLES)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    if request.param == "llama":
        return build_model("tiny", seed=0, num_hidden_layers=2)
    return build_model("gpt2-1m", seed=0, n_layer=2)


def _tokens():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 256, (n,), generator=g) for n, _, _ in SAMPLES]


def _batch(side):
    """Padded batch (pad id 0) and its attention, template and prompt masks."""
    ids = torch.zeros(len(SAMPLES), T, dtype=torch.long)
    attn, tmpl, prm = (torch.zeros(len(SAMPLES), T, dtype=torch.bool) for _ in range(3))
    for b, (tok, (n, (t0, t1), (p0, p1))) in enumerate(zip(_tokens(), SAMPLES)):
        off = T - n if side == "left" else 0
        ids[b, off:off + n] = tok
        attn[b, off:off + n] = True
        tmpl[b, off + t0:off + t1] = True
        prm[b, off + p0:off + p1] = True
    # padding is marked as prompt/template too: it must be dropped by the attention mask
    pad = ~attn
    tmpl |= pad & (torch.arange(T) % 2 == 0)
    prm |= pad & (torch.arange(T) % 2 == 1)
    return ids, attn, tmpl, prm


def _mlp_input_alone(model, tok):
    """Hidden states at the last block's MLP input, one unpadded sample, via our own pre-hook."""
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    got = {}
    h = blocks[-1].mlp.register_forward_pre_hook(lambda m, args: got.setdefault("h", args[0]))
    with torch.no_grad():
        model(input_ids=tok[None])
    h.remove()
    return got["h"][0].double()


def _cos_table(h):
    n = h.shape[0]
    norms = [math.sqrt(sum(float(v) ** 2 for v in h[i])) for i in range(n)]
    return [[float(h[i] @ h[j]) / (norms[i] * norms[j]) for j in range(n)] for i in range(n)]


def _brute(model, faithful=False):
    intra, inter = [], []
    for tok, (n, (t0, t1), (p0, p1)) in zip(_tokens(), SAMPLES):
        cos = _cos_table(_mlp_input_alone(model, tok))
        if not faithful:
            pairs = [cos[i][j] for i in range(p0, p1) for j in range(i + 1, p1)]
            intra.append(sum(pairs) / len(pairs))
            cross = [cos[i][j] for i in range(p0, p1) for j in range(t0, t1)]
            inter.append(sum(cross) / len(cross))
        else:
            rows = cos[p0:p1][p0:p1]  # the public code's chained slice, rows cut twice
            total = sum(r[c] for k, r in enumerate(rows) for c in range(k + 1, n))
            intra.append(total / (len(rows) * n))  # zeros of the triangle counted
            rect = [cos[i][j] for i in range(p0, p1) for j in range(t0, t1)]
            inter.append(sum(rect) / len(rect))
    return torch.tensor(intra, dtype=torch.float64), torch.tensor(inter, dtype=torch.float64)


@pytest.mark.parametrize("side", ["left", "right"])
def test_matches_brute_force(model, side, one_thread):
    ids, attn, tmpl, prm = _batch(side)
    out = angle_concentration(model, ids, attn, prompt_mask=prm, template_mask=tmpl)
    intra, inter = _brute(model)
    assert torch.allclose(out["intra"].double(), intra, atol=1e-4)
    assert torch.allclose(out["inter"].double(), inter, atol=1e-4)
    assert torch.allclose(out["score"].double(), intra + 8.0 * inter, atol=1e-3)
    assert out["score"].shape == (len(SAMPLES),) and out["score"].dtype == torch.float32


def test_faithful_reproduces_documented_quirks(model, one_thread):
    ids, attn, tmpl, prm = _batch("left")
    fa = angle_concentration(model, ids, attn, prompt_mask=prm, template_mask=tmpl, faithful=True)
    intra, inter = _brute(model, faithful=True)
    assert torch.allclose(fa["intra"].double(), intra, atol=1e-4)
    assert torch.allclose(fa["inter"].double(), inter, atol=1e-4)  # contiguous spans: same
    right = angle_concentration(model, ids, attn, prompt_mask=prm, template_mask=tmpl)
    assert (fa["intra"] - right["intra"]).abs().min() > 1e-3
    assert torch.allclose(fa["inter"], right["inter"], atol=1e-5)


def test_options(model, one_thread):
    ids, attn, tmpl, prm = _batch("right")
    base = angle_concentration(model, ids, attn, prompt_mask=prm, template_mask=tmpl,
                               inter_weight=2.0)
    name = find_mlp_input_module(model)[0]
    same = angle_concentration(model, ids, attn, prompt_mask=prm, template_mask=tmpl,
                               inter_weight=2.0, layer=name, chunk_size=1)
    for k in base:
        assert torch.allclose(base[k], same[k], atol=1e-5)
    assert torch.allclose(base["score"], base["intra"] + 2.0 * base["inter"])
    no_t = angle_concentration(model, ids, attn, prompt_mask=prm)
    assert torch.isnan(no_t["inter"]).all() and torch.equal(no_t["score"], no_t["intra"])
    assert torch.allclose(no_t["intra"], base["intra"], atol=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        angle_concentration(model, ids, attn, prompt_mask=attn, template_mask=tmpl)
    with pytest.raises(ValueError, match="named_modules"):
        angle_concentration(model, ids, attn, layer="no.such.layer")
    with pytest.raises(ValueError, match="shape"):
        angle_concentration(model, ids, attn[:, :3])
    assert model.training  # mode restored (built models start in training mode)
