"""Every workbench optimizer, step by step, against a plain per-tensor implementation of the
equations of REFERENCE.md section 3 written here (float64, several steps, across projection
refreshes / subspace switches).

The random matrices are the optimizers' own (``projection()`` / ``subspace()``): the tests check
their properties (Gaussian scale, orthonormality, refresh times, determinism) and that the updates
use them exactly as the equations say.
"""
import math

import pytest
import torch

from workbench.optim import Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, ZeroOrderSGD, update_rule


pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
STEPS = 7
T = 3            # refreshes at steps 4 and 7


def adam_ref(m, v, g, betas, eps, t):
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return m, v, mh / (vh.sqrt() + eps)


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=DT)) for s in shapes]


def grads_for(shapes, steps, seed=1, growth=0.0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=DT) * (1 + growth * t) for s in shapes] for t in range(steps)]


# ---------------------------------------------------------------------------------------- APOLLO
SHAPES = [(12, 6), (12, 6), (5, 9), (7,)]     # two same-shape (one bucket), one wide, one vector


class RefApollo:
    def __init__(self, p, lr, rank, scale_type, scale, betas, eps, wd, limit, bias="moments"):
        self.p, self.lr, self.rank, self.scale_type, self.alpha = p.detach().clone(), lr, rank, scale_type, math.sqrt(scale)
        self.betas, self.eps, self.wd, self.limit, self.bias = betas, eps, wd, limit, bias
        self.m = self.v = None
        self.prev = None
        self.limited = self.unlimited = 0

    def step(self, G, P, t):
        m_, n_ = G.shape
        tall = m_ >= n_
        R = G @ P.T if tall else P.T @ G
        if self.m is None:
            self.m, self.v = torch.zeros_like(R), torch.zeros_like(R)
        self.m, self.v, Rt = adam_ref(self.m, self.v, R, self.betas, self.eps, t)
        step_size = self.lr
        if self.bias == "step":     # the official code: m / (sqrt(v) + eps) raw, the correction in the step size
            Rt = self.m / (self.v.sqrt() + self.eps)
            step_size = self.lr * math.sqrt(1 - self.betas[1] ** t) / (1 - self.betas[0] ** t)
        if self.scale_type == "channel":
            d = 1 if tall else 0          # channels of the larger side
            s = Rt.norm(dim=d) / (R.norm(dim=d) + 1e-8)
            Gt = G * (s[:, None] if tall else s[None, :])
        else:
            Gt = G * (Rt.norm() / (R.norm() + 1e-8))
        Gt = Gt * self.alpha
        if self.limit is not None:
            norm = Gt.norm()
            if self.prev is not None and norm / self.prev > self.limit:
                Gt = Gt * (self.limit * self.prev / norm)
                self.limited += 1
            elif self.prev is not None:
                self.unlimited += 1
            self.prev = Gt.norm()
        self.p = self.p - step_size * Gt
        self.p = self.p - self.lr * self.wd * self.p


@pytest.mark.parametrize("stack", [True, False])         # batched matmuls on stacked grads / per-tensor path
@pytest.mark.parametrize("cls,kw", [
    (Apollo, dict(rank=3, scale_type="channel", scale=1.0)),
    (Apollo, dict(rank=4, scale_type="tensor", scale=2.0, norm_growth_limit=None)),
    (ApolloMini, dict()),
    (ApolloMini, dict(bias_correction="step")),
    (Apollo, dict(rank=3, scale_type="channel", scale=1.0, bias_correction="step")),
])
def test_apollo_matches_reference(cls, kw, stack):
    params = make_params(SHAPES)
    hp = dict(lr=0.02, update_proj_gap=T, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, seed=7)
    opt = cls(params, **hp, **kw)
    opt.stack_gradients = stack
    g0 = opt.param_groups[0]
    refs = [RefApollo(p, hp["lr"], g0["rank"], g0["scale_type"], g0["scale"], hp["betas"], hp["eps"],
                      hp["weight_decay"], g0["norm_growth_limit"], g0["bias_correction"]) for p in params[:3]]
    vec = params[3].detach().clone().requires_grad_()          # the 1-D parameter: plain AdamW
    adamw = torch.optim.AdamW([vec], lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], weight_decay=hp["weight_decay"])
    seen = {}
    for t, grads in enumerate(grads_for(SHAPES, STEPS, growth=0.3), start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        vec.grad = grads[3].clone()
        adamw.step()
        for i, (p, ref) in enumerate(zip(params[:3], refs)):
            P = opt.projection(p)
            r = min(g0["rank"], *p.shape)
            assert P.shape == ((r, p.shape[1]) if p.shape[0] >= p.shape[1] else (p.shape[0], r))
            seen.setdefault(i, []).append(P)
            ref.step(grads[i], P, t)
            torch.testing.assert_close(p.detach(), ref.p, rtol=1e-10, atol=1e-12, msg=f"param {i} step {t}")
        torch.testing.assert_close(params[3].detach(), vec.detach(), rtol=1e-12, atol=1e-14)
    for i, Ps in seen.items():          # P is redrawn exactly at steps 1, 4, 7 and never otherwise
        same = [torch.equal(Ps[k], Ps[k - 1]) for k in range(1, STEPS)]
        assert same == [(k % T) != 0 for k in range(1, STEPS)], same
    assert not torch.equal(seen[0][0], seen[1][0])           # same shape, different parameter: different P
    if g0["norm_growth_limit"] is not None:
        assert sum(r.limited for r in refs) > 0 and sum(r.unlimited for r in refs) > 0   # both branches ran


@pytest.mark.parametrize("scale_type,scale,rank", [("channel", 1.0, 3), ("tensor", 128.0, 1)])
@pytest.mark.parametrize("limit", [True, False])
def test_apollo_bias_correction_step_equals_the_official_package(scale_type, scale, rank, limit):
    """With ``bias_correction="step"`` the update is the official ``apollo-torch`` code's, given the same P
    (its projector is handed ours). The package (CC-BY-NC-4.0, never a dependency) comes with the
    test-only ``reference`` extra that ``make test`` installs; elsewhere this test skips."""
    apollo_torch = pytest.importorskip("apollo_torch")
    from apollo_torch import random_projector

    shapes = [(12, 6), (5, 9)]
    init = make_params(shapes)
    grads = grads_for(shapes, 6, growth=0.3)
    ours_p = [torch.nn.Parameter(x.detach().clone()) for x in init]
    theirs_p = [torch.nn.Parameter(x.detach().clone()) for x in init]
    ours = Apollo(ours_p, lr=0.02, rank=rank, scale_type=scale_type, scale=scale, update_proj_gap=100,
                  betas=(0.9, 0.99), eps=1e-6, bias_correction="step", norm_growth_limit=1.01 if limit else None)
    P = {tuple(p.shape): ours.projection(p, step=1) for p in ours_p}
    patch = pytest.MonkeyPatch()
    patch.setattr(random_projector.GradientProjector, "get_orthogonal_matrix",
                  lambda self, w, r, type, seed: P[tuple(w.shape)].clone())
    try:
        theirs = apollo_torch.APOLLOAdamW(
            [{"params": theirs_p, "rank": rank, "proj": "random", "proj_type": "std", "scale_type": scale_type,
              "scale": scale, "update_proj_gap": 100}], lr=0.02, betas=(0.9, 0.99), eps=1e-6, disable_nl=not limit)
        for t in range(6):
            for a, b, g in zip(ours_p, theirs_p, grads[t]):
                a.grad, b.grad = g.clone(), g.clone()
            ours.step()
            theirs.step()
    finally:
        patch.undo()
    for a, b in zip(ours_p, theirs_p):        # its limiter divides by (prev + 1e-8): a 1e-7 relative difference
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-9)


def test_apollo_projection_is_gaussian_and_device_dtype_independent():
    w32 = torch.nn.Parameter(torch.zeros(4096, 512))
    w64 = torch.nn.Parameter(torch.zeros(4096, 512, dtype=DT))
    a, b = Apollo([w32], rank=64, seed=3), Apollo([w64], rank=64, seed=3)
    P32, P64 = a.projection(w32, step=1), b.projection(w64, step=1)
    assert P32.shape == (64, 512)
    torch.testing.assert_close(P32.double(), P64, rtol=0, atol=0)   # drawn once in fp32 on the CPU
    assert abs(float(P64.mean())) < 0.01 and abs(float(P64.var() * 64) - 1) < 0.02   # N(0, 1/r)
    assert torch.equal(Apollo([w32], rank=64, seed=3).projection(w32, 1), P32)        # regenerated, same
    assert not torch.equal(Apollo([w32], rank=64, seed=4).projection(w32, 1), P32)
    assert torch.equal(a.projection(w32, step=200), P32) and not torch.equal(a.projection(w32, step=201), P32)


# ---------------------------------------------------------------------------------------- GaLore
@pytest.mark.parametrize("stack", [True, False])
def test_galore_matches_reference(stack):
    shapes = [(10, 6), (10, 6), (4, 9), (3,)]
    params = make_params(shapes)
    hp = dict(lr=0.01, rank=3, update_proj_gap=T, scale=0.25, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.05)
    opt = GaLore(params, **hp)
    opt.stack_gradients = stack
    ref = [dict(p=p.detach().clone(), m=None, v=None, P=None) for p in params[:3]]
    for t, grads in enumerate(grads_for(shapes, STEPS), start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, st in enumerate(ref):
            G = grads[i]
            tall = G.shape[0] >= G.shape[1]
            if (t - 1) % T == 0:
                U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
                st["P"] = (Vh[:3] if tall else U[:, :3]).to(DT)
                # the top-3 singular subspace of G itself (in float64): independent check of the projector
                U64, _, Vh64 = torch.linalg.svd(G, full_matrices=False)
                Q = Vh64[:3].T if tall else U64[:, :3]
                Pc = st["P"].T if tall else st["P"]
                torch.testing.assert_close(Q @ Q.T @ Pc, Pc, atol=1e-5, rtol=0)
            P = st["P"]
            R = G @ P.T if tall else P.T @ G
            if st["m"] is None:
                st["m"], st["v"] = torch.zeros_like(R), torch.zeros_like(R)
            st["m"], st["v"], N = adam_ref(st["m"], st["v"], R, hp["betas"], hp["eps"], t)
            upd = N @ P if tall else P @ N
            st["p"] = st["p"] - hp["lr"] * hp["scale"] * upd
            st["p"] = st["p"] - hp["lr"] * hp["weight_decay"] * st["p"]
            torch.testing.assert_close(params[i].detach(), st["p"], rtol=1e-10, atol=1e-12, msg=f"{i} step {t}")
            torch.testing.assert_close(opt.state[params[i]]["projector"], P, rtol=0, atol=0)


@pytest.mark.parametrize("stack", [True, False])
@pytest.mark.parametrize("bias_correction,eps", [("step", 1e-6), ("moments", 0.0), ("moments", 1e-3)])
def test_galore_equals_the_official_package(bias_correction, eps, stack):
    """Our GaLore against the official ``galore-torch`` ``GaLoreAdamW`` (Apache-2.0; a test-only extra,
    never a dependency), each computing its own SVD projector, across two refreshes, weight decay on.
    With ``bias_correction="step"`` (the official placement of the bias correction) or ``eps=0`` the
    updates agree to rounding; with the default placement and a large ``eps`` they must differ (the test
    would otherwise not see a wrong placement)."""
    galore_torch = pytest.importorskip("galore_torch")
    shapes = [(12, 6), (12, 6), (5, 9)]                      # two tall (one stacked bucket), one wide
    init = make_params(shapes)
    grads = grads_for(shapes, STEPS, growth=0.3)
    ours_p = [torch.nn.Parameter(x.detach().clone()) for x in init]
    theirs_p = [torch.nn.Parameter(x.detach().clone()) for x in init]
    hp = dict(lr=0.01, betas=(0.9, 0.999), eps=eps, weight_decay=0.05)
    ours = GaLore(ours_p, rank=3, update_proj_gap=T, scale=0.25, bias_correction=bias_correction, **hp)
    ours.stack_gradients = stack
    theirs = galore_torch.GaLoreAdamW([{"params": theirs_p, "rank": 3, "update_proj_gap": T, "scale": 0.25,
                                        "proj_type": "std"}], no_deprecation_warning=True, **hp)
    worst = 0.0
    for t in range(STEPS):
        for a, b, g in zip(ours_p, theirs_p, grads[t]):
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for a, b in zip(ours_p, theirs_p):
            worst = max(worst, float((a.detach() - b.detach()).abs().max()))
    if eps == 1e-3:
        assert worst > 1e-4, worst                           # eps placement is visible at this eps
    else:
        assert worst < 1e-12, worst


# ---------------------------------------------------------------------------------------- FRUGAL
@pytest.mark.parametrize("proj_type,residual", [("random", "sign"), ("random", "sgd"), ("columns", "sign"),
                                                ("rows", None), ("blocks", "sign")])
def test_frugal_matches_reference(proj_type, residual):
    shapes = [(12, 8), (12, 8), (6, 10), (4, 4), (5,)]
    params = make_params(shapes)
    hp = dict(lr=0.01, rho=0.25, proj_type=proj_type, update_proj_gap=T, betas=(0.9, 0.999), eps=1e-8,
              weight_decay=0.1, residual=residual, residual_scale=0.5)
    opt = Frugal(params, **hp)
    ref = [dict(p=p.detach().clone(), m=None, v=None) for p in params[:4]]
    vec = params[4].detach().clone().requires_grad_()          # non-2-D: plain AdamW, never reset
    adamw = torch.optim.AdamW([vec], lr=hp["lr"], betas=hp["betas"], eps=hp["eps"], weight_decay=hp["weight_decay"])
    subs = {}
    for t, grads in enumerate(grads_for(shapes, STEPS), start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        vec.grad = grads[4].clone()
        adamw.step()
        ta = (t - 1) % T + 1                      # Adam's step count since the last switch
        chosen_count = 0
        for i, st in enumerate(ref):
            G, p = grads[i], params[i]
            m_, n_ = G.shape
            sub = opt.subspace(p)
            subs.setdefault(i, []).append(sub)
            if ta == 1:
                st["m"] = st["v"] = None          # reset at each switch
            if proj_type == "blocks":
                if bool(sub):
                    chosen_count += 1
                    if st["m"] is None:
                        st["m"], st["v"] = torch.zeros_like(G), torch.zeros_like(G)
                    st["m"], st["v"], U = adam_ref(st["m"], st["v"], G, hp["betas"], hp["eps"], ta)
                    assert "exp_avg" in opt.state[p]
                else:
                    st["m"] = st["v"] = None
                    U = hp["residual_scale"] * torch.sign(G)
                    assert "exp_avg" not in opt.state[p]          # state-free, memory freed
            else:
                if proj_type == "random":
                    tall = m_ >= n_
                    k = max(1, math.floor(0.25 * min(m_, n_) + 0.5))   # halves round up
                    P = sub
                    eye = P @ P.T if tall else P.T @ P
                    torch.testing.assert_close(eye, torch.eye(k, dtype=DT), atol=1e-6, rtol=0)
                    R = G @ P.T if tall else P.T @ G
                    back = (lambda X: X @ P) if tall else (lambda X: P @ X)
                    resid = G - back(R)
                else:
                    idx = sub.tolist()
                    size = n_ if proj_type == "columns" else m_
                    assert idx == sorted(set(idx)) and len(idx) == max(1, math.floor(0.25 * size + 0.5))
                    mask = torch.zeros_like(G, dtype=torch.bool)
                    if proj_type == "columns":
                        R = G[:, idx]
                        mask[:, idx] = True
                    else:
                        R = G[idx, :]
                        mask[idx, :] = True
                    resid = G.masked_fill(mask, 0.0)
                if st["m"] is None:
                    st["m"], st["v"] = torch.zeros_like(R), torch.zeros_like(R)
                st["m"], st["v"], N = adam_ref(st["m"], st["v"], R, hp["betas"], hp["eps"], ta)
                f = {"sign": torch.sign, "sgd": lambda x: x, None: torch.zeros_like}[residual]
                free = hp["residual_scale"] * f(resid) if residual is not None else torch.zeros_like(G)
                if proj_type == "random":
                    U = back(N) + free
                else:
                    U = free.clone()
                    if proj_type == "columns":
                        U[:, idx] = N
                    else:
                        U[idx, :] = N
            st["p"] = st["p"] - hp["lr"] * U
            st["p"] = st["p"] - hp["lr"] * hp["weight_decay"] * st["p"]
            torch.testing.assert_close(p.detach(), st["p"], rtol=1e-10, atol=1e-12, msg=f"{i} step {t}")
        if proj_type == "blocks":
            assert chosen_count == 1             # round(0.25 * 4) of the group's 4 matrices
        torch.testing.assert_close(params[4].detach(), vec.detach(), rtol=1e-12, atol=1e-14)
    for i, s in subs.items():                    # the subspace stays for T steps, then (here) moves
        assert all(torch.equal(s[k], s[k - 1]) for k in range(1, STEPS) if k % T != 0)
    if proj_type != "blocks":
        assert any(not torch.equal(s[T], s[T - 1]) for s in subs.values())


# ---------------------------------------------------------------------------------------- LAMB
def lamb_ref(params, grads, state, groups, max_grad_norm, t):
    """apex FusedLAMB (adam_w_mode, grad_averaging, bias_correction, use_nvlamb False)."""
    gnorm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    div = gnorm / max_grad_norm if gnorm > max_grad_norm else 1.0
    out = []
    for p, g, st, (lr, wd) in zip(params, grads, state, groups):
        g = g / div
        st["m"], st["v"], r = adam_ref(st["m"], st["v"], g, (0.9, 0.999), 1e-6, t)
        u = r + wd * p
        ratio = 1.0
        if wd != 0:
            pn, un = float(p.norm()), float(u.norm())
            ratio = pn / un if pn > 0 and un > 0 else 1.0
        out.append(p - lr * ratio * u)
    return out


@pytest.mark.parametrize("scale", [10.0, 0.01])           # clipping active / inactive
def test_lamb_matches_apex_reference(scale):
    shapes = [(6, 5), (6, 5), (4,), (3, 3)]
    params = make_params(shapes)
    with torch.no_grad():
        params[3].zero_()                                       # ||p|| = 0: trust ratio 1
    groups = [{"params": params[:2], "weight_decay": 0.01}, {"params": [params[2]], "weight_decay": 0.0},
              {"params": [params[3]], "weight_decay": 0.1, "lr": 0.05}]
    opt = Lamb(groups, lr=0.02)
    hp = [(0.02, 0.01), (0.02, 0.01), (0.02, 0.0), (0.05, 0.1)]
    ref = [p.detach().clone() for p in params]
    state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p)) for p in params]
    for t, grads in enumerate(grads_for(shapes, 5), start=1):
        grads = [g * scale for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref = lamb_ref(ref, grads, state, hp, 1.0, t)
        for i, (p, r) in enumerate(zip(params, ref)):
            torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12, msg=f"{i} step {t}")
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)                       # clipping does not touch .grad


# ---------------------------------------------------------------------------------------- MeZO
def test_zero_order_follows_spsa_equations():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x, y = torch.randn(32, 4, dtype=DT), torch.randn(32, 1, dtype=DT)
    lr, eps, wd = 1e-2, 1e-3, 0.1
    opt = ZeroOrderSGD(model.parameters(), lr=lr, eps=eps, weight_decay=wd, seed=5)
    params = list(model.parameters())
    zs = []
    for t in range(3):
        theta = [p.detach().clone() for p in params]
        seen = []

        def closure():
            seen.append([p.detach().clone() for p in params])
            assert not torch.is_grad_enabled()                  # forward passes only
            return torch.nn.functional.mse_loss(model(x), y)

        loss = opt.step(closure)
        assert len(seen) == 2
        z = [(a - b) / eps for a, b in zip(seen[0], theta)]       # theta + eps z
        for a, b, zi in zip(seen[1], theta, z):                    # theta - eps z
            torch.testing.assert_close(a, b - eps * zi, rtol=0, atol=1e-12)
        with torch.no_grad():
            lp = torch.nn.functional.mse_loss(torch.func.functional_call(
                model, {n: a for (n, _), a in zip(model.named_parameters(), seen[0])}, (x,)), y)
            lm = torch.nn.functional.mse_loss(torch.func.functional_call(
                model, {n: a for (n, _), a in zip(model.named_parameters(), seen[1])}, (x,)), y)
        g = (lp - lm) / (2 * eps)
        torch.testing.assert_close(loss, lp)
        torch.testing.assert_close(opt.last_projected_grad, g)
        for p, th, zi in zip(params, theta, z):
            expect = (th - lr * g * zi) * (1 - lr * wd)
            torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-9)
        zs.append(torch.cat([zi.flatten() for zi in z]))
    allz = torch.stack(zs)
    assert abs(float(allz.mean())) < 0.2 and abs(float(allz.std()) - 1) < 0.2   # N(0, I)
    assert not torch.allclose(zs[0], zs[1], atol=1e-3)                            # a new z each step


def test_zero_order_replays_from_seed_and_scalar():
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 3).double()
    b = torch.nn.Linear(6, 3).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 6, dtype=DT)
    oa = ZeroOrderSGD(a.parameters(), lr=1e-2, seed=9)
    ob = ZeroOrderSGD(b.parameters(), lr=1e-2, seed=9)
    oa.step(lambda: a(x).square().mean())
    ob.apply_update(oa.last_seed, oa.last_projected_grad)            # a worker gets only (seed, g)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- Lion / kit
@pytest.mark.parametrize("elementwise", [True, False])
def test_rule_optimizer_lion_matches_reference(elementwise):
    if elementwise:
        cls = Lion
    else:
        @update_rule(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, state=("exp_avg",), elementwise=False)
        def cls(grad, state, group):
            beta1, beta2 = group["betas"]
            m = state["exp_avg"]
            d = torch.sign(m.lerp(grad, 1 - beta1))
            state["exp_avg"] = m.lerp(grad, 1 - beta2)        # rebinding the entry also works
            return d
    shapes = [(5, 4), (5, 4), (5, 4), (3,), ()]
    params = make_params(shapes)
    opt = cls(params, lr=0.01, betas=(0.8, 0.95), weight_decay=0.2)
    ref = [dict(p=p.detach().clone(), m=torch.zeros_like(p)) for p in params]
    for t, grads in enumerate(grads_for(shapes, 5), start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (st, g) in enumerate(zip(ref, grads)):
            d = torch.sign(0.8 * st["m"] + 0.2 * g)
            st["m"] = 0.95 * st["m"] + 0.05 * g
            st["p"] = st["p"] * (1 - 0.01 * 0.2) - 0.01 * d
            torch.testing.assert_close(params[i].detach(), st["p"], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(opt.state[params[i]]["exp_avg"], st["m"], rtol=1e-12, atol=1e-14)
            assert opt.state[params[i]]["step"] == t
