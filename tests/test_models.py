"""Tests for workbench.models: presets, seeding, save/load, FLOPs per token.

Parameter counts are checked against formulas written out by hand below.
"""
from __future__ import annotations

import math

import pytest
import torch

from workbench.models import (ALIASES, PRESETS, build_model, count_parameters, list_presets,
                              model_flops_per_token)


def llama_params(d, layers, ffn, vocab=256):
    """Tied Llama: embeddings + per layer (q,k,v,o + SwiGLU + 2 RMSNorms) + final norm."""
    return vocab * d + layers * (4 * d * d + 3 * d * ffn + 2 * d) + d


def gpt2_params(d, layers, vocab=256, positions=1024):
    """Tied GPT-2: wte + wpe + per layer (qkv, proj, fc, proj with biases; 2 LayerNorms) + ln_f."""
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    return vocab * d + positions * d + layers * per_layer + 2 * d


NOMINAL = {"1m": 1e6, "10m": 10e6, "30m": 30e6, "100m": 100e6}


def _meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name", list_presets())
def test_preset_sizes(name):
    model = _meta(name)
    n = count_parameters(model)
    nominal = NOMINAL[name.split("-")[1]]
    assert nominal / 1.5 < n < nominal * 1.5
    assert n == PRESETS[name]["n_params"]
    cfg = PRESETS[name]["config"]
    if name.startswith("llama"):
        assert n == llama_params(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"])
    else:
        assert n == gpt2_params(cfg["n_embd"], cfg["n_layer"])
    assert model.config.vocab_size == 256
    assert model.config._attn_implementation == "sdpa"


def test_list_presets_and_alias():
    assert set(list_presets()) == {f"{f}-{s}" for f in ("llama", "gpt2") for s in NOMINAL}
    assert ALIASES["tiny"] == "llama-1m"
    assert count_parameters(_meta("tiny")) == PRESETS["llama-1m"]["n_params"]


def test_unknown_preset_and_override_errors(tmp_path):
    with pytest.raises(ValueError, match="llama-10m") as err:
        build_model("llama-7b")
    assert "gpt2-100m" in str(err.value) and "tiny" in str(err.value)
    with pytest.raises(ValueError, match="num_hiden_layers"):
        build_model("tiny", num_hiden_layers=2)
    with pytest.raises(ValueError, match="config.json"):
        build_model(tmp_path)  # a directory without a model


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("tiny", seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG not consumed
    torch.manual_seed(999)
    b = build_model("tiny", seed=7)
    c = build_model("tiny", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


@pytest.mark.parametrize("name", ["tiny", "gpt2-1m"])
def test_initial_loss_is_about_ln_vocab(name):
    model = build_model(name, seed=0)
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - math.log(256)) < 0.15


def test_vocab_size_and_max_seq_len():
    m = build_model("gpt2-1m", vocab_size=4096, max_seq_len=256)
    assert m.config.n_positions == 256
    assert count_parameters(m) == gpt2_params(128, 4, vocab=4096, positions=256)
    logits = m(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits
    assert logits.shape == (1, 5, 4096)
    small = build_model("tiny", num_hidden_layers=2)
    assert count_parameters(small) == llama_params(128, 2, 512)


@pytest.mark.parametrize("name", ["tiny", "gpt2-1m"])
def test_save_and_load_directory(tmp_path, name):
    model = build_model(name, seed=3)
    model.save_pretrained(tmp_path / "m")
    loaded = build_model(tmp_path / "m")
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.arange(20)[None] % 256
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert build_model(str(tmp_path / "m"), vocab_size=256).config.vocab_size == 256
    with pytest.raises(ValueError, match="vocab_size=256"):
        build_model(tmp_path / "m", vocab_size=4096)


def test_flops_per_token_hand_computed():
    tiny = build_model("tiny")
    # tied embedding: the lookup is free, the output projection (256 x 128) is a matmul
    n = llama_params(128, 4, 512)
    assert count_parameters(tiny, exclude_embeddings=True) == n
    assert model_flops_per_token(tiny, 128) == 6 * n + 12 * 4 * 128 * 128
    g = _meta("gpt2-1m")
    n_g = gpt2_params(128, 4) - 1024 * 128  # position table excluded
    assert model_flops_per_token(g, 256) == 6 * n_g + 12 * 4 * 128 * 256
    assert model_flops_per_token("gpt2-1m", 256) == model_flops_per_token(g.config, 256)
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(tiny, 0)


def test_tiny_learns_quickly():
    """A few dozen steps on a repeated pattern must cut the loss well below ln(256)."""
    torch.manual_seed(0)
    model = build_model("tiny", seed=0)
    text = b"def add(a, b):\n    return a + b\n\n" * 40
    ids = torch.tensor(list(text[:8 * 65]), dtype=torch.long).view(8, 65)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and immune to busy cores
    try:
        for _ in range(30):
            logits = model(input_ids=ids[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[0] > 5.0 and losses[-1] < 2.5
