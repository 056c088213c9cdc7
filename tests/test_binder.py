"""The Binder environment: ``binder/verify`` builds it from ``binder/requirements.txt`` with the Python of
``binder/runtime.txt`` in a fresh virtual environment and runs tutorial 01 there (several minutes).

Runs when ``WORKBENCH_VERIFY_BINDER=1`` (``.ci/run`` sets it); skipped otherwise.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_and_requirements_agree_with_the_project():
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-3.")
    minor = int(runtime.split(".")[1])
    assert minor >= 11          # pyproject: requires-python >= 3.11 (transformers 5)
    reqs = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert "-e ." in reqs
    make_torch = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("TORCH"))
    assert make_torch.split("?=")[1].strip() in reqs          # the same torch as `make setup`


@pytest.mark.skipif(os.environ.get("WORKBENCH_VERIFY_BINDER") != "1",
                    reason="set WORKBENCH_VERIFY_BINDER=1 to build the Binder environment (.ci/run does)")
@pytest.mark.timeout(1800)
def test_binder_environment_builds_and_runs_a_tutorial(tmp_path):
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip().removeprefix("python-")
    if shutil.which(f"python{runtime}") is None:
        pytest.fail(f"python{runtime} (binder/runtime.txt) is not installed on this machine")
    out = subprocess.run([str(ROOT / "binder" / "verify"), str(tmp_path / "venv")], cwd=ROOT,
                         capture_output=True, text=True, timeout=1700)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "binder/verify: OK" in out.stdout
