"""workbench.optim: state_dict round trips (weights_only, bit-identical continuation), validation,
non-2-D parameters in low-rank groups, memory accounting, param-group helpers."""
import io
import math
import numbers

import pytest
import torch

from workbench.optim import (Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, RuleOptimizer, ZeroOrderSGD,
                             estimate_state_bytes, llama_shapes, lowrank_param_groups, lowrank_parameter_names,
                             make_optimizer, memory_table, state_bytes, update_rule)


pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(16, 8), (16, 8), (8, 16), (8, 16), (24, 8), (8,), ()]

FACTORIES = {
    "apollo": lambda ps: Apollo(ps, lr=1e-2, rank=3, update_proj_gap=3, weight_decay=0.1),
    "apollo-mini": lambda ps: ApolloMini(ps, update_proj_gap=3),
    "galore": lambda ps: GaLore(ps, rank=3, update_proj_gap=3, weight_decay=0.1),
    "frugal-random": lambda ps: Frugal(ps, update_proj_gap=3),
    "frugal-columns": lambda ps: Frugal(ps, proj_type="columns", update_proj_gap=3, residual="sgd"),
    "frugal-blocks": lambda ps: Frugal(ps, proj_type="blocks", update_proj_gap=3),
    "lamb": lambda ps: Lamb(ps, lr=1e-2),
    "lion": lambda ps: Lion(ps, lr=1e-3, weight_decay=0.1),
}


def fresh(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def grads(step):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=g) * (1 + 0.2 * step) for s in SHAPES]


def run(opt, params, steps):
    for t in steps:
        for p, g in zip(params, grads(t)):
            p.grad = g
        opt.step()


def assert_tensors_and_numbers(x, path="state"):
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, (int, str)), f"{path}: key {k!r}"
            assert_tensors_and_numbers(v, f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            assert_tensors_and_numbers(v, f"{path}[{i}]")
    else:
        assert isinstance(x, (torch.Tensor, numbers.Number, str, type(None))), f"{path}: {type(x).__name__}"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_continues_bit_identically(name):
    make = FACTORIES[name]
    ref_params = fresh()
    ref = make(ref_params)
    run(ref, ref_params, range(8))                       # uninterrupted: 8 steps (refreshes at 4 and 7)

    params = fresh()
    opt = make(params)
    run(opt, params, range(2))                           # save after step 2, mid-window
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    for v in saved["opt"]["state"].values():
        for value in v.values():
            assert isinstance(value, (torch.Tensor, int, float)), (name, type(value))
    assert_tensors_and_numbers(saved["opt"]["param_groups"], "param_groups")

    params2 = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = make(params2)
    opt2.load_state_dict(saved["opt"])
    run(opt2, params2, range(2, 8))
    for i, (a, b) in enumerate(zip(params2, ref_params)):
        assert torch.equal(a, b), f"{name}: parameter {i} differs after resume"


def test_zero_order_round_trip_bit_identical():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))

    def build():
        torch.manual_seed(0)
        m = torch.nn.Linear(8, 2)
        return m, ZeroOrderSGD(m.parameters(), lr=1e-2, seed=3)

    def steps(m, opt, n):
        for _ in range(n):
            opt.step(lambda: m(x).square().mean())

    m_ref, o_ref = build()
    steps(m_ref, o_ref, 5)
    m1, o1 = build()
    steps(m1, o1, 2)
    buf = io.BytesIO()
    torch.save({"o": o1.state_dict(), "m": m1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2, o2 = build()
    m2.load_state_dict(saved["m"])
    o2.load_state_dict(saved["o"])
    steps(m2, o2, 3)
    for a, b in zip(m2.parameters(), m_ref.parameters()):
        assert torch.equal(a, b)


def test_projections_deterministic_per_seed_and_not_saved():
    a_params, b_params = fresh(), fresh()
    a = Apollo(a_params, rank=3, update_proj_gap=3, seed=11)
    b = Apollo(b_params, rank=3, update_proj_gap=3, seed=11)
    run(a, a_params, range(4))
    run(b, b_params, range(4))
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
    for p in a_params[:5]:
        assert set(a.state[p]) == {"step", "exp_avg", "exp_avg_sq", "gt_norm"}    # no projector in the state
    c_params = fresh()
    c = Apollo(c_params, rank=3, update_proj_gap=3, seed=12)
    run(c, c_params, range(4))
    assert not torch.equal(c_params[0], a_params[0])
    # Frugal subspaces: same seed -> same subspace
    f1, f2 = Frugal(fresh(), proj_type="columns", seed=5), Frugal(fresh(), proj_type="columns", seed=5)
    p1, p2 = f1.param_groups[0]["params"][0], f2.param_groups[0]["params"][0]
    assert torch.equal(f1.subspace(p1, step=1), f2.subspace(p2, step=1))


# ------------------------------------------------------------------------------ validation
BAD = [
    (Apollo, dict(lr=-1.0), "lr"), (Apollo, dict(rank=0), "rank"), (Apollo, dict(rank=2.5), "rank"),
    (Apollo, dict(scale_type="row"), "scale_type"), (Apollo, dict(scale=0.0), "scale"),
    (Apollo, dict(betas=(1.0, 0.9)), "betas[0]"), (Apollo, dict(betas=(0.9,)), "betas"),
    (Apollo, dict(update_proj_gap=0), "update_proj_gap"), (Apollo, dict(eps=-1e-8), "eps"),
    (Apollo, dict(weight_decay=-0.1), "weight_decay"), (Apollo, dict(norm_growth_limit=0.5), "norm_growth_limit"),
    (Apollo, dict(seed=-1), "seed"), (Apollo, dict(lr=float("nan")), "lr"),
    (Apollo, dict(bias_correction="lr"), "bias_correction"), (Apollo, dict(cache_projection=1), "cache_projection"),
    (ApolloMini, dict(scale=-128.0), "scale"),
    (GaLore, dict(rank=0), "rank"), (GaLore, dict(scale=0.0), "scale"),
    (Frugal, dict(rho=0.0), "rho"), (Frugal, dict(rho=1.5), "rho"), (Frugal, dict(proj_type="svd"), "proj_type"),
    (Frugal, dict(residual="adam"), "residual"), (Frugal, dict(residual_scale=-1.0), "residual_scale"),
    (Lamb, dict(max_grad_norm=-1.0), "max_grad_norm"), (Lamb, dict(eps=-1.0), "eps"),
    (Lamb, dict(use_nvlamb="yes"), "use_nvlamb"),
    (ZeroOrderSGD, dict(eps=0.0), "eps"), (ZeroOrderSGD, dict(lr=-1.0), "lr"), (ZeroOrderSGD, dict(seed=1.5), "seed"),
    (Lion, dict(betas=(0.9, 1.0)), "betas[1]"), (Lion, dict(lr=-1e-4), "lr"), (Lion, dict(momentum=0.9), "momentum"),
]


@pytest.mark.parametrize("cls,kw,name", BAD, ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(BAD)])
def test_bad_hyperparameters_raise_value_error_naming_them(cls, kw, name):
    w = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError) as exc:
        cls([w], **kw)
    msg = str(exc.value)
    assert msg.startswith(name) or f"{name}" in msg, msg
    bad = next(iter(kw.values()))
    shown = [bad, *bad] if isinstance(bad, tuple) else [bad]
    assert any(f"got {v!r}" in msg for v in shown) or "unknown" in msg, msg


def test_bad_group_override_is_refused():
    w, b = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="rank must be an integer >= 1 or None, got -3"):
        Apollo([{"params": [w], "rank": -3}, {"params": [b]}])
    with pytest.raises(ValueError, match="eps must be the same"):
        ZeroOrderSGD([{"params": [w]}, {"params": [b], "eps": 1e-2}])
    with pytest.raises(ValueError, match="needs closure"):
        ZeroOrderSGD([w]).step()
    with pytest.raises(ValueError, match="update_rule needs an lr"):
        update_rule(state=("m",))
    with pytest.raises(ValueError, match="must return a tensor shaped like grad"):
        bad = update_rule(lr=0.1)(lambda grad, state, group: grad.sum())
        w.grad = torch.ones(4, 4)
        bad([w]).step()


# ------------------------------------------------------------------------------ non-2-D params
@pytest.mark.parametrize("cls", [Apollo, ApolloMini, GaLore, Frugal])
def test_non_matrix_params_in_a_lowrank_group_get_adamw(cls):
    shapes = [(3, 4, 5), (2, 3, 3, 3), (7,), ()]
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = cls(params, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    ref = torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(3):
        gs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        for p, q, gr in zip(params, twins, gs):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_rank_none_group_gets_adamw_in_the_same_optimizer():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.nn.Parameter(torch.randn(8, 6, generator=g, dtype=torch.float64)) for _ in range(2))
    twin = b.detach().clone().requires_grad_()
    opt = Apollo([{"params": [a], "rank": 2}, {"params": [b], "rank": None, "lr": 3e-3}], lr=1e-2)
    ref = torch.optim.AdamW([twin], lr=3e-3, eps=1e-6, weight_decay=0.0)
    for _ in range(3):
        ga, gb = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
        a.grad, b.grad, twin.grad = ga, gb.clone(), gb.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(b, twin, rtol=1e-12, atol=1e-14)
    assert opt.state[a]["exp_avg"].shape == (8, 2) and opt.state[b]["exp_avg"].shape == (8, 6)


def test_closure_and_missing_grads():
    w = torch.nn.Parameter(torch.ones(6, 4))
    unused = torch.nn.Parameter(torch.ones(6, 4))
    for cls in (Apollo, GaLore, Frugal, Lamb, Lion):
        opt = cls([w, unused], lr=1e-3)

        def closure():
            opt.zero_grad()
            loss = (w ** 2).sum()
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert float(loss.detach()) > 0 and len(opt.state[unused]) == 0


# ------------------------------------------------------------------------------ memory
def test_state_bytes_matches_estimate_on_a_model():
    from workbench.models import build_model

    model = build_model("tiny", seed=0)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    specs = {"adamw": ("adamw", {}), "apollo": ("apollo", {"rank": 8}), "apollo-mini": ("apollo-mini", {}),
             "galore": ("galore", {"rank": 8}), "frugal": ("frugal", {}),
             "frugal-columns": ("frugal", {"proj_type": "columns"}), "lamb": ("lamb", {}), "lion": ("lion", {})}
    adamw_bytes = None
    for name, (spec, kw) in specs.items():
        opt = make_optimizer(spec, model, **kw)
        model.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
        got = state_bytes(opt)
        assert got == estimate_state_bytes(model, {"name": spec, **kw}), name
        if name == "adamw":
            adamw_bytes = got
            n = sum(p.numel() for p in model.parameters())
            assert got == 8 * n + 4 * len(list(model.parameters()))      # 2 fp32 moments + step tensors
    assert adamw_bytes is not None


def test_uncached_projection_gives_the_same_steps_with_less_memory():
    a_params, b_params = fresh(), fresh()
    a = Apollo(a_params, rank=3, update_proj_gap=3, cache_projection=True)
    b = Apollo(b_params, rank=3, update_proj_gap=3)             # the default: P regenerated, not held
    assert b.param_groups[0]["cache_projection"] is False
    run(a, a_params, range(5))
    run(b, b_params, range(5))
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
    cached = sum(3 * min(s) * 4 for s in SHAPES if len(s) == 2)
    assert state_bytes(a) - state_bytes(b) == cached
    assert state_bytes(b) == estimate_state_bytes(b_params, {"name": "apollo", "rank": 3, "cache_projection": False})


def test_memory_ratios_for_llama_7b_projected_weights():
    shapes = llama_shapes("7b")
    assert sum(math.prod(s) for s in shapes.values()) == 6_738_415_616
    low = {k: v for k, v in shapes.items() if "layers" in k and len(v) == 2}
    adam = estimate_state_bytes(low, "adamw")
    r = 256
    apollo = estimate_state_bytes(low, {"name": "apollo", "rank": r, "cache_projection": True})
    moments_only = estimate_state_bytes(low, {"name": "apollo", "rank": r, "norm_growth_limit": None})
    bound = sum(8 * math.prod(s) * r / min(s) for s in low.values())      # r/min(m, n) of AdamW's, per weight
    assert moments_only == bound                                          # exactly, since r divides nothing here
    default = estimate_state_bytes(low, {"name": "apollo", "rank": r})   # + one limiter norm per weight
    assert default - moments_only == 4 * len(low)
    assert r / 4096 < default / adam < r / 4096 * (1 + 1e-6)            # 4 bytes per 64-128 MiB of moments
    limiter_and_cache = apollo - moments_only
    assert limiter_and_cache == sum(4 * (r * min(s) + 1) for s in low.values())
    assert estimate_state_bytes(low, "apollo-mini") < 0.01 * adam
    # hand count: q,k,v,o 4096x4096 and gate/up/down 11008x4096, 32 layers, r=256, limiter norm, fp32
    per_layer = 4 * (2 * r * 4096 + r * 4096 + 1) + 3 * (2 * r * 11008 + r * 4096 + 1)
    assert apollo == 4 * 32 * per_layer
    table = memory_table(shapes)
    assert float(table.loc["AdamW", "bytes_per_param"]) == 8.0
    assert float(table.loc["signSGD / MeZO", "state_bytes"]) == 0


def test_state_bytes_counts_views_once_and_cached_projections():
    params = fresh()
    opt = Apollo(params, rank=3, cache_projection=True)
    run(opt, params, range(1))
    # moments of the two (16, 8) weights live in one stacked buffer: counted once, projections counted too
    expect = 0
    for s in SHAPES:
        if len(s) == 2:
            r = 3
            expect += (2 * r * max(s) + r * min(s) + 1) * 4
        else:
            expect += 2 * math.prod(s) * 4
    assert state_bytes(opt) == expect


# ------------------------------------------------------------------------------ groups
def test_lowrank_param_groups_llama_and_gpt2():
    from workbench.models import build_model

    llama = build_model("tiny", seed=0)
    names = lowrank_parameter_names(llama)
    assert names and all(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj") for n in names)
    assert len(names) == 7 * llama.config.num_hidden_layers
    gpt2 = build_model("gpt2-1m", seed=0)
    names = lowrank_parameter_names(gpt2)
    assert len(names) == 4 * gpt2.config.n_layer
    assert all(n.split(".")[-2] in ("c_attn", "c_proj", "c_fc") and n.endswith("weight") for n in names)
    groups = lowrank_param_groups(gpt2, rank=4, weight_decay=0.1)
    plain = {id(p) for g in groups[1:] for p in g["params"]}
    assert id(gpt2.transformer.wte.weight) in plain and id(gpt2.transformer.wpe.weight) in plain
    assert groups[0]["rank"] == 4 and groups[-1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(gpt2.parameters()))
    # GPT-2 Conv1D weights are [in, out]: a step works and projects the smaller side
    opt = Apollo(groups)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    gpt2(x, labels=x).loss.backward()
    opt.step()
    c_attn = gpt2.transformer.h[0].attn.c_attn.weight                     # [128, 384]: wide
    assert tuple(c_attn.shape) == (128, 384) and tuple(opt.state[c_attn]["exp_avg"].shape) == (4, 384)


def test_rule_optimizer_subclass_and_unknown_kwarg():
    class SignSGD(RuleOptimizer):
        hyperparameters = dict(lr=1e-3)

        def update(self, grad, state, group):
            return grad.sign_()

    w = torch.nn.Parameter(torch.zeros(3))
    opt = SignSGD([w], lr=0.5)
    w.grad = torch.tensor([2.0, -3.0, 0.0])
    opt.step()
    assert w.tolist() == [-0.5, 0.5, 0.0] and w.grad.tolist() == [2.0, -3.0, 0.0]   # .grad untouched
    assert state_bytes(opt) == 0 == estimate_state_bytes([w], SignSGD)
    assert estimate_state_bytes([(10, 10)], Lion) == 400                  # one fp32 tensor per state name
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        SignSGD([w], momentum=0.9)


@pytest.mark.parametrize("name", ["apollo", "galore", "frugal-random", "lion"])
def test_bucket_chunking_does_not_change_the_result(name):
    """One parameter per chunk (max_bucket_numel=1) or everything stacked: the same steps."""
    results = []
    for numel in (1, 1 << 30):
        params = [torch.nn.Parameter(p.detach().double()) for p in fresh()]
        opt = FACTORIES[name](params)
        opt.max_bucket_numel = numel
        for t in range(5):
            for p, g in zip(params, grads(t)):
                p.grad = g.double()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_state_bytes_finds_tensors_inside_objects_in_the_state():
    class Projector:                                    # as some libraries keep in optimizer state
        def __init__(self):
            self.matrix = torch.zeros(4, 8)
            self.seed = 3
            self.me = self                              # cycles are fine

    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = torch.optim.SGD([w], lr=0.1)
    opt.state[w]["projector"] = Projector()
    opt.state[w]["momentum_buffer"] = torch.zeros(8, 8)
    assert state_bytes(opt) == 4 * (4 * 8 + 8 * 8)


@pytest.mark.parametrize("stack", [True, False])
def test_bf16_projection_follows_the_fp32_steps_and_counts_its_cache(stack):
    """``proj_dtype="bfloat16"``: only the projection is computed in bf16, so the steps stay within bf16's
    rounding of the scaling factors of the full-precision ones; a cached P is counted at 2 bytes a number."""
    a_params, b_params = fresh(), fresh()
    start = [p.detach().clone() for p in a_params]
    a = Apollo(a_params, rank=3, update_proj_gap=3)
    b = Apollo(b_params, rank=3, update_proj_gap=3, proj_dtype="bfloat16", cache_projection=True)
    a.stack_gradients = b.stack_gradients = stack
    run(a, a_params, range(5))
    run(b, b_params, range(5))
    for p, q, p0 in zip(a_params, b_params, start):
        moved = (p - p0).norm()
        assert moved > 0 and (q - p).norm() < 0.02 * moved          # measured 0.3-0.8%
        assert q.dtype == torch.float32 and b.state[q]["exp_avg"].dtype == torch.float32
    assert not all(torch.equal(p, q) for p, q in zip(a_params, b_params))    # it did project in bf16
    assert state_bytes(b) == estimate_state_bytes(b_params, {"name": "apollo", "rank": 3, "proj_dtype": "bfloat16",
                                                             "cache_projection": True})
    with pytest.raises(ValueError, match="proj_dtype must be one of"):
        Apollo(fresh(), proj_dtype="int8")
