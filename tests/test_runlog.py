"""The run log (append-only JSONL) and atomic JSON files."""
import json
import math
import os

import pytest

from workbench.runlog import RunLog, latest_per_step, read_run_log, write_json_atomic


def test_write_then_read_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path) as log:
        for t in range(5):
            log.write({"step": t, "lr": 0.1 * t, "loss": 5.0 - t})
    records = read_run_log(path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in records] == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert read_run_log(tmp_path) == records          # a run directory works too


def test_lines_are_on_disk_before_close(tmp_path):
    path = tmp_path / "log.jsonl"
    log = RunLog(path)
    log.write({"step": 0, "loss": 1.5})
    # another reader sees the line while the log is still open (flushed per write)
    assert read_run_log(path) == [{"step": 0, "loss": 1.5}]
    log.close()


def test_truncated_final_line_is_skipped_with_warning(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "loss": 3.0}\n{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
    with pytest.warns(RuntimeWarning, match="final line"):
        records = read_run_log(path)
    assert records == [{"step": 0, "loss": 3.0}, {"step": 1, "loss": 2.5}]


def test_appending_after_a_crash_keeps_new_lines_readable(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0, "loss": 3.0}\n{"step": 1, "lo')   # died mid-write
    with RunLog(path) as log:                                        # resumed run appends
        log.write({"step": 1, "loss": 2.0})
    raw = path.read_text()
    assert raw.startswith('{"step": 0, "loss": 3.0}\n{"step": 1, "lo\n')  # nothing truncated
    with pytest.warns(RuntimeWarning, match="line 2"):
        records = read_run_log(path)
    assert records == [{"step": 0, "loss": 3.0}, {"step": 1, "loss": 2.0}]


def test_dedupe_keeps_last_occurrence_per_step(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path) as log:
        for t in range(4):                       # first session, crashed after step 3
            log.write({"step": t, "loss": 10.0 + t})
        for t in range(2, 5):                    # resumed from a checkpoint at 2 updates
            log.write({"step": t, "loss": 20.0 + t})
    assert [r["step"] for r in read_run_log(path)] == [0, 1, 2, 3, 2, 3, 4]
    deduped = read_run_log(path, dedupe=True)
    assert [(r["step"], r["loss"]) for r in deduped] == [(0, 10.0), (1, 11.0), (2, 22.0), (3, 23.0), (4, 24.0)]
    assert latest_per_step([{"step": 1, "a": 1}, {"note": "x"}, {"step": 0, "a": 2}]) == [
        {"step": 0, "a": 2}, {"step": 1, "a": 1}]


def test_missing_log_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        read_run_log(tmp_path / "nope" / "log.jsonl")


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1, "b": [1.5, float("nan")], "c": math.inf})
    write_json_atomic(path, {"a": 2, "b": [1.5, float("nan")], "c": math.inf})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1.5, None], "c": None}   # strict JSON
    assert os.listdir(tmp_path) == ["summary.json"]


def test_write_json_atomic_keeps_old_file_if_serialisation_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["summary.json"]
