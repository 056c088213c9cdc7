"""Schedules: hand-computed values, parity with transformers, properties, resume, bad input."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import optimization as hf

from workbench import laws, schedules
from workbench.schedules import schedule_from_dict


# ----------------------------------------------------------------------------- parity with transformers
def _hf_lrs(make_sched, peak, total):
    """transformers' LR at every step 0..total-1, read off its LambdaLR as a Trainer would."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    sch = make_sched(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return np.array(out)


PARITY = [
    (dict(peak=3e-4, total=1000, warm=100),),
    (dict(peak=1.0, total=257, warm=0),),
    (dict(peak=6e-3, total=50, warm=7),),
]


@pytest.mark.parametrize("cfg", [c[0] for c in PARITY])
def test_parity_linear_cosine_inverse_sqrt(cfg):
    peak, total, warm = cfg["peak"], cfg["total"], cfg["warm"]
    t = np.arange(total)
    cases = [
        (schedules.linear(peak_lr=peak, total_steps=total, warmup_steps=warm),
         lambda o: hf.get_linear_schedule_with_warmup(o, warm, total)),
        (schedules.cosine(peak_lr=peak, total_steps=total, warmup_steps=warm),
         lambda o: hf.get_cosine_schedule_with_warmup(o, warm, total)),
        (schedules.cosine(peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=0.1 * peak),
         lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, warm, total, min_lr_rate=0.1)),
        (schedules.cosine(peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=peak * 0.03),
         lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, warm, total, min_lr=peak * 0.03)),
        (schedules.inverse_sqrt(peak_lr=peak, total_steps=total, warmup_steps=warm),
         lambda o: hf.get_inverse_sqrt_schedule(o, warm)),
        (schedules.inverse_sqrt(peak_lr=peak, total_steps=total, warmup_steps=warm, timescale=37),
         lambda o: hf.get_inverse_sqrt_schedule(o, warm, timescale=37)),
    ]
    for ours, theirs in cases:
        np.testing.assert_allclose(ours(t), _hf_lrs(theirs, peak, total), rtol=1e-12, atol=0,
                                   err_msg=repr(ours))


@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("cfg", [(1000, 100, 200), (300, 0, 30), (64, 5, 59), (40, 3, 1)])
@pytest.mark.parametrize("ratio", [0.0, 0.1])
def test_parity_wsd(decay, cfg, ratio):
    total, warm, dec = cfg
    peak = 2e-3
    ours = schedules.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, decay_steps=dec, decay=decay,
                         min_lr=ratio * peak)
    theirs = _hf_lrs(lambda o: hf.get_wsd_schedule(o, num_warmup_steps=warm, num_decay_steps=dec,
                                                   num_training_steps=total, decay_type=decay,
                                                   min_lr_ratio=ratio), peak, total)
    np.testing.assert_allclose(ours(np.arange(total)), theirs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("warmup_shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("decay, cycles", [("linear", 0.5), ("1-sqrt", 0.5), ("cosine", 0.5), ("cosine", 1.0),
                                           ("cosine", 0.25)])
def test_parity_wsd_every_transformers_argument(warmup_shape, decay, cycles):
    """min_lr_ratio, num_warmup/stable/decay_steps (with and without num_training_steps), warmup_type,
    decay_type and num_cycles: transformers' own LRs, step by step (and 20 steps past the end)."""
    peak, warm, stable, dec, ratio = 3e-4, 17, 40, 23, 0.05
    total = warm + stable + dec
    ours = schedules.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, decay_steps=dec, decay=decay,
                         min_lr=ratio * peak, warmup_shape=warmup_shape, num_cycles=cycles)
    for kw in (dict(num_training_steps=total), dict(num_stable_steps=stable)):
        theirs = _hf_lrs(lambda o: hf.get_wsd_schedule(o, num_warmup_steps=warm, num_decay_steps=dec,
                                                       warmup_type=warmup_shape, decay_type=decay,
                                                       min_lr_ratio=ratio, num_cycles=cycles, **kw),
                         peak, total + 20)
        np.testing.assert_allclose(ours(np.arange(total + 20)), theirs, rtol=1e-12, atol=0, err_msg=str(kw))
    # the warmup starts at min_lr (transformers'), not at 0
    assert ours(0) == pytest.approx(ratio * peak, rel=1e-12)
    assert schedule_from_dict(json.loads(json.dumps(ours.to_dict()))) == ours


# ----------------------------------------------------------------------------- hand-computed values
def test_hand_values():
    c = schedules.cosine(peak_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.2)
    assert c(5) == pytest.approx(0.5)
    assert c(10) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.2 + 0.8 * 0.5)          # half-way through the decay
    assert c(110) == pytest.approx(0.2) and c(10_000) == pytest.approx(0.2)  # holds min after the horizon
    lin = schedules.linear(peak_lr=2.0, total_steps=100, min_lr=1.0)
    assert lin(25) == pytest.approx(1.75)
    w = schedules.wsd(peak_lr=1.0, total_steps=100, decay_steps=10, decay="1-square", min_lr=0.0)
    assert w(89) == 1.0 and w(95) == pytest.approx(1 - 0.25)
    e = schedules.wsd(peak_lr=1e-2, total_steps=100, decay_steps=10, decay="exponential", min_lr=1e-4)
    assert e(95) == pytest.approx(1e-2 ** 0.5 * 1e-4 ** 0.5) and e(100) == pytest.approx(1e-4)
    sc = schedules.wsd(peak_lr=1.0, total_steps=100, decay_steps=10, decay="wsdsc")
    assert sc(95) == pytest.approx(0.5 ** 1.5)
    s1 = schedules.wsd(peak_lr=1.0, total_steps=100, decay_fraction=0.2, decay="1-sqrt")
    assert s1(85) == pytest.approx(1 - math.sqrt(0.25))
    i = schedules.inverse_sqrt(peak_lr=1.0, total_steps=10_000, warmup_steps=100)
    assert i(50) == pytest.approx(0.5) and i(400) == pytest.approx(math.sqrt(100 / 400))
    m = schedules.multistep(peak_lr=1.0, total_steps=1000, milestones=[800, 900], factors=[0.316, 0.1])
    assert (m(799), m(800), m(899), m(900)) == (1.0, 0.316, 0.316, 0.1)
    pw = schedules.piecewise(points=[(0, 0.0), (10, 1.0), (30, 0.5)])
    assert pw(20) == pytest.approx(0.75) and pw(1000) == 0.5 and pw.total_steps == 31


def test_infinite_hand_values():
    s = schedules.infinite(peak_lr=1.0, total_steps=1000, warmup_steps=50, cooldown_steps=150,
                           anneal_steps=100, const_lr=0.1, min_lr=0.01)
    f = lambda p: 1 / math.sqrt(1 + 10 * p) - 1  # noqa: E731
    assert s(25) == pytest.approx(0.5)
    assert s(50) == pytest.approx(1.0)
    assert s(125) == pytest.approx(1.0 + (0.1 - 1.0) * f(0.5) / f(1.0))
    assert s(200) == pytest.approx(0.1) and s(899) == pytest.approx(0.1)
    k = math.log(0.1 / 0.01) / 100
    assert s(950) == pytest.approx(0.1 * math.exp(-k * 50))
    assert s(1000) == pytest.approx(0.01)


def test_power_hand_values():
    s = schedules.power(peak_lr=0.02, total_steps=10_000, warmup_steps=100, a=4.6, b=-0.51, batch_size=256,
                        tokens_per_step=1_000_000, decay_steps=1000, min_lr=1e-4, decay="exponential")
    p = lambda t: min(0.02, 256 * 4.6 * (t * 1e6) ** -0.51)  # noqa: E731
    assert s(5000) == pytest.approx(p(5000))
    assert s(50) == pytest.approx(0.5 * p(100))  # linear warmup to the power value at the end of warmup
    assert s(9000) == pytest.approx(p(9000))
    assert s(9500) == pytest.approx(p(9000) ** 0.5 * 1e-4 ** 0.5)  # geometric decay half-way


def test_refined_matches_paper_steps():
    # constant gradient norms: w constant, eta_t ~ (T-1-t)  -> plain linear decay to 0
    s = schedules.refined(grad_norms=[2.0] * 200, peak_lr=0.5)
    t = np.arange(200)
    np.testing.assert_allclose(s(t), 0.5 * (199 - t) / 199, atol=1e-12)
    # brute force of steps 3-5 on a smooth, growing norm curve (median filter leaves it unchanged)
    g = np.linspace(1.0, 3.0, 100)
    w = 1 / g
    eta = np.array([w[i] * w[i + 1:].sum() / w.sum() for i in range(100)])
    s = schedules.refined(grad_norms=g, peak_lr=1.0, window_fraction=0.01)
    np.testing.assert_allclose(s(np.arange(100)), eta / eta.max(), rtol=1e-10)
    # growing late norms (as in real runs) give a faster final anneal than linear
    g = np.concatenate([np.ones(80), np.linspace(1, 5, 20)])
    s = schedules.refined(grad_norms=g, peak_lr=1.0, method="sgd")
    assert s(90) < (100 - 1 - 90) / 99


def test_join_and_rewarm():
    a = schedules.cosine(peak_lr=1.0, total_steps=100, min_lr=0.1)
    b = schedules.constant(peak_lr=0.3, total_steps=50)
    j = schedules.join([a, b], [100])
    assert j(99) == pytest.approx(a(99)) and j(100) == 0.3 and j.total_steps == 150
    r = schedules.rewarm(a, peak_lr=0.5, cycle_steps=100, warmup_steps=10, min_lr=0.05, decay="linear")
    end = a(99)
    assert r(99) == pytest.approx(end)
    assert r(105) == pytest.approx(end + (0.5 - end) * 0.5)   # half-way up the re-warmup
    assert r(110) == pytest.approx(0.5) and r(200) == pytest.approx(0.05)
    # S2 goes negative while re-warming (the annealing law covers continual pre-training)
    _, s2 = laws.areas(r.lrs(), lam=0.9, warmup_steps=0)
    assert s2[109] < s2[99]


def test_vectorised_million_steps():
    s = schedules.wsd(peak_lr=1e-3, total_steps=1_000_000, warmup_steps=10_000, decay_fraction=0.2,
                      decay="1-sqrt")
    t = np.arange(1_000_000)
    v = s(t)
    assert v.shape == (1_000_000,) and v.dtype == np.float64
    for k in (0, 9_999, 10_000, 799_999, 800_000, 999_999):
        assert v[k] == s(k)
    assert isinstance(s(5), float)


# ----------------------------------------------------------------------------- properties
DECAYS = list(schedules.DECAY_SHAPES)


@st.composite
def wsd_configs(draw):
    total = draw(st.integers(20, 5000))
    warm = draw(st.integers(0, total // 3))
    dec = draw(st.integers(1, total - warm))
    peak = draw(st.floats(1e-6, 1.0))
    min_lr = draw(st.floats(0.0, 0.5)) * peak
    decay = draw(st.sampled_from(DECAYS))
    if decay == "exponential":
        min_lr = max(min_lr, peak * 1e-3)
    return schedules.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, decay_steps=dec, decay=decay,
                         min_lr=min_lr)


@settings(max_examples=150, deadline=None)
@given(wsd_configs())
def test_wsd_phases(s):
    t = np.arange(s.total_steps + 5)
    v = s(t)
    w, start = s.warmup_steps, s.total_steps - s.n_decay
    assert np.all(np.diff(v[: w + 1]) >= 0)                       # warmup rises to the peak
    assert np.all(v[w:start] == s.peak_lr)                         # stable at the peak
    assert np.all(np.diff(v[start:]) <= 1e-15 * s.peak_lr)         # decay is monotone
    assert np.all(v[w:] >= s.min_lr * (1 - 1e-12))
    assert v[s.total_steps] == pytest.approx(s.min_lr, rel=1e-9, abs=1e-18)  # reaches min_lr at T
    # continuity: the first decay step starts from the peak (x = 0 gives the peak exactly)
    assert v[start] == pytest.approx(s.peak_lr, rel=1e-12)
    # no jump bigger than the phase's own one-step change allows
    d = s.n_decay
    bound = {"1-sqrt": math.sqrt(1 / d), "exponential": 1 - (s.min_lr / s.peak_lr) ** (1 / d)}.get(s.decay, 2.0 / d)
    jumps = np.abs(np.diff(v[max(start - 1, w):]))                 # stable -> decay -> hold after T
    assert jumps.max(initial=0) <= s.peak_lr * bound * (1 + 1e-9) + 1e-15
    if w:
        assert np.abs(np.diff(v[: w + 1])).max() <= s.peak_lr / w * (1 + 1e-9)


@st.composite
def any_schedule(draw):
    total = draw(st.integers(10, 2000))
    warm = draw(st.integers(0, total // 4))
    peak = draw(st.floats(1e-5, 1.0))
    fam = draw(st.sampled_from(["constant", "linear", "cosine", "inverse_sqrt", "wsd", "infinite",
                                "multistep", "power", "piecewise", "refined", "join", "rewarm"]))
    if fam in ("constant", "inverse_sqrt"):
        return schedules.make(fam, peak_lr=peak, total_steps=total, warmup_steps=warm)
    if fam in ("linear", "cosine"):
        return schedules.make(fam, peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=peak / 10)
    if fam == "wsd":
        return schedules.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, decay_fraction=0.2,
                             decay=draw(st.sampled_from(DECAYS)), min_lr=peak / 100)
    if fam == "infinite":
        return schedules.infinite(peak_lr=peak, total_steps=total, warmup_steps=warm)
    if fam == "multistep":
        return schedules.multistep(peak_lr=peak, total_steps=total, warmup_steps=warm)
    if fam == "power":
        return schedules.power(peak_lr=peak, total_steps=total, warmup_steps=warm, decay_steps=total // 10,
                               min_lr=peak / 100)
    if fam == "piecewise":
        return schedules.piecewise(points=[(0, 0.0), (warm + 1, peak), (total, peak / 10)])
    if fam == "refined":
        return schedules.refined(grad_norms=draw(st.lists(st.floats(0.1, 10.0), min_size=2, max_size=50)),
                                 peak_lr=peak, total_steps=total)
    a = schedules.cosine(peak_lr=peak, total_steps=total, warmup_steps=warm, min_lr=peak / 10)
    if fam == "join":
        return schedules.join([a, schedules.constant(peak_lr=peak / 2, total_steps=total)], [total])
    return schedules.rewarm(a, peak_lr=peak / 2, cycle_steps=total, warmup_steps=warm, min_lr=peak / 20)


@settings(max_examples=150, deadline=None)
@given(any_schedule())
def test_json_round_trip(s):
    d = json.loads(json.dumps(s.to_dict()))
    assert d["family"] == s.family
    back = schedule_from_dict(d)
    assert back == s
    t = np.arange(s.total_steps + 3)
    np.testing.assert_array_equal(back(t), s(t))
    assert np.all(np.isfinite(s(t))) and np.all(s(t) >= 0)
    # the Python snippet rebuilds it too
    assert eval(s.to_python(), {"schedules": schedules}) == s


# ----------------------------------------------------------------------------- torch adapter
def _run(opt, sch, steps):
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sch.step()
    return lrs


def _opt(lr=123.0):
    torch.manual_seed(0)
    p1, p2 = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    for p in (p1, p2):
        p.grad = torch.ones_like(p)
    return torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=lr)


def test_torch_scheduler_sets_absolute_lrs_and_resumes_exactly():
    s = schedules.wsd(peak_lr=1e-2, total_steps=60, warmup_steps=10, decay_fraction=0.3, decay="cosine")
    opt = _opt()
    sch = s.torch_scheduler(opt)
    full = _run(opt, sch, 60)
    expected = [[s(t), 0.5 * s(t)] for t in range(60)]
    assert full == expected                          # exactly sched(t), whatever lr the optimizer had
    # interrupted at step 23, state saved and loaded with weights_only=True, continued
    opt = _opt()
    sch = s.torch_scheduler(opt)
    first = _run(opt, sch, 23)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sch.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = _opt(lr=7.0)
    sch2 = s.torch_scheduler(opt2)
    opt2.load_state_dict(state["opt"])
    sch2.load_state_dict(state["sched"])
    rest = _run(opt2, sch2, 37)
    assert first + rest == full
    assert sch2.get_last_lr() == [s(60), 0.5 * s(60)]


def test_torch_multistep_resume_has_no_drift():
    # the pitfall users report with MultiStepLR: after load_state_dict the LR must not be re-decayed
    s = schedules.multistep(peak_lr=1.0, total_steps=100, milestones=[50, 75], factors=[0.1, 0.01])
    opt = _opt()
    sch = s.torch_scheduler(opt)
    _run(opt, sch, 60)
    opt2 = _opt()
    sch2 = s.torch_scheduler(opt2)
    sch2.load_state_dict(sch.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    assert _run(opt2, sch2, 40)[-1][0] == pytest.approx(0.01)


def test_hf_trainer_uses_the_schedule(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    data = [{"input_ids": torch.randint(0, 32, (8,)), "labels": torch.randint(0, 32, (8,))} for _ in range(24)]
    s = schedules.wsd(peak_lr=1e-3, total_steps=12, warmup_steps=3, decay_fraction=0.25, decay="1-sqrt")
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    seen = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "learning_rate" in logs:
                seen.append((state.global_step, logs["learning_rate"]))

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=2, logging_steps=1,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, s.torch_scheduler(opt)),
                      callbacks=[Log()])
    trainer.train()
    assert len(seen) == 12
    for step, lr in seen:  # on_log's learning_rate is the LR the step used: step k used sched(k-1)
        assert lr == pytest.approx(s(step - 1), rel=1e-12)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, words", [
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10)(-1), "step must be >= 0"),
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10)(1.5), "whole number"),
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10)(np.array([1.0, np.nan])), "finite"),
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10, warmup_steps=10), "warmup_steps must be in [0, total_steps=10)"),
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10, min_lr=2.0), "min_lr must be in [0, peak_lr=1.0]"),
    (lambda: schedules.cosine(peak_lr=float("nan"), total_steps=10), "peak_lr must be finite"),
    (lambda: schedules.cosine(peak_lr=-1.0, total_steps=10), "peak_lr must be > 0"),
    (lambda: schedules.cosine(peak_lr=1.0, total_steps=10.5), "total_steps must be an integer"),
    (lambda: schedules.wsd(peak_lr=1.0, total_steps=10, decay="cubic"), "decay must be one of"),
    (lambda: schedules.wsd(peak_lr=1.0, total_steps=10, decay="exponential"), "needs min_lr > 0"),
    (lambda: schedules.wsd(peak_lr=1.0, total_steps=10, warmup_steps=5, decay_steps=6), "warmup_steps + decay_steps"),
    (lambda: schedule_from_dict({"family": "triangle", "peak_lr": 1.0}), "unknown schedule family 'triangle'"),
    (lambda: schedule_from_dict({"peak_lr": 1.0}), "needs a 'family' key"),
    (lambda: schedule_from_dict({"family": "cosine", "peak_lr": 1.0, "total_steps": 5, "bogus": 1}), "bad arguments"),
    (lambda: schedules.multistep(peak_lr=1.0, total_steps=10, milestones=[5], factors=[0.1, 0.2]), "same length"),
    (lambda: schedules.refined(grad_norms=[1.0, 0.0, 2.0], peak_lr=1.0), "positive and finite"),
    (lambda: schedules.join([schedules.constant(peak_lr=1.0, total_steps=5)] * 2, []), "len(boundaries)"),
])
def test_bad_input(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert words in str(e.value)


# ----------------------------------------------------------------------------- S1 / S2 and the CLI
def test_areas_against_brute_force():
    rng = np.random.default_rng(0)
    lrs = np.concatenate([np.linspace(0, 1, 10), np.ones(20), rng.uniform(0.1, 1, 30)])
    lam = 0.99
    s1, s2 = laws.areas(lrs, lam=lam)
    eta = lrs.copy()
    eta[:9] = eta[9]  # warmup counted at the peak (argmax is step 9 here)
    m, S1, S2, ref1, ref2 = 0.0, 0.0, 0.0, [], []
    for i in range(len(eta)):
        m = 0.0 if i == 0 else lam * m + (eta[i - 1] - eta[i])
        S1 += eta[i]
        S2 += m
        ref1.append(S1)
        ref2.append(S2)
    np.testing.assert_allclose(s1, ref1, rtol=1e-12)
    np.testing.assert_allclose(s2, ref2, rtol=1e-9, atol=1e-12)


def test_cli_export_and_plot(tmp_path):
    from workbench.cli import main

    s = schedules.wsd(peak_lr=3e-4, total_steps=500, warmup_steps=50, decay_fraction=0.2, decay="1-sqrt")
    spec = tmp_path / "SPEC.json"
    schedules.save_schedule(s, spec)
    assert main(["schedule", "export", str(spec), "--csv", str(tmp_path / "lr.csv")]) == 0
    rows = (tmp_path / "lr.csv").read_text().splitlines()
    assert rows[0] == "step,lr" and len(rows) == 501
    steps, lrs = np.loadtxt(tmp_path / "lr.csv", delimiter=",", skiprows=1, unpack=True)
    np.testing.assert_array_equal(steps, np.arange(500))
    np.testing.assert_array_equal(lrs, s(np.arange(500)))
    assert main(["schedule", "plot", str(spec), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["schedule", "plot", str(spec), "-o", str(tmp_path / "p.html")]) == 0
    assert "plotly" in (tmp_path / "p.html").read_text()[:200_000].lower()
    assert main(["schedule", "plot", str(spec), "-o", str(tmp_path / "p.gif")]) == 2
    (tmp_path / "bad.json").write_text('{"family": "nope"}')
    assert main(["schedule", "export", str(tmp_path / "bad.json"), "--csv", str(tmp_path / "x.csv")]) == 2
