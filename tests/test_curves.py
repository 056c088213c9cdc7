"""Loss-curve readers: CSV, trainer run logs, W&B exports, TensorBoard event files."""
import json
import struct
import warnings

import numpy as np
import pytest

from workbench import schedules
from workbench.curves import LossCurve, read_csv, read_curve, read_run_log, read_tensorboard, read_wandb


def _write(path, text):
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- CSV
def test_csv_sparse_log_starting_after_warmup(tmp_path):
    # LR listed at steps 100, 300, 500 only; losses at 300 and 500
    p = _write(tmp_path / "run.csv", "step,lr,loss,tokens\n100,2e-3,,9\n300,1e-3,3.0,9\n500,1e-3,2.5,9\n")
    c = read_csv(p)
    assert c.total_steps == 501 and c.name == "run"
    assert c.steps.tolist() == [300, 500] and c.losses.tolist() == [3.0, 2.5]
    # before the first listed step: linear warmup from 0; between listed steps: linear
    assert c.lrs[0] == 0.0 and c.lrs[50] == pytest.approx(1e-3) and c.lrs[100] == pytest.approx(2e-3)
    assert c.lrs[200] == pytest.approx(1.5e-3) and c.lrs[400] == pytest.approx(1e-3)
    assert c.warmup == 100                                           # the LR peaks at step 100
    assert c.meta["loss_key"] == "loss" and c.meta["format"] == "csv"


def test_csv_every_step_matches_the_schedule(tmp_path):
    s = schedules.wsd(peak_lr=1e-3, total_steps=300, warmup_steps=20, decay_fraction=0.3, decay="1-sqrt")
    p = str(tmp_path / "lr.csv")
    schedules.export_csv(s, p)                                    # step,lr for every step, no loss column
    with pytest.raises(ValueError, match="line 1: no loss column"):
        read_csv(p)
    steps = np.arange(20, 300, 7)
    c = LossCurve.from_schedule(s, steps, 3.0 - steps / 1000)
    c.to_csv(tmp_path / "c.csv")
    d = read_csv(tmp_path / "c.csv")
    np.testing.assert_array_equal(d.lrs, s.lrs())
    np.testing.assert_array_equal(d.steps, steps)
    np.testing.assert_array_equal(d.losses, c.losses)


def test_csv_repeated_and_reordered_steps_warn_and_keep_the_last(tmp_path):
    p = _write(tmp_path / "resumed.csv",
               "step,lr,loss\n0,1e-3,5.0\n10,1e-3,4.0\n20,1e-3,3.5\n10,1e-3,4.1\n20,1e-3,3.4\n30,1e-3,3.0\n5,1e-3,4.5\n")
    with pytest.warns(UserWarning, match=r"2 repeated step\(s\) and 1 out-of-order step\(s\).*kept the last"):
        c = read_csv(p)
    assert c.steps.tolist() == [0, 5, 10, 20, 30]
    assert c.losses.tolist() == [5.0, 4.5, 4.1, 3.4, 3.0]


@pytest.mark.parametrize("body, line, msg", [
    ("0,1e-3,3.0\n1,1e-3,-2.0\n", 3, "not a positive finite number"),
    ("0,1e-3,3.0\n1,1e-3,0\n", 3, "not a positive finite number"),
    ("0,1e-3,3.0\n1,1e-3,nan\n2,1e-3,2.0\n", 3, "not a positive finite number"),
    ("0,1e-3,3.0\n1,1e-3,inf\n", 3, "not a positive finite number"),
    ("0,1e-3,3.0\n1,-1e-3,2.0\n", 3, "negative"),
    ("0,1e-3,3.0\n1,1e-3,abc\n", 3, "not a number"),
    ("0,1e-3,3.0\n1.5,1e-3,2.0\n", 3, "not a whole number"),
    ("0,1e-3,3.0\n,1e-3,2.0\n", 3, "every row needs a step"),
])
def test_csv_bad_values_name_file_line_and_fix(tmp_path, body, line, msg):
    p = _write(tmp_path / "bad.csv", "step,lr,loss\n" + body)
    with pytest.raises(ValueError, match=msg) as e:
        read_csv(p)
    assert f"bad.csv, line {line}" in str(e.value)


def test_csv_missing_columns(tmp_path):
    p = _write(tmp_path / "nolr.csv", "step,loss\n0,3.0\n")
    with pytest.raises(ValueError, match=r"nolr.csv, line 1: no lr column.*pass lr_key="):
        read_csv(p)
    s = schedules.constant(peak_lr=1e-3, total_steps=10)
    c = read_csv(p, schedule=s)                                      # the schedule supplies the LR
    np.testing.assert_array_equal(c.lrs, s.lrs())
    p = _write(tmp_path / "nostep.csv", "lr,loss\n1e-3,3.0\n")
    with pytest.raises(ValueError, match="no step column"):
        read_csv(p)
    p = _write(tmp_path / "empty.csv", "step,lr,loss\n0,1e-3,\n1,1e-3,\n")
    with pytest.raises(ValueError, match="no loss values"):
        read_csv(p)
    with pytest.raises(FileNotFoundError):
        read_csv(tmp_path / "missing.csv")


def test_csv_logged_lr_disagreeing_with_the_schedule_warns(tmp_path):
    p = _write(tmp_path / "run.csv", "step,lr,loss\n0,1e-3,3.0\n5,2e-3,2.0\n")
    with pytest.warns(UserWarning, match="line 3: logged lr 0.002 differs from the schedule"):
        read_csv(p, schedule=schedules.constant(peak_lr=1e-3, total_steps=10))


# --------------------------------------------------------------------------- trainer run logs
def _run_log(path, s, n, every=5, resume_from=None):
    lines = []
    for t in range(n):
        ev = {"step": t, "tokens": 64 * (t + 1), "lr": s(t), "loss": 5.0 - 0.01 * t, "time": 0.1 * t}
        if (t + 1) % every == 0:
            ev["val_loss"] = 4.0 - 0.01 * t
        lines.append(json.dumps(ev))
    if resume_from is not None:                                      # a resumed run repeats steps
        for t in range(resume_from, n):
            ev = json.loads(lines[t])
            ev["val_loss" if "val_loss" in ev else "loss"] -= 0.001
            lines.append(json.dumps(ev))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_run_log_step_convention(tmp_path):
    s = schedules.cosine(peak_lr=1e-3, total_steps=40, warmup_steps=4)
    p = _run_log(tmp_path / "log.jsonl", s, 40)
    c = read_run_log(p)
    # val_loss of event t is the loss after t+1 updates: step t
    assert c.meta["loss_key"] == "val_loss" and c.steps.tolist() == [4, 9, 14, 19, 24, 29, 34, 39]
    assert c.losses[0] == pytest.approx(4.0 - 0.04)
    np.testing.assert_allclose(c.lrs, s.lrs())                        # every step logged: exact LRs
    assert c.warmup == 4 and c.name == tmp_path.name
    # the train loss of event t was measured before update t+1: it is the loss at step t-1
    tr = read_run_log(p, loss_key="loss")
    assert tr.steps.tolist() == list(range(39))
    assert tr.losses[0] == pytest.approx(5.0 - 0.01)                   # event 1's train loss
    # a run directory works too
    assert read_curve(tmp_path).steps.tolist() == c.steps.tolist()


def test_run_log_resumed_run_keeps_last_occurrence(tmp_path):
    s = schedules.constant(peak_lr=1e-3, total_steps=30)
    p = _run_log(tmp_path / "log.jsonl", s, 30, resume_from=20)
    with open(p, "a") as f:
        f.write('{"step": 30, "lr": 0.001, "lo')                        # cut short by a crash
    with pytest.warns(UserWarning, match="repeated step"), pytest.warns(RuntimeWarning, match="final line"):
        c = read_run_log(p)
    assert c.steps.tolist() == [4, 9, 14, 19, 24, 29]
    assert c.losses[-1] == pytest.approx(4.0 - 0.29 - 0.001)            # the resumed run's value


def test_run_log_bad_value_names_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 0, "lr": 0.001, "loss": 3.0}\n{"step": 1, "lr": 0.001, "loss": -1}\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 2: loss -1.0 is not a positive"):
        read_run_log(p, loss_key="loss")


# --------------------------------------------------------------------------- W&B
def test_wandb_json_and_csv_names(tmp_path):
    recs = [{"_step": i, "train/global_step": 10 * i, "train/learning_rate": 1e-3, "train/loss": 4.0 - 0.1 * i}
            for i in range(1, 6)]
    recs[2]["eval/loss"] = 3.9
    recs[4]["eval/loss"] = 3.7
    p = _write(tmp_path / "history.json", json.dumps(recs))
    c = read_wandb(p)
    assert c.meta["loss_key"] == "eval/loss" and c.steps.tolist() == [30, 50]
    assert c.lrs[10] == pytest.approx(1e-3) and c.lrs[5] == pytest.approx(5e-4)
    t = read_curve(p, loss_key="train/loss", step_offset=-1)           # global_step counts done updates
    assert t.steps.tolist() == [9, 19, 29, 39, 49]
    # pandas' orient="columns" / a dict of lists, and {"history": [...]}
    cols = {"_step": {"0": 0, "1": 1, "2": 2}, "loss": {"0": 3.0, "1": 2.5, "2": 2.2},
            "learning_rate": {"0": 1e-3, "1": 1e-3, "2": 5e-4}}
    c2 = read_curve(_write(tmp_path / "cols.json", json.dumps(cols)))
    assert c2.steps.tolist() == [0, 1, 2] and c2.lrs.tolist() == [1e-3, 1e-3, 5e-4]
    c3 = read_curve(_write(tmp_path / "h.json", json.dumps({"history": recs})))
    assert c3.steps.tolist() == c.steps.tolist()
    # a W&B CSV export
    csv_text = "_step,train/loss,lr,_runtime\n0,3.0,1e-3,1\n1,2.8,1e-3,2\n2,,5e-4,3\n3,2.5,5e-4,4\n"
    c4 = read_curve(_write(tmp_path / "wandb.csv", csv_text))
    assert c4.steps.tolist() == [0, 1, 3] and c4.meta["loss_key"] == "train/loss"
    # wandb-history.jsonl keyed by _step
    c5 = read_curve(_write(tmp_path / "wandb-history.jsonl", "\n".join(json.dumps(r) for r in recs)))
    assert c5.meta["format"] == "wandb_jsonl" and c5.steps.tolist() == [30, 50]
    bad = _write(tmp_path / "bad.json", '[{"_step": 1, "loss": 2.0, "lr": 1e-3},\n {"_step": 2, ')
    with pytest.raises(ValueError, match="bad.json, line 2: not valid JSON"):
        read_wandb(bad)
    neg = _write(tmp_path / "neg.json", json.dumps([{"_step": 1, "loss": 2.0, "lr": 1e-3},
                                                    {"_step": 2, "loss": 0.0, "lr": 1e-3}]))
    with pytest.raises(ValueError, match="neg.json, record 2: loss 0.0"):
        read_wandb(neg)


# --------------------------------------------------------------------------- TensorBoard
def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: an independent check of the reader's table version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    key = _varint((num << 3) | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _event(step: int, tag: str, value: float, as_tensor: bool = False) -> bytes:
    if as_tensor:   # TF2 style: Value.tensor = TensorProto(dtype=DT_FLOAT, float_val=[value])
        tensor = _field(1, 0, _varint(1)) + _field(5, 2, struct.pack("<f", value))
        val = _field(1, 2, tag.encode()) + _field(8, 2, tensor)
    else:           # Value.simple_value
        val = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    summary = _field(1, 2, val)
    return _field(1, 1, struct.pack("<d", 1.7e9 + step)) + _field(2, 0, _varint(step)) + _field(5, 2, summary)


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked(header)) + data + struct.pack("<I", _masked(data))


def test_tensorboard_events_written_by_hand(tmp_path):
    assert _crc32c_bitwise(b"123456789") == 0xE3069283                   # the CRC-32C check value
    version = _field(1, 1, struct.pack("<d", 1.7e9)) + _field(3, 2, b"brain.Event:2")
    body = _record(version)
    s = schedules.cosine(peak_lr=1e-3, total_steps=100, warmup_steps=10)
    for t in range(0, 100, 10):
        body += _record(_event(t, "train/lr", s(t)))
        body += _record(_event(t, "train/loss", 5.0 - 0.02 * t, as_tensor=(t % 20 == 0)))
    d = tmp_path / "tb"
    d.mkdir()
    (d / "events.out.tfevents.1700000000.host").write_bytes(body)
    c = read_curve(d)
    assert c.meta["format"] == "tensorboard" and c.meta["loss_key"] == "train/loss"
    assert c.steps.tolist() == list(range(0, 100, 10))
    np.testing.assert_allclose(c.losses, 5.0 - 0.02 * c.steps, rtol=1e-6)   # float32 in the file
    np.testing.assert_allclose(c.lrs[::10], s.lrs()[::10], rtol=1e-6)
    # a damaged file names the record
    bad = bytearray(body)
    bad[-6] ^= 0xFF
    (d / "events.out.tfevents.1700000001.host").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"events.out.tfevents.1700000001.host, record 21 .*CRC mismatch"):
        read_tensorboard(d)


def test_tensorboard_summary_writer_if_available(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(tmp_path))
    for t in range(0, 50, 5):
        w.add_scalar("lr", 1e-3, t)
        w.add_scalar("val_loss", 4.0 - 0.01 * t, t)
    w.close()
    c = read_tensorboard(tmp_path)
    assert c.steps.tolist() == list(range(0, 50, 5))
    np.testing.assert_allclose(c.losses, 4.0 - 0.01 * c.steps, rtol=1e-6)


# --------------------------------------------------------------------------- the curve itself
def test_loss_curve_validation_and_thin():
    with pytest.raises(ValueError, match="strictly increasing"):
        LossCurve([1e-3] * 10, [3, 2], [2.0, 2.1])
    with pytest.raises(ValueError, match="steps must lie in"):
        LossCurve([1e-3] * 10, [3, 10], [2.0, 2.1])
    with pytest.raises(ValueError, match="positive finite"):
        LossCurve([1e-3] * 10, [3, 4], [2.0, 0.0])
    with pytest.raises(ValueError, match="every learning rate is 0"):
        LossCurve([0.0] * 10, [3], [2.0])
    c = LossCurve(np.full(100, 1e-3), np.arange(100), np.exp(np.linspace(1.0, 0.0, 100)), name="x")
    t = c.thin(30)
    assert len(t) == 25 and t.meta["thinned_from"] == 100             # groups of ceil(100/30) = 4
    np.testing.assert_allclose(t.losses[0], np.exp(np.mean(np.linspace(1.0, 0.0, 100)[:4])))
    assert t.steps[0] == 2 and c.thin(100) is c
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repr(c).startswith("LossCurve(name='x'")
