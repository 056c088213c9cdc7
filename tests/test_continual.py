"""Continual pre-training: metrics on hand-made logs, exact replay fractions, trainer support
(batch sources, per-domain validation, meta-experience replay) and the resumable grid + CLI."""
import contextlib
import dataclasses
import io
import json
import math
import os
import threading

import pytest
import torch

from workbench import continual as C
from workbench.continual import ContinualConfig, Phase
from workbench.data import BlockLoader, ReplayLoader
from workbench.train import TrainConfig, Trainer

torch.set_num_threads(1)


def _log(points, domain="A", extra=None):
    """Events at the given (step, loss) points for one domain (plus other domains' losses)."""
    out = []
    for i, (s, v) in enumerate(points):
        vl = {domain: v}
        if extra:
            vl.update({k: vals[i] for k, vals in extra.items()})
        out.append({"step": s, "loss": 0.0, "val_losses": vl})
    return out


# ------------------------------------------------------------------ metrics, hand-computed
def test_forgetting_hand_computed():
    log = _log([(9, 3.0), (19, 2.4), (29, 2.6), (39, 2.9), (49, 2.8)])
    # best before the shift at 20 is 2.4 (step 19); now = 2.8 -> 0.4
    assert C.forgetting(log, "A", 20) == pytest.approx(0.4)
    assert C.forgetting(log, "A", 20, at_step=39) == pytest.approx(0.5)
    # a shift at 10: only step 9 (3.0) is before it
    assert C.forgetting(log, "A", 10) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="before the shift"):
        C.forgetting(log, "A", 5)
    with pytest.raises(ValueError, match="domains are"):
        C.forgetting(log, "B", 20)


def test_adaptation_and_domain_mean():
    run = _log([(19, 2.5), (39, 2.1)], "B", extra={"A": [3.0, 3.3]})
    base = _log([(9, 2.6), (19, 2.4)], "B")
    assert C.adaptation(run, base, "B") == pytest.approx(2.1 - 2.4)
    assert C.adaptation(run, base, "B", at_step=19) == pytest.approx(2.5 - 2.4)
    steps, vals = C.domain_losses(run, ("A", "B"))
    assert steps.tolist() == [19, 39] and vals.tolist() == pytest.approx([2.75, 2.7])


def test_stability_gap_hand_computed():
    # reference 2.0 at step 9 (last before the shift at 10); rise to 2.7 at 29, back below at 49
    pts = [(9, 2.0), (19, 2.5), (29, 2.7), (39, 2.1), (49, 1.95), (59, 2.3)]
    g = C.stability_gap(_log(pts), "A", 10)
    assert g["reference"] == 2.0 and g["depth"] == pytest.approx(0.7) and g["peak_step"] == 29
    assert g["duration"] == 49 + 1 - 10 and g["recovered"] and g["min_after"] == 1.95
    # never back to the reference: duration None, depth over the whole window
    g = C.stability_gap(_log(pts[:4]), "A", 10)
    assert g["duration"] is None and not g["recovered"] and g["depth"] == pytest.approx(0.7)
    # no rise at all (a new domain whose loss only falls)
    g = C.stability_gap(_log([(9, 4.0), (19, 3.0), (29, 2.5)]), "A", 10)
    assert g["depth"] == 0.0 and g["duration"] == 0 and g["peak_step"] is None
    # end_step limits the window (the phase end)
    g = C.stability_gap(_log(pts), "A", 10, end_step=29)
    assert g["duration"] is None and g["depth"] == pytest.approx(0.7)


def test_compute_to_baseline_hand_computed():
    run = _log([(9, 3.0), (19, 2.6), (29, 2.35), (39, 2.2)], "B")
    base = _log([(9, 2.9), (19, 2.5), (29, 2.3)], "B")      # 30 updates, final 2.3
    out = C.compute_to_baseline(run, base, "B", shift_step=10)
    assert out == {"target": 2.3, "steps": 39 + 1 - 10, "fraction": 30 / 30, "reached": True}
    out = C.compute_to_baseline(run[:3], base, "B", shift_step=10)
    assert out["reached"] is False and out["steps"] is None


def test_metrics_read_run_dirs(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with open(d / "log.jsonl", "w") as f:
        for r in _log([(9, 3.0), (19, 2.5), (19, 2.4), (29, 2.6)]):   # step 19 repeated by a resume
            f.write(json.dumps(r) + "\n")
    assert C.forgetting(str(d), "A", 20) == pytest.approx(0.2)       # the later line of step 19 wins


# ------------------------------------------------------------------ exact replay fractions
def _marker_blocks(value, n=64, width=9):
    return torch.full((n, width), value, dtype=torch.long)


@pytest.mark.parametrize("replay", [0.05, 0.1, 0.25, 1 / 3])
def test_replay_fraction_exact_over_a_run(replay):
    a_steps, b_steps, batch = 10, 30, 8
    cfg = ContinualConfig([Phase("a", a_steps), Phase("b", b_steps, replay=replay)], batch_size=batch,
                          eval_interval=10)
    src = C.make_source(cfg, {"a": _marker_blocks(0), "b": _marker_blocks(1)})
    old_rows, per_batch = 0, []
    for step in range(a_steps + b_steps):                     # brute force: count rows by marker
        x, y = next(src)
        assert x.shape == (batch, 8)
        n_old = int((x[:, 0] == 0).sum())
        if step < a_steps:
            assert n_old == batch                              # phase A: only A
        else:
            old_rows += n_old
            per_batch.append(n_old)
    expected = replay * batch * b_steps                        # 12, 24, 60, 80 rows
    assert abs(old_rows - expected) < 1 and old_rows == round(expected)
    assert max(per_batch) - min(per_batch) <= 1                # spread evenly, not in bursts


def test_replay_three_domains_and_upsampling_counts():
    cfg = ContinualConfig([Phase("a", 10), Phase("b", 10),
                           Phase("c", 20, replay=0.25, upsample="a", upsample_share=0.5, upsample_fraction=0.5)],
                          batch_size=8, eval_interval=10)
    src = C.make_source(cfg, {k: _marker_blocks(v) for k, v in (("a", 0), ("b", 1), ("c", 2))})
    rows = {0: 0, 1: 0, 2: 0}
    late = {0: 0, 1: 0, 2: 0}
    for step in range(40):
        x, _ = next(src)
        if step >= 20:
            for v in (0, 1, 2):
                n = int((x[:, 0] == v).sum())
                rows[v] += n
                if step >= 30:
                    late[v] += n
    # first half of C: 25% replay split equally between a and b (1 row each per batch of 8)
    # last half: a gets 50%; b and c keep their 1:6 ratio of the remaining 50%
    assert rows[0] - late[0] == 10 and rows[1] - late[1] == 10 and rows[2] - late[2] == 60
    assert late[0] == 40 and late[1] == pytest.approx(40 / 7, abs=1) and late[1] + late[2] == 40


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of eval_interval"):
        ContinualConfig([Phase("stdlib", 15)], eval_interval=10)
    with pytest.raises(ValueError, match="no earlier domain"):
        ContinualConfig([Phase("stdlib", 10, replay=0.1)], eval_interval=10)
    with pytest.raises(ValueError, match="replay must be"):
        Phase("docs", 10, replay=1.0)
    with pytest.raises(ValueError, match="schedule must be"):
        ContinualConfig([Phase("stdlib", 10)], schedule="cyclic", eval_interval=10)


def test_schedules_span_the_phases():
    ph = [Phase("a", 100), Phase("b", 100), Phase("c", 100)]
    s = C.build_schedule(ContinualConfig(ph, schedule="rewarm", lr=1.0, min_lr_ratio=0.1, eval_interval=10))
    assert s(99) == pytest.approx(0.1, rel=1e-2) and s(105) == pytest.approx(1.0) and s(299) == pytest.approx(0.1, rel=1e-2)
    s = C.build_schedule(ContinualConfig(ph, schedule="infinite", lr=1.0, eval_interval=10,
                                         infinite_anneal="last"))
    assert s(50) == pytest.approx(0.1) and s(150) == pytest.approx(0.1) and s(250) == pytest.approx(0.1)
    # anneal over the last 10 steps: eta_const * exp(-k*dt), k = ln(0.1/0.01)/10, dt = 9 at the last step
    assert s(289) == pytest.approx(0.1) and s(299) == pytest.approx(0.1 * 10 ** (-9 / 10), rel=1e-9)
    s = C.build_schedule(ContinualConfig(ph, schedule="wsd", lr=1.0, min_lr_ratio=0.0, eval_interval=10))
    assert s(150) == 1.0 and s(199) == pytest.approx(1 / 20, abs=1e-9) and s(205) == 1.0


# ------------------------------------------------------------------ trainer support
def _cfg(**kw):
    from workbench import schedules

    base = dict(model="tiny", steps=6, schedule=schedules.cosine(peak_lr=3e-3, total_steps=6, min_lr=3e-4), batch_size=4, seq_len=16, eval_interval=3, eval_batches=1,
                checkpoint_interval=0, progress=False, track_update_norm=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _blocks(seed, n=40, width=17):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, width), generator=g)


def _replay_source(seed=0):
    return ReplayLoader(BlockLoader(_blocks(1), 4, seed=3), BlockLoader(_blocks(2), 4, seed=4),
                        replay_fraction=0.25, seed=seed)


def test_trainer_takes_a_batch_source_and_resumes_it_exactly(tmp_path):
    val = {"new": _blocks(5, 8), "old": _blocks(6, 8)}
    straight = Trainer(_cfg(), train_data=_replay_source(), val_data=val)
    straight.run()
    d = str(tmp_path / "run")
    Trainer(_cfg(run_dir=d, steps=3), train_data=_replay_source(), val_data=val).run()
    again = Trainer(_cfg(run_dir=d), train_data=_replay_source(), val_data=val, resume=True)
    assert again.step == 3 and again.loader.step == 3
    again.run()
    assert [e["loss"] for e in again.history] == pytest.approx([e["loss"] for e in straight.history[3:]])
    assert straight.tokens == 6 * 4 * 16


def test_per_domain_validation_losses():
    val = {"new": _blocks(5, 8), "old": _blocks(6, 8)}
    t = Trainer(_cfg(val_domain="old"), train_data=_replay_source(), val_data=val)
    t.run()
    evals = [e for e in t.history if "val_loss" in e]
    assert [e["step"] for e in evals] == [2, 5]
    for e in evals:
        assert set(e["val_losses"]) == {"new", "old"} and e["val_loss"] == e["val_losses"]["old"]
    # independent: a trainer with only the "new" blocks gives the same loss for that domain
    single = Trainer(_cfg(), train_data=_replay_source(), val_data=val["new"])
    single.run()
    assert [e["val_loss"] for e in single.history if "val_loss" in e] == pytest.approx(
        [e["val_losses"]["new"] for e in evals])
    assert t.best_val_loss == min(e["val_losses"]["old"] for e in evals)
    with pytest.raises(ValueError, match="val_domain"):
        Trainer(_cfg(val_domain="nope"), train_data=_replay_source(), val_data=val)


def test_meta_experience_replay_interpolates_every_k_steps():
    k, beta = 3, 0.3
    plain = Trainer(_cfg(steps=k, eval_batches=0), train_data=BlockLoader(_blocks(1), 4, seed=3))
    theta0 = [p.detach().clone() for p in plain.params]
    plain.run()
    mer = Trainer(_cfg(steps=k, eval_batches=0, mer_interval=k, mer_beta=beta),
                  train_data=BlockLoader(_blocks(1), 4, seed=3))
    mer.run()
    for p0, p1, pm in zip(theta0, plain.params, mer.params):   # same init (seed), same batches
        torch.testing.assert_close(pm.detach(), p0 + beta * (p1.detach() - p0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mer_beta"):
        TrainConfig(mer_beta=0.0)


def test_meta_experience_replay_anchor_survives_resume(tmp_path):
    cfg = dict(steps=6, eval_batches=0, mer_interval=4, mer_beta=0.5)
    straight = Trainer(_cfg(**cfg), train_data=BlockLoader(_blocks(1), 4, seed=3))
    straight.run()
    d = str(tmp_path / "mer")
    Trainer(_cfg(run_dir=d, **dict(cfg, steps=2)), train_data=BlockLoader(_blocks(1), 4, seed=3)).run()
    again = Trainer(_cfg(run_dir=d, **cfg), train_data=BlockLoader(_blocks(1), 4, seed=3), resume=True)
    again.run()
    for a, b in zip(straight.params, again.params):
        torch.testing.assert_close(a.detach(), b.detach())


# ------------------------------------------------------------------ continual runs and the grid
_TINY = dict(batch_size=2, seq_len=16, eval_interval=2, eval_batches=1, device="cpu", model="tiny")


def _synthetic():
    train = {"a": _blocks(11, 40), "b": _blocks(12, 40)}
    val = {"a": _blocks(13, 4), "b": _blocks(14, 4)}
    return train, val


def _tiny_grid():
    cont = ContinualConfig([Phase("a", 4), Phase("b", 4, replay=0.5)], **_TINY)
    return [C.GridRun("cont", cont, "rewarm", 0.5),
            C.GridRun("retrain-AB", ContinualConfig([Phase("b", 8, replay=0.5, replay_domains=("a",))],
                                                    eval_domains=("a",), **_TINY), "cosine", 0.5, "retrain"),
            C.GridRun("scratch-B", ContinualConfig([Phase("b", 4)], eval_domains=("a",), **_TINY),
                      "cosine", 0.0, "scratch")]


def test_grid_resumes_after_interruption_without_redoing_finished_runs(tmp_path):
    train, val = _synthetic()
    out = str(tmp_path / "grid")
    stop = threading.Event()
    seen = []

    def interrupt(event):                       # stop the second run of the grid after 3 updates
        seen.append(event["step"])
        if len(seen) == 8 + 3:
            stop.set()

    C.run_grid("tiny", out, runs=_tiny_grid(), callbacks=[interrupt], stop_event=stop, progress=False,
               train_blocks=train, val_blocks=val)
    assert os.path.exists(os.path.join(out, "cont", "seed0", C.CONTINUAL_FILE))
    assert not os.path.exists(os.path.join(out, "retrain-AB", "seed0", C.CONTINUAL_FILE))
    assert not os.path.exists(os.path.join(out, "scratch-B", "seed0"))
    first = open(os.path.join(out, "cont", "seed0", C.CONTINUAL_FILE)).read()

    steps = []
    table = C.run_grid("tiny", out, runs=_tiny_grid(), callbacks=[lambda e: steps.append(e["step"])],
                       progress=False, train_blocks=train, val_blocks=val)
    # the finished run is not redone; the interrupted one resumes at step 3; the last runs from 0
    assert steps == [3, 4, 5, 6, 7] + [0, 1, 2, 3]
    assert open(os.path.join(out, "cont", "seed0", C.CONTINUAL_FILE)).read() == first
    # the resumed run ends exactly where an uninterrupted one does
    ref = C.run_continual(dataclasses.replace(_tiny_grid()[1].config, seed=0), train_blocks=train, val_blocks=val)
    done = json.load(open(os.path.join(out, "retrain-AB", "seed0", C.CONTINUAL_FILE)))
    assert done["final"] == pytest.approx(ref["final"])
    # the table has every run and the metrics against the baselines
    assert sorted(table["run"]) == ["cont", "retrain-AB", "scratch-B"]
    row = table.set_index("run").loc["cont"]
    b = json.load(open(os.path.join(out, "scratch-B", "seed0", C.CONTINUAL_FILE)))
    assert row["adapt_vs_scratch"] == pytest.approx(row["final_b"] - b["final"]["b"])
    assert row["vs_retrain_b"] == pytest.approx(row["final_b"] - done["final"]["b"])
    assert {"forgetting_a", "gap_depth_a", "gap_duration_b", "frac_to_retrain"} <= set(table.columns)
    # a third call does nothing
    steps.clear()
    C.run_grid("tiny", out, runs=_tiny_grid(), callbacks=[lambda e: steps.append(e["step"])], progress=False,
               train_blocks=train, val_blocks=val)
    assert steps == []


def test_cli_lists_runs_and_prints_tables(tmp_path, monkeypatch):
    from workbench.cli import main

    tiny = dict(_TINY, max_tokens=3000)
    runs = [C.GridRun("cont", ContinualConfig([Phase("stdlib", 2), Phase("docs", 2, replay=0.5)], **tiny),
                      "rewarm", 0.5),
            C.GridRun("scratch-B", ContinualConfig([Phase("docs", 2)], eval_domains=("stdlib",), **tiny),
                      "cosine", 0.0, "scratch")]
    monkeypatch.setitem(C.GRIDS, "cli-test", lambda quick: runs)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["continual", "--list"]) == 0
    assert "replay: rewarm-r00, rewarm-r05, rewarm-r25, retrain-AB, scratch-B" in buf.getvalue()
    out = str(tmp_path / "g")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["continual", "run", "cli-test", "--out", out, "--seeds", "0", "1", "--no-progress"]) == 0
    text = buf.getvalue()
    assert "adapt_vs_scratch" in text and "forgetting_stdlib" in text and "±" in text
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["continual", "table", out, "--per-seed", "--csv", str(tmp_path / "t.csv")]) == 0
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1 + 4 and os.path.exists(tmp_path / "t.csv")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["continual", "table", str(tmp_path / "missing")]) == 2
    assert "no grid.json" in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["continual", "run", "nope", "--out", out]) == 2
    assert "unknown grid" in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["continual", "run", "replay", "--quick", "--steps", "7", "--out", str(tmp_path / "s")]) == 2
    assert "multiple of eval_interval" in err.getvalue()


def test_live_view_draws_one_curve_per_domain():
    from workbench.widgets import LiveTraining

    live = LiveTraining(min_interval=0.0)
    base = len(live.figure.data)
    for s, (a, b) in enumerate([(3.0, 4.0), (2.5, 3.5)]):
        live.update({"step": s, "loss": 3.0, "lr": 1e-3, "val_loss": b, "val_losses": {"A": a, "B": b}})
    names = [t.name for t in live.figure.data[base:]]
    assert names == ["val A", "val B"]
    assert list(live.figure.data[base].y) == [3.0, 2.5] and list(live.figure.data[base + 1].x) == [0, 1]
    steps, vals = live.series("val_losses:A")
    assert steps.tolist() == [0, 1] and vals.tolist() == [3.0, 2.5]
