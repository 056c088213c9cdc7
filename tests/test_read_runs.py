"""read_runs / curves show: runs in the formats people keep them in (tests/fixtures/runs, made by
tests/fixtures/make_runs.py with the real libraries), checked against the values each file holds."""
import glob
import json
import os
import struct
import sys
import time
import tracemalloc
import types

import numpy as np
import pytest

from workbench import cli, curves
from workbench.curves import read_curve, read_runs
from workbench.tfevents import encode_scalar_event, encode_varint as _varint, frame, scalars

RUNS = os.path.join(os.path.dirname(__file__), "fixtures", "runs")
TRUTH = json.load(open(os.path.join(RUNS, "truth.json")))
HF_TB = glob.glob(os.path.join(RUNS, "hf_output", "runs", "*"))[0]
CURVES_124M = glob.glob(os.path.join(RUNS, "curves124m", "*.json"))[0]

# (path, run=, truth key, losses stored as float32?)
CASES = [
    ("hf_output", None, "hf_output", False),
    (os.path.relpath(HF_TB, RUNS), None, "hf_output", True),          # HF's own TensorBoard callback
    ("tensorboard", "exp1/seed1", "tensorboard/exp1/seed1", True),
    ("tensorboard/exp2", None, "tensorboard/exp2", True),
    ("wandb/nanogpt_history.csv", None, "wandb", False),
    ("wandb/nanogpt_history.json", None, "wandb", False),
    ("wandb/nanogpt_history.parquet", None, "wandb", False),
    ("lightning", None, "lightning", False),
    (os.path.relpath(CURVES_124M, RUNS), None, "curves124m", False),
    ("workbench_run", None, "workbench_run", False),
]


@pytest.mark.parametrize("path, run, key, f32", CASES, ids=[c[0].split("/")[0] + (f":{c[1]}" if c[1] else "")
                                                            for c in CASES])
def test_fixture_reads_to_its_steps_losses_and_lrs(path, run, key, f32):
    truth = TRUTH[key]
    c = read_curve(os.path.join(RUNS, path), run=run)
    np.testing.assert_array_equal(c.steps, truth["steps"])
    np.testing.assert_allclose(c.losses, truth["losses"], rtol=1e-6 if f32 else 1e-9)   # pandas writes 10 digits
    # the LR at every logged step is the logged LR (the 124M one is rebuilt from the config)
    np.testing.assert_allclose(c.lrs[truth["lr_steps"]], truth["lrs"], rtol=1e-6 if f32 else 1e-9,
                               atol=1e-10)                                # pandas' JSON: 10 decimals


def test_runs_listed_with_formats_and_metrics():
    runs = {r.name: r for r in read_runs(RUNS)}
    assert {n: r.format for n, r in runs.items() if not n.startswith("hf_output/runs")} == {
        os.path.relpath(CURVES_124M, RUNS): "curves124m_json", "hf_output": "hf_trainer_state",
        "lightning/lightning_logs/version_0": "lightning_csv", "tensorboard/exp1/seed0": "tensorboard",
        "tensorboard/exp1/seed1": "tensorboard", "tensorboard/exp2": "tensorboard",
        "wandb/nanogpt_history.csv": "csv", "wandb/nanogpt_history.json": "wandb_json",
        "wandb/nanogpt_history.parquet": "wandb_parquet", "workbench_run": "run_log"}
    assert runs["tensorboard/exp2"].metrics == ["lr", "val/loss"]          # the histogram is not a scalar
    hf_tb = runs[os.path.relpath(HF_TB, RUNS).replace(os.sep, "/")]
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(hf_tb.metrics)
    # a folder with several runs needs run=, and the error lists them
    with pytest.raises(ValueError, match=r"holds 3 runs \(exp1/seed0, exp1/seed1, exp2\).*--run"):
        read_curve(os.path.join(RUNS, "tensorboard"))
    with pytest.raises(ValueError, match="no run 'exp3'; runs found: exp1/seed0"):
        read_curve(os.path.join(RUNS, "tensorboard"), run="exp3")


def test_step_key_order_and_the_step_fallback_warning(tmp_path):
    # the nanoGPT export: iter (250..5000) wins over W&B's _step (0..19)
    c = read_curve(os.path.join(RUNS, "wandb", "nanogpt_history.csv"))
    ch = c.meta["choices"]
    assert (ch["step_key"], ch["loss_key"], ch["lr_key"]) == ("iter", "val/loss", "lr")
    assert c.steps[:2].tolist() == [250, 500]
    p = tmp_path / "h.csv"
    p.write_text("_step,train/loss,lr\n0,3.0,1e-3\n1,2.9,1e-3\n")
    with pytest.warns(UserWarning, match="using W&B's '_step', which counts wandb.log calls"):
        c = read_curve(p)
    assert c.meta["choices"]["notes"]
    for col in ("step", "iter", "iteration", "global_step", "trainer/global_step"):
        p.write_text(f"_step,{col},loss,lr\n0,10,3.0,1e-3\n1,20,2.9,1e-3\n")
        assert read_curve(p).steps.tolist() == [10, 20], col
    # the HF folder's global_step is shifted to 0-based updates, and --step-offset overrides it
    hf = os.path.join(RUNS, "hf_output")
    assert read_curve(hf, step_offset=0).steps.tolist() == [s + 1 for s in TRUTH["hf_output"]["steps"]]


def test_lr_from_a_schedule_when_the_log_has_none(tmp_path):
    from workbench import schedules

    s = schedules.cosine(peak_lr=1e-3, total_steps=100, warmup_steps=10)
    spec = tmp_path / "SPEC.json"
    schedules.save_schedule(s, spec)
    p = tmp_path / "metrics.csv"
    p.write_text("iter,loss\n" + "".join(f"{t},{3 - t / 100}\n" for t in range(10, 100, 10)))
    with pytest.raises(ValueError, match=r"no lr column.*--schedule SPEC.json"):
        read_curve(p)
    c = read_curve(p, schedule=s)
    np.testing.assert_array_equal(c.lrs, s.lrs())
    assert c.meta["choices"]["lr_source"] == "the schedule given (--schedule)"
    # an HF output folder with the schedule saved next to it (the WorkbenchCallback does that)
    d = tmp_path / "hf"
    d.mkdir()
    hist = [{"step": t, "loss": 3 - t / 100, "epoch": t / 100} for t in range(10, 101, 10)]
    (d / "trainer_state.json").write_text(json.dumps({"log_history": hist, "global_step": 100}))
    schedules.save_schedule(s, d / "schedule.json")
    c = read_curve(d)
    np.testing.assert_array_equal(c.lrs, s.lrs())
    assert c.steps.tolist() == list(range(9, 100, 10))
    assert "saved with the run" in c.meta["choices"]["lr_source"]


def test_124m_lrs_rebuilt_from_config_match_every_logged_lr():
    """The LR rebuilt from each 124M run's config equals its logged train_lr at every logged step."""
    files = sorted(glob.glob("/work/shared/data/curves-124m/*.json")) or [CURVES_124M]
    worst = 0.0
    for f in files:
        run = curves.read_runs(f)[0]
        data = json.load(open(f))["history"]["train"]
        it, lr = np.array(data["iter"]), np.array(data["train_lr"])
        worst = max(worst, float(np.max(np.abs(run.lrs[it] - lr) / np.max(lr))))
    assert worst < 1e-6, worst


@pytest.mark.parametrize("path, run", [("hf_output", None), ("tensorboard", "exp1/seed0"),
                                       ("wandb/nanogpt_history.json", None), ("lightning", None),
                                       (os.path.relpath(CURVES_124M, RUNS), None), ("workbench_run", None)])
def test_cli_curves_fit_on_each_format(path, run, tmp_path, capsys):
    out = tmp_path / "FIT.json"
    argv = ["curves", "fit", os.path.join(RUNS, path), "--out", str(out), "--no-validate"]
    assert cli.main(argv + (["--run", run] if run else [])) == 0
    assert json.load(open(out))["law"] == "multipower"
    err = capsys.readouterr().err
    assert "step key" in err and "loss key" in err and "LR from" in err          # every choice printed
    assert cli.main(["curves", "predict", str(out), os.path.join(RUNS, path), "--json"]
                    + (["--run", run] if run else [])) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["r2"] > 0.5


def test_cli_curves_show_and_reader_flags(capsys):
    assert cli.main(["curves", "show", RUNS]) == 0
    out = capsys.readouterr().out
    assert "11 run(s)" in out and "tensorboard/exp1/seed1  [tensorboard" in out
    assert "step key 'iter', loss key 'val/loss'" in out
    csv = os.path.join(RUNS, "wandb", "nanogpt_history.csv")
    assert cli.main(["curves", "show", csv, "--step-key", "_step", "--loss-key", "train/loss",
                     "--lr-key", "lr", "--step-offset", "5"]) == 0
    out = capsys.readouterr().out
    assert "step key '_step' +5 (given), loss key 'train/loss'" in out and "steps 5..24" in out
    assert cli.main(["curves", "show", csv, "--loss-key", "nope"]) == 0
    assert "cannot fit as is" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("step", ["1e12", "1e20", "3e8", "inf"])
def test_huge_steps_refused_before_allocating(tmp_path, step, capsys):
    p = tmp_path / "big.csv"
    p.write_text(f"step,lr,loss\n0,1e-3,3.0\n{step},1e-3,2.0\n")
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"big.csv, line 3: step .* is beyond 100,000,000 steps.*--step-key"):
        read_curve(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6
    assert cli.main(["curves", "fit", str(p), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "big.csv, line 3" in err[0]
    # a schedule whose horizon is too long is refused the same way
    from workbench import schedules

    q = tmp_path / "ok.csv"
    q.write_text("step,loss\n0,3.0\n")
    with pytest.raises(ValueError, match="longer than 100,000,000"):
        read_curve(q, schedule=schedules.constant(peak_lr=1e-3, total_steps=300_000_000))


@pytest.mark.parametrize("name", ["garbage.csv", "garbage", "garbage.json", "garbage.jsonl", "garbage.parquet",
                                  "events.out.tfevents.1.host"])
def test_binary_garbage_names_the_file(tmp_path, name, capsys):
    p = tmp_path / name
    p.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_curve(p)
    assert cli.main(["curves", "show", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "Traceback" not in err[0]


def test_wandb_api_scan_history(monkeypatch):
    """wandb:ENTITY/PROJECT/ID reads the full history with scan_history (a stand-in module here:
    nothing is fetched in tests)."""
    seen = {}

    class FakeRun:
        def scan_history(self):
            return iter([{"_step": i, "iter": 100 * i, "lr": 1e-3, "val/loss": 3.0 - 0.1 * i} for i in range(1, 6)])

    class FakeApi:
        def run(self, path):
            seen["path"] = path
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    c = read_curve("wandb:me/proj/abc123")
    assert seen["path"] == "me/proj/abc123" and c.steps.tolist() == [100, 200, 300, 400, 500]
    assert c.meta["format"] == "wandb_api"
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match="needs the wandb package"):
        read_curve("wandb:me/proj/abc123")


# --------------------------------------------------------------------------- TensorBoard streaming
def test_tensorboard_partial_last_record_is_skipped(tmp_path):
    body = b"".join(frame(encode_scalar_event(t, "loss", 3.0 - t / 100)) for t in range(10))
    body += frame(encode_scalar_event(10, "lr", 1e-3))
    p = tmp_path / "events.out.tfevents.2.host"
    for cut in (1, 5, 14, 20):                              # inside the header, the body, the last CRC
        p.write_bytes(body[:-cut])
        with pytest.warns(RuntimeWarning, match="partial record at the end of the file skipped"):
            got = [s[1:] for s in scalars(p)]
        assert got == [("loss", t, pytest.approx(3.0 - t / 100)) for t in range(10)]



def test_tensorboard_100mb_file_streams(tmp_path):
    """A 100 MB events file (mostly image-sized records, as real big ones are) reads in bounded memory."""
    p = tmp_path / "events.out.tfevents.3.host"
    # an image summary as add_image writes it: Event{step, summary{value{tag, image{h, w, png bytes}}}}
    image = b"\x08\x80\x02\x10\x80\x02\x18\x03" + b"\x22\x80\x80\x10" + bytes(262144)   # 256 KiB "png"
    value = b"\x0a\x03img" + b"\x22" + _varint(len(image)) + image
    summary = b"\x0a" + _varint(len(value)) + value
    blob = frame(b"\x10\x01" + b"\x2a" + _varint(len(summary)) + summary)
    n_blob = 100 * 1024 * 1024 // len(blob) + 1
    with open(p, "wb") as f:
        for t in range(n_blob):
            f.write(blob)
            f.write(frame(encode_scalar_event(t, "lr", 1e-3)) + frame(encode_scalar_event(t, "loss", 4.0 - t / 1000)))
    assert os.path.getsize(p) > 100 * 1024 * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    c = read_curve(p)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert c.steps.tolist() == list(range(n_blob))
    np.testing.assert_allclose(c.losses, 4.0 - c.steps / 1000, rtol=1e-6)
    assert peak < 10e6, peak                               # never the whole file in memory
    print(f"100 MB events file read in {elapsed:.2f} s, peak traced memory {peak / 1e6:.1f} MB")


def test_tensorboard_reader_matches_tensorboards_own(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    d = os.path.join(RUNS, "tensorboard", "exp1", "seed0")
    acc = ea.EventAccumulator(d, size_guidance={ea.SCALARS: 0})
    acc.Reload()
    run = read_runs(d)[0]
    for tag in acc.Tags()["scalars"]:
        theirs = [(e.step, e.value) for e in acc.Scalars(tag)]
        ours = [(r["step"], r[tag]) for _, r in run.records if tag in r]
        assert ours == [(s, pytest.approx(v, rel=1e-7)) for s, v in theirs]


# --------------------------------------------------------------------------- any input: an answer or a clear error
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CELLS = st.one_of(st.integers(-3, 10**21), st.floats(allow_nan=True, allow_infinity=True), st.just(""),
                   st.text(max_size=5), st.none(), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["csv", "json", "jsonl", "bytes", "tfevents"]),
       rows=st.lists(st.dictionaries(st.sampled_from(["step", "iter", "_step", "lr", "loss", "val_loss", "x"]),
                                     _CELLS, max_size=5), max_size=6),
       raw=st.binary(max_size=200))
def test_readers_answer_or_raise_a_clear_error(tmp_path_factory, kind, rows, raw):
    import warnings

    d = tmp_path_factory.mktemp("h")
    if kind == "csv":
        cols = sorted({k for r in rows for k in r}) or ["step"]
        text = ",".join(cols) + "\n" + "".join(",".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows)
        p = d / "run.csv"
        p.write_text(text)
    elif kind == "json":
        p = d / "run.json"
        p.write_text(json.dumps(rows))
    elif kind == "jsonl":
        p = d / "log.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows))
    elif kind == "bytes":
        p = d / "run.csv"
        p.write_bytes(raw)
    else:
        p = d / "events.out.tfevents.9.host"
        p.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c = read_curve(p)
        except (ValueError, FileNotFoundError) as exc:
            assert str(p) in str(exc) or p.name in str(exc), str(exc)
            return
    assert np.all(c.losses > 0) and np.all(np.isfinite(c.lrs)) and c.total_steps <= curves.MAX_STEPS


def test_cli_schedule_from_hf_training_arguments_json(tmp_path, capsys):
    from transformers import TrainingArguments

    from workbench import schedules

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=10,
                             max_steps=100, report_to=[], use_cpu=True)
    (tmp_path / "args.json").write_text(args.to_json_string())
    p = tmp_path / "metrics.csv"
    p.write_text("iter,loss\n" + "".join(f"{t},{3 - t / 100}\n" for t in range(10, 100, 10)))
    assert cli.main(["curves", "show", str(p), "--schedule", str(tmp_path / "args.json")]) == 0
    out = capsys.readouterr().out
    assert "LR from the schedule given (--schedule)" in out and "100 steps of LR, peak 0.001, warmup 10" in out
    c = read_curve(p, schedule=schedules.Schedule.from_hf(json.loads(args.to_json_string())))
    np.testing.assert_allclose(c.lrs, schedules.cosine(peak_lr=1e-3, total_steps=100, warmup_steps=10).lrs())
