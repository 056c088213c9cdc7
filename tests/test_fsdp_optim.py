"""Every workbench optimizer gives the same update on FSDP2-sharded parameters (2 gloo ranks on CPU)
as on the unsharded ones, and state_bytes counts what each rank holds.

The worker (tests/fsdp_worker.py) shards a small model whose rows split unevenly (15 = 8 + 7,
7 = 4 + 3) with tall and wide matrices, applies the same random gradients for 5 steps (projection
refresh every 2 steps, so the refresh and the norm-growth limiter are exercised) to a sharded copy
and to an unsharded reference, and reports the relative difference of the accumulated updates.
A norm or projection computed per shard instead of over the whole weight is off by O(1).
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)
NAMES = ["apollo", "apollo-tensor", "apollo-cached-step", "apollo-mini", "galore", "frugal-random",
         "frugal-columns", "frugal-rows", "frugal-blocks", "lamb", "lion", "rule-norm", "adamw"]


def run_two_ranks(script: str, *args: str, timeout: int = 150) -> subprocess.CompletedProcess:
    """``script`` under torchrun with 2 gloo processes on CPU (one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "address already in use" in (proc.stdout + proc.stderr).lower():
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)  # port race
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_optim") / "results.json"
    run_two_ranks(os.path.join(HERE, "fsdp_worker.py"), str(out))
    return json.loads(out.read_text())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", NAMES)
def test_sharded_update_matches_unsharded(results, name):
    assert results[name]["rel_err"] < 1e-5, results[name]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["lion", "lamb", "frugal-blocks"])
def test_state_bytes_is_per_rank(results, name):
    # state that follows the parameter's rows: the ranks' shares add up to the unsharded state exactly
    r = results[name]
    assert sum(r["state_bytes_per_rank"]) == r["state_bytes_unsharded"]
    assert max(r["state_bytes_per_rank"]) < r["state_bytes_unsharded"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["apollo", "apollo-mini", "galore", "frugal-random", "frugal-rows", "frugal-columns"])
def test_projected_state_is_mostly_sharded(results, name):
    # moments of tall weights are sharded; those of wide weights (r x n) and the regenerable
    # projections or index sets are replicated on every rank
    r = results[name]
    assert max(r["state_bytes_per_rank"]) < r["state_bytes_unsharded"] < sum(r["state_bytes_per_rank"])
