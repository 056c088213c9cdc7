"""Tied input/output embeddings: run checkpoints name them as the bundled pretrained model does, and the
sparsity diff pairs a tied tensor stored under different names (README's fine-tune-then-diff example).

Truth: the tensor names in the files on disk, and change counts computed here from the raw tensors.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model

from workbench import assets, cli
from workbench.checkpoint import save_checkpoint
from workbench.models import build_model, count_parameters
from workbench.sparsity import diff_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[1] / "README.md"
PRETRAINED = assets.pretrained_dir()


def _names(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _brute_changed(base_file, tuned_file, atol):
    """Changed entries between two safetensors files, pairing the embedding under either name."""
    b, t = load_file(str(base_file)), load_file(str(tuned_file))
    emb = "model.embed_tokens.weight"
    t.setdefault(emb, t.get("lm_head.weight"))
    return sum(int(((t[k] - v).abs() > atol).sum()) for k, v in b.items()), sum(v.numel() for v in b.values())


def test_run_checkpoint_names_tied_weights_as_the_pretrained_model(tmp_path):
    model = build_model(PRETRAINED)
    save_checkpoint(tmp_path, model, step=0)
    assert _names(tmp_path / "model.safetensors") == _names(PRETRAINED / "model.safetensors")
    assert "lm_head.weight" not in _names(tmp_path / "model.safetensors")
    # and it loads back into a fresh model with the head still tied to the embedding
    from workbench.checkpoint import load_checkpoint

    fresh = build_model("tiny", seed=5)
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.lm_head.weight, model.model.embed_tokens.weight)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_readme_finetune_then_diff_through_the_cli(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    train_cmd = re.search(r"^(workbench train --model workbench/assets/pretrained .*?)\s+#", text, re.M).group(1)
    diff_cmd = re.search(r"^(workbench sparsity diff workbench/assets/pretrained \S+)\s+#", text, re.M).group(1)
    monkeypatch.chdir(tmp_path)

    def argv(cmd):
        return [str(PRETRAINED) if a == "workbench/assets/pretrained" else a for a in cmd.split()[1:]]

    assert cli.main(argv(train_cmd)) == 0
    run = tmp_path / diff_cmd.split()[-1]
    capsys.readouterr()
    assert cli.main(argv(diff_cmd)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    changed, numel = _brute_changed(PRETRAINED / "model.safetensors", run / "model.safetensors", 1e-5)
    assert numel == count_parameters(build_model("tiny"))   # each tied tensor once: 1,082,496
    assert f"({changed} of {numel} entries changed" in out
    assert changed > 0


def test_diff_pairs_an_old_checkpoint_that_kept_the_head_name(tmp_path):
    """Checkpoints written before the fix (safetensors' save_model keeps ``lm_head.weight``)."""
    base = build_model(PRETRAINED)
    tuned = build_model(PRETRAINED)
    with torch.no_grad():
        tuned.model.embed_tokens.weight[:3] += 1.0          # 3 rows of the tied matrix
        tuned.model.layers[0].mlp.up_proj.weight[0, :5] += 1.0
    save_model(tuned, str(tmp_path / "old.safetensors"))
    assert "lm_head.weight" in _names(tmp_path / "old.safetensors")
    for tuned_src in (tmp_path / "old.safetensors", tuned):
        d = diff_checkpoints(PRETRAINED, tuned_src)
        rows = {t["name"]: t for t in d.tensors}
        assert rows["model.embed_tokens.weight"]["changed"] == 3 * 128
        assert d.overall["changed"] == 3 * 128 + 5 and not d.skipped
        assert d.overall["numel"] == count_parameters(base)
    assert rows["model.embed_tokens.weight"].get("tuned_name") is None     # module: deduplicated, same name
    old = {t["name"]: t for t in diff_checkpoints(PRETRAINED, tmp_path / "old.safetensors").tensors}
    assert old["model.embed_tokens.weight"]["tuned_name"] == "lm_head.weight"


def test_diff_pairs_tied_names_from_the_model_config(tmp_path):
    """No metadata, no shared storage: the transformers config.json says the head is tied."""
    sd = load_file(str(PRETRAINED / "model.safetensors"))
    sd["lm_head.weight"] = sd.pop("model.embed_tokens.weight").clone()
    sd["lm_head.weight"][0, 0] += 1.0
    (tmp_path / "t").mkdir()
    save_file(sd, str(tmp_path / "t" / "model.safetensors"))
    (tmp_path / "t" / "config.json").write_text((PRETRAINED / "config.json").read_text())
    d = diff_checkpoints(PRETRAINED, tmp_path / "t")
    assert d.overall["changed"] == 1 and d.overall["numel"] == count_parameters(build_model(PRETRAINED))
    # without a config saying so, different names are still an error that names them
    save_file(sd, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match=r"only in base \(1\): \['model.embed_tokens.weight'\]"):
        diff_checkpoints(load_file(str(PRETRAINED / "model.safetensors")), tmp_path / "bare.safetensors")


def test_dashboard_sparsity_tab_pretrained_vs_a_run(tmp_path):
    from workbench.train import TrainConfig, train
    from workbench.widgets.dashboard_tabs import SparsityTab
    from workbench.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    run = ws.run_dir("ft")
    train(TrainConfig(model=str(PRETRAINED), data="stdlib", steps=3, batch_size=2, seq_len=32, eval_interval=0,
                      run_dir=str(run), progress=False, device="cpu"))
    tab = SparsityTab(ws)
    assert "run: ft" in tab.base.options
    tab.base.value, tab.tuned.value = tab.PRETRAINED, "run: ft"
    d = tab.compute(name="ft")
    assert d is not None, tab.status.object
    changed, numel = _brute_changed(PRETRAINED / "model.safetensors", run / "model.safetensors", 1e-5)
    assert (d.overall["changed"], d.overall["numel"]) == (changed, numel)
    assert "error" not in tab.status.object.lower()


def test_diff_of_a_tied_base_and_a_fine_tune_that_untied_its_head(tmp_path):
    base = build_model(PRETRAINED)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}   # clones: no longer tied
    sd["lm_head.weight"][:2] += 1.0                                       # the head moves, the embedding not
    save_file(sd, str(tmp_path / "untied.safetensors"))
    for b in (base, PRETRAINED):
        d = diff_checkpoints(b, tmp_path / "untied.safetensors")
        rows = {t["name"]: t for t in d.tensors}
        assert rows["lm_head.weight"]["changed"] == 2 * 128 and rows["lm_head.weight"]["base_name"] == \
            "model.embed_tokens.weight"
        assert rows["model.embed_tokens.weight"]["changed"] == 0
        assert d.overall["changed"] == 2 * 128 and not d.skipped
        assert d.overall["numel"] == count_parameters(base) + 256 * 128   # two tensors on the tuned side
