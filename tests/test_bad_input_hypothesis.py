"""Property-based: no SPEC and no command line makes the CLI exit with a traceback (issue 18).

Every input either works or ends in argparse's usage error or one line ``workbench CMD: error: ...``
(exit 2); "internal error" (an exception the CLI did not expect) fails the test. Training itself is
replaced by the summary of the built trainer, so each example checks the whole validation path
(config, schedule, model, optimizer, run directory) in well under a second.
"""
import json
import math
import os
import tempfile
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import schedules
from workbench.cli import main
from workbench.schedules import FAMILIES, Schedule, schedule_from_dict

def _n(examples: int) -> int:
    """Examples per test; WORKBENCH_FUZZ_SCALE=10 searches ten times longer (CI keeps the default)."""
    return int(examples * float(os.environ.get("WORKBENCH_FUZZ_SCALE", "1")))


KEYS = ["peak_lr", "total_steps", "warmup_steps", "min_lr", "decay_fraction", "decay_steps", "shape", "decay",
        "points", "milestones", "factors", "grad_norms", "schedules", "boundaries", "previous", "cycle_steps",
        "stable_steps", "start_step", "method", "window_fraction", "cooldown_steps", "anneal_steps"]
atoms = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**13), st.floats(allow_nan=True),
                  st.sampled_from(list(FAMILIES) + ["cosine", "linear", "1-sqrt", "adam"]), st.text(max_size=4))
values = st.recursive(atoms, lambda c: st.one_of(st.lists(c, max_size=4),
                                                 st.dictionaries(st.sampled_from(KEYS + ["family"]), c, max_size=4)),
                      max_leaves=10)
small_int = st.integers(1, 300)
valid_specs = st.one_of(
    st.builds(lambda f, p, n, w: {"family": f, "peak_lr": p, "total_steps": n, "warmup_steps": min(w, n - 1)},
              st.sampled_from(["constant", "linear", "cosine", "wsd", "inverse_sqrt"]),
              st.floats(1e-6, 1.0), small_int, st.integers(0, 50)),
    st.builds(lambda pts: {"family": "piecewise", "points": [[i * 10, v] for i, v in enumerate(pts)]},
              st.lists(st.floats(0, 1), min_size=1, max_size=5)),
)
specs = st.one_of(valid_specs, st.builds(lambda f, kw: {"family": f, **kw}, st.sampled_from(list(FAMILIES)),
                                         st.dictionaries(st.sampled_from(KEYS), values, max_size=6)), values)


def _ok_or_one_line(code_or_exit, err):
    assert "Traceback" not in err and "internal error" not in err, err
    assert code_or_exit in (0, 2), (code_or_exit, err)
    if code_or_exit == 2:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("workbench ") and ": error: " in lines[-1], err
        assert len(lines) == 1 or lines[0].startswith("usage:"), err   # ours: one line; argparse: usage + error


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:          # argparse's usage errors (exit 2) and --help (exit 0)
        code = exc.code
    return code, capsys.readouterr().err


@settings(max_examples=_n(400), deadline=None, suppress_health_check=list(HealthCheck))
@given(specs)
def test_schedule_from_dict_returns_a_schedule_or_raises_value_error(spec):
    try:
        s = schedule_from_dict(spec)
    except ValueError:
        return
    assert isinstance(s, Schedule) and 1 <= s.total_steps <= schedules.MAX_TOTAL_STEPS * 2
    for t in (0, s.total_steps - 1, s.total_steps + 5):
        lr = float(s(t))
        assert math.isfinite(lr) and lr >= 0
    assert schedule_from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()


@settings(max_examples=_n(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs, out=st.sampled_from(["lr.csv", ".", "missing/dir/lr.csv", "lr.png", "lr.html", "x"]),
       cmd=st.sampled_from(["export", "plot"]), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_schedule_cli_never_shows_a_traceback(capsys, spec, out, cmd, raw):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "spec.json")
        with open(p, "wb") as f:
            f.write(raw if raw is not None else json.dumps(spec).encode())
        flag = "--csv" if cmd == "export" else "-o"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, err = _run(["schedule", cmd, p, flag, os.path.join(d, out)], capsys)
    _ok_or_one_line(code, err)


_TRAIN_FLAGS = {
    "--steps": st.one_of(st.integers(-2, 50), st.sampled_from(["x", "1e3", ""])),
    "--lr": st.one_of(st.floats(allow_nan=True), st.sampled_from(["x", "-1"])),
    "--warmup-steps": st.integers(-2, 60),
    "--optimizer": st.sampled_from(["adamw", "adam", "sgd", "lion", "lamb", "apollo-mini", "zo", "nope", ""]),
    "--optimizer-kwargs": st.one_of(
        st.sampled_from(['{"foo": 1}', '{"betas": [0.9]}', '{"betas": "x"}', '{"eps": -1}', '[]', '{', '1',
                         '{"momentum": 0.5}', '{"rank": 2}', '{"weight_decay": "a"}']),
        st.dictionaries(st.sampled_from(["betas", "eps", "rank", "foo", "lr", "momentum"]), values,
                        max_size=2).map(json.dumps)),
    "--weight-decay": st.floats(allow_nan=True, allow_infinity=True),
    "--batch-size": st.integers(-1, 8),
    "--seq-len": st.integers(-1, 32),
    "--grad-accum": st.integers(-1, 3),
    "--grad-clip": st.floats(allow_nan=True),
    "--eval-interval": st.integers(-2, 10),
    "--eval-batches": st.integers(-2, 3),
    "--checkpoint-interval": st.integers(-2, 10),
    "--checkpoint-minutes": st.floats(allow_nan=True, allow_infinity=True),
    "--target-val-loss": st.floats(allow_nan=True, allow_infinity=True),
    "--seed": st.integers(-2, 5),
    "--device": st.sampled_from(["cpu", "auto", "gpu", "cuda:x", ""]),
    "--model": st.sampled_from(["tiny", "nope", "/nonexistent/model"]),
    "--schedule": st.sampled_from(["cosine", "wsd", "constant", "nope", "SPEC", "DIR", "/nonexistent.json"]),
    "--data": st.sampled_from(["stdlib", "DIR", "/nonexistent/data"]),
}


@pytest.fixture
def fast_trainer(monkeypatch):
    """Small random data instead of the corpus; the built trainer returns its summary instead of training."""
    import workbench.data as data
    import workbench.train as tr

    def blocks(source, *a, block_size=16, **k):
        if source not in ("stdlib", "docs"):
            raise FileNotFoundError(f"data {source!r} does not exist")
        return torch.randint(0, 256, (16, block_size + 1))
    monkeypatch.setattr(data, "load_blocks", blocks)
    monkeypatch.setattr(tr.Trainer, "run", lambda self: self._write_summary())


@settings(max_examples=_n(40), deadline=None, suppress_health_check=list(HealthCheck))
@given(flags=st.dictionaries(st.sampled_from(sorted(_TRAIN_FLAGS)), st.none(), max_size=6).flatmap(
           lambda d: st.fixed_dictionaries({k: _TRAIN_FLAGS[k] for k in d})),
       spec=valid_specs, resume=st.booleans())
def test_train_cli_never_shows_a_traceback(capsys, fast_trainer, flags, spec, resume):
    with tempfile.TemporaryDirectory() as d:
        argv = ["train", "--no-progress", "--max-tokens", "3000"]
        argv += ["--resume", os.path.join(d, "run")] if resume else ["--run-dir", os.path.join(d, "run")]
        if resume:   # a run to resume: the CLI refuses most flags there, clearly
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code, err = _run(["train", "--run-dir", os.path.join(d, "run"), "--steps", "2", "--seq-len", "16",
                                  "--no-progress", "--device", "cpu"], capsys)
            assert code == 0, err
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec, f)
        for k, v in flags.items():
            v = {"SPEC": os.path.join(d, "spec.json"), "DIR": d}.get(v, v) if isinstance(v, str) else v
            argv += [k, v]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, err = _run(argv, capsys)
    _ok_or_one_line(code, err)


@settings(max_examples=_n(40), deadline=None, suppress_health_check=list(HealthCheck))
@given(a=st.one_of(st.binary(max_size=64), st.sampled_from(["DIR", "MISSING"])),
       b=st.one_of(st.binary(max_size=64), st.sampled_from(["DIR", "MISSING"])),
       suffix=st.sampled_from([".safetensors", ".bin", ".pt", ".txt", ""]),
       extra=st.sampled_from([[], ["--atol", "-1"], ["--atol", "nan"], ["--rtol", "1e-3"], ["--intersect"]]))
def test_sparsity_diff_cli_never_shows_a_traceback(capsys, a, b, suffix, extra):
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, content in enumerate((a, b)):
            if content == "DIR":
                paths.append(d)
            elif content == "MISSING":
                paths.append(os.path.join(d, "missing" + suffix))
            else:
                p = os.path.join(d, f"f{i}{suffix}")
                with open(p, "wb") as f:
                    f.write(content)
                paths.append(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, err = _run(["sparsity", "diff", *paths, *extra], capsys)
    _ok_or_one_line(code, err)


log_lines = st.dictionaries(st.sampled_from(["step", "loss", "val_loss", "time", "tokens", "score", "index"]),
                            atoms, max_size=5).map(json.dumps)


@settings(max_examples=_n(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.one_of(values.map(json.dumps), log_lines, st.text(max_size=20)), max_size=5),
       top=st.sampled_from(["0.5", "1", "0", "-1", "2", "nan", "x", "3"]),
       field=st.sampled_from([None, "score", "index", "nope"]),
       cmd=st.sampled_from(["select", "runs"]))
def test_select_and_runs_show_never_show_a_traceback(capsys, lines, top, field, cmd):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "log.jsonl")
        with open(p, "w") as f:
            f.write("\n".join(lines))
        if cmd == "select":
            argv = ["select", "--scores", p, "--top", top, "--out", os.path.join(d, "top.json")]
            argv += ["--field", field] if field else []
        else:                  # a run directory whose files are random: runs show reads them
            for name in ("summary.json", "config.json"):
                with open(os.path.join(d, name), "w") as f:
                    f.write(lines[0] if lines else "")
            argv = ["runs", "show", d]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, err = _run(argv, capsys)
    _ok_or_one_line(code, err)
