#!/usr/bin/env bash
# The GPU checks of issue 5 in one run, for a CUDA machine that has PyTorch but not this project's venv (such as the
# lent device machine: python3 with torch + CUDA, no package index). On a machine with the venv, `make test-gpu` and
# `python benchmarks/bench_{train,inference}.py --device cuda --out docs/BENCHMARKS.md` do the same.
#
#   make gpu-wheels                       # here, once: the pure-Python packages that machine lacks, into .whl/
#   bash benchmarks/gpu_check.sh OUTDIR   # there: tests/test_gpu.py, then CUDA training and inference speed
#
# OUTDIR gets nvidia.txt, test_gpu.log, bench_{train,inference}_cuda.{log,json} and BENCHMARKS.md. The exit status
# is pytest's. The timeouts below cap it at 270 + 180 + 90 s (the device tool allows 600 s a command).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ipt_site .whl/*.whl \
        || exit 3
    export PYTHONPATH="/tmp/ipt_site:$PWD"
fi
{ nvidia-smi -L; $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'device(s)')"; } \
    2>&1 | tee "$out/nvidia.txt"
timeout 270 $py -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
rc=${PIPESTATUS[0]}
timeout 180 $py benchmarks/bench_train.py --device cuda --out docs/BENCHMARKS.md 2>&1 | tee "$out/bench_train_cuda.log"
timeout 90 $py benchmarks/bench_inference.py --device cuda --batch 64 --repeat 5 --out docs/BENCHMARKS.md 2>&1 \
    | tee "$out/bench_inference_cuda.log"
cp docs/BENCHMARKS.md docs/bench_train_cuda.json docs/bench_inference_cuda.json "$out/" 2>/dev/null
exit "$rc"
