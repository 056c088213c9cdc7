"""SparsityInspector: drive the controls as a user would and check what the figures show against brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.sparsity import diff_checkpoints
from workbench.sparsity.diff import TOLERANCE_GRID, snap_tolerance
from workbench.widgets import SparsityInspector

TYPES = {"q_proj": "self_attn", "k_proj": "self_attn", "o_proj": "self_attn", "up_proj": "mlp",
         "down_proj": "mlp"}


def _checkpoints(seed=0, layers=3):
    """Base entries in [1, 1.9); per (layer, type) a known fraction of entries moved by 10**U(-7, -1.5)."""
    g = torch.Generator().manual_seed(seed)
    base = {}
    for i in range(layers):
        for t, block in TYPES.items():
            shape = (12, 8) if t != "down_proj" else (8, 12)
            base[f"model.layers.{i}.{block}.{t}.weight"] = 1 + 0.9 * torch.rand(shape, generator=g)
        base[f"model.layers.{i}.input_layernorm.weight"] = 1 + 0.9 * torch.rand(8, generator=g)
    base["model.embed_tokens.weight"] = 1 + 0.9 * torch.rand(20, 8, generator=g)
    return base


def _tune(base, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for j, (k, v) in enumerate(base.items()):
        frac = (j % 7) / 8   # 0 .. 0.75 changed, differs per cell
        moved = torch.rand(v.shape, generator=g) < frac
        mag = 10 ** (-7 + 5.5 * torch.rand(v.shape, generator=g))
        out[k] = v + mag * moved
    return out


def _brute_cells(base, tuned, tol, rel=False):
    """(layer, column) -> sparsity, pooled over the cell's tensors; written independently of the library."""
    cells = {}
    for k in base:
        d = tuned[k].double().numpy() - base[k].double().numpy()
        bound = tol * np.abs(base[k].double().numpy()) if rel else tol
        parts = k.split(".")
        layer = int(parts[2]) if parts[1] == "layers" else "other"
        col = "norms" if "norm" in parts[-2] else "embed" if "embed" in parts[-2] else parts[-2]
        c, n = cells.get((layer, col), (0, 0))
        cells[(layer, col)] = (c + np.count_nonzero(np.abs(d) > bound), n + d.size)
    return {key: 1 - c / n for key, (c, n) in cells.items()}


def _shown(w):
    h = w.figure.data[0]
    out = {}
    for r, layer in enumerate(h.y):
        for c, col in enumerate(h.x):
            if h.z[r][c] is not None:
                out[(int(layer) if layer != "other" else "other", col)] = h.z[r][c]
    return out


@pytest.fixture(scope="module")
def pair():
    base = _checkpoints()
    return base, _tune(base, 1), _tune(base, 2)


def test_heatmap_is_brute_force_sparsity_and_follows_the_slider(pair):
    base, ta, _ = pair
    w = SparsityInspector(diff_checkpoints(base, ta, atol=1e-5))
    assert list(w.figure.data[0].x) == ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj", "norms", "embed"]
    assert list(w.figure.data[0].y) == ["0", "1", "2", "other"]
    truth = _brute_cells(base, ta, 1e-5)
    shown = _shown(w)
    assert shown.keys() == truth.keys()
    assert all(shown[k] == pytest.approx(truth[k], abs=1e-12) for k in truth)
    assert len({round(v, 6) for v in truth.values()}) > 4      # the cells really differ
    for tol in (snap_tolerance(1e-6), snap_tolerance(4.2e-4), snap_tolerance(1e-3), 0.0):
        assert tol in [v for _, v in w.tolerance.options]
        w.tolerance.value = tol                                   # what a slider drag does
        truth = _brute_cells(base, ta, tol)
        shown = _shown(w)
        assert all(shown[k] == pytest.approx(truth[k], abs=1e-12) for k in truth), tol
    assert w.tolerance.label == "0"
    w.tolerance.value = 1e-5
    assert w.tolerance.label == "1e-05" and "1e-05" in w.figure.layout.title.text
    w.mode.value = "rtol"                                          # relative tolerance
    rt = snap_tolerance(1e-4)
    w.tolerance.value = rt
    assert w.tolerance.label == "1e-04"
    truth = _brute_cells(base, ta, rt, rel=True)
    shown = _shown(w)
    assert all(shown[k] == pytest.approx(truth[k], abs=1e-12) for k in truth)
    changed = sum(np.count_nonzero(np.abs(ta[k].double().numpy() - base[k].double().numpy())
                                   > rt * np.abs(base[k].double().numpy())) for k in base)
    overall = 1 - changed / sum(v.numel() for v in base.values())
    assert f"overall sparsity <b>{overall:.4f}</b> at rtol=1e-04" in w.message.value


def test_select_shows_row_col_sparsity_and_singular_values(pair):
    base, ta, _ = pair
    w = SparsityInspector(diff_checkpoints(base, ta, atol=1e-5))
    name = "model.layers.1.mlp.down_proj.weight"
    w.select(name)
    d = ta[name].double().numpy() - base[name].double().numpy()
    ch = np.abs(d) > 1e-5
    rows, cols, sv = w.detail_figure.data
    np.testing.assert_allclose(rows.y, [1 - ch[i].sum() / d.shape[1] for i in range(d.shape[0])])
    np.testing.assert_allclose(cols.y, [1 - ch[:, j].sum() / d.shape[0] for j in range(d.shape[1])])
    s = np.linalg.svd((ta[name] - base[name]).numpy(), compute_uv=False)
    np.testing.assert_allclose(sv.y, s, rtol=1e-4, atol=1e-6 * s.max())
    assert name in w.detail_figure.layout.title.text
    # a click on a cell drills into its 2-D tensor; a norm cell shows no row/col bars
    assert w.click(0, "q_proj") == "model.layers.0.self_attn.q_proj.weight"
    assert w.tensor.value == "model.layers.0.self_attn.q_proj.weight"
    assert w.click(2, "norms") == "model.layers.2.input_layernorm.weight"
    assert len(w.detail_figure.data[0].y) == 0 and len(w.detail_figure.data[2].y) == 0
    with pytest.raises(ValueError, match="no tensor"):
        w.select("nope")
    with pytest.raises(ValueError, match="no tensor at layer"):
        w.click(0, "v_proj")


def test_overlap_view_is_brute_force_o1_o2(pair):
    base, ta, tb = pair
    da = diff_checkpoints(base, ta, keep_masks=True)
    db = diff_checkpoints(base, tb, keep_masks=True)
    w = SparsityInspector(da, db)
    o1, o1c, o2, o2c = w.overlap_figure.data
    labels = list(o1.x)
    assert len(labels) == len(base)
    for k in base:
        i = labels.index(k.replace("model.", "").replace(".weight", "").replace("layers.", "L"))
        a = np.abs(ta[k].double().numpy() - base[k].double().numpy()) > 1e-5
        b = np.abs(tb[k].double().numpy() - base[k].double().numpy()) > 1e-5
        both = np.count_nonzero(a & b)
        assert o1.y[i] == (pytest.approx(both / a.sum()) if a.sum() else None)
        assert o2.y[i] == (pytest.approx(both / b.sum()) if b.sum() else None)
        assert o1c.y[i] == pytest.approx(b.mean()) and o2c.y[i] == pytest.approx(a.mean())
    with pytest.raises(ValueError, match="keep_masks=True"):
        SparsityInspector(diff_checkpoints(base, ta), db)
    with pytest.raises(ValueError, match="SparsityDiff"):
        SparsityInspector({"not": "a diff"})
    assert SparsityInspector(da).overlap_figure is None


def test_grid_edges_are_readable_on_the_slider(pair):
    base, ta, _ = pair
    w = SparsityInspector(diff_checkpoints(base, ta, atol=2e-5))   # an off-grid atol is offered exactly
    labels = dict((v, lab) for lab, v in w.tolerance.options)
    assert w.tolerance.value == 2e-5 and labels[2e-5] == "2e-05"
    assert labels[snap_tolerance(1e-5)] == "1e-05" and labels[snap_tolerance(1.3e-5)] == "1.3e-05"
    assert labels[TOLERANCE_GRID[0]] == "1e-10" and labels[snap_tolerance(0.1)] == "1e-01"
    assert snap_tolerance(2e-5) in labels and w.tolerance.options.index(("2e-05", 2e-5)) > 0
    truth = _brute_cells(base, ta, 2e-5)
    shown = _shown(w)
    assert all(shown[k] == pytest.approx(truth[k], abs=1e-12) for k in truth)
    w1 = SparsityInspector(diff_checkpoints(base, ta))
    own = dict((v, lab) for lab, v in w1.tolerance.options)
    assert own[1e-5] == "1e-05" and snap_tolerance(1e-5) not in own   # no twin of the diff's own atol
    assert w.set_tolerance(1.05e-4) == snap_tolerance(1e-4) and w.tolerance.label == "1e-04"
    assert w1.set_tolerance(1e-3) == snap_tolerance(1e-3)
    assert w1.set_tolerance(1.01e-5) == 1e-5                            # the twin edge gives the own atol


def test_drill_down_follows_the_slider(pair, tmp_path):
    """The drill-down says the slider's tolerance, its sparsity is brute force at it, and its row/column bars
    are recounted at it from checkpoint files (or say they are at the diff's own atol for in-memory diffs)."""
    from safetensors.torch import save_file

    base, ta, _ = pair
    save_file(base, str(tmp_path / "b.safetensors"))
    save_file(ta, str(tmp_path / "t.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    d = ta[name].double().numpy() - base[name].double().numpy()
    tol = snap_tolerance(1e-3)
    ch = np.abs(d) > tol
    for src in ((tmp_path / "b.safetensors", tmp_path / "t.safetensors"), (base, ta)):
        w = SparsityInspector(diff_checkpoints(*src, atol=1e-5))
        w.select(name)
        w.tolerance.value = tol                                   # the slider moves after the drill-down
        title = w.detail_figure.layout.title.text
        assert f"sparsity {1 - ch.mean():.4f} at atol=1e-03" in title and "1e-05" not in title
        rows, cols, _ = w.detail_figure.data
        notes = [a.text for a in w.detail_figure.layout.annotations][:2]
        if isinstance(src[0], dict):   # in memory: the bars stay at the diff's atol and say so
            ch5 = np.abs(d) > 1e-5
            np.testing.assert_allclose(rows.y, 1 - ch5.sum(axis=1) / d.shape[1])
            assert all("at atol=1e-05 (the diff's own" in n for n in notes), notes
        else:
            np.testing.assert_allclose(rows.y, 1 - ch.sum(axis=1) / d.shape[1])
            np.testing.assert_allclose(cols.y, 1 - ch.sum(axis=0) / d.shape[0])
            assert notes == ["row sparsity", "column sparsity"]
            assert not ch.all() and ch.any() and (ch != (np.abs(d) > 1e-5)).any()   # the tolerance matters here
