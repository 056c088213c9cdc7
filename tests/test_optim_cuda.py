"""workbench.optim on CUDA (skipped without a GPU): the same random projections as on the CPU, and no
host-device synchronisation inside step() (torch.cuda.set_sync_debug_mode("error"))."""
import pytest
import torch

from workbench.optim import Apollo, ApolloMini, Frugal, GaLore, Lamb, Lion, ZeroOrderSGD
from workbench.optim.apollo import gaussian_projection
from workbench.optim.rng import counter_normal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPES = [(64, 32), (64, 32), (32, 96), (32,)]


def _params(device, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype).to(device)) for s in SHAPES]


def _grads(t, device, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + t)
    return [torch.randn(s, generator=g, dtype=dtype).to(device) for s in SHAPES]


def test_counter_normal_is_bit_identical_on_cuda():
    keys = [0, 5, (1 << 63) + 11, (1 << 64) - 1]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        cpu = counter_normal(keys, 100_003, dtype=dtype)
        gpu = counter_normal(keys, 100_003, dtype=dtype, device="cuda")
        assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    assert torch.equal(gaussian_projection(9, (256, 4096), 256, device="cuda").cpu(),
                       gaussian_projection(9, (256, 4096), 256))


@pytest.mark.parametrize("make", [
    lambda ps: Apollo(ps, rank=4, update_proj_gap=2),
    lambda ps: Apollo(ps, rank=4, update_proj_gap=2, cache_projection=True),
    lambda ps: ApolloMini(ps, update_proj_gap=2),
    lambda ps: Frugal(ps, update_proj_gap=2),
    lambda ps: Frugal(ps, proj_type="columns", update_proj_gap=2),
])
def test_cpu_and_cuda_take_the_same_steps(make):
    cpu, gpu = _params("cpu"), _params("cuda")
    o_cpu, o_gpu = make(cpu), make(gpu)
    for t in range(5):
        for p, q, g in zip(cpu, gpu, _grads(t, "cpu")):
            p.grad, q.grad = g, g.cuda()
        o_cpu.step()
        o_gpu.step()
    for p, q in zip(cpu, gpu):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("make", [
    lambda ps: Apollo(ps, rank=4, update_proj_gap=3),
    lambda ps: Apollo(ps, rank=4, update_proj_gap=3, proj_dtype="bfloat16"),
    lambda ps: ApolloMini(ps, update_proj_gap=3),
    lambda ps: GaLore(ps, rank=4, update_proj_gap=100),       # its SVD (refresh steps only) does sync
    lambda ps: Frugal(ps, update_proj_gap=3),
    lambda ps: Frugal(ps, proj_type="blocks", update_proj_gap=3),
    lambda ps: Lamb(ps),
    lambda ps: Lion(ps),
])
def test_no_host_sync_in_step(make):
    params = _params("cuda", torch.float32)
    opt = make(params)
    for p, g in zip(params, _grads(0, "cuda", torch.float32)):
        p.grad = g
    opt.step()                                    # first step: allocations, first projection / SVD
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(1, 5):                     # includes a projection refresh (step 4) for T = 3
            for p, g in zip(params, _grads(t, "cuda", torch.float32)):
                p.grad = g
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_zero_order_no_host_sync():
    model = torch.nn.Linear(16, 4).cuda()
    x = torch.randn(8, 16, device="cuda")
    opt = ZeroOrderSGD(model.parameters(), lr=1e-3)
    opt.step(lambda: model(x).square().mean())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step(lambda: model(x).square().mean())
    finally:
        torch.cuda.set_sync_debug_mode("default")
