"""Trainer sinks: a run logged with --log tensorboard / wandb, read back with the tools' own readers."""
import json
import os
import struct

import numpy as np
import pytest

from workbench.cli import main
from workbench.curves import read_curve
from workbench.runlog import read_run_log
from workbench.sinks import parse_log_targets
from workbench.train import TrainConfig, train

BASE = dict(model="tiny", data="stdlib", batch_size=4, seq_len=32, max_tokens=20_000, eval_batches=2,
            eval_interval=5, checkpoint_interval=0, progress=False, seed=0, steps=12)


def test_tensorboard_sink_matches_the_run_log(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--steps", "12", "--batch-size", "4", "--seq-len", "32",
                 "--max-tokens", "20000", "--eval-batches", "2", "--eval-interval", "5",
                 "--checkpoint-interval", "0", "--no-progress", "--log", "tensorboard"]) == 0
    log = read_run_log(run / "log.jsonl", dedupe=True)
    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    assert {"train/loss", "train/learning_rate", "eval/loss", "train/grad_norm"} <= set(acc.Tags()["scalars"])
    for key, tag in (("loss", "train/loss"), ("lr", "train/learning_rate"), ("val_loss", "eval/loss")):
        ours = [(e["step"] + 1, e[key]) for e in log if e.get(key) is not None]        # global step = updates done
        theirs = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in theirs] == [s for s, _ in ours], tag
        np.testing.assert_allclose([v for _, v in theirs], [v for _, v in ours], rtol=1e-6, err_msg=tag)
    assert [e["step"] for e in log if "val_loss" in e] == [4, 9, 11]
    # the workbench reads the sink back to the same curve as the run log (HF names: global step - 1)
    tb, jl = read_curve(run / "tensorboard"), read_curve(run / "log.jsonl")
    np.testing.assert_array_equal(tb.steps, jl.steps)
    np.testing.assert_allclose(tb.losses, jl.losses, rtol=1e-6)
    np.testing.assert_allclose(tb.lrs, jl.lrs, rtol=1e-6)
    assert json.load(open(run / "config.json"))["log"] == ["tensorboard"]


def _wandb_records(path):
    """The records of an offline ``.wandb`` file: W&B's LevelDB-log framing (7-byte ':W&B' header,
    32 KiB blocks of chunks: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(buf)
            buf = b""
    return out


def test_wandb_sink_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"
    train(TrainConfig(**BASE, run_dir=str(run), log="wandb"))
    log = read_run_log(run / "log.jsonl", dedupe=True)
    files = [os.path.join(d, f) for d, _, fs in os.walk(run / "wandb") for f in fs if f.endswith(".wandb")]
    assert files, "no offline W&B run written"
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in _wandb_records(files[0]):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    got = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    want = [(e["step"] + 1, e["loss"]) for e in log]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    assert [r["eval/loss"] for r in rows if "eval/loss" in r] == pytest.approx([e["val_loss"] for e in log
                                                                               if "val_loss" in e])


def test_bad_sink_names():
    assert parse_log_targets(["TensorBoard", "tensorboard"]) == ("tensorboard",)
    with pytest.raises(ValueError, match="unknown log sink 'mlflow'; choose from tensorboard, wandb"):
        TrainConfig(log="tensorboard,mlflow")
    with pytest.raises(ValueError, match="run_dir"):
        train(TrainConfig(**BASE, log="tensorboard"))
