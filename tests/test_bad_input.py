"""Bad input gets a clear one-line error naming the problem (never a traceback, never a silent wrong answer).

Issue 18, "Bad input": NaN in a fine-tuned tensor, a bf16 checkpoint resumed into an fp32 run, SPEC
files, a directory as an output path, unknown optimizer arguments, truncated/garbage/malicious
checkpoints, broken safetensors headers and a sharded index pointing outside its folder.
"""
import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from workbench import checkpoint as ckpt
from workbench.cli import main
from workbench.schedules import load_schedule, schedule_from_dict
from workbench.sparsity import diff_checkpoints
from workbench.tensorfiles import read_safetensors_header, read_sharded_index
from workbench.train import TrainConfig, Trainer, train


def cli(capsys, *argv):
    """Run the CLI in-process: (exit code, stderr); a traceback would fail the test by raising."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


# ---------------------------------------------------------------------------------------- sparsity diff
def test_nan_in_a_tuned_tensor_counts_as_changed_and_warns():
    n = 1_082_496                                     # the tensor size
    base = {"model.norm.weight": torch.ones(n)}
    tuned = {"model.norm.weight": torch.ones(n)}
    tuned["model.norm.weight"][17] = float("nan")
    with pytest.warns(RuntimeWarning, match="1 entries in 1 tensors .* NaN"):
        d = diff_checkpoints(base, tuned)
    assert d.overall["changed"] == 1 and d.overall["sparsity"] == 1 - 1 / n    # was "0 changed, sparsity 1.0"
    assert d.tensors[0]["delta_norm"] == 0.0                                 # no NaN norm shown


def test_nan_matrix_gives_no_rank_instead_of_linalg_error():
    base = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(6, 5)}
    tuned = {"model.layers.0.self_attn.q_proj.weight": torch.full((6, 5), float("nan"))}
    tuned["model.layers.0.self_attn.q_proj.weight"][0, 0] = 1.0
    with pytest.warns(RuntimeWarning, match="29 entries"):
        d = diff_checkpoints(base, tuned)
    row = d.tensors[0]
    assert row["changed"] == 30 and row["rank"] is None and row["delta_norm"] == 1.0
    assert d.grid().loc[0, "q_proj"] == 0.0                                  # cached histograms agree


def test_bit_equal_nans_are_unchanged_on_both_paths():
    for changed in (2, 40):                            # sparse path (< 1/4 differ) and dense path
        base = torch.zeros(64)
        base[0] = float("nan")
        tuned = base.clone()
        tuned[1:1 + changed] = 1.0
        d = diff_checkpoints({"w": base}, {"w": tuned})
        assert d.tensors[0]["changed"] == changed and d.tensors[0]["nan_changed"] == 0


# ---------------------------------------------------------------------------------------- safetensors files
def _raw_safetensors(path, header: bytes, n=None, data=b""):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header) if n is None else n) + header + data)


@pytest.mark.parametrize("case, message", [
    ("huge", "header length 4611686018427387904 is larger than the file"),
    ("short", "fewer than the 8-byte header length"),
    ("nodtype", "tensor 'w' has no dtype"),
    ("badoffsets", "outside the"),
    ("notjson", "header is not JSON"),
])
def test_broken_safetensors_headers_are_refused(tmp_path, capsys, case, message):
    p = tmp_path / "tuned.safetensors"
    if case == "huge":
        _raw_safetensors(p, b"{}", n=2 ** 62)
    elif case == "short":
        p.write_bytes(b"\x01\x02\x03")
    elif case == "nodtype":
        _raw_safetensors(p, json.dumps({"w": {"shape": [2], "data_offsets": [0, 8]}}).encode(), data=bytes(8))
    elif case == "badoffsets":
        _raw_safetensors(p, json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(),
                         data=bytes(4))
    else:
        _raw_safetensors(p, b"\xff\xfe not json")
    with pytest.raises(ValueError, match=message):
        read_safetensors_header(p)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "base.safetensors"))
    code, err = cli(capsys, "sparsity", "diff", tmp_path / "base.safetensors", p)
    one_line_error(code, err, str(p), message)


def test_sharded_index_pointing_outside_its_folder_is_refused(tmp_path, capsys):
    outside = tmp_path / "secret.safetensors"
    save_file({"w": torch.zeros(2)}, str(outside))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(ValueError, match="points outside the model folder"):
        read_sharded_index(model / "model.safetensors.index.json")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "/etc/passwd"}}))
    code, err = cli(capsys, "sparsity", "diff", outside, model)
    one_line_error(code, err, "points outside the model folder", "/etc/passwd")
    # a well-formed index next to its shards still works
    save_file({"w": torch.ones(2)}, str(model / "shard-1.safetensors"))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "shard-1.safetensors"}}))
    assert diff_checkpoints(outside, model).overall["changed"] == 2


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_pytorch_model_bin_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": Evil()}, model / "pytorch_model.bin")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "base.safetensors"))
    code, err = cli(capsys, "sparsity", "diff", tmp_path / "base.safetensors", model)
    one_line_error(code, err, "refusing to load", "pytorch_model.bin")
    assert not (tmp_path / "pwned.txt").exists()


# ---------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run with its blocks; tests copy it before breaking it."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (32, 17), generator=g)
    run = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(run_dir=str(run), steps=4, batch_size=2, seq_len=16, eval_batches=0, schedule="cosine",
                      progress=False, device="cpu", checkpoint_interval=2), train_data=blocks)
    return run, blocks


def _broken_copy(finished_run, tmp_path):
    run, blocks = finished_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst, ckpt.latest_checkpoint(dst), blocks


def _resume_error(run, blocks):
    with pytest.raises(ValueError) as info:
        Trainer(TrainConfig.from_dict({**json.loads((run / "config.json").read_text()), "run_dir": str(run),
                                       "steps": 4}), train_data=blocks, resume=True)
    return str(info.value)


def test_bf16_weights_refused_on_resume_of_an_fp32_run(finished_run, tmp_path):
    run, latest, blocks = _broken_copy(finished_run, tmp_path)
    from safetensors.torch import load_file

    w = load_file(os.path.join(latest, ckpt.MODEL_FILE))
    save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, os.path.join(latest, ckpt.MODEL_FILE),
              metadata={"step": "4"})
    msg = _resume_error(run, blocks)
    assert "bfloat16 but the run's model holds float32" in msg and ckpt.MODEL_FILE in msg


@pytest.mark.parametrize("what", ["truncated state", "garbage state", "garbage weights", "evil state",
                                  "missing weights", "garbage pointer"])
def test_broken_checkpoints_refused_on_resume(finished_run, tmp_path, capsys, monkeypatch, what):
    run, latest, blocks = _broken_copy(finished_run, tmp_path)
    state, weights = os.path.join(latest, ckpt.STATE_FILE), os.path.join(latest, ckpt.MODEL_FILE)
    if what == "truncated state":
        data = open(state, "rb").read()
        open(state, "wb").write(data[: len(data) // 2])
        needle = "truncated"
    elif what == "garbage state":
        open(state, "wb").write(np.random.default_rng(0).bytes(3000))
        needle = "not a readable torch file"
    elif what == "garbage weights":
        open(weights, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
        needle = "not a valid safetensors file"
    elif what == "evil state":
        monkeypatch.chdir(tmp_path)
        torch.save({"step": 4, "x": Evil()}, state)
        needle = "refusing to load"
    elif what == "missing weights":
        os.remove(weights)
        needle = "model.safetensors is missing"
    else:
        (run / "checkpoints" / "latest").write_bytes(b"\x00garbage")
        needle = "does not name a checkpoint"
    msg = _resume_error(run, blocks)
    assert needle in msg
    assert not (tmp_path / "pwned.txt").exists()
    # the CLI says the same in one line (the run's data was a Python object, so resume a stdlib copy)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = "stdlib"
    (run / "config.json").write_text(json.dumps(cfg))
    code, err = cli(capsys, "train", "--resume", run, "--steps", 4, "--no-progress")
    one_line_error(code, err, needle)


# ---------------------------------------------------------------------------------------- SPEC files
@pytest.mark.parametrize("spec, message", [
    ({"family": "cosine", "peak_lr": 1e-3, "total_steps": True}, "total_steps must be an integer"),
    ({"family": "cosine", "peak_lr": 1e-3, "total_steps": 1e12}, "total_steps must be <= 1000000000"),
    ({"family": "rewarm", "peak_lr": 1e-3, "cycle_steps": 10}, "rewarm needs 'previous'"),
    ({"family": "piecewise", "points": [[1]]}, "a list of [step, lr] pairs"),
    ({"family": "piecewise", "points": 7}, "a list of [step, lr] pairs"),
    ({"family": "piecewise", "points": [[0, "x"]]}, "points[0] lr must be a real number"),
    ({"family": "join", "schedules": 3, "boundaries": []}, "join needs 'schedules'"),
    ({"family": "cosine", "peak_lr": 1e-3, "total_steps": 10, "foo": 1}, "bad arguments for schedule family"),
])
def test_bad_specs_are_refused(tmp_path, capsys, spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        schedule_from_dict(spec)
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(spec))
    code, err = cli(capsys, "schedule", "export", p, "--csv", tmp_path / "lr.csv")
    one_line_error(code, err, str(p), message)


def test_900_deep_join_is_refused(tmp_path, capsys):
    leaf = {"family": "constant", "peak_lr": 0.1, "total_steps": 10}
    spec, text = leaf, json.dumps(leaf)
    for i in range(900):
        spec = {"family": "join", "schedules": [spec, leaf], "boundaries": [10 * (i + 1)]}
        text = f'{{"family": "join", "schedules": [{text}, {json.dumps(leaf)}], "boundaries": [{10 * (i + 1)}]}}'
    with pytest.raises(ValueError, match="more than 32 levels deep"):
        schedule_from_dict(spec)
    p = tmp_path / "deep.json"
    p.write_text(text)
    code, err = cli(capsys, "schedule", "export", p, "--csv", tmp_path / "lr.csv")
    one_line_error(code, err, str(p), "flatten")
    with pytest.raises(ValueError):
        load_schedule(p)


def test_directory_as_output_or_spec(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"family": "cosine", "peak_lr": 1e-3, "total_steps": 10}))
    code, err = cli(capsys, "schedule", "export", spec, "--csv", tmp_path)
    one_line_error(code, err, f"{tmp_path}: is a directory")
    code, err = cli(capsys, "schedule", "export", tmp_path, "--csv", tmp_path / "a.csv")
    one_line_error(code, err, "is a directory; give the SPEC.json file")
    code, err = cli(capsys, "schedule", "plot", spec, "-o", tmp_path)
    one_line_error(code, err, str(tmp_path))
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"index": 0, "score": 1.0}\n{"index": 1, "score": 2.0}\n')
    code, err = cli(capsys, "select", "--scores", scores, "--top", 0.5, "--out", tmp_path)
    one_line_error(code, err, f"{tmp_path}: is a directory")
    code, err = cli(capsys, "select", "--scores", tmp_path, "--top", 0.5, "--out", tmp_path / "top.json")
    one_line_error(code, err, f"{tmp_path}: is a directory")


def test_lrs_refuses_a_huge_array_before_allocating():
    s = schedule_from_dict({"family": "cosine", "peak_lr": 1e-3, "total_steps": 300_000_000})
    with pytest.raises(ValueError, match="2.2 GiB"):
        s.lrs()
    assert s(299_999_999) == pytest.approx(0.0, abs=1e-12)       # evaluating at steps still works


# ---------------------------------------------------------------------------------------- optimizer kwargs
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_unknown_optimizer_kwargs_refused(optimizer):
    from workbench.models import build_model
    from workbench.train import build_optimizer

    model = build_model("tiny", vocab_size=256, seed=0, max_seq_len=16)
    cfg = TrainConfig(optimizer=optimizer, optimizer_kwargs={"foo": 1})
    with pytest.raises(ValueError, match=f"optimizer '{optimizer}' does not take 'foo'"):
        build_optimizer(optimizer, model, cfg)


def test_cli_optimizer_kwargs_foo_is_one_line(tmp_path, capsys, monkeypatch):
    import workbench.data as data

    g = torch.Generator().manual_seed(0)
    monkeypatch.setattr(data, "load_blocks", lambda *a, **k: torch.randint(0, 256, (16, 17), generator=g))
    code, err = cli(capsys, "train", "--run-dir", tmp_path / "r", "--steps", 2, "--seq-len", 16,
                    "--optimizer-kwargs", '{"foo": 1}')
    one_line_error(code, err, "does not take 'foo'")
    assert not (tmp_path / "r").exists()            # the refused run leaves nothing behind
