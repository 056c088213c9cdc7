"""The counter-based Gaussian generator behind APOLLO's regenerated projections: its bits are SplitMix64's
(checked against the published algorithm written here in pure Python), its numbers are standard normal,
and each row depends only on its key."""
import pytest
import torch
from scipy import stats

from workbench.optim import Apollo, state_bytes
from workbench.optim.rng import counter_normal, normal_table, splitmix64_stream

MASK = (1 << 64) - 1


def splitmix64_reference(seed: int, n: int) -> list[int]:
    """SplitMix64 (Steele, Lea, Flood 2014), as in Java's SplittableRandom / Vigna's C code."""
    out, state = [], seed & MASK
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def test_stream_is_splitmix64():
    keys = [0, 1, 12345, (1 << 63) + 5, MASK]
    got = splitmix64_stream(keys, 64)
    for row, key in zip(got, keys):
        assert [int(v) & MASK for v in row] == splitmix64_reference(key, 64)
    # a published value: the first output of SplitMix64 seeded with 0
    assert int(got[0, 0]) & MASK == 0xE220A8397B1DCDAF


def test_numbers_are_the_table_entries_named_by_16_bit_fields():
    words = splitmix64_reference(99, 8)
    table = normal_table()
    z = counter_normal([99], 30)[0]
    expect = [table[(words[i // 4] >> (16 * (i % 4))) & 0xFFFF] for i in range(30)]
    assert torch.equal(z, torch.stack(expect))


def test_table_is_symmetric_unit_variance_normal_quantiles():
    t = normal_table().double()
    assert t.shape == (1 << 16,) and bool((t[1:] > t[:-1]).all())
    assert torch.equal(t, -t.flip(0))
    assert abs(float(t.square().mean()) - 1) < 1e-6
    # the midpoint quantiles: the bin k holds the k-th of 65536 equal-probability slices
    u = torch.tensor([0.25, 0.5 + 0.5 / 65536, 0.975])
    for p in u:
        k = int(p * 65536)
        assert abs(float(t[k]) - stats.norm.ppf((k + 0.5) / 65536)) < 2e-4 * max(1, abs(float(t[k])))


def test_draws_are_standard_normal_and_independent_across_keys():
    z = counter_normal([3, 4], 200_000).double()
    for row in z:
        assert abs(float(row.mean())) < 0.01 and abs(float(row.var()) - 1) < 0.01
        assert abs(float(stats.kurtosis(row.numpy(), fisher=False)) - 3) < 0.05
        assert stats.kstest(row.numpy(), "norm").pvalue > 1e-3
    assert abs(float(torch.corrcoef(z)[0, 1])) < 0.01
    # consecutive draws (four per 64-bit word) are uncorrelated too
    assert abs(float(torch.corrcoef(torch.stack([z[0, :-1], z[0, 1:]]))[0, 1])) < 0.01


def test_rows_depend_on_key_only_and_dtype_is_a_cast():
    a = counter_normal([7, 8], 1000)
    assert torch.equal(counter_normal([8], 1000)[0], a[1])
    assert torch.equal(counter_normal([7], 10)[0], a[0, :10])            # prefixes agree
    assert torch.equal(counter_normal([7, 8], 1000, dtype=torch.float64), a.double())
    assert torch.equal(counter_normal([7], 1000, scale=0.5)[0], (a[0].double() * 0.5).float())
    with pytest.raises(ValueError, match="n must be"):
        counter_normal([1], -1)


def test_apollo_holds_no_projection_by_default():
    w = torch.nn.Parameter(torch.randn(64, 32))
    w.grad = torch.randn(64, 32)
    opt = Apollo([w], rank=8)
    opt.step()
    assert state_bytes(opt) == (2 * 8 * 64 + 1) * 4          # moments (64 x 8 twice) + limiter norm, no P
    P = opt.projection(w)
    assert P.shape == (8, 32) and abs(float(P.var() * 8) - 1) < 0.15
