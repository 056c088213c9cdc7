"""What a new user meets in the first hour: run status wording, `assets list` numbers, notebooks stored
without outputs, a quiet install. Truth: the run's files on disk, the assets' own settings, the tracked files."""
from __future__ import annotations

import json
import shutil

from workbench import schedules
from workbench.cli import main

TINY = ["--batch-size", "2", "--seq-len", "16", "--max-tokens", "20000", "--eval-batches", "1", "--no-progress"]


def test_a_run_cut_short_says_where_it_stopped_and_that_it_resumes(tmp_path, capsys, one_thread):
    spec = tmp_path / "spec.json"
    schedules.save_schedule(schedules.cosine(peak_lr=3e-3, total_steps=10_000, warmup_steps=2), spec)
    run = tmp_path / "r"
    assert main(["train", "--model", "tiny", "--schedule", str(spec), "--steps", "40", "--run-dir", str(run),
                 *TINY]) == 0
    printed = capsys.readouterr().out
    assert "stopped at 40 of 10,000 (resumable)" in printed and "completed" not in printed
    assert main(["runs", "show", str(run)]) == 0
    assert "stopped at 40 of 10,000 (resumable)" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["total_steps"] == 10_000 and summary["resumable"] is True
    # a summary from before the "resumable" field: resumable only while the checkpoint is there
    del summary["resumable"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["runs", "show", str(run)]) == 0
    assert "stopped at 40 of 10,000 (resumable)" in capsys.readouterr().out
    from workbench.checkpoint import has_checkpoint

    shutil.rmtree(run / "checkpoints")
    assert not has_checkpoint(run)
    assert main(["runs", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stopped at 40 of 10,000" in out and "resumable" not in out


def test_a_run_to_the_end_of_its_schedule_says_completed(tmp_path, capsys, one_thread):
    run = tmp_path / "r"
    assert main(["train", "--model", "tiny", "--steps", "3", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["runs", "show", str(run)]) == 0
    status = [line for line in capsys.readouterr().out.splitlines() if line.startswith("status")][0]
    assert status.split() == ["status", "completed"]


def test_assets_list_prints_numbers_for_people(capsys):
    import math
    import re

    from workbench import assets

    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "0.00030000000000000003" not in out
    for name, sched in assets.RUNS.items():
        line = next(line for line in out.splitlines() if line.startswith(f"run {name} "))
        shown = dict(re.findall(r"(\w+)=([^,()\[\]]+|\[[^\]]*\])", line))
        for key, value in sched.to_dict().items():
            if key == "family" or value is None:
                assert key not in shown
                continue
            values = value if isinstance(value, list) else [value]
            printed = shown[key].strip("[]").split(", ") if isinstance(value, list) else [shown[key]]
            for v, p in zip(values, printed, strict=True):
                if isinstance(v, str):
                    assert p == repr(v)
                else:   # at most 4 significant digits, and the value the run used to that precision
                    assert len(re.sub(r"[^0-9]", "", p.split("e")[0]).strip("0")) <= 4, p
                    assert math.isclose(float(p), v, rel_tol=5e-4), (key, p, v)


def _tracked(root, sub: str) -> list[str]:
    import subprocess

    out = subprocess.run(["git", "ls-files", sub], cwd=root, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def test_every_data_folder_is_declared_in_pyproject():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    packages = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {str(p.relative_to(root)).replace("/", ".") for p in (root / "workbench").rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())}
    assert folders - packages == set(), "add these folders to [tool.setuptools] packages in pyproject.toml"


def test_building_the_package_prints_no_package_data_warnings(tmp_path):
    """The 340 lines of "Package 'workbench.assets.pretrained' is absent from the `packages` configuration"."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"   # a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for name in ("workbench", "widgets"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", ".",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "absent from the `packages` configuration" not in log
    assert "Warning:" not in log.replace("BuildBackendWarning", "Warning"), [
        line for line in log.splitlines() if "Warning" in line][:5]
    wheel = next((tmp_path / "dist").glob("workbench-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assets = _tracked(root, "workbench/assets") or [str(p.relative_to(root)) for p in (root / "workbench/assets")
                                                     .rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert assets and set(assets) <= shipped, sorted(set(assets) - shipped)[:5]


def test_tutorial_01_trainer_cell_prints_no_transformers_warnings(tmp_path):
    """The red stderr block: bos/eos_token_id 50256 outside the vocabulary, and GPT-2's unnamed loss."""
    import subprocess
    import sys
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "01_schedules.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
                and "Trainer(" in "".join(c["source"]))
    script = tmp_path / "cell.py"
    script.write_text("import torch\nfrom workbench import schedules\n" + cell)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LRs exactly as designed" in proc.stdout
    noisy = [line for line in proc.stderr.splitlines() if "transformers" in line or "token_id" in line
             or "loss_type" in line]
    assert noisy == []


def test_tracked_notebooks_carry_no_outputs():
    """Running a tutorial in JupyterLab saves its outputs into the file; commit them stripped (README)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    paths = _tracked(root, "notebooks") or [str(p.relative_to(root)) for p in (root / "notebooks").glob("*.ipynb")]
    paths = [p for p in paths if p.endswith(".ipynb")]
    assert paths
    dirty = {}
    for p in paths:
        nb = json.loads((root / p).read_text())
        cells = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
                 and (c.get("outputs") or c.get("execution_count") is not None)]
        if cells:
            dirty[p] = cells
    assert dirty == {}, ("these notebooks were saved with outputs (cells listed); strip them with "
                         "`jupyter nbconvert --clear-output --inplace NOTEBOOK` or the nbstripout git filter "
                         "described in the README")
