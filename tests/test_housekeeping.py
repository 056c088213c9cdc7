"""Housekeeping users hit: no process-wide offline switches on import, Windows-safe imports, a torch
floor that matches the APIs used, extras for the heavy pieces that make/Binder install."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _python(code: str, tmp_path) -> str:
    # TRANSFORMERS_OFFLINE too: huggingface_hub reads it as HF_HUB_OFFLINE (.ci/run sets all three)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"), WORKBENCH_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_sets_no_offline_switch_and_local_data_still_loads(tmp_path):
    (tmp_path / "notes.txt").write_text("One paragraph of text.\n\nAnother paragraph here.\n" * 50)
    out = _python(
        "import os, workbench, workbench.models, workbench.data, workbench.train, workbench.curves\n"
        "import workbench.integrations.hf, huggingface_hub.constants as c\n"
        "print('after import', os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_DATASETS_OFFLINE'),"
        " c.HF_HUB_OFFLINE)\n"
        "from workbench.data import load_blocks\n"
        "b = load_blocks('notes.txt', block_size=16, cache_dir='cache')\n"
        "print('blocks', tuple(b.shape))\n"
        "print('after load', os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_DATASETS_OFFLINE'),"
        " c.HF_HUB_OFFLINE)\n", tmp_path)
    assert "after import None None False" in out
    assert "after load None None False" in out
    assert re.search(r"blocks \(\d+, 17\)", out)


def test_train_imports_without_the_resource_module(tmp_path):
    """Windows has no ``resource`` module: the trainer still imports; CPU peak memory is then None."""
    out = _python("import sys; sys.modules['resource'] = None\n"
                  "import torch, workbench.train as t\n"
                  "print('peak', t._peak_mem(torch.device('cpu')))\n", tmp_path)
    assert "peak None" in out


# torch APIs the code uses that are newer than torch 2.0, with the release that added them
TORCH_APIS = {"torch.nn.utils.get_total_norm": (2, 6), "torch.nn.utils.clip_grads_with_norm_": (2, 6)}


def test_torch_floor_matches_the_apis_used():
    spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    floor = tuple(int(x) for x in re.match(r"torch>=(\d+)\.(\d+)", spec).groups())
    source = "\n".join(p.read_text() for p in (ROOT / "workbench").rglob("*.py"))
    used = [api for api in TORCH_APIS if api.split(".")[-1] in source]
    assert "torch.nn.utils.get_total_norm" in used
    for api in used:
        assert floor >= TORCH_APIS[api], f"{api} needs torch>={TORCH_APIS[api]}, pyproject says {spec}"
        obj = torch
        for part in api.split(".")[1:]:
            obj = getattr(obj, part)                          # the installed torch has it


def test_heavy_pieces_are_extras_that_make_and_binder_install():
    deps = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "jupyterlab" not in deps and "panel" not in deps
    assert extras["lab"] == ["jupyterlab>=4.2"] and extras["serve"] == ["panel>=1.9"]
    assert set(extras["lab"] + extras["serve"] + extras["tensorboard"] + extras["wandb"]) <= set(extras["all"])
    make = (ROOT / "Makefile").read_text()
    extras_installed = re.search(r'pip install --quiet -e "\.\[([a-z,]+)\]"', make).group(1).split(",")
    assert {"all", "dev"} <= set(extras_installed)        # make lab / serve / test get everything
    binder = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert "-e ." in binder and set(extras["lab"]) <= set(binder)
    readme = (ROOT / "README.md").read_text()
    assert "make lab     #" in readme and "make test    #" in readme   # the two commands stay the same
