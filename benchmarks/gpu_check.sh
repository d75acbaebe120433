#!/usr/bin/env bash
# The CUDA paths of raykd in one prepared run (at most 8 minutes on one GPU):
#   1. a COCO-sized training step (800x1333, batch 2) of an FCOS ResNet-50 student with a
#      ResNet-101 teacher for none / MGD / DMKD / SAMKD, fp32 and bf16 autocast: ms per step
#      against the floor (row none: teacher forward + student forward/backward), peak memory
#      (benchmarks/distill_overhead.py --device cuda --coco [--amp]);
#   2. the same loop inline and through Ray Train with one GPU worker (NCCL process group),
#      bf16, MGD; then 4 search trials at 1 GPU each against 0.25 GPU each (fractional
#      packing) (benchmarks/ray_gpu.py --coco --amp).
# Writes JSON into $OUT (default benchmarks/out/gpu) and prints the tables. Nothing in the
# project or its tests depends on this script or on a GPU.
#
#   bash benchmarks/gpu_check.sh
#
# On a machine without a package registry, wheels in .whl/ (raykd's dependencies that the
# machine lacks, for its Python) are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
python3 -c "import torch, torchvision, ray, optuna, pycocotools, pydantic; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going when it fails
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v "^\s*$\|INFO\|WARNING\|│\|╭\|╰\|├" "$OUT/$name.log" | tail -40
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || status=1
}
step distill_fp32 130 python3 benchmarks/distill_overhead.py --device cuda --coco --methods none mgd dmkd samkd \
    --repeats 10 --warmup 3 --out "$OUT/distill_fp32.json"
step distill_bf16 120 python3 benchmarks/distill_overhead.py --device cuda --coco --amp --methods none mgd dmkd samkd \
    --repeats 10 --warmup 3 --out "$OUT/distill_bf16.json"
step ray_gpu 200 python3 benchmarks/ray_gpu.py --device cuda --coco --amp --method mgd --steps 20 --epochs 3 \
    --out "$OUT/ray_gpu.json"
exit $status
