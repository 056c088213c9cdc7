"""AngleSelector: drive the controls as a user would and check the figures against the sampler and numpy."""
from __future__ import annotations

import json

import numpy as np
import pytest
from plotly.callbacks import Points

from workbench.data.sampler import GainSampler
from workbench.widgets import AngleSelector

N = 60


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=N)                                 # distinct: no ties in the ranking
    return dict(scores=scores, texts=[f"prompt {i}: <b>why</b> & how?" for i in range(N)],
                losses=rng.uniform(1, 3, N), grad_norms=rng.uniform(0, 5, N))


def _rank(scores):
    """Rank of each sample, 0 = highest score (brute force over the argsort)."""
    r = np.empty(len(scores), dtype=int)
    r[np.argsort(-np.asarray(scores), kind="stable")] = np.arange(len(scores))
    return r


def _truth(scores, k, mu, sigma, seed):
    return np.sort(np.array(list(GainSampler(scores, k, mu=mu, sigma=sigma, seed=seed))))


def _check(sel, data, y):
    """The highlighted trace, the histogram overlay and .selected all show the sampler's draw."""
    want = _truth(data["scores"], sel.subset_size.value, sel.mu.value, sel.sigma.value, sel.seed.value)
    np.testing.assert_array_equal(sel.selected, want)
    assert len(want) == sel.subset_size.value == len(set(want.tolist()))
    chosen = sel.figure.data[1]
    np.testing.assert_array_equal(chosen.customdata, want)
    np.testing.assert_array_equal(chosen.x, data["scores"][want])
    np.testing.assert_array_equal(chosen.y, np.asarray(y)[want])
    np.testing.assert_array_equal(sel.hist_figure.data[1].x, data["scores"][want])
    np.testing.assert_array_equal(sel.hist_figure.data[0].x, data["scores"])
    assert sel.hist_figure.data[0].bingroup == sel.hist_figure.data[1].bingroup      # same bins
    assert chosen.marker.symbol != sel.figure.data[0].marker.symbol                  # highlighted
    assert f"<b>{len(want)}</b> of {N}" in sel.summary.value


def test_controls_redraw_the_samplers_subset(data):
    sel = AngleSelector(**data, subset_size=12, mu=5.0, sigma=8.0, seed=3)
    assert sel.y_axis.value == "loss"
    np.testing.assert_array_equal(sel.figure.data[0].x, data["scores"])
    np.testing.assert_array_equal(sel.figure.data[0].y, data["losses"])
    _check(sel, data, data["losses"])
    before = sel.selected.copy()
    for ctrl, value in ((sel.mu, 30.0), (sel.sigma, 3.0), (sel.subset_size, 20), (sel.seed, 7)):
        ctrl.value = value
        _check(sel, data, data["losses"])
    assert not np.array_equal(before, sel.selected)
    sel.draw_button.click()                                      # a new draw: seed + 1
    assert sel.seed.value == 8
    _check(sel, data, data["losses"])
    sel.y_axis.value = "grad_norm"
    np.testing.assert_array_equal(sel.figure.data[0].y, data["grad_norms"])
    _check(sel, data, data["grad_norms"])
    sel.y_axis.value = "rank"
    np.testing.assert_array_equal(sel.figure.data[0].y, _rank(data["scores"]))
    _check(sel, data, _rank(data["scores"]))
    np.testing.assert_array_equal(sel.rank, _rank(data["scores"]))


def test_rank_axis_when_no_losses_given(data):
    sel = AngleSelector(data["scores"].tolist(), subset_size=4)
    assert [v for _, v in sel.y_axis.options] == ["rank"]
    assert sel.sigma.value == 1000.0                             # GAIN-RL's start value
    np.testing.assert_array_equal(sel.figure.data[0].y, _rank(data["scores"]))
    _check(sel, data, _rank(data["scores"]))
    assert AngleSelector(data["scores"]).subset_size.value == 6  # ceil(60 / 10)


def test_narrow_sigma_picks_the_ranks_nearest_mu(data):
    s, k = data["scores"], 7
    sel = AngleSelector(s, subset_size=k, sigma=0.01, mu=0.0)
    top = np.sort(np.argsort(-s)[:k])                            # the k highest scores
    np.testing.assert_array_equal(sel.selected, top)
    _check(sel, data, _rank(s))
    sel.mu.value = 40.0                                          # ranks 37..43 (nearest 40)
    order = np.argsort(-s)
    np.testing.assert_array_equal(sel.selected, np.sort(order[37:44]))
    assert s[sel.selected].max() < s[top].min()                  # less concentrated samples


def test_moving_mu_moves_the_subset_down_the_ranking(data):
    rank = _rank(data["scores"])
    sel = AngleSelector(data["scores"], subset_size=10, sigma=5.0, mu=0.0, seed=1)
    means = []
    for mu in (0.0, 20.0, 45.0):
        sel.mu.value = mu
        _check(sel, data, rank)
        means.append(rank[sel.selected].mean())
    assert means[0] < means[1] < means[2]
    assert abs(means[2] - 45.0) < 8 and means[0] < 8


def test_show_and_click(data):
    sel = AngleSelector(**data, subset_size=5, sigma=0.01, mu=10.0)
    sel.show(3)
    v = sel.details.value
    assert "prompt 3: &lt;b&gt;why&lt;/b&gt; &amp; how?" in v                  # escaped text
    assert f"score {data['scores'][3]:.6g}" in v and f"rank {_rank(data['scores'])[3]} of {N}" in v
    assert f"loss {data['losses'][3]:.6g}" in v and "not chosen" in v
    assert sel.figure.data[2].customdata == (3,)
    # a click on the all-samples trace: point 7 is sample 7
    sel.figure.data[0]._dispatch_on_click(Points(point_inds=[7], trace_index=0), None)
    assert sel.shown == 7 and "prompt 7:" in sel.details.value
    # a click on the chosen trace: its point 2 is selected[2]; other traces get empty points
    sel.figure.data[1]._dispatch_on_click(Points(point_inds=[2], trace_index=1), None)
    sel.figure.data[0]._dispatch_on_click(Points(point_inds=[], trace_index=0), None)
    i = int(sel.selected[2])
    assert sel.shown == i and f"prompt {i}:" in sel.details.value and "in the chosen subset" in sel.details.value
    sel.mu.value = 0.0                                           # redraw: the pane follows
    assert sel.shown == i and ("not chosen" in sel.details.value) == (i not in sel.selected)
    no_text = AngleSelector(data["scores"])
    no_text.show(0)
    assert "no texts given" in no_text.details.value
    for bad in (-1, N, 2.0, True):
        with pytest.raises(ValueError, match="index"):
            sel.show(bad)


def test_export_round_trips(tmp_path, data):
    sel = AngleSelector(**data, subset_size=9, mu=12.0, sigma=4.0, seed=2)
    sel.sigma.value = 6.0
    p = sel.export(tmp_path / "subset.json")
    got = json.loads(p.read_text())
    assert got == {"indices": sel.selected.tolist(), "mu": 12.0, "sigma": 6.0, "subset_size": 9, "seed": 2}
    np.testing.assert_array_equal(_truth(data["scores"], got["subset_size"], got["mu"], got["sigma"],
                                         got["seed"]), got["indices"])
    assert [f.name for f in tmp_path.iterdir()] == ["subset.json"]        # no temp file left
    sel.path.value = str(tmp_path / "sub" / "b.json")            # the button writes the path box's file
    sel.export_button.click()
    assert json.loads((tmp_path / "sub" / "b.json").read_text())["indices"] == sel.selected.tolist()
    assert "wrote 9 indices" in sel.message.value
    sel.path.value = "  "
    sel.export_button.click()
    assert "file path" in sel.message.value


def test_bad_inputs_raise(data):
    s = data["scores"]
    cases = [
        (dict(scores=s, texts=["a"] * (N - 1)), "texts has 59"),
        (dict(scores=s, losses=np.ones(N + 1)), "losses has 61"),
        (dict(scores=s, grad_norms=np.ones(3)), "grad_norms has 3"),
        (dict(scores=s, subset_size=0), "subset_size"),
        (dict(scores=s, subset_size=N + 1), "subset_size"),
        (dict(scores=s, subset_size=2.5), "subset_size"),
        (dict(scores=s, mu=-1.0), "mu"),
        (dict(scores=s, mu=float(N)), "mu"),
        (dict(scores=s, sigma=0.0), "sigma"),
        (dict(scores=s, seed=-1), "seed"),
        (dict(scores=np.ones((3, 2))), "1-D"),
        (dict(scores=[]), "empty"),
        (dict(scores=[0.1, float("nan"), 0.3]), "NaN"),
        (dict(scores=["a", "b"]), "numbers"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            AngleSelector(**kwargs)
