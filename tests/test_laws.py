"""Loss-curve laws: brute-force references, parameter recovery, naive-fit breakers, bands, I/O,
schedule search, live fitting and the `workbench curves` CLI."""
import io
import json
import math
import os
import threading
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from workbench import laws, schedules
from workbench.cli import main
from workbench.curves import LossCurve
from workbench.livefit import LiveFit

MP = dict(L0=3.0, A=0.5, alpha=0.5, B=700.0, C=0.5, beta=0.6, gamma=0.6)      # peak LR 3e-4 scale
AN = dict(L0=2.0, A=0.6, alpha=0.5, C=1.0, lam=0.999)


# --------------------------------------------------------------------------- brute-force references
def brute_annealing(lrs, W, L0, A, alpha, C, lam):
    """Straight from the definitions, O(T^2): S1 = sum eta_i, m_i = sum_j lam^(i-j) (eta_{j-1} - eta_j)."""
    eta = np.array(lrs, dtype=float)
    eta[:W] = eta[W]                                   # warmup counted at the peak
    T = eta.size
    m = np.zeros(T)
    for i in range(1, T):
        j = np.arange(1, i + 1)
        m[i] = np.sum(lam ** (i - j) * (eta[j - 1] - eta[j]))
    out = np.empty(T)
    for s in range(T):
        out[s] = L0 + A * eta[:s + 1].sum() ** (-alpha) - C * m[:s + 1].sum()
    return out


def brute_multipower(lrs, W, L0, A, alpha, B, C, beta, gamma):
    """Straight from the definition, O(T^2); steps inside the warmup left as NaN. An LR of exactly 0
    takes the limit: G = 1 if the area S after it is positive (infinite argument), else G = 0 (updates
    with LR 0 change nothing)."""
    lrs = np.asarray(lrs, dtype=float)
    eta0, post, sw = lrs[:W + 1].max(), lrs[W:], lrs[:W].sum()
    etas = np.concatenate([[eta0], post])            # etas[k] = eta_k, k = 0..n
    out = np.full(lrs.size, np.nan)
    for t in range(1, post.size + 1):
        k = np.arange(1, t + 1)
        d = etas[k - 1] - etas[k]
        S = np.cumsum(post[:t][::-1])[::-1]          # S_k(t) = sum_{tau=k..t} eta_tau, k = 1..t
        with np.errstate(divide="ignore", invalid="ignore"):     # 0^-gamma = inf, inf * 0: handled below
            x = C * etas[k] ** (-gamma) * S
        g = np.where(etas[k] == 0.0, (S > 0).astype(float), 1.0 - (np.where(np.isfinite(x), x, 0.0) + 1.0) ** (-beta))
        out[W + t - 1] = L0 + A * (sw + post[:t].sum()) ** (-alpha) - B * np.sum(d * g)
    return out


def test_annealing_matches_brute_force():
    cases = [
        schedules.wsd(peak_lr=3e-4, total_steps=400, warmup_steps=30, decay_fraction=0.3, decay="1-sqrt"),
        schedules.rewarm(schedules.cosine(peak_lr=3e-4, total_steps=200, warmup_steps=20, min_lr=3e-5),
                         peak_lr=2e-4, cycle_steps=200, warmup_steps=20),      # S2 goes down while re-warming
        schedules.multistep(peak_lr=3e-4, total_steps=300, milestones=[150, 250], factors=[0.3, 0.1]),
    ]
    for s in cases:
        for lam in (0.999, 0.9):
            p = dict(AN, lam=lam)
            ref = brute_annealing(s.lrs(), s.warmup, **p)
            np.testing.assert_allclose(laws.annealing(s, **p), ref, rtol=1e-11)


def test_multipower_matches_brute_force():
    T = 700
    peak = 3e-4
    cases = [
        schedules.cosine(peak_lr=peak, total_steps=T, warmup_steps=50),
        schedules.wsd(peak_lr=peak, total_steps=T, warmup_steps=50, decay_fraction=0.4, decay="1-sqrt"),
        schedules.wsd(peak_lr=peak, total_steps=T, warmup_steps=50, decay_fraction=0.5, decay="exponential",
                      min_lr=peak / 100),
        schedules.linear(peak_lr=peak, total_steps=T),                       # no warmup
        schedules.multistep(peak_lr=peak, total_steps=T, warmup_steps=50, milestones=[400, 600], factors=[0.3, 0.1]),
        schedules.rewarm(schedules.cosine(peak_lr=peak, total_steps=350, warmup_steps=50, min_lr=peak / 10),
                         peak_lr=peak / 2, cycle_steps=350, warmup_steps=30),  # rising LR: negative drops
        schedules.piecewise(points=[(0, 0.0), (50, peak), (400, peak), (650, 0.0)], total_steps=T),  # LR exactly 0
    ]
    for s in cases:
        lrs = s.lrs()
        W = int(np.argmax(lrs)) if s.family == "piecewise" else s.warmup
        ref = brute_multipower(lrs, W, **MP)
        got = laws.multipower(s, **MP) if s.family != "piecewise" else laws.multipower(lrs, **MP)
        post = np.isfinite(ref)
        assert post.sum() == T - W
        # block aggregation: second-order error, ~1e-7 of the loss
        np.testing.assert_allclose(got[post], ref[post], rtol=2e-6, err_msg=s.family)
        assert np.all(np.isfinite(got))
    # a step schedule is exact (each block holds at most one LR change)
    s = cases[4]
    np.testing.assert_allclose(laws.multipower(s, **MP)[50:], brute_multipower(s.lrs(), 50, **MP)[50:], rtol=1e-12)


def test_multipower_scales_to_long_schedules():
    # a 100k-step cosine at 2000 display points: O(T log T), not O(T^2) (benchmarks/laws.py times it)
    s = schedules.cosine(peak_lr=3e-4, total_steps=100_000, warmup_steps=1000)
    f = laws.FittedLaw("multipower", MP, 3e-4)
    idx = np.unique(np.linspace(0, 99_999, 2000).round().astype(int))
    f.predict(s, idx)
    t0 = time.perf_counter()
    y = f.predict(s, idx)
    assert time.perf_counter() - t0 < 1.0
    # spot-check the last step against the exact single-step sum
    exact, _ = laws._final_loss_grad(f, s.lrs() / 3e-4, 1000)
    assert y[-1] == pytest.approx(exact, rel=1e-6)
    # the designer's predictor: exact at display steps, interpolated between
    full = f.predictor(max_points=500)(s)
    assert full.shape == (100_000,)
    assert full[-1] == pytest.approx(exact, rel=1e-6)


def test_metrics_by_hand():
    pred, y = [2.0, 3.3, 3.5], [2.5, 3.0, 4.0]
    m = laws.metrics(pred, y)
    # errors -0.5, 0.3, -0.5; relative 0.2, 0.1, 0.125; mean y 3.1667, SS_tot = 0.4444+0.0278+0.6944
    assert m["mae"] == pytest.approx(1.3 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(0.59 / 3))
    assert m["pred_err"] == pytest.approx(0.425 / 3)
    assert m["worst_err"] == pytest.approx(0.2)
    assert m["r2"] == pytest.approx(1 - 0.59 / (7 / 6))
    assert m["n"] == 3


def test_score_by_hand():
    s = schedules.constant(peak_lr=1e-3, total_steps=100, warmup_steps=10)
    p = dict(L0=1.0, A=0.1, alpha=0.5, C=0.0, lam=0.999)
    f = laws.FittedLaw("annealing", p, 1e-3)
    steps = np.array([5, 20, 50, 99])                                    # step 5 is inside the warmup
    # annealing law, constant LR after warmup: S1(s) = (s+1) * peak, S2 = 0
    truth = 1.0 + 0.1 * ((steps + 1) * 1e-3) ** -0.5
    y = truth * np.array([1.0, 1.01, 0.98, 1.0])
    sc = f.score(LossCurve.from_schedule(s, steps, y))
    rel = np.abs(truth[1:] - y[1:]) / y[1:]
    assert sc["n"] == 3
    assert sc["pred_err"] == pytest.approx(rel.mean())
    assert sc["worst_err"] == pytest.approx(rel.max())
    assert sc["mae"] == pytest.approx(np.mean(np.abs(truth[1:] - y[1:])))


# --------------------------------------------------------------------------- fitting
def _curves(law, params, scheds, n=150, noise=5e-4, seed=0, start=None):
    rng = np.random.default_rng(seed)
    out = []
    for name, s in scheds.items():
        steps = np.unique(np.linspace(start if start is not None else s.warmup, s.total_steps - 1, n).round()
                          .astype(int))
        y = getattr(laws, law)(s, steps, **params) * np.exp(rng.normal(0.0, noise, steps.size))
        out.append(LossCurve.from_schedule(s, steps, y, name=name))
    return out


def _three(peak=3e-4, T=4000, W=200):
    return {"constant": schedules.constant(peak_lr=peak, total_steps=T, warmup_steps=W),
            "cosine": schedules.cosine(peak_lr=peak, total_steps=T, warmup_steps=W, min_lr=peak / 10),
            "two-stage": schedules.multistep(peak_lr=peak, total_steps=T, warmup_steps=W, milestones=[int(0.6 * T)],
                                             factors=[0.1])}


def test_annealing_recovers_parameters():
    scheds = _three()
    cs = _curves("annealing", AN, {k: scheds[k] for k in ("constant", "cosine")}, noise=3e-4)
    f = laws.fit(cs, law="annealing", seed=0)
    for k, tol in (("L0", 0.01), ("A", 0.05), ("alpha", 0.05), ("C", 0.05)):
        assert f.params[k] == pytest.approx(AN[k], rel=tol), k
    assert f.params["lam"] == 0.999 and f.info["fit_lam"] is False
    # lambda fitted too (data from lam = 0.995)
    p = dict(AN, lam=0.995)
    cs = _curves("annealing", p, scheds, noise=2e-4, seed=1)
    g = laws.fit(cs, law="annealing", lam=None, seed=0)
    assert g.params["lam"] == pytest.approx(0.995, abs=1.5e-3)
    assert g.params["alpha"] == pytest.approx(0.5, rel=0.06)
    assert g.info["fit_lam"] is True


def test_multipower_recovers_parameters_and_predicts_unseen_schedules():
    cs = _curves("multipower", MP, _three(), n=200, noise=5e-4)
    f = laws.fit(cs, law="multipower", seed=0)
    for k, tol in (("L0", 0.01), ("A", 0.05), ("alpha", 0.05), ("B", 0.15), ("beta", 0.25), ("gamma", 0.25)):
        assert f.params[k] == pytest.approx(MP[k], rel=tol), k
    assert 0.25 < f.params["C"] / MP["C"] < 4.0
    # an unseen 3x longer WSD and a longer cosine are predicted to well under the noise
    for s in (schedules.wsd(peak_lr=3e-4, total_steps=12_000, warmup_steps=200, decay_fraction=0.2),
              schedules.cosine(peak_lr=3e-4, total_steps=12_000, warmup_steps=200)):
        steps = np.unique(np.linspace(200, 11_999, 300).round().astype(int))
        sc = f.score(LossCurve.from_schedule(s, steps, laws.multipower(s, steps, **MP)))
        assert sc["pred_err"] < 5e-4 and sc["r2"] > 0.999
    assert f.info["validation"]["method"] == "leave-one-curve-out early stopping"


def test_fit_is_deterministic_given_seed():
    cs = _curves("multipower", MP, _three(T=2000, W=100), n=80, noise=1e-3)
    a = laws.fit(cs, law="multipower", seed=3)
    b = laws.fit(cs, law="multipower", seed=3)
    assert a.params == b.params


def test_lr_of_exactly_zero_and_points_inside_warmup():
    # the workbench warmup starts at LR 0: S1 = 0 or eta^-gamma = inf at step 0 must not break anything
    scheds = _three(T=2000, W=100)
    for law, p in (("annealing", AN), ("multipower", MP)):
        cs = _curves(law, p, scheds, n=120, noise=5e-4, start=0)          # losses from step 0 on
        assert all(c.steps[0] == 0 and c.lrs[0] == 0.0 for c in cs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")                                  # no overflow / divide warnings
            f = laws.fit(cs, law=law, seed=0)
            y = f.predict(scheds["cosine"])
        assert np.all(np.isfinite(y))
        assert sum(f.info["skipped_warmup_points"].values()) > 0          # warmup points are not fitted
        assert f.params["L0"] == pytest.approx(p["L0"], rel=0.02)
    # a schedule that ends at exactly 0: the last update (LR 0) changes nothing
    s = schedules.linear(peak_lr=3e-4, total_steps=1000, warmup_steps=50)
    z = s.lrs()
    z[-1] = 0.0
    y = laws.multipower(z, warmup_steps=50, **MP)
    assert np.all(np.isfinite(y)) and y[-2] < y[-3] and y[-1] == pytest.approx(y[-2], rel=1e-12)


@pytest.mark.parametrize("peak", [1e-4, 1e-2])
def test_peak_lrs_from_1e4_to_1e2(peak):
    # the same curves in LR units 30x smaller or larger than MP's: parameters follow the units
    th = laws._MultiPower().to_theta(MP, 3e-4)
    p = laws._MultiPower().to_params(th, peak)
    scheds = _three(peak=peak, T=2000, W=100)
    cs = _curves("multipower", p, scheds, n=120, noise=3e-4)
    np.testing.assert_allclose(cs[1].losses, _curves("multipower", MP, _three(T=2000, W=100), n=120,
                                                     noise=3e-4)[1].losses, rtol=1e-6)
    f = laws.fit(cs, law="multipower", seed=0)
    for k in ("L0", "A", "alpha", "B"):
        assert f.params[k] == pytest.approx(p[k], rel=0.1), k
    a = laws.fit(_curves("annealing", laws._Annealing().to_params(laws._Annealing().to_theta(AN, 3e-4), peak),
                         scheds, n=120, noise=3e-4), law="annealing")
    assert a.params["alpha"] == pytest.approx(AN["alpha"], rel=0.05)
    assert a.params["C"] * peak == pytest.approx(AN["C"] * 3e-4, rel=0.05)


def test_curves_that_share_a_prefix_count_it_once():
    T, W, switch = 3000, 100, 1800
    const = schedules.constant(peak_lr=3e-4, total_steps=T, warmup_steps=W)
    two = schedules.multistep(peak_lr=3e-4, total_steps=T, warmup_steps=W, milestones=[switch], factors=[0.2])
    cos = schedules.cosine(peak_lr=3e-4, total_steps=T, warmup_steps=W)
    steps = np.arange(W, T, 20)
    rng = np.random.default_rng(0)
    yc = laws.multipower(const, steps, **MP) * np.exp(rng.normal(0, 5e-4, steps.size))
    yt = laws.multipower(two, steps, **MP) * np.exp(rng.normal(0, 5e-4, steps.size))
    yt[steps < switch] = yc[steps < switch]        # the two-stage run branched from the constant run
    ycos = laws.multipower(cos, steps, **MP) * np.exp(rng.normal(0, 5e-4, steps.size))
    c_const = LossCurve.from_schedule(const, steps, yc, name="constant")
    c_two = LossCurve.from_schedule(two, steps, yt, name="two-stage")
    after = steps >= switch
    c_two_tail = LossCurve.from_schedule(two, steps[after], yt[after], name="two-stage")
    c_cos = LossCurve.from_schedule(cos, steps, ycos, name="cosine")
    f = laws.fit([c_const, c_two, c_cos], law="multipower", seed=0)
    g = laws.fit([c_const, c_two_tail, c_cos], law="multipower", seed=0)
    assert f.info["shared_duplicate_points"]["two-stage"] == int((~after).sum())
    assert f.info["n_points"] == g.info["n_points"]
    assert f.params == g.params                        # the same data once the copies are dropped
    # leave-one-out held the two-stage run's prefix out of its score (those points were seen)
    assert f.info["validation"]["folds"][1]["held_out"] == "two-stage"
    assert f.params["L0"] == pytest.approx(MP["L0"], rel=0.01)


def test_validation_chooses_the_best_stopping_point():
    cs = _curves("multipower", MP, _three(T=2000, W=100), n=80, noise=2e-3)
    f = laws.fit(cs, law="multipower", seed=0)
    v = f.info["validation"]
    errs = v["heldout_pred_err"]
    chosen = str(v["chosen_max_nfev"])
    assert chosen in errs
    tol = v["tolerance"]
    assert errs[chosen] <= min(errs.values()) * (1 + tol) + 1e-15
    order = list(errs)                          # candidates from most to least stopped
    later = order[order.index(chosen) + 1:]
    assert all(errs[c] > min(errs.values()) * (1 + tol) for c in later)
    for fold in v["folds"]:
        assert set(fold) >= {"held_out", "evaluations"}
    # a single curve cannot be validated by leaving curves out: said so
    one = laws.fit(cs[:1], law="annealing")
    assert one.info["validation"]["method"] == "none" and "two or more" in one.info["validation"]["reason"]


def test_band_contains_truth_and_shrinks_with_data():
    scheds = _three(T=3000, W=100)
    cs = _curves("multipower", MP, scheds, n=150, noise=1e-3, seed=5)
    f = laws.fit(cs, law="multipower", seed=0)
    test = schedules.wsd(peak_lr=3e-4, total_steps=3000, warmup_steps=100, decay_fraction=0.3)
    steps = np.arange(200, 3000, 50)
    mean, lo, hi = f.predict(test, steps, band=True, method="laplace")     # the band of the law's mean
    assert np.all(lo < mean) and np.all(mean < hi)
    truth = laws.multipower(test, steps, **MP)
    assert np.mean((truth >= lo) & (truth <= hi)) > 0.7
    assert np.median(hi - lo) < 10 * np.max(np.abs(mean - truth))       # not uselessly wide either
    m2, lo2, hi2 = f.predict_band(test, steps, level=0.5, method="laplace")
    np.testing.assert_allclose(m2, mean)
    assert np.all(hi2 - lo2 < hi - lo)
    # the first third of each curve: a much wider band at the end of the run
    short = [LossCurve(c.lrs, c.steps[: len(c) // 3], c.losses[: len(c) // 3], c.name, warmup_steps=c.warmup)
             for c in cs]
    g = laws.fit(short, law="multipower", seed=0)
    _, glo, ghi = g.predict(test, [2999], band=True, method="laplace")
    assert (ghi - glo)[0] > 2 * (hi - lo)[-1]


def test_save_load_roundtrip(tmp_path):
    cs = _curves("annealing", AN, _three(T=2000, W=100), n=80)
    f = laws.fit(cs, law="annealing", lam=None)
    path = tmp_path / "fit.json"
    f.save(path)
    g = laws.FittedLaw.load(path)
    assert g.params == f.params and g.law == "annealing" and g.info["fit_lam"]
    s = schedules.cosine(peak_lr=3e-4, total_steps=2500, warmup_steps=100)
    for a, b in zip(f.predict(s, band=True), g.predict(s, band=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    json.loads(path.read_text())                                             # plain JSON
    bad = tmp_path / "bad.json"
    bad.write_text('{"law": "annealing"}')
    with pytest.raises(ValueError, match="not a fitted-law file"):
        laws.FittedLaw.load(bad)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown law"):
        laws.fit(_curves("annealing", AN, {"c": schedules.constant(peak_lr=1e-3, total_steps=500)}), law="power")
    c = LossCurve(np.full(100, 1e-3), [10, 20], [3.0, 2.9], warmup_steps=50)
    with pytest.raises(ValueError, match="no loss measured after its warmup"):
        laws.fit([c], law="annealing")
    with pytest.raises(ValueError, match="steps must lie in"):
        laws.FittedLaw("annealing", AN, 1e-3).predict(np.full(10, 1e-3), [10])
    c = _curves("annealing", AN, {"c": schedules.cosine(peak_lr=3e-4, total_steps=500, warmup_steps=10)})[0]
    with pytest.raises(ValueError, match="only repeats points of an earlier curve"):
        laws.fit([c, c], law="annealing")


# --------------------------------------------------------------------------- schedule search
def test_optimize_schedule_wsd_beats_a_brute_force_grid():
    f = laws.FittedLaw("multipower", MP, 3e-4)
    T, W = 3000, 100
    best = laws.optimize_schedule(f, T, "wsd", warmup_steps=W)
    assert best.family == "wsd" and best.peak_lr == 3e-4
    final = float(f.predict(best, [T - 1])[0])
    grid = [float(f.predict(schedules.wsd(peak_lr=3e-4, total_steps=T, warmup_steps=W, decay_fraction=fr,
                                          decay=shape), [T - 1])[0])
            for fr in np.linspace(0.02, 0.96, 48) for shape in schedules.DECAY_SHAPES if shape != "exponential"]
    assert final <= min(grid) + 1e-9
    cos = float(f.predict(schedules.cosine(peak_lr=3e-4, total_steps=T, warmup_steps=W), [T - 1])[0])
    assert final < cos
    free = laws.optimize_schedule(f, T, "free", warmup_steps=W, n_knots=24)
    assert free.family == "piecewise" and free.total_steps == T
    lrs = free.lrs()
    assert np.all(np.diff(lrs[W:]) <= 1e-15) and lrs[W] == pytest.approx(3e-4)
    assert float(f.predict(free, [T - 1])[0]) <= final + 1e-9
    with pytest.raises(ValueError, match="unknown family"):
        laws.optimize_schedule(f, T, "cosine")


# --------------------------------------------------------------------------- live fitting
def test_livefit_from_a_training_thread():
    s = schedules.cosine(peak_lr=3e-4, total_steps=3000, warmup_steps=100, min_lr=3e-5)
    truth = laws.multipower(s, **MP)
    rng = np.random.default_rng(0)
    live = LiveFit(s, law="multipower", target_loss=float(truth[2500]), min_points=10, refit_every=10,
                   min_interval_s=0.0)

    def train():
        for t in range(0, 2000):
            ev = {"step": t, "lr": s(t), "loss": float(truth[max(t - 1, 0)] * 1.05), "time": 0.002 * (t + 1)}
            if (t + 1) % 50 == 0:
                ev["val_loss"] = float(truth[t] * math.exp(rng.normal(0, 3e-4)))
            live(ev)
    th = threading.Thread(target=train)
    th.start()
    while th.is_alive():                        # read from another thread while it trains
        live.report()
        time.sleep(0.05)
    th.join()
    r = live.report()
    assert r["fitted"] and r["loss_key"] == "val_loss" and r["points"] == 38 and r["refits"] >= 2
    # background refits: update() never runs a fit itself
    bg = LiveFit(s, law="multipower", min_interval_s=0.0, background=True)
    for t in range(99, 2000, 50):
        assert bg.update({"step": t, "lr": s(t), "loss": 9.0, "val_loss": float(truth[t])}) is False
    bg._worker.join()
    bg.refit(force=True)
    assert bg.report()["final_loss"] == pytest.approx(truth[-1], rel=3e-3)
    assert r["final_loss"] == pytest.approx(truth[-1], rel=3e-3)
    assert r["final_low"] < r["final_loss"] < r["final_high"]
    assert abs(r["step_to_target"] - 2500) < 150
    assert r["s_per_step"] == pytest.approx(0.002)
    assert r["time_to_target"] == pytest.approx((r["step_to_target"] - 1999) * 0.002)
    np.testing.assert_allclose(live.predict([2999]), [r["final_loss"]])


def test_livefit_polls_a_growing_run_log(tmp_path):
    s = schedules.cosine(peak_lr=3e-4, total_steps=2000, warmup_steps=100)
    truth = laws.annealing(s, **AN)
    log = tmp_path / "log.jsonl"
    live = LiveFit.from_run_log(log, schedule=s, law="annealing", min_interval_s=0.0, loss_key="val_loss")
    assert live.poll() == 0
    with open(log, "w") as f:
        for t in range(0, 1200):
            f.write(json.dumps({"step": t, "lr": s(t), "loss": 9.0, **({"val_loss": float(truth[t])}
                                                                      if t % 20 == 19 else {})}) + "\n")
        f.write('{"step": 1200, "lr": 0.0003, "lo')                        # a line being written
    assert live.poll() == 1200
    assert live.report()["step"] == 1199
    with open(log, "a") as f:
        f.write('ss": 9.0, "val_loss": %r}\n' % float(truth[1200]))
    assert live.poll() == 1
    r = live.report()
    assert r["points"] == 56 and r["final_loss"] == pytest.approx(truth[-1], rel=1e-3)
    with pytest.raises(ValueError, match="needs the run's workbench Schedule"):
        LiveFit(s.lrs())


# --------------------------------------------------------------------------- CLI
def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_fit_and_predict(tmp_path):
    scheds = _three(T=2000, W=100)
    paths = []
    for c in _curves("annealing", AN, scheds, n=100, noise=5e-4):
        p = tmp_path / f"{c.name}.csv"
        c.to_csv(p)
        paths.append(str(p))
    fit_path = str(tmp_path / "fit.json")
    rc, out, err = _run(["curves", "fit", "--law", "annealing", *paths[:2], "--out", fit_path])
    assert rc == 0, err
    assert "wrote" in out and os.path.exists(fit_path)
    rc, out, err = _run(["curves", "predict", fit_path, paths[2], paths[1], "--json"])
    assert rc == 0, err
    res = json.loads(out)
    assert set(res) == {"curves", "overall", "warnings"}
    keys = {"file", "r2", "mae", "rmse", "pred_err", "worst_err"}
    assert [set(c) for c in res["curves"]] == [keys, keys]
    assert set(res["overall"]) == keys - {"file"} | {"band_level", "band_coverage"}
    f = laws.FittedLaw.load(fit_path)
    from workbench.curves import read_curve

    c2 = read_curve(paths[2])
    assert res["curves"][0]["file"] == paths[2]
    assert res["curves"][0]["pred_err"] == pytest.approx(f.score(c2)["pred_err"], rel=1e-12)
    # overall = the metrics of all test points pooled
    pred = [f.predict(c.lrs, c.steps, warmup_steps=c.warmup) for c in (c2, read_curve(paths[1]))]
    ys = [c2.losses, read_curve(paths[1]).losses]
    pooled = laws.metrics(np.concatenate(pred), np.concatenate(ys))
    for k in keys - {"file"}:
        assert res["overall"][k] == pytest.approx(pooled[k], rel=1e-12)
    rc, out, _ = _run(["curves", "predict", fit_path, paths[2]])
    assert rc == 0 and "overall" in out and "worst err %" in out
    # a multipower fit from a trainer run log (.jsonl)
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    s = scheds["cosine"]
    y = laws.multipower(s, **MP)
    log.write_text("".join(json.dumps({"step": t, "lr": s(t), "loss": 5.0, **({"val_loss": float(y[t])}
                                                                             if t % 25 == 24 else {})}) + "\n"
                           for t in range(2000)))
    rc, out, err = _run(["curves", "fit", "--law", "multipower", str(log), paths[0], "--out", fit_path])
    assert rc == 0, err
    # bad input: exit code 2 and a message naming the file and line
    bad = tmp_path / "bad.csv"
    bad.write_text("step,lr,loss\n0,1e-3,3.0\n1,1e-3,-2.0\n")
    rc, _, err = _run(["curves", "fit", str(bad), "--out", fit_path])
    assert rc == 2 and "bad.csv, line 3" in err


def test_bundled_trainer_runs():
    # real runs from the workbench trainer (workbench/assets/runs): WSD runs share the constant run's prefix
    import pathlib

    from workbench import train
    from workbench.curves import read_curve

    from workbench import assets

    runs = pathlib.Path(assets.ASSETS_DIR) / "runs"
    if not (runs / "wsd10" / "log.jsonl").exists():
        pytest.skip("bundled runs not present")
    const, wsd = read_curve(runs / "constant"), read_curve(runs / "wsd10")
    sched = train.resolve_schedule(train.load_config(runs / "wsd10"))
    # every step logged: exactly the config's schedule, warmup included (the bundled WSD runs were trained with
    # a warmup from 0; their config says so with warmup_start_lr=0.0 since wsd() follows transformers)
    np.testing.assert_array_equal(wsd.lrs, sched.lrs())
    assert wsd.meta["loss_key"] == "val_loss" and wsd.warmup == sched.warmup
    decay_start = sched.total_steps - sched.n_decay
    shared = int(np.sum((wsd.steps >= wsd.warmup) & (wsd.steps < decay_start)))
    f = laws.fit([const, wsd], law="annealing")
    assert f.info["shared_duplicate_points"] == {"constant": 0, "wsd10": shared}
    assert f.score(wsd)["r2"] > 0.9


def _four(peak=3e-4, T=4000, W=200):
    return _three(peak, T, W) | {"wsd": schedules.wsd(peak_lr=peak, total_steps=T, warmup_steps=W, decay_fraction=0.2)}


@pytest.mark.parametrize("seed", [1, 2])
def test_multipower_noisy_curves_predict_the_cooldown_drop_of_a_3x_longer_run(seed):
    # log-normal noise of 0.1% (the noise of a small run's validation loss); the quantity a user acts on
    # is the loss a cooldown buys: the final-loss gap between a 3x longer constant run and a WSD run.
    # Truth: the same law code with the true parameters. A fitter that gets the decay term wrong (e.g. the
    # m_1 = lr[0] bug, S_W off by a factor, a sign error in LD) misses the 3% tolerance by far.
    cs = _curves("multipower", MP, _four(), noise=1e-3, seed=seed)
    f = laws.fit(cs, law="multipower", seed=0)
    T = 12_000
    w = schedules.wsd(peak_lr=3e-4, total_steps=T, warmup_steps=200, decay_fraction=0.3)
    c = schedules.constant(peak_lr=3e-4, total_steps=T, warmup_steps=200)
    true_drop = laws.multipower(c, [T - 1], **MP)[0] - laws.multipower(w, [T - 1], **MP)[0]
    drop = f.predict(c, [T - 1])[0] - f.predict(w, [T - 1])[0]
    assert drop == pytest.approx(true_drop, rel=0.03)
    for k, tol in (("L0", 0.005), ("A", 0.02), ("alpha", 0.02), ("B", 0.15)):
        assert f.params[k] == pytest.approx(MP[k], rel=tol), k
    assert 0.5 < f.params["C"] / MP["C"] < 2.0
