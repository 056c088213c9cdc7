#!/usr/bin/env bash
# The GPU checks of workbench in one run (issue 5: optimizers), for a machine with one CUDA GPU and
# PyTorch but no workbench install and no network:
#   - the CUDA tests (tests/test_optim_cuda.py: the same projections and steps on CPU and CUDA, no host
#     synchronisation inside step()) and the optimizer reference tests on that machine,
#   - benchmarks/optim.py on CUDA: step time against AdamW(fused=True) at ~50M and ~400M parameters,
#     with the official apollo-torch rows when that package (and bitsandbytes) can be imported.
# Usage, from the repository root:  bash benchmarks/gpu_check.sh [RESULTS_DIR]     (not yet run on a GPU: a few minutes expected)
# Wheels in .whl/ (e.g. apollo-torch and bitsandbytes, see benchmarks/RESULTS.md) are installed to /tmp/site first.
set -uo pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } 2>&1 | tee "$out/machine.txt"
status=0
$py -m pytest -q -p no:cacheprovider tests/test_optim_cuda.py tests/test_optim_reference.py tests/test_optim_rng.py \
    2>&1 | tee "$out/tests.txt" || status=1
$py benchmarks/optim.py --device cuda --repeats 5 2>&1 | tee "$out/optim_50m.txt" || status=1
$py benchmarks/optim.py --device cuda --d 2048 --ffn 5504 --layers 8 --repeats 5 2>&1 | tee "$out/optim_400m.txt" || status=1
$py benchmarks/optim.py --device cuda --d 2048 --ffn 5504 --layers 8 --repeats 5 --tf32 2>&1 | tee "$out/optim_400m_tf32.txt" || status=1
exit $status
