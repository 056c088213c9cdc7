"""LESS gradient alignment: per-example grads, projection, features and scores vs brute force."""
import pytest
import torch

from workbench.data.alignment import (RademacherProjector, alignment_scores, gradient_features,
                                      per_example_grads)
from workbench.models import build_model

NAMES = ["model.layers.3.post_attention_layernorm.weight", "model.layers.3.mlp.down_proj.weight",
         "model.norm.weight", "model.embed_tokens.weight"]  # embeddings tied to lm_head


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0, num_hidden_layers=4)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 256, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    ids[~mask] = 0
    return ids, mask


def _brute(model, ids, mask, names):
    """One backward pass per example on the unpadded sequence, loss written out by hand."""
    params = dict(model.named_parameters())
    out = {n: [] for n in names}
    model.eval()
    for b in range(ids.shape[0]):
        n_tok = int(mask[b].sum())
        x = ids[b, :n_tok][None]
        model.zero_grad()
        logits = model(input_ids=x).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:])
        loss.backward()
        for n in names:
            out[n].append(params[n].grad.clone())
    model.zero_grad()
    return {n: torch.stack(v) for n, v in out.items()}


@pytest.mark.parametrize("vectorize", [True, False])
def test_per_example_grads_match_single_example_backward(model, vectorize, one_thread):
    ids, mask = _batch()
    got = per_example_grads(model, ids, attention_mask=mask, params=NAMES, vectorize=vectorize)
    want = _brute(model, ids, mask, NAMES)
    for n in NAMES:
        assert got[n].shape == (3, *dict(model.named_parameters())[n].shape)
        torch.testing.assert_close(got[n], want[n], atol=1e-5, rtol=1e-4)


def test_per_example_grads_left_padding_falls_back_to_loop(model, one_thread):
    ids, mask = _batch()
    left = torch.zeros_like(mask)
    left_ids = torch.zeros_like(ids)
    for b in range(3):
        k = int(mask[b].sum())
        left[b, -k:] = True
        left_ids[b, -k:] = ids[b, :k]
    got = per_example_grads(model, left_ids, attention_mask=left, params=NAMES[:1])
    want = _brute(model, ids, mask, NAMES[:1])
    # left padding shifts position ids in the model; compare only the full-length row
    torch.testing.assert_close(got[NAMES[0]][0], want[NAMES[0]][0], atol=1e-5, rtol=1e-4)


def test_per_example_grads_errors(model):
    with pytest.raises(ValueError, match="named_parameters"):
        per_example_grads(model, torch.ones(1, 4, dtype=torch.long), params=["nope"])
    with pytest.raises(ValueError, match="2-D"):
        per_example_grads(model, torch.ones(4, dtype=torch.long))


def test_projector_deterministic_and_equals_materialised_matrix():
    torch.manual_seed(0)
    x = torch.randn(4, 50)
    a = RademacherProjector(50, d=16, seed=3, chunk=7)
    b = RademacherProjector(50, d=16, seed=3, chunk=50)
    c = RademacherProjector(50, d=16, seed=4, chunk=7)
    P = a.matrix()
    assert P.shape == (50, 16)
    assert torch.allclose(P.abs(), torch.full_like(P, 16 ** -0.5))
    torch.testing.assert_close(b.matrix(), P)  # same matrix for any chunk size
    assert not torch.equal(c.matrix(), P)
    torch.testing.assert_close(a.project(x), x @ P, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.project(x), a.project(x), atol=0, rtol=0)
    # explicit matrix drawn the documented way
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(0, 256, (50, 2), generator=g, dtype=torch.uint8)
    explicit = torch.tensor([[1.0 if (int(raw[i, j // 8]) >> (j % 8)) & 1 else -1.0
                              for j in range(16)] for i in range(50)])
    torch.testing.assert_close(P, explicit / 4.0)
    # d not a multiple of 8: the first d bits of each row
    odd = RademacherProjector(5, d=11, seed=1, chunk=2).matrix()
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (5, 2), generator=g, dtype=torch.uint8)
    explicit = torch.tensor([[1.0 if (int(raw[i, j // 8]) >> (j % 8)) & 1 else -1.0
                              for j in range(11)] for i in range(5)])
    torch.testing.assert_close(odd, explicit / 11 ** 0.5)


def test_projector_memory_bound_by_chunk():
    proj = RademacherProjector(1000, d=32, seed=0, chunk=64)
    shapes = [tuple(b.shape) for _, b in proj.blocks()]
    assert all(r <= 64 and c == 32 for r, c in shapes)
    assert sum(r for r, _ in shapes) == 1000
    starts = [s for s, _ in proj.blocks()]
    assert starts == list(range(0, 1000, 64))
    with pytest.raises(ValueError, match="chunk"):
        RademacherProjector(10, d=4, chunk=0)
    with pytest.raises(ValueError, match="flatten"):
        proj.project(torch.zeros(2, 999))


def test_gradient_features_plain_and_adam(model, one_thread):
    ids, mask = _batch()
    names = NAMES[:2]
    feats = gradient_features(model, [(ids[:2], mask[:2]), (ids[2:], mask[2:])], d=32, seed=5,
                              params=names, chunk=500)
    brute = _brute(model, ids, mask, names)
    flat = torch.cat([brute[n].reshape(3, -1) for n in names], dim=1)
    P = RademacherProjector(flat.shape[1], d=32, seed=5).matrix()
    want = torch.nn.functional.normalize(flat @ P, dim=1)
    torch.testing.assert_close(feats, want, atol=1e-5, rtol=1e-4)
    # Adam: Gamma = m_z / sqrt(v_z + eps) with the example's gradient plugged into the moments
    g = torch.Generator().manual_seed(2)
    params = dict(model.named_parameters())
    state = {n: {"exp_avg": torch.randn(params[n].shape, generator=g) * 1e-3,
                 "exp_avg_sq": torch.rand(params[n].shape, generator=g) * 1e-6} for n in names}
    adam = gradient_features(model, [(ids, mask)], d=32, seed=5, params=names,
                             optimizer_state=state, eps=1e-8)
    gam = []
    for n in names:
        m = 0.9 * state[n]["exp_avg"] + 0.1 * brute[n]
        v = 0.999 * state[n]["exp_avg_sq"] + 0.001 * brute[n] ** 2
        gam.append((m / torch.sqrt(v + 1e-8)).reshape(3, -1))
    want = torch.nn.functional.normalize(torch.cat(gam, dim=1) @ P, dim=1)
    torch.testing.assert_close(adam, want, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="exp_avg"):
        gradient_features(model, [ids], d=8, params=names, optimizer_state={})


def test_gradient_features_from_torch_adam(model, one_thread):
    names = ["model.norm.weight"]
    opt = torch.optim.Adam([dict(model.named_parameters())[names[0]]], lr=0.0)
    ids, mask = _batch()
    with pytest.raises(ValueError, match="Adam step"):
        gradient_features(model, [ids], d=8, params=names, optimizer_state=opt)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.zero_grad()
    f = gradient_features(model, [ids], d=8, params=names, optimizer_state=opt)
    assert f.shape == (3, 8) and torch.isfinite(f).all()


def test_alignment_scores_hand_computed():
    tr = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    ta = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tb = torch.tensor([[3.0, 3.0]])
    s = 2 ** -0.5
    # task a: mean cos; task b: cos with (1,1)/sqrt2
    a = torch.tensor([(1 + 0) / 2, (0 + 1) / 2, (s + s) / 2])
    b = torch.tensor([s, s, 1.0])
    torch.testing.assert_close(alignment_scores(tr, {"a": ta, "b": tb}), torch.maximum(a, b))
    torch.testing.assert_close(alignment_scores(tr, ta), a)
    # two checkpoints with mean LRs eta: sum_i eta_i cos_i, then mean, then max over tasks
    tr2 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, -1.0]])
    ta2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    tb2 = torch.tensor([[0.0, -1.0]])
    a2 = torch.tensor([0.0, 1.0, s])
    b2 = torch.tensor([-1.0, 0.0, s])
    got = alignment_scores([tr, tr2], [{"a": ta, "b": tb}, {"a": ta2, "b": tb2}],
                           lr_weights=[2e-5, 1e-5])
    want = torch.maximum(2e-5 * a + 1e-5 * a2, 2e-5 * b + 1e-5 * b2)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="one mean LR per"):
        alignment_scores([tr, tr2], [ta, ta2], lr_weights=[1.0])
    with pytest.raises(ValueError, match="pass lists"):
        alignment_scores([tr], ta)
