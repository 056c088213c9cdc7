"""Tests for workbench.data: corpora, tokenizers, packed blocks and the batch loader.

Expected values come from independent computations: hand-written token streams,
hashlib directly for the splits, brute-force concatenation of documents.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import tokenize

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workbench.data import (BlockLoader, ByteTokenizer, eval_batches, get_tokenizer,  # noqa: E402
                            list_corpora, load_blocks, load_corpus)
from workbench.data import corpora  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def is_val(key: str) -> bool:
    """The documented split rule, written out with hashlib."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") < 0.05 * 2**64


def byte_stream(docs):
    return np.frombuffer(b"".join(d.encode() + b"\x00" for d in docs), np.uint8)


# ----------------------------------------------------------------------------- corpora

def _stdlib_keys():
    root = sysconfig.get_paths()["stdlib"]
    keys = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        parts = [] if rel == "." else rel.split("/")
        if any(p in {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
               or p.startswith("config-") for p in parts):
            continue
        for fn in filenames:
            key = "/".join(parts + [fn])
            if fn.endswith(".py") and not fn.startswith("_sysconfigdata") and key != "pydoc_data/topics.py":
                keys.append(key)
    return root, keys


def _read(root, key):
    raw = open(os.path.join(root, *key.split("/")), "rb").read()
    return raw.decode(tokenize.detect_encoding(io.BytesIO(raw).readline)[0], errors="replace")


def test_list_and_unknown_corpus():
    assert list_corpora() == ["docs", "stdlib"]
    with pytest.raises(ValueError, match="stdlib"):
        load_corpus("wikipedia")
    with pytest.raises(ValueError, match="train"):
        load_corpus("stdlib", split="dev")


def test_stdlib_split_matches_sha1_rule():
    root, keys = _stdlib_keys()
    val_keys = [k for k in keys if is_val(k)]
    assert 0.02 < len(val_keys) / len(keys) < 0.09  # about 5% of files
    val = load_corpus("stdlib", "val")
    assert sorted(val) == sorted(_read(root, k).lstrip("\ufeff") for k in val_keys)
    train = load_corpus("stdlib", "train")
    assert len(train) + len(val) == len(keys)
    assert not set(train) & set(val)
    # a fresh copy each time
    val.append("x")
    assert load_corpus("stdlib", "val") == val[:-1]


def test_split_independent_of_pythonhashseed():
    code = ("import hashlib; from workbench.data.corpora import load_corpus; "
            "print(hashlib.sha1('\\0'.join(load_corpus('stdlib', 'val')).encode()).hexdigest())")
    here = hashlib.sha1("\0".join(load_corpus("stdlib", "val")).encode()).hexdigest()
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == here


def test_docs_corpus_holds_topics_and_docstrings():
    from pydoc_data.topics import topics

    val = load_corpus("docs", "val")
    val_topics = [t.strip() for k, t in topics.items() if is_val(f"topic:{k}")]
    assert val_topics and all(t in val for t in val_topics)
    root, keys = _stdlib_keys()
    blob = "\n".join(val)
    checked = 0
    for key in keys:
        if not is_val(key):
            continue
        doc = ast.get_docstring(ast.parse(_read(root, key)))
        if doc:
            assert doc.strip() in blob
            checked += 1
    assert checked >= 3
    # no train topic leaks into val
    train_topic = next(t.strip() for k, t in topics.items() if not is_val(f"topic:{k}") and len(t) > 200)
    assert train_topic not in val


# -------------------------------------------------------------------------- tokenizers

def test_byte_tokenizer():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eos_id == 0
    assert tok.encode("hé") == [104, 195, 169]
    s = "def f(x):\n    return x  # ünïcödé 🙂"
    assert tok.encode_array(s).tolist() == list(s.encode())
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(torch.tensor(tok.encode(s))) == s
    assert tok.decode([0xFF, 97]) == "\ufffda"
    with pytest.raises(ValueError, match="0..255"):
        tok.decode([256])
    assert get_tokenizer("byte").vocab_size == 256
    with pytest.raises(ValueError, match="byte"):
        get_tokenizer("wordpiece")


def test_bpe_train_roundtrip_and_cache(_cache):
    tok = get_tokenizer("bpe", corpus="docs", vocab_size=300, max_train_bytes=30_000)
    assert tok.vocab_size == 300 and tok.eos_id == 0
    for s in ["def f(x):\n    return x ** 2\n", "Héllo wörld 🙂\t\r\n", "", "  spaces  "]:
        assert tok.decode(tok.encode(s)) == s
    text = "Return the number of items in the container.\n"
    assert len(tok.encode(text)) < len(text.encode())  # merges learned
    files = sorted((_cache / "tokenizers").glob("*.json"))
    tok_file = next(f for f in files if not f.name.endswith(".meta.json"))
    mtime = tok_file.stat().st_mtime_ns
    again = get_tokenizer("bpe", corpus="docs", vocab_size=300, max_train_bytes=30_000)
    assert again.name == tok.name and tok_file.stat().st_mtime_ns == mtime
    assert json.loads(tok_file.with_suffix(".meta.json").read_text())["trained_on_bytes"] <= 30_000
    assert get_tokenizer(str(tok_file)).encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="258"):
        get_tokenizer("bpe", corpus="docs", vocab_size=200, max_train_bytes=1000)


def test_bpe_training_is_deterministic(tmp_path):
    a = get_tokenizer("bpe", corpus="docs", vocab_size=280, max_train_bytes=10_000, cache_dir=tmp_path / "a")
    b = get_tokenizer("bpe", corpus="docs", vocab_size=280, max_train_bytes=10_000, cache_dir=tmp_path / "b")
    assert a.name == b.name


# ------------------------------------------------------------------------------ blocks



def test_load_blocks_hand_computed():
    docs = ["ab", "cde"]
    assert not any(is_val(d) for d in docs)
    b = load_blocks(docs, block_size=2)
    # stream: a b \0 c d e \0 -> rows of 3 tokens, stride 2
    assert b.dtype == torch.int64
    assert b.tolist() == [[97, 98, 0], [0, 99, 100], [100, 101, 0]]
    x, y = b[:, :-1], b[:, 1:]
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_corpus_blocks_equal_brute_force_stream():
    val = load_corpus("stdlib", "val")
    stream = byte_stream(val)[:1000]
    b = load_blocks("stdlib", "val", block_size=16, max_tokens=1000)
    assert b.shape == ((1000 - 1) // 16, 17)
    for i in (0, 1, b.shape[0] - 1):
        assert b[i].tolist() == stream[i * 16:i * 16 + 17].tolist()
    full = load_blocks("stdlib", "val", block_size=64)
    assert full.shape[0] == (len(byte_stream(val)) - 1) // 64


def test_stream_cache_is_used(monkeypatch, _cache):
    first = load_blocks("docs", "val", block_size=32, max_tokens=5000)
    assert len(list((_cache / "blocks").glob("docs-val-*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("documents re-read despite the cache")

    monkeypatch.setattr(corpora, "load_corpus", boom)
    again = load_blocks("docs", "val", block_size=32, max_tokens=5000)
    assert torch.equal(first, again)
    other_bs = load_blocks("docs", "val", block_size=10, max_tokens=5000)  # same stream reused
    assert other_bs[0].tolist() == first[0, :11].tolist()


def test_bpe_blocks_use_eos_between_documents():
    tok = get_tokenizer("bpe", corpus="docs", vocab_size=300, max_train_bytes=20_000)
    docs = [f"document {i}: some text" for i in range(50)]
    train = [d for d in docs if not is_val(d)]
    expected = []
    for d in train:
        expected += tok.encode(d) + [tok.eos_id]
    b = load_blocks(docs, block_size=8, tokenizer=tok)
    flat = torch.cat([b[0]] + [r[1:] for r in b[1:]]).tolist()
    assert flat == expected[:len(flat)] and len(expected) - len(flat) < 8


def _docs(n=200):
    return [f"Paragraph {i}: the quick brown fox {i * 7 % 13} jumps." for i in range(n)]


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet", "dir"])
def test_user_files_with_hash_val_split(tmp_path, fmt):
    docs = _docs()
    if fmt in ("txt", "dir"):
        d = tmp_path / "data"
        d.mkdir()
        if fmt == "txt":
            path = d / "corpus.txt"
            path.write_text("\n\n".join(docs) + "\n")
        else:
            path = d
            (d / "a.txt").write_text("\n\n".join(docs[:100]) + "\n")
            (d / "b.txt").write_text("\n\n".join(docs[100:]) + "\n")
    elif fmt == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)))
    else:
        import pandas as pd

        path = tmp_path / "corpus.parquet"
        pd.DataFrame({"text": docs}).to_parquet(path)
    val_docs = [t for t in docs if is_val(t)]
    train_docs = [t for t in docs if not is_val(t)]
    assert val_docs and train_docs
    for split, expect in (("val", val_docs), ("train", train_docs)):
        b = load_blocks(path, split=split, block_size=8)
        stream = byte_stream(expect)
        assert b.shape[0] == (len(stream) - 1) // 8
        assert b[0].tolist() == stream[:9].tolist() and b[-1].tolist() == stream[(b.shape[0] - 1) * 8:b.shape[0] * 8 + 1].tolist()


def test_datasets_inputs():
    import datasets

    docs = _docs(100)
    ds = datasets.Dataset.from_dict({"body": docs})
    b = load_blocks(ds, "val", block_size=4, text_column="body")
    stream = byte_stream([t for t in docs if is_val(t)])
    assert b.shape[0] == (len(stream) - 1) // 4 and b[0].tolist() == stream[:5].tolist()
    with pytest.raises(ValueError, match="body"):
        load_blocks(ds, block_size=4)  # text_column="text" missing: names the columns present
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["train doc"] * 3}),
                               "validation": datasets.Dataset.from_dict({"text": ["val doc"]})})
    assert load_blocks(dd, "val", block_size=2)[0].tolist() == list(b"val")


def test_load_blocks_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_blocks(tmp_path / "missing.txt")
    bad = tmp_path / "x.xyz"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="extension"):
        load_blocks(bad)
    js = tmp_path / "d.jsonl"
    js.write_text(json.dumps({"content": "hello " * 50}) + "\n")
    with pytest.raises(ValueError, match="'content'"):
        load_blocks(js)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    (mixed / "b.jsonl").write_text("{}")
    with pytest.raises(ValueError, match="mixes"):
        load_blocks(mixed)
    with pytest.raises(ValueError, match="block_size"):
        load_blocks(["abc"], block_size=0)
    with pytest.raises(ValueError, match="too little data"):
        load_blocks(["abc"], block_size=100)
    with pytest.raises(ValueError, match="max_tokens"):
        load_blocks("stdlib", max_tokens=0)
    with pytest.raises(ValueError, match="stdlib"):
        load_blocks(12345)


# ------------------------------------------------------------------------------ loader

def _rows(n=50, bs=4):
    """Row i holds i*1000 + 0..bs, so a row's identity is x[:, 0] // 1000."""
    return torch.arange(n)[:, None] * 1000 + torch.arange(bs + 1)[None, :]


def _ids(x):
    return (x[:, 0] // 1000).tolist()


def test_loader_epoch_is_seeded_permutation():
    blocks = _rows(50)
    loader = BlockLoader(blocks, batch_size=8, seed=3)
    assert len(loader) == 6  # 50 // 8, tail of 2 dropped
    g = torch.Generator().manual_seed(3 * 1_000_003 + 0)
    perm = torch.randperm(50, generator=g).tolist()
    seen = []
    for _ in range(6):
        x, y = next(loader)
        assert x.shape == (8, 4) and y.shape == (8, 4) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)
        seen += _ids(x)
    assert seen == perm[:48] and len(set(seen)) == 48
    assert loader.epoch == 0 and loader.state_dict() == {"seed": 3, "epoch": 0, "position": 48}
    x, _ = next(loader)  # rolls over
    g1 = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    assert loader.epoch == 1 and _ids(x) == torch.randperm(50, generator=g1).tolist()[:8]


def test_loader_no_shuffle_and_errors():
    loader = BlockLoader(_rows(10), batch_size=3, shuffle=False)
    assert [_ids(next(loader)[0]) for _ in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 2]]
    with pytest.raises(ValueError, match="global batch"):
        BlockLoader(_rows(10), batch_size=4, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        BlockLoader(_rows(10), batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="block_size"):
        BlockLoader(torch.zeros(10, dtype=torch.long), batch_size=2)
    with pytest.raises(ValueError, match="position"):
        loader.load_state_dict({"seed": 0, "epoch": 0})


def test_two_ranks_see_what_one_rank_sees():
    blocks = _rows(70)
    one = BlockLoader(blocks, batch_size=8, seed=5)
    ranks = [BlockLoader(blocks, batch_size=4, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 8
    for _ in range(20):  # crosses two epoch boundaries
        x1, y1 = next(one)
        parts = [next(r) for r in ranks]
        assert torch.equal(x1, torch.cat([p[0] for p in parts]))
        assert torch.equal(y1, torch.cat([p[1] for p in parts]))
    assert one.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()


@pytest.mark.parametrize("k", [0, 3, 7, 12])
def test_resume_gives_identical_batches(k):
    blocks = _rows(60)
    a = BlockLoader(blocks, batch_size=7, seed=11)
    for _ in range(k):
        next(a)
    state = a.state_dict()
    assert all(type(v) is int for v in state.values())
    b = BlockLoader(blocks, batch_size=7, seed=0)
    b.load_state_dict(json.loads(json.dumps(state)))
    for _ in range(2 * len(a)):
        xa, ya = next(a)
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch == b.epoch


def test_eval_batches_fixed_order():
    blocks = _rows(10)
    batches = list(eval_batches(blocks, 4))
    assert [_ids(x) for x, _ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(torch.equal(y, x + 1) for x, y in batches)
    assert len(list(eval_batches(blocks, 4, max_batches=2))) == 2
    with pytest.raises(ValueError, match="batch_size"):
        eval_batches(blocks, 0)
