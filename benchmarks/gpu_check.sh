#!/usr/bin/env bash
# The GPU checks of issue 5 in one run, for a CUDA machine that has PyTorch but not this project's venv (such as the
# lent device machine: python3 with torch + CUDA, no package index). On a machine with the venv, `make test-gpu` and
# `python benchmarks/bench_train.py --device cuda --out docs/BENCHMARKS.md` do the same.
#
#   make gpu-wheels                       # here, once: the pure-Python packages that machine lacks, into .whl/
#   bash benchmarks/gpu_check.sh OUTDIR   # there: tests/test_gpu.py, then the CUDA training throughput
#
# OUTDIR gets nvidia.txt, test_gpu.log, bench_train_cuda.log, BENCHMARKS.md and bench_train_cuda.json. The exit
# status is pytest's. Not yet timed on a GPU; the timeouts below cap it at 300 s + 240 s.
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
timeout 300 $py -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
rc=${PIPESTATUS[0]}
timeout 240 $py benchmarks/bench_train.py --device cuda --out docs/BENCHMARKS.md 2>&1 | tee "$out/bench_train_cuda.log"
cp docs/BENCHMARKS.md docs/bench_train_cuda.json "$out/" 2>/dev/null
exit "$rc"
