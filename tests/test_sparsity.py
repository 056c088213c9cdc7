"""workbench.sparsity: diffs and overlaps against brute-force truth computed here."""
import json

import numpy as np
import pytest
import torch

from workbench import cli
from workbench.models import build_model
from workbench.sparsity import SparsityDiff, diff_checkpoints, overlap, parse_name
from workbench.sparsity import diff as diff_mod


def _perturb(state, frac, seed, scale=1e-2):
    """A copy of ``state`` with about ``frac`` of the entries changed by at least ``scale``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        v = v.detach().clone()
        mask = torch.rand(v.shape, generator=g) < frac
        v[mask] += scale * (1 + torch.rand(int(mask.sum()), generator=g))
        out[k] = v
    return out


def _brute(base, tuned, atol, rtol=None):
    """Per-tensor truth with numpy/loops written independently of the module."""
    truth = {}
    for k in base:
        b = base[k].detach().double().numpy()
        t = tuned[k].detach().double().numpy()
        d = t - b
        ch = np.abs(d) > atol
        row = {"numel": b.size, "changed": int(ch.sum()), "sparsity": 1 - ch.sum() / b.size}
        if rtol is not None:
            row["changed_rtol"] = int((np.abs(d) > rtol * np.abs(b)).sum())
        if b.ndim == 2:
            row["row_sparsity"] = np.mean([not ch[i].any() for i in range(b.shape[0])])
            row["col_sparsity"] = np.mean([not ch[:, j].any() for j in range(b.shape[1])])
            row["rank"] = int(torch.linalg.matrix_rank(torch.from_numpy(d).float()))
        row["mask"] = ch
        truth[k] = row
    return truth


def _check(diff, base, tuned, atol, rtol=None):
    truth = _brute(base, tuned, atol, rtol)
    assert {t["name"] for t in diff.tensors} == set(truth)
    for t in diff.tensors:
        tr = truth[t["name"]]
        assert t["numel"] == tr["numel"] and t["changed"] == tr["changed"]
        assert t["sparsity"] == pytest.approx(tr["sparsity"], abs=1e-12)
        if rtol is not None:
            assert t["changed_rtol"] == tr["changed_rtol"]
        if "rank" in tr:
            assert t["rank"] == tr["rank"]
            assert t["row_sparsity"] == pytest.approx(tr["row_sparsity"])
            assert t["col_sparsity"] == pytest.approx(tr["col_sparsity"])
        else:
            assert t["rank"] is None and t["row_sparsity"] is None
    n = sum(r["numel"] for r in truth.values())
    c = sum(r["changed"] for r in truth.values())
    assert diff.overall == {"sparsity": pytest.approx(1 - c / n), "numel": n, "changed": c}
    return truth


@pytest.fixture(scope="module")
def models():
    base = build_model("tiny", num_hidden_layers=2, seed=0)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    tuned_sd = _perturb(sd, 0.1, seed=1)
    tuned = build_model("tiny", num_hidden_layers=2, seed=0)
    tuned.load_state_dict(tuned_sd)
    return base, tuned, {k: v for k, v in base.state_dict().items()}, \
        {k: v for k, v in tuned.state_dict().items()}


def test_sharded_dirs_match_brute_force(models, tmp_path, one_thread):
    base, tuned, sd_b, sd_t = models
    base.save_pretrained(tmp_path / "b", max_shard_size="300KB")
    tuned.save_pretrained(tmp_path / "t", max_shard_size="300KB")
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    # the saved checkpoint drops the tied lm_head: brute force over what was saved
    saved = json.loads((tmp_path / "b" / "model.safetensors.index.json").read_text())["weight_map"]
    shards = set(saved.values())
    assert len(shards) > 1
    readers = []
    orig_open = diff_mod._open
    diff_mod._open = lambda src, role: readers.append(orig_open(src, role)) or readers[-1]
    try:
        d = diff_checkpoints(tmp_path / "b", tmp_path / "t", atol=1e-5, rtol=1e-3)
    finally:
        diff_mod._open = orig_open
    # streamed: each shard opened once, handle released at the end
    assert all(r.opened == len(shards) and r._handle is None for r in readers)
    truth = _check(d, {k: sd_b[k] for k in saved}, {k: sd_t[k] for k in saved}, 1e-5, 1e-3)
    assert 0.85 < d.overall["sparsity"] < 0.95
    t = next(t for t in d.tensors if t["name"] == "model.layers.1.self_attn.q_proj.weight")
    assert (t["layer"], t["type"], t["dtype"]) == (1, "q_proj", "float32")
    s = torch.linalg.svdvals((sd_t[t["name"]] - sd_b[t["name"]]).float()).double()
    p = s / s.sum()
    assert t["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    assert t["rank_tol"] == pytest.approx(float(s.max()) * 128 * torch.finfo(torch.float32).eps, rel=1e-5)
    # summaries agree with sums over the truth
    by_type = d.summary_by("type")
    q = [k for k in truth if parse_name(k)[1] == "q_proj"]
    assert by_type.loc["q_proj", "changed"] == sum(truth[k]["changed"] for k in q)
    by_layer = d.summary_by("layer")
    assert list(by_layer.index) == [0, 1, "other"]
    assert by_layer["numel"].sum() == d.overall["numel"]
    frame = d.to_frame()
    assert len(frame) == len(saved) and {"name", "sparsity", "rank"} <= set(frame.columns)


def test_single_file_state_dict_module_and_pt(models, tmp_path, one_thread):
    from safetensors.torch import save_file

    base, tuned, sd_b, sd_t = models
    small_b = {k: v for k, v in sd_b.items() if "layers.0" in k}
    small_t = {k: v for k, v in sd_t.items() if "layers.0" in k}
    save_file(small_b, tmp_path / "b.safetensors")
    save_file(small_t, tmp_path / "t.safetensors")
    torch.save(small_t, tmp_path / "t.pt")
    for b, t in [(tmp_path / "b.safetensors", tmp_path / "t.safetensors"), (small_b, small_t),
                 (str(tmp_path / "b.safetensors"), tmp_path / "t.pt")]:
        _check(diff_checkpoints(b, t, atol=1e-5), small_b, small_t, 1e-5)
    d = diff_checkpoints(base, tuned)  # modules: the tied lm_head is the embedding, compared once
    _check(d, *({k: v for k, v in sd.items() if k != "lm_head.weight"} for sd in (sd_b, sd_t)), 1e-5)


class Custom:
    def __init__(self):
        self.w = torch.zeros(2)


def test_pickled_object_refused(tmp_path):
    torch.save({"w": Custom()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        diff_checkpoints(tmp_path / "evil.pt", {"w": torch.zeros(2)})
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "mixed.pt")  # loads, but not a state dict
    with pytest.raises(ValueError, match="not tensors"):
        diff_checkpoints(tmp_path / "mixed.pt", {"w": torch.zeros(2)})


def test_mismatch_errors_and_intersect():
    a = {"x": torch.zeros(3), "y": torch.zeros(2, 2), "z": torch.zeros(2), "only_a": torch.zeros(1)}
    b = {"x": torch.ones(3), "y": torch.zeros(3, 2), "z": torch.zeros(2, dtype=torch.float16),
         "only_b": torch.zeros(1)}
    with pytest.raises(ValueError) as e:
        diff_checkpoints(a, b)
    msg = str(e.value)
    for part in ("only_a", "only_b", "y: base float32[2, 2] vs tuned float32[3, 2]", "float16", "intersect"):
        assert part in msg
    d = diff_checkpoints(a, b, intersect=True)
    assert [t["name"] for t in d.tensors] == ["x"]
    assert sorted(d.skipped) == ["only_a", "only_b", "y", "z"]
    assert d.overall == {"sparsity": 0.0, "numel": 3, "changed": 3}


def test_atol_is_strict_and_rtol():
    base = {"w": torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)}
    tuned = {"w": base["w"] + torch.tensor([0.25, 0.5, 0.25, 0.0], dtype=torch.float64)}
    d = diff_checkpoints(base, tuned, atol=0.25, rtol=0.1)
    assert d.tensors[0]["changed"] == 1  # |delta| == atol is not a change
    assert d.tensors[0]["changed_rtol"] == 2  # 0.25 > 0.1, 0.5 > 0.2, 0.25 < 0.4
    assert d.overall_rtol == {"sparsity": 0.5, "numel": 4, "changed": 2}
    with pytest.raises(ValueError, match="atol"):
        diff_checkpoints(base, tuned, atol=-1)
    big = diff_checkpoints({"w": torch.zeros(4, 4)}, {"w": torch.eye(4)}, max_rank_numel=15)
    assert big.tensors[0]["rank"] is None and big.tensors[0]["row_sparsity"] == 0.0
    assert diff_checkpoints({"w": torch.zeros(4, 4)}, {"w": torch.eye(4)}).tensors[0]["rank"] == 4


def test_bf16_rounding_hides_small_updates():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g).to(torch.bfloat16).float()
    w[w == 0] = 1.0
    upd = w.abs() * 2.0 ** -10  # below |w| * 2^-8: rounds away in bf16
    fp32 = diff_checkpoints({"w": w}, {"w": w + upd})
    bf16 = diff_checkpoints({"w": w.bfloat16()}, {"w": (w + upd).bfloat16()})
    assert fp32.overall["sparsity"] == 1 - int((upd > 1e-5).sum()) / w.numel() < 0.01
    assert bf16.overall["sparsity"] == 1.0
    assert bf16.tensors[0]["dtype"] == "bfloat16" and bf16.tensors[0]["rank"] == 0


def test_masks_json_roundtrip_and_overlap(tmp_path):
    g = torch.Generator().manual_seed(3)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=g),
            "model.norm.weight": torch.ones(8)}
    ta = _perturb(base, 0.3, seed=4)
    tb = _perturb(base, 0.5, seed=5)
    da = diff_checkpoints(base, ta, keep_masks=True)
    db = diff_checkpoints(base, tb, keep_masks=True)
    da.to_json(tmp_path / "a.json")
    data = json.loads((tmp_path / "a.json").read_text())
    assert set(data["overall"]) == {"sparsity", "numel", "changed"}
    assert {"name", "sparsity", "numel", "changed", "rank"} <= set(data["tensors"][0])
    la = SparsityDiff.load(tmp_path / "a.json")
    assert la.overall == da.overall and la.tensors == da.tensors
    truth_a, truth_b = _brute(base, ta, 1e-5), _brute(base, tb, 1e-5)
    for k in base:
        assert np.array_equal(la.mask(k), truth_a[k]["mask"])
    res = overlap(la, db)
    A = np.concatenate([truth_a[k]["mask"].ravel() for k in base])
    B = np.concatenate([truth_b[k]["mask"].ravel() for k in base])
    o = res["overall"]
    pa, pb = A.mean(), B.mean()
    assert o["o1"] == pytest.approx((A & B).sum() / A.sum())
    assert o["o2"] == pytest.approx((A & B).sum() / B.sum())
    assert o["jaccard"] == pytest.approx((A & B).sum() / (A | B).sum())
    assert (o["o1_chance"], o["o2_chance"]) == (pytest.approx(pb), pytest.approx(pa))
    assert o["jaccard_chance"] == pytest.approx(pa * pb / (pa + pb - pa * pb))
    for row in res["tensors"]:
        a, b = truth_a[row["name"]]["mask"], truth_b[row["name"]]["mask"]
        assert row["both"] == (a & b).sum() and row["o1_chance"] == pytest.approx(b.mean())
    with pytest.raises(ValueError, match="keep_masks=True"):
        overlap(diff_checkpoints(base, ta), db)


def test_cli_end_to_end(models, tmp_path, capsys, one_thread):
    base, tuned, _, _ = models
    base.save_pretrained(tmp_path / "b")
    tuned.save_pretrained(tmp_path / "t")
    other = _perturb({k: v for k, v in base.state_dict().items()}, 0.2, seed=9)
    from safetensors.torch import save_file
    saved = [t["name"] for t in diff_checkpoints(tmp_path / "b", tmp_path / "b").tensors]
    save_file({k: other[k].contiguous() for k in saved}, tmp_path / "o.safetensors")
    assert cli.main(["sparsity", "diff", str(tmp_path / "b"), str(tmp_path / "t"), "--rtol", "1e-3",
                     "--json", str(tmp_path / "a.json"), "--masks"]) == 0
    out = capsys.readouterr().out
    assert "q_proj" in out and "overall sparsity" in out and "rtol=0.001" in out
    assert cli.main(["sparsity", "diff", str(tmp_path / "b"), str(tmp_path / "o.safetensors"),
                     "--json", str(tmp_path / "c.json"), "--masks"]) == 0
    capsys.readouterr()
    assert cli.main(["sparsity", "overlap", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "overall o1" in out and "chance" in out
    assert cli.main(["sparsity", "diff", str(tmp_path / "b"), str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pruning
from workbench.sparsity import prune  # noqa: E402


def _lowest(values, k):
    """Indices of the k smallest values, by plain sorting."""
    return set(sorted(range(len(values)), key=lambda i: values[i])[:k])


def test_magnitude_and_wanda_masks_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=g)
    xn = torch.rand(10, generator=g) * 5
    wl = w.tolist()
    for sparsity in (0.0, 0.3, 0.5, 1.0):
        k = int(sparsity * 10)
        m = prune.prune_mask(prune.magnitude_scores(w), sparsity)
        wm = prune.prune_mask(prune.wanda_scores(w, xn), sparsity)
        for i in range(6):
            assert {j for j in range(10) if m[i, j]} == _lowest([abs(v) for v in wl[i]], k)
            assert {j for j in range(10) if wm[i, j]} == _lowest(
                [abs(wl[i][j]) * float(xn[j]) for j in range(10)], k)
    flat = [abs(v) for row in wl for v in row]
    t = prune.prune_mask(prune.magnitude_scores(w), 0.25, per="tensor").reshape(-1)
    assert {i for i in range(60) if t[i]} == _lowest(flat, 15)
    with pytest.raises(ValueError, match="input_norm"):
        prune.wanda_scores(w, xn[:3])


def test_wanda_prune_input_norms_brute_force():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    batches = [torch.randn(4, 7, 5), torch.randn(2, 7, 5)]
    with torch.no_grad():
        x1 = torch.cat([b.reshape(-1, 5) for b in batches])
        x2 = torch.relu(net[0](x1))
    norms = prune.input_norms(net, batches)
    for name, x in (("0", x1), ("2", x2)):
        brute = [sum(float(x[n, j]) ** 2 for n in range(x.shape[0])) ** 0.5 for j in range(x.shape[1])]
        assert norms[name].tolist() == pytest.approx(brute, rel=1e-5)
    w2 = net[2].weight.detach().clone()
    masks = prune.wanda_prune(net, batches, 0.5)
    for i in range(3):
        pruned = _lowest([abs(float(w2[i, j])) * brute[j] for j in range(8)], 4)
        assert {j for j in range(8) if masks["2"][i, j]} == pruned
        assert all((net[2].weight[i, j] == 0) == (j in pruned) for j in range(8))
    model = build_model("tiny", num_hidden_layers=1, seed=0)
    masks = prune.magnitude_prune(model, 0.5)
    assert "lm_head" not in masks and len(masks) == 7
    q = model.model.layers[0].self_attn.q_proj.weight
    assert int((q == 0).sum()) == q.numel() // 2


# ------------------------------------------------------------------ cached statistics: re-thresholding
def _spread_pair(dtype, seed=7):
    """Base entries in [1, 1.9) (so float32 deltas below 0.1 are exact, Sterbenz) and deltas spread over
    1e-11 .. 1e-1 in magnitude, with a quarter exactly zero; per-tensor densities differ."""
    g = torch.Generator().manual_seed(seed)
    names = {"model.layers.0.self_attn.q_proj.weight": (24, 16), "model.layers.0.mlp.down_proj.weight": (16, 40),
             "model.layers.1.self_attn.q_proj.weight": (24, 16), "model.layers.1.input_layernorm.weight": (16,),
             "model.embed_tokens.weight": (30, 16)}
    base, tuned = {}, {}
    for i, (name, shape) in enumerate(names.items()):
        b = (1 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64))
        lo = -11 if dtype == torch.float64 else -6.5
        mag = 10 ** (lo + (-1 - lo) * torch.rand(shape, generator=g, dtype=torch.float64))
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        keep = torch.rand(shape, generator=g) < (0.25 + 0.1 * i)
        b = b.to(dtype)
        base[name], tuned[name] = b, (b.double() + sign * mag * ~keep).to(dtype)
    return base, tuned


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparsity_at_and_grid_match_brute_force_at_grid_edges(dtype, monkeypatch, tmp_path, one_thread):
    base, tuned = _spread_pair(dtype)
    # tiny chunks and no SVD: exercise the chunked walk, both the sparse and the dense chunk path
    monkeypatch.setattr(diff_mod, "CHUNK_ELEMENTS", 64)
    d = diff_checkpoints(base, tuned, atol=1e-5, rtol=1e-3, keep_masks=True, max_rank_numel=0)
    monkeypatch.undo()
    full = diff_checkpoints(base, tuned, atol=1e-5, rtol=1e-3, keep_masks=True)
    assert [t["changed"] for t in d.tensors] == [t["changed"] for t in full.tensors]
    assert [t["row_sparsity"] for t in d.tensors] == [t["row_sparsity"] for t in full.tensors]
    assert d.masks == full.masks
    d.to_json(tmp_path / "d.json")
    loaded = SparsityDiff.load(tmp_path / "d.json")
    grid = diff_mod.TOLERANCE_GRID
    snap = diff_mod.snap_tolerance
    edges = [0.0, grid[0], snap(1e-9), snap(3.2e-8), snap(1e-7), snap(5.6e-6), 1e-5, snap(1e-5), snap(1.3e-4),
             snap(1e-3), snap(0.042), snap(0.1), grid[-1]]
    assert all(e == 0 or e in grid or e == 1e-5 for e in edges)
    assert all(abs(np.log10(e) - k / 8) < 0.002 for e, k in zip(grid, range(-80, 9)))  # 10**(k/8) within 0.4%
    deltas = {k: tuned[k].double().numpy() - base[k].double().numpy() for k in base}
    for e in edges:
        for which in ("atol", "rtol"):
            truth = {}
            for k, dd in deltas.items():
                bound = e if which == "atol" else e * np.abs(base[k].double().numpy())
                truth[k] = np.count_nonzero(np.abs(dd) > bound)
            n = sum(v.size for v in deltas.values())
            for diff in (d, loaded):
                got = diff.sparsity_at(**{which: e})
                for k, dd in deltas.items():
                    assert got[k] == pytest.approx(1 - truth[k] / dd.size, abs=1e-15), (which, e, k)
                assert got["overall"] == pytest.approx(1 - sum(truth.values()) / n, abs=1e-15)
            if which == "atol":  # the table: pooled per layer x type, brute force here
                frame = d.grid(atol=e)
                assert list(frame.columns) == ["q_proj", "down_proj", "norms", "embed"]
                assert list(frame.index) == [0, 1, "other"]
                for (layer, col), names in {(0, "q_proj"): ["model.layers.0.self_attn.q_proj.weight"],
                                            (1, "norms"): ["model.layers.1.input_layernorm.weight"],
                                            ("other", "embed"): ["model.embed_tokens.weight"]}.items():
                    want = 1 - sum(truth[x] for x in names) / sum(deltas[x].size for x in names)
                    assert frame.loc[layer, col] == pytest.approx(want, abs=1e-15)
                assert np.isnan(frame.loc[1, "down_proj"]) and np.isnan(frame.loc[0, "norms"])
    # snapping: an off-grid value acts as its nearest edge in log space
    assert d.sparsity_at(atol=1.1e-5) == d.sparsity_at(atol=snap(1e-5))
    assert snap(1.1e-3) == snap(1e-3) == grid[56] and snap(1e5) == grid[-1] and snap(1e-30) == grid[0]
    with pytest.raises(ValueError, match="not both"):
        d.sparsity_at(atol=1e-5, rtol=1e-3)
    with pytest.raises(ValueError, match="finite number"):
        d.sparsity_at(atol=-1.0)


def test_cached_row_col_counts_and_singular_values(one_thread, tmp_path):
    base, tuned = _spread_pair(torch.float32, seed=11)
    d = diff_checkpoints(base, tuned, atol=1e-4)
    d.to_json(tmp_path / "d.json")
    loaded = SparsityDiff.load(tmp_path / "d.json")
    for name in base:
        dd = tuned[name].double().numpy() - base[name].double().numpy()
        x = loaded.detail(name)
        if dd.ndim != 2:
            assert x["row_changed"] is None and x["svals"] is None
            continue
        ch = np.abs(dd) > 1e-4
        assert x["row_changed"].tolist() == [int(ch[i].sum()) for i in range(dd.shape[0])]
        assert x["col_changed"].tolist() == [int(ch[:, j].sum()) for j in range(dd.shape[1])]
        np.testing.assert_allclose(x["col_sparsity"], 1 - ch.mean(axis=0))
        s = np.linalg.svd(dd.astype(np.float32), compute_uv=False)
        np.testing.assert_allclose(x["svals"], s, rtol=1e-4, atol=1e-6 * s.max())
    big = diff_checkpoints(base, tuned, max_rank_numel=10)
    assert big.detail("model.layers.0.self_attn.q_proj.weight")["svals"] is None
    with pytest.raises(ValueError, match="no tensor"):
        d.detail("nope")


def test_streaming_reader_reads_byte_ranges_without_mmap(tmp_path, monkeypatch, one_thread):
    from safetensors.torch import save_file

    base, tuned = _spread_pair(torch.float32, seed=5)
    bf = {k: v.to(torch.bfloat16).contiguous() for k, v in base.items()}
    tf = {k: (v.double() + 0.05).to(torch.bfloat16).contiguous() for k, v in base.items()}
    tf["model.layers.0.mlp.down_proj.weight"] = bf["model.layers.0.mlp.down_proj.weight"].clone()
    save_file(bf, tmp_path / "b.safetensors")
    save_file(tf, tmp_path / "t.safetensors")
    monkeypatch.setattr(diff_mod, "CHUNK_ELEMENTS", 40)
    d = diff_checkpoints(tmp_path / "b.safetensors", tmp_path / "t.safetensors", max_rank_numel=0)
    truth = diff_checkpoints(bf, tf, max_rank_numel=0)
    assert [(t["name"], t["changed"], t["row_sparsity"], t["col_sparsity"]) for t in d.tensors] == \
        [(t["name"], t["changed"], t["row_sparsity"], t["col_sparsity"]) for t in truth.tensors]
    assert d.sparsity_at(atol=1e-2) == truth.sparsity_at(atol=1e-2)
    for t in d.tensors:
        dd = tf[t["name"]].double().numpy() - bf[t["name"]].double().numpy()
        assert t["changed"] == np.count_nonzero(np.abs(dd) > 1e-5) and t["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_entries_in_cached_statistics(monkeypatch, dtype):
    """NaN deltas are changed at every tolerance (NaN != NaN; issue 18) unless both stored values are the same
    bits (then nothing changed), inf deltas changed at every one."""
    n = 64
    base = torch.linspace(1, 2, n, dtype=dtype)
    base[:8] = 0.0
    tuned = base.clone()
    tuned[8:20] += 1e-3                       # plain changes
    tuned[20], base[21], tuned[21] = float("nan"), float("nan"), float("nan")   # NaN deltas
    base[22], tuned[22] = float("inf"), float("inf")                             # inf - inf = NaN
    tuned[23] = float("inf")                                                     # inf delta
    tuned[:2] = 1e-6                          # base 0: rel = inf
    for chunk in (8, 1 << 20):                # sparse chunks and one dense chunk
        monkeypatch.setattr(diff_mod, "CHUNK_ELEMENTS", chunk)
        with pytest.warns(RuntimeWarning, match="NaN in one checkpoint"):
            d = diff_checkpoints({"w": base}, {"w": tuned}, atol=1e-5, rtol=1e-3)
        with np.errstate(invalid="ignore", divide="ignore"):
            dd = tuned.double().numpy() - base.double().numpy()
            bits = np.int32 if dtype == torch.float32 else np.int64
            nan_changed = np.isnan(dd) & (tuned.numpy().view(bits) != base.numpy().view(bits))
            for e in (0.0, diff_mod.snap_tolerance(1e-7), diff_mod.snap_tolerance(1e-4),
                      diff_mod.TOLERANCE_GRID[-1]):
                want = np.count_nonzero((np.abs(dd) > e) | nan_changed)
                assert d.sparsity_at(atol=e)["w"] == pytest.approx(1 - want / n), (chunk, e)
                want_r = np.count_nonzero((np.abs(dd) > e * np.abs(base.double().numpy())) | nan_changed)
                assert d.sparsity_at(rtol=e)["w"] == pytest.approx(1 - want_r / n), (chunk, e)
        t = d.tensors[0]
        assert nan_changed.sum() == 1 and t["nan_changed"] == 1                 # tuned[20] only
        assert t["changed"] == 12 + 1 + 1 and t["max_abs_delta"] == float("inf")   # 1e-6 on a zero: rel only
