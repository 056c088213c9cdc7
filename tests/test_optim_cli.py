"""`workbench optim memory` and `workbench optim compare`: the CLI face of tutorial 04."""
import csv
import json
import math

import torch

from workbench.cli import _optimizer_arg, main
from workbench.optim import llama_shapes, make_optimizer, state_bytes


def test_memory_for_llama_7b_matches_a_hand_count(tmp_path, capsys):
    out = tmp_path / "mem.json"
    assert main(["optim", "memory", "--llama", "7b", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    shapes = llama_shapes("7b")
    n = sum(math.prod(s) for s in shapes.values())
    assert table["AdamW"]["state_bytes"] == 8 * n + 4 * len(shapes)           # two fp32 moments + step tensors
    # APOLLO r=256: 2 r max(m, n) moments + 1 limiter norm per attention/MLP weight, AdamW on the rest
    low = {k: s for k, s in shapes.items() if "layers" in k and len(s) == 2}
    rest = {k: s for k, s in shapes.items() if k not in low}
    # (its AdamW path counts steps in Python numbers: no 4-byte step tensors, unlike torch's AdamW)
    apollo = sum(4 * (2 * 256 * max(s) + 1) for s in low.values()) + sum(8 * math.prod(s) for s in rest.values())
    assert table["APOLLO (r=256)"]["state_bytes"] == apollo
    assert "LLaMA-7b shapes" in capsys.readouterr().out


def test_memory_for_a_model_preset_at_a_rank_equals_the_measured_state(tmp_path):
    from workbench import models

    out = tmp_path / "mem.json"
    assert main(["optim", "memory", "--model", "tiny", "--rank", "32", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert "APOLLO (r=32)" in table and "GaLore (r=32)" in table and "APOLLO (r=256)" not in table
    net = models.build_model("tiny")
    opt = make_optimizer("apollo", net, rank=32)
    x = torch.randint(0, 256, (2, 17))
    net(input_ids=x[:, :-1], labels=x[:, 1:]).loss.backward()
    opt.step()
    assert table["APOLLO (r=32)"]["state_bytes"] == state_bytes(opt)


def test_memory_refuses_a_bad_rank(capsys):
    assert main(["optim", "memory", "--rank", "0"]) == 2
    assert "--rank must be >= 1, got 0" in capsys.readouterr().err


def test_optimizer_argument_syntax():
    assert _optimizer_arg("adamw") == ("adamw", {})
    assert _optimizer_arg("apollo-mini:lr=1e-2,scale_type=tensor,norm-growth-limit=null") == (
        "apollo-mini", {"lr": 0.01, "scale_type": "tensor", "norm_growth_limit": None})
    for bad, msg in [(":lr=1", "has no name"), ("apollo:lr", "is not KEY=VALUE")]:
        try:
            _optimizer_arg(bad)
        except ValueError as exc:
            assert msg in str(exc)
        else:
            raise AssertionError(bad)


def test_compare_writes_table_and_history(tmp_path, capsys):
    table, hist = tmp_path / "t.csv", tmp_path / "h.jsonl"
    rc = main(["optim", "compare", "adamw:lr=3e-3", "apollo:lr=1e-2,rank=8", "--steps", "6", "--batch-size", "2",
               "--seq-len", "16", "--max-tokens", "20000", "--csv", str(table), "--history", str(hist)])
    assert rc == 0
    rows = {r["label"]: r for r in csv.DictReader(table.open())}
    assert set(rows) == {"adamw:lr=3e-3", "apollo:lr=1e-2,rank=8"}
    assert rows["apollo:lr=1e-2,rank=8"]["optimizer"] == "Apollo" and float(rows["adamw:lr=3e-3"]["lr"]) == 3e-3
    assert int(rows["apollo:lr=1e-2,rank=8"]["state_bytes"]) < int(rows["adamw:lr=3e-3"]["state_bytes"])
    events = [json.loads(line) for line in hist.read_text().splitlines()]
    assert len(events) == 12 and {e["optimizer"] for e in events} == set(rows)
    assert [e["step"] for e in events if e["optimizer"] == "adamw:lr=3e-3"] == list(range(6))
    out, err = capsys.readouterr()
    assert "final_val_loss" in out
    # one progress bar per optimizer, each labelled with it (not identical "train:" bars)
    assert all(f"{label}: 100%" in err for label in rows) and "train:" not in err


def test_compare_names_a_bad_optimizer(capsys):
    assert main(["optim", "compare", "adamx:lr=1", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'adamx'" in err and "apollo" in err
