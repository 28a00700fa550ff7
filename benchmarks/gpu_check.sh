#!/usr/bin/env bash
# One GPU check of at most 5 minutes: images/s of resnet18 pretraining on CIFAR-sized data generated in
# memory, in fp32 and in bf16 + channels_last, then the four ratios of the CPU benchmarks on the GPU.
# Usage: bash benchmarks/gpu_check.sh   (from the repository root, with lbfood installed in .venv or on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY benchmarks/gpu_throughput.py --arch resnet18 --width 1.0 --batch-size 512 --steps 40
$PY benchmarks/gpu_throughput.py --arch resnet50_imagenet --width 1.0 --batch-size 128 --steps 20 --only bf16
$PY benchmarks/lff_overhead.py --width 1.0 --batch-size 512 --steps 30
$PY benchmarks/trainer_vs_minimal.py --width 1.0 --batch-size 512 --images 5000 --repeats 2
$PY benchmarks/loader_share.py --width 1.0 --batch-size 512 --steps 30
$PY benchmarks/report_scaling.py --width 1.0
