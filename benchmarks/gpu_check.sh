#!/usr/bin/env bash
# The GPU checks of workbench in one run (issues 5 and 17), for a machine with CUDA GPUs and
# PyTorch but no workbench install and no network:
#   - the CUDA tests (tests/test_optim_cuda.py: the same projections and steps on CPU and CUDA, no host
#     synchronisation inside step()), the optimizer reference tests, and the FSDP2 tests (gloo on CPU),
#   - benchmarks/optim.py on CUDA: step time against AdamW(fused=True) at ~50M and ~400M parameters
#     (target: APOLLO <= 1.5x), with the official apollo-torch rows when that package (and
#     bitsandbytes) can be imported,
#   - benchmarks/throughput.py: tokens/s and MFU of the 30M and 100M presets (bf16 autocast, eager and
#     compiled) against a bare nanoGPT-style loop in the same process,
#   - FSDP2 on all visible GPUs (nccl, bf16 mixed precision): a short llama-100m run, its resume on
#     one GPU, and benchmarks/fsdp.py (one process vs DDP vs FSDP2: step time and memory per rank).
# Usage, from the repository root:  bash benchmarks/gpu_check.sh [RESULTS_DIR]     (not yet run on a GPU: ~10 minutes expected)
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
ngpu=$($py -c "import torch; print(torch.cuda.device_count())")
$py -m pytest -q -p no:cacheprovider tests/test_optim_cuda.py tests/test_optim_reference.py tests/test_optim_rng.py \
    tests/test_fsdp_optim.py tests/test_fsdp_train.py 2>&1 | tee "$out/tests.txt" || status=1
$py benchmarks/throughput.py --device cuda --models llama-30m,llama-100m --batch-size 16 --seq-len 1024 \
    --steps 20 --rounds 1 2>&1 | tee "$out/throughput.txt" || status=1
run=$(mktemp -d)/fsdp
$py -m torch.distributed.run --standalone --nproc_per_node "$ngpu" -m workbench.cli train --parallel fsdp \
    --model llama-100m --device cuda --batch-size 8 --seq-len 1024 --steps 30 --eval-interval 15 --eval-batches 4 \
    --checkpoint-interval 15 --optimizer apollo-mini --lr 1e-2 --run-dir "$run" 2>&1 | tail -n 20 | tee "$out/fsdp_run.txt" || status=1
$py -m workbench.cli train --resume "$run" --steps 40 --no-progress 2>&1 | tail -n 20 | tee -a "$out/fsdp_run.txt" || status=1
$py benchmarks/fsdp.py --device cuda --nproc "$ngpu" --models llama-30m,llama-100m --batch-size 8 --seq-len 1024 \
    --steps 10 --threads 4 2>&1 | tee "$out/fsdp_bench.txt" || status=1
$py benchmarks/optim.py --device cuda --repeats 5 2>&1 | tee "$out/optim_50m.txt" || status=1
$py benchmarks/optim.py --device cuda --d 2048 --ffn 5504 --layers 8 --repeats 5 2>&1 | tee "$out/optim_400m.txt" || status=1
$py benchmarks/optim.py --device cuda --d 2048 --ffn 5504 --layers 8 --repeats 5 --tf32 2>&1 | tee "$out/optim_400m_tf32.txt" || status=1
exit $status
