"""Random numbers that are the same on every device: a counter-based Gaussian generator in plain torch ops.

``torch.randn`` with a seeded generator gives different numbers on the CPU and on CUDA, so an
optimizer that regenerates its random projections from a seed on the parameter's device would
disagree with itself after moving between devices (a known flaw of public APOLLO code). Drawing
them on a CPU generator and copying them over fixes that but costs a host-to-device copy per draw,
which is why such matrices end up cached (stored) instead of regenerated.

:func:`counter_normal` computes them where they are needed instead, from integer arithmetic only:

1. element ``j`` of stream ``key`` is the 64-bit SplitMix64 output ``mix(key + (j + 1) * gamma)``
   (Steele et al. 2014), computed on int64 tensors: wrapping multiplication, xor, masked shifts;
   the same bits on any device;
2. each 64-bit word gives four 16-bit indices into a table of the standard normal's quantiles at
   the 65,536 bin midpoints ``(k + 1/2) / 2^16`` (symmetric, rescaled to unit variance), computed
   once on the CPU in float64; gathering from it is exact.

So each number is a standard normal rounded to its bin (about 4e-5 wide near 0; tails cut at
4.33 sd): indistinguishable from ``N(0, 1)`` for random projections, and
bit-identical on CPU and CUDA, on every rank and after a resume. Generation is a dozen elementwise
kernels with no host synchronisation.

Example:
    >>> import torch
    >>> from workbench.optim.rng import counter_normal
    >>> z = counter_normal([7, 8], 100_000)
    >>> z.shape, z.dtype
    (torch.Size([2, 100000]), torch.float32)
    >>> torch.equal(counter_normal([7], 100_000)[0], z[0])      # a stream depends on its key only
    True
    >>> abs(float(z.mean())) < 0.01, abs(float(z.std()) - 1) < 0.01
    (True, True)
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

__all__ = ["counter_normal", "splitmix64_stream", "normal_table"]

_BITS = 16
_GAMMA, _C1, _C2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    c &= (1 << 64) - 1
    return c - (1 << 64) if c >= 1 << 63 else c


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function, in place on an int64 tensor (bits as if unsigned: torch's
    ``>>`` is arithmetic, so the sign copies are masked off; multiplication wraps)."""
    tmp = torch.empty_like(x)
    for shift, mult in ((30, _C1), (27, _C2), (31, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (64 - shift)) - 1))
        if mult is not None:
            x.mul_(_signed(mult))
    return x


def splitmix64_stream(keys: Sequence[int], n: int, device=None) -> torch.Tensor:
    """``[len(keys), n]`` int64 tensor: the first ``n`` outputs of SplitMix64 seeded with each key
    (as signed int64 bit patterns), computed on ``device``."""
    j = torch.arange(1, n + 1, dtype=torch.int64, device=device).mul_(_signed(_GAMMA))   # wraps mod 2^64
    k = [_signed(int(key)) for key in keys]
    if j.device.type == "cpu":
        x = torch.tensor(k, dtype=torch.int64)[:, None] + j
    else:                                 # keys go in as kernel scalars: no host-to-device copy, no sync
        x = torch.empty((len(k), n), dtype=torch.int64, device=j.device)
        for b, key in enumerate(k):
            torch.add(j, key, out=x[b])
    return _mix_(x)


@functools.lru_cache(maxsize=64)
def normal_table(scale: float = 1.0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """The 2^16 quantiles of ``N(0, scale^2)`` at the bin midpoints, symmetric and rescaled to
    variance ``scale^2`` exactly, rounded to float32 once and then cast to ``dtype`` on ``device``."""
    half = 1 << (_BITS - 1)
    u = (torch.arange(half, dtype=torch.float64) + 0.5) / (1 << _BITS)
    low = torch.special.ndtri(u)                                   # negative half, ascending
    z = torch.cat([low, -low.flip(0)])
    z = z / z.square().mean().sqrt() * scale
    return z.to(torch.float32).to(dtype=dtype, device=device)


def counter_normal(keys: Sequence[int], n: int, *, scale: float = 1.0, dtype: torch.dtype = torch.float32,
                   device=None) -> torch.Tensor:
    """``[len(keys), n]`` standard normal numbers (times ``scale``), one stream per key, identical
    on every device for the same keys. See the module docstring for how and how exact.

    Args:
        keys: one integer seed per row (any Python ints; taken mod 2^64).
        n: numbers per row.
        scale: multiply by this (applied in float64 to the table, then rounded once to float32).
        dtype, device: of the result (float32 on the CPU by default).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    words = splitmix64_stream(keys, math.ceil(n / 4), device)
    # four 16-bit draws per word, low bits first (the int16 view of little-endian int64: CPU and CUDA)
    idx = words.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)[:, :n]
    table = normal_table(float(scale), dtype, str(device))
    return torch.index_select(table, 0, idx.flatten()).view(len(keys), n)
