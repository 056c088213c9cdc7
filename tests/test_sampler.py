"""GainSampler, select_top, ReplayLoader and DomainMix against brute-force truth."""
import math

import pytest
import torch
from scipy import stats

from workbench.data import BlockLoader
from workbench.data.sampler import DomainMix, GainSampler, ReplayLoader, select_top, upsample_end


def _brute_weights(scores, mu, sigma):
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    w = [0.0] * n
    for rank, item in enumerate(order):
        w[item] = math.exp(-(((rank - mu) / sigma) ** 2) / 2)
    total = sum(w)
    return [v / total for v in w]


def test_draw_frequencies_match_gaussian_over_ranks():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 8, (15,), generator=g).float()  # ties included
    s = GainSampler(scores, subset_size=1, mu=3.0, sigma=4.0, seed=5)
    expected = _brute_weights(scores.tolist(), 3.0, 4.0)
    assert torch.allclose(s.weights(), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    draws = 6000
    counts = [0] * 15
    for e in range(draws):
        s.set_epoch(e)
        (i,) = list(s)
        counts[i] += 1
    assert sum(counts) == draws
    p = stats.chisquare(counts, [draws * q for q in expected]).pvalue
    assert p > 1e-3, p


def test_subset_without_replacement_and_seeded():
    s = GainSampler(torch.rand(50, generator=torch.Generator().manual_seed(1)), 20, sigma=10.0)
    a = list(s)
    assert len(a) == len(s) == 20 and len(set(a)) == 20 and all(isinstance(i, int) for i in a)
    assert list(s) == a                                   # same epoch, same draw
    s.set_epoch(1)
    assert list(s) != a


def test_narrow_sigma_draws_the_nearest_ranks_not_arbitrary_items():
    # sigma so small that every weight but one underflows to 0: the subset must still be the
    # ranks nearest mu (torch.multinomial alone fills it with arbitrary zero-weight items)
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(40, generator=g)
    order = sorted(range(40), key=lambda i: (-float(scores[i]), i))       # brute-force ranking
    for mu, k in ((0.0, 7), (11.3, 5), (39.0, 3)):
        s = GainSampler(scores, subset_size=k, mu=mu, sigma=1e-3, seed=1)
        assert int((s.weights() > 0).sum()) < k                          # the underflow case
        nearest = sorted(range(40), key=lambda r: abs(r - mu))[:k]
        for e in range(3):
            s.set_epoch(e)
            assert sorted(list(s)) == sorted(order[r] for r in nearest)
    s = GainSampler(scores, subset_size=7, sigma=1e-3)
    assert list(s) == order[:7]                                            # drawn best first


def test_underflow_draw_keeps_relative_weights():
    # mu just below 1.5 with sigma 0.03: ranks 0 and 3 underflow to probability 0 but their
    # weight ratio is e^(3*eps/sigma^2) = 3; ranks 1 and 2 have ratio e^(eps/sigma^2).
    sigma = 0.03
    eps = math.log(3.0) * sigma ** 2 / 3
    s = GainSampler(torch.tensor([4.0, 3.0, 2.0, 1.0]), subset_size=3, mu=1.5 - eps, sigma=sigma)
    assert int((s.weights() > 0).sum()) == 2
    r12 = math.exp(eps / sigma ** 2)
    draws, first1, third0 = 4000, 0, 0
    for e in range(draws):
        s.set_epoch(e)
        a, b, c = list(s)
        assert {a, b} == {1, 2}
        first1 += a == 1
        third0 += c == 0
    assert stats.binomtest(first1, draws, r12 / (1 + r12)).pvalue > 1e-3
    assert stats.binomtest(third0, draws, 0.75).pvalue > 1e-3


def test_ordinary_draw_is_one_multinomial_call():
    from workbench.data.sampler import _generator
    s = GainSampler(torch.rand(30, generator=torch.Generator().manual_seed(5)), 6, mu=4.0,
                    sigma=3.0, seed=2)
    s.set_epoch(3)
    want = torch.multinomial(s.weights(), 6, replacement=False, generator=_generator(2, 3))
    assert list(s) == want.tolist()


def test_centre_moves_as_specified():
    s = GainSampler(torch.arange(3000.0), 10)
    assert s.update(0.8) == pytest.approx(500 * math.tanh(2 * 0.3))
    mu = s.mu
    assert s.update(0.2) == mu                            # negative step clamped at adj_min = 0
    assert s.update(0.5, angle_signal=1.0) == pytest.approx(mu + 500 * math.tanh(2.0))
    mu = s.mu
    assert s.update(1.0, angle_signal=1.0) == pytest.approx(mu + 500 * (math.tanh(1) + math.tanh(2)))
    assert s.epoch == 4
    t = GainSampler(torch.arange(3000.0), 10, adj_min=-50.0, adj_max=100.0)
    assert t.update(1.0) == 100.0 and t.update(0.0) == 50.0
    # the mode of the weights sits at rank round(mu): item 2999 - rank for ascending scores
    t.mu = 1234.4
    assert int(t.weights().argmax()) == 2999 - 1234


def test_resume_gives_identical_draws():
    scores = torch.rand(200, generator=torch.Generator().manual_seed(2))
    kw = dict(subset_size=16, sigma=30.0, seed=3)
    s = GainSampler(scores, **kw)
    for acc in (0.55, 0.7):
        list(s)
        s.update(acc)
    state = s.state_dict()
    assert all(type(v) in (int, float) for v in state.values())
    r = GainSampler(scores, **kw)
    r.load_state_dict(state)
    for acc in (0.6, 0.9, 0.4):
        assert list(s) == list(r)
        assert s.update(acc, 0.1) == r.update(acc, 0.1)
    with pytest.raises(ValueError, match="items"):
        GainSampler(scores[:10], **kw).load_state_dict(state)


def test_select_top_brute_force():
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 5, (37,), generator=g).float()
    for frac in (0.01, 0.2, 0.5, 1.0):
        k = math.ceil(frac * 37)
        truth = sorted(range(37), key=lambda i: (-float(scores[i]), i))[:k]
        assert select_top(scores, frac).tolist() == truth
    with pytest.raises(ValueError, match="fraction"):
        select_top(scores, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        select_top(torch.tensor([1.0, math.nan]), 0.5)


def _blocks(offset, n=60, width=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return offset + torch.randint(0, 50, (n, width), generator=g)


@pytest.mark.parametrize("frac,n_old", [(0.0, 0), (0.1, 1), (0.25, 3), (0.3, 3), (1.0, 10)])
def test_replay_fraction_exact(frac, n_old):
    new, old = _blocks(0), _blocks(1000, seed=1)
    mix = ReplayLoader(BlockLoader(new, 10, seed=1), BlockLoader(old, 12, seed=2), frac, seed=7)
    for _ in range(8):
        x, y = next(mix)
        assert x.shape == (10, 8) and torch.equal(x[:, 1:], y[:, :-1])
        assert int((x[:, 0] >= 1000).sum()) == n_old
        rows = torch.cat([x, y[:, -1:]], 1)
        src = {tuple(r) for r in torch.cat([new, old]).tolist()}
        assert all(tuple(r) in src for r in rows.tolist())  # whole rows of one domain


def test_replay_resume_identical():
    def make():
        return ReplayLoader(BlockLoader(_blocks(0), 8, seed=1),
                            BlockLoader(_blocks(1000, seed=1), 8, seed=2), 0.25, seed=3)
    a = make()
    for _ in range(11):                                   # crosses an epoch of the new loader
        next(a)
    b = make()
    b.load_state_dict(a.state_dict())
    for _ in range(9):
        xa, ya = next(a)
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _brute_counts(shares, names, batch):
    total = sum(shares.get(k, 0.0) for k in names)
    exact = [shares.get(k, 0.0) / total * batch for k in names]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:batch - sum(counts)]:
        counts[i] += 1
    return dict(zip(names, counts))


def test_domain_mix_upsample_and_resume():
    offsets = {"web": 0, "code": 1000, "math": 2000}
    base = {"web": 0.7, "code": 0.2, "math": 0.1}
    fn = upsample_end(base, "math", 0.4, 0.85, 20)

    def make():
        loaders = {k: BlockLoader(_blocks(o, seed=o), 10, seed=o) for k, o in offsets.items()}
        return DomainMix(loaders, fn, seed=4)

    mix = make()
    seen = []
    for step in range(20):
        shares = fn(step)
        if step < 17:
            assert shares == pytest.approx(base)
        else:
            assert shares == pytest.approx({"web": 0.7 / 0.9 * 0.6, "code": 0.2 / 0.9 * 0.6,
                                            "math": 0.4})
        want = _brute_counts(shares, list(offsets), 10)
        assert mix.counts() == want
        x, _ = next(mix)
        got = {k: int(((x[:, 0] >= o) & (x[:, 0] < o + 1000)).sum()) for k, o in offsets.items()}
        assert got == want
        seen.append(x)
        if step == 9:
            state = mix.state_dict()
    again = make()
    again.load_state_dict(state)
    for step in range(10, 20):
        assert torch.equal(next(again)[0], seen[step])
    with pytest.raises(ValueError, match="unknown domains"):
        DomainMix(make().loaders, lambda s: {"poetry": 1.0}).counts(0)
