#!/usr/bin/env bash
# The GPU checks of issue 5 in one run, for a CUDA machine that has PyTorch but not this project's venv (such as the
# lent device machine: python3 with torch + CUDA, no package index). On a machine with the venv, `make test-gpu` and
# `python benchmarks/bench_{train,inference,tiling}.py --device cuda --out docs/BENCHMARKS.md` do the same.
#
#   make gpu-wheels                                  # here, once: the pure-Python packages that machine lacks, in .whl/
#   bash benchmarks/gpu_check.sh OUTDIR [BENCH_ROOT] # there: tests/test_gpu.py, then CUDA training and inference speed
#
# BENCH_ROOT (optional): a benchmark root holding Set5 and B100 (the lent machine cannot see ../shared: copy them into
# an ignored folder of the checkout and carry it); with it, bench_tiling times the paper-size model on both sets.
# OUTDIR gets nvidia.txt, test_gpu.log, bench_cuda.log (every benchmark's output), BENCHMARKS.md and bench_cuda.tar
# (the benchmarks' JSON files). The exit status is pytest's. The timeouts below add up to 590 s at most (the device
# tool allows 600 s a command).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [BENCH_ROOT]}
root=${2:-}
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
timeout 200 $py -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
rc=${PIPESTATUS[0]}
log="$out/bench_cuda.log"
bench() { echo "== $*" >>"$log"; timeout "$1" $py "${@:2}" --out docs/BENCHMARKS.md 2>&1 | tee -a "$log"; }
bench 90 benchmarks/bench_train.py --device cuda
bench 60 benchmarks/bench_inference.py --device cuda --batch 64 --repeat 5
if [ -n "$root" ]; then
    bench 60 benchmarks/bench_tiling.py --root "$root" --device cuda
    bench 180 benchmarks/bench_tiling.py --root "$root" --device cuda --dataset B100
fi
cp docs/BENCHMARKS.md "$out/"
tar -cf "$out/bench_cuda.tar" docs/*_cuda*.json 2>/dev/null
exit "$rc"
