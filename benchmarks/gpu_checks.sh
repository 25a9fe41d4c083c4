#!/usr/bin/env bash
# Every GPU check of the performance work in one run of at most about 9.5 minutes on one H100/H200, for a
# session whose task is lent a GPU machine: the CUDA-only tests, the target workload
# (ViT-32B and DeepViT-32B, 224 px, bfloat16, every metric on) and JPEG loading with
# worker processes. It needs torch, timm, numpy, pillow, rich and safetensors, which the
# machines' image has; the package is used from this checkout (no install).
#
#   OUT=/where/to/write benchmarks/gpu_checks.sh      # default: benchmarks/results
#
# Writes gpu-checks.log (everything printed) and gpu-deepvit32.json, gpu-vit32.json,
# gpu-loading.json. Each step has its own time limit, so a slow step cannot take the
# later ones with it; a step's exit status is printed after it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$out/gpu-checks.log") 2>&1

step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - start))s"
}

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

# No host sync inside the streaming loop; CUDA results equal CPU results.
step cuda-tests 60 python3 -m pytest tests/test_analysis.py tests/test_metrics_similarity.py -q -p no:cacheprovider -k cuda
# The targets: analysis_vs_forward >= 0.5, analysis_vs_naive >= 20 (GPU),
# mem_growth < 1.05, check_vs_reference PASS.
step deepvit32 240 python3 benchmarks/bench_analysis.py --preset deepvit32 --device cuda --repeats 2 \
    --json "$out/gpu-deepvit32.json"
step vit32 200 python3 benchmarks/bench_analysis.py --preset vit32 --device cuda --repeats 2 --json "$out/gpu-vit32.json"
# Does decoding JPEGs keep up with the GPU, and how many workers does it take?
step loading 90 python3 benchmarks/bench_loading.py --device cuda --model deepvit32 --dtype bfloat16 --batch-size 128 \
    --num-images 512 --workers 0 4 8 --repeats 1 --json "$out/gpu-loading.json"
date -u
