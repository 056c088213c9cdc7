"""Prepared token shards (`workbench data prepare`): same blocks as load_blocks, lazy permutation,
exact resume, the same global batches under any number of ranks, bounded memory, clear errors."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import schedules
from workbench.cli import main
from workbench.data import BlockLoader, load_blocks
from workbench.data.shards import FeistelPermutation, TokenBlocks, prepare_shards, read_manifest

WORDS = "alpha beta gamma delta loss schedule token model warmup decay".split()


def _corpus(path: Path, n_docs: int, seed: int = 0, kind: str = "txt") -> Path:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n_docs)]
    if kind == "txt":
        path.write_text("".join(d + "\n\n" for d in docs))
    else:
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    src = _corpus(d / "corpus.txt", 1500)
    out = d / "prep"
    prepare_shards(src, out, shard_tokens=7_001, num_proc=2, progress=False)   # many shards, odd boundaries
    return src, out


@pytest.mark.parametrize("block_size", [16, 100])
def test_prepared_blocks_equal_load_blocks_across_shard_boundaries(prepared, block_size):
    src, out = prepared
    for split in ("train", "val"):
        ref = load_blocks(str(src), split=split, block_size=block_size)
        lazy = TokenBlocks(out, split, block_size)
        assert tuple(lazy.shape) == tuple(ref.shape)
        assert torch.equal(lazy[:], ref)                       # every row, incl. rows that straddle two shards
        idx = torch.tensor([5, 0, ref.shape[0] - 1, 3])
        assert torch.equal(lazy[idx], ref[idx])
        assert torch.equal(lazy[-1], ref[-1])
    m = read_manifest(out)
    assert len(m["splits"]["train"]["shards"]) > 10 and m["splits"]["val"]["documents"] > 0


def test_jsonl_and_saved_dataset_sources(tmp_path):
    import datasets

    src = _corpus(tmp_path / "c.jsonl", 300, kind="jsonl")
    prepare_shards(src, tmp_path / "pj", progress=False, num_proc=1)
    assert torch.equal(TokenBlocks(tmp_path / "pj", "train", 32)[:], load_blocks(str(src), "train", 32))
    docs = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "saved"))
    prepare_shards(tmp_path / "saved", tmp_path / "ps", progress=False, num_proc=1)
    assert torch.equal(TokenBlocks(tmp_path / "ps", "val", 32)[:], load_blocks(docs, "val", 32))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n):
    p = FeistelPermutation(n, seed=3, epoch=1)
    vals = p[0:n].numpy()
    assert sorted(vals.tolist()) == list(range(n))
    assert np.array_equal(vals, FeistelPermutation(n, seed=3, epoch=1)[0:n].numpy())   # deterministic
    if n >= 64:
        other = FeistelPermutation(n, seed=3, epoch=2)[0:n].numpy()
        assert (vals != other).mean() > 0.9                   # another epoch, another order
        assert abs(np.corrcoef(np.arange(n), vals)[0, 1]) < 0.2   # and not close to the identity


def test_loader_same_global_batches_on_any_number_of_ranks_and_exact_resume(prepared):
    _, out = prepared
    blocks = TokenBlocks(out, "train", 16)
    one = BlockLoader(blocks, batch_size=8, seed=1)
    ranks = [BlockLoader(blocks, batch_size=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(len(one) + 3):                             # crosses an epoch boundary
        x1, _ = next(one)
        parts = [next(r)[0] for r in ranks]
        assert torch.equal(x1, torch.cat(parts))
    state = one.state_dict()
    expected = [next(one)[0] for _ in range(5)]
    again = BlockLoader(TokenBlocks(out, "train", 16), batch_size=8, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(next(again)[0], e) for e in expected)
    # one epoch visits every block exactly once
    small = TokenBlocks(out, "val", 16)
    fresh = BlockLoader(small, batch_size=1, seed=5)
    seen = []
    for _ in range(len(small)):
        x, y = next(fresh)
        seen.append(torch.cat([x[0], y[0, -1:]]).tolist())
    assert sorted(seen) == sorted(small[:].tolist())
    assert seen != small[:].tolist()                          # shuffled


def test_training_from_prepared_data_resumes_exactly(prepared, tmp_path):
    from workbench.train import TrainConfig, resume, train

    _, out = prepared
    kw = dict(model="tiny", data=str(out), steps=6, lr=3e-3, schedule=schedules.constant(peak_lr=3e-3, total_steps=6),
              batch_size=2, seq_len=32, eval_interval=3,
              eval_batches=2, progress=False, track_update_norm=False, checkpoint_interval=3)
    full = train(TrainConfig(run_dir=str(tmp_path / "full"), **kw))
    part = TrainConfig(run_dir=str(tmp_path / "part"), **{**kw, "steps": 3})
    train(part)
    resume(tmp_path / "part", steps=6)
    read = lambda d: [json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(tmp_path / "full") == read(tmp_path / "part")
    assert full["final_val_loss"] is not None


def test_tokenizer_mismatch_and_tampered_folders_give_clear_errors(tmp_path):
    from workbench.data.tokenizer import train_bpe

    docs = [f"def f{i}(x): return x + {i}" for i in range(400)]
    tok = train_bpe(docs, 300)
    tok.save(tmp_path / "tok.json")
    out = tmp_path / "bpe"
    m = prepare_shards(docs, out, tokenizer=str(tmp_path / "tok.json"), progress=False, num_proc=1)
    assert m["dtype"] == "uint16" and (out / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="prepared with tokenizer .*tokenizer.json"):
        load_blocks(str(out), "train", 16, tokenizer="byte")
    assert load_blocks(str(out), "train", 16, tokenizer=str(out / "tokenizer.json")).shape[1] == 17
    with pytest.raises(ValueError, match="already holds prepared shards; pass --overwrite"):
        prepare_shards(docs, out, progress=False)
    with pytest.raises(ValueError, match="not a prepared folder"):
        prepare_shards(docs, tmp_path, progress=False)        # a folder with other files in it
    shard = out / read_manifest(out)["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="expected .*prepare the data again"):
        TokenBlocks(out, "train", 16)
    m = json.loads((out / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["file"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="outside its folder"):
        TokenBlocks(out, "train", 16)


def test_failed_prepare_leaves_nothing(tmp_path):
    src = _corpus(tmp_path / "c.jsonl", 50, kind="jsonl")
    with pytest.raises(ValueError, match="no column 'body'"):
        prepare_shards(src, tmp_path / "out", text_column="body", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]   # the temporary folder is gone too


def test_cli_prepare_info_and_train(tmp_path, capsys):
    src = _corpus(tmp_path / "c.txt", 400)
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "p"), "--no-progress",
                 "--num-proc", "1"]) == 0
    out = capsys.readouterr().out
    assert "train on it with: workbench train --data" in out and "documents" in out
    assert main(["data", "info", str(tmp_path / "p"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "workbench-token-shards"
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not a prepared folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "p"), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
                 "--run-dir", str(tmp_path / "run")]) == 0


# VmHWM, the peak RSS of this process image (ru_maxrss would include the parent's at fork time)
_RSS_SCRIPT = textwrap.dedent("""
    import sys, json
    from workbench.train import TrainConfig, train
    train(TrainConfig(model="tiny", data=sys.argv[1], steps=3, batch_size=4, seq_len=64, eval_interval=0,
                      eval_batches=2, progress=False, track_update_norm=False, run_dir=sys.argv[2]))
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    print(json.dumps({"maxrss_kb": int(hwm.split()[1])}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for the peak RSS")
def test_training_memory_does_not_grow_with_corpus_size(tmp_path):
    """Peak RSS training on a 1 MB and a 24x larger prepared corpus: within 20 MB of each other
    (loading the larger one into memory as blocks would take ~190 MB more)."""
    rss = {}
    for name, n_docs in (("small", 2_000), ("large", 48_000)):
        src = _corpus(tmp_path / f"{name}.txt", n_docs, seed=1)
        prepare_shards(src, tmp_path / name, progress=False, num_proc=1)
        res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / name), str(tmp_path / f"r{name}")],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        rss[name] = json.loads(res.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024
    tokens = read_manifest(tmp_path / "large")["splits"]["train"]["tokens"]
    assert tokens > 20 * read_manifest(tmp_path / "small")["splits"]["train"]["tokens"]
    print("peak RSS MiB", rss)
    assert rss["large"] - rss["small"] < 20, rss
