"""End to end: workbench angles score / workbench select on a small JSONL with the tiny model."""
import json
import math

import torch

from workbench.cli import main
from workbench.data import angle_concentration, select_top
from workbench.models import build_model

PROMPTS = ["What is 2 + 2?", "Name a prime.", "x", "Sum the numbers 1 to 10, please.",
           "Why is the sky blue?"]


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_angles_score_and_select(tmp_path, one_thread, capsys):
    data = tmp_path / "data.jsonl"
    _write(data, [{"q": q, "sys": "You are helpful. " * (1 + i % 2), "other": i}
                  for i, q in enumerate(PROMPTS)])
    scores = tmp_path / "scores.jsonl"
    rc = main(["angles", "score", "--model", "tiny", "--data", str(data), "--prompt-field", "q",
               "--template-field", "sys", "--batch-size", "2", "--out", str(scores)])
    assert rc == 0
    rows = _read(scores)
    assert [r["index"] for r in rows] == list(range(5))
    assert all(set(r) == {"index", "intra", "inter", "score"} for r in rows)
    # truth: each record alone, unpadded, masks from the segment lengths
    model = build_model("tiny")
    for i, q in enumerate(PROMPTS):
        t = list(("You are helpful. " * (1 + i % 2)).encode())
        p = list(q.encode())
        ids = torch.tensor([t + p])
        tm = torch.zeros(1, len(t) + len(p), dtype=torch.bool)
        tm[0, :len(t)] = True
        want = angle_concentration(model, ids, prompt_mask=~tm, template_mask=tm)
        for k in ("intra", "inter", "score"):
            w = float(want[k][0])
            if math.isnan(w):
                assert rows[i][k] is None  # "x": one prompt token, no pairs
            else:
                assert abs(rows[i][k] - w) < 1e-4, (i, k, rows[i][k], w)
    assert rows[2]["score"] is None and rows[2]["inter"] is not None

    out = tmp_path / "idx.json"
    assert main(["select", "--scores", str(scores), "--top", "0.5", "--out", str(out)]) == 0
    chosen = json.loads(out.read_text())
    valid = [r for r in rows if r["score"] is not None]
    want = [valid[int(j)]["index"] for j in select_top([r["score"] for r in valid], 0.5)]
    assert chosen == want and len(chosen) == 2 and 2 not in chosen
    assert "1 without a score skipped" in capsys.readouterr().out


def test_angles_score_without_template_and_errors(tmp_path, one_thread, capsys):
    data = tmp_path / "d.jsonl"
    _write(data, [{"q": q} for q in PROMPTS[:3]])
    scores = tmp_path / "s.jsonl"
    assert main(["angles", "score", "--model", "tiny", "--data", str(data), "--prompt-field", "q",
                 "--out", str(scores)]) == 0
    rows = _read(scores)
    assert all(r["inter"] is None for r in rows)
    assert rows[0]["score"] == rows[0]["intra"]
    capsys.readouterr()
    assert main(["angles", "score", "--model", "tiny", "--data", str(data), "--prompt-field",
                 "question", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no field 'question'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["select", "--scores", str(scores), "--top", "1.5", "--out",
                 str(tmp_path / "i.json")]) == 2
    assert "fraction" in capsys.readouterr().err


def test_angles_score_from_saved_model_dir(tmp_path, one_thread):
    ckpt = tmp_path / "ckpt"
    build_model("tiny", seed=3).save_pretrained(ckpt)
    data = tmp_path / "d.jsonl"
    _write(data, [{"q": q, "s": "System: "} for q in PROMPTS[:2]])
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for model, out in ((str(ckpt), a), ("tiny", b)):
        assert main(["angles", "score", "--model", model, "--data", str(data), "--prompt-field",
                     "q", "--template-field", "s", "--out", str(out)]) == 0
    ra, rb = _read(a), _read(b)
    assert len(ra) == 2 and all(isinstance(r["score"], float) for r in ra)
    assert ra != rb  # seed 3 weights, not the preset's seed 0
