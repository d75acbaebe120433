#!/usr/bin/env bash
# The CUDA paths of raykd in one prepared run of at most 8 minutes on one GPU, most important
# first; every step streams its JSON lines into $OUT as it goes (a time-out keeps what was
# measured) and is killed with its children when its limit passes (timeout -k):
#   1. every method (all 11) at COCO sizes (800x1333, batch 2, FCOS R50 student / R101 teacher)
#      in bf16 as the loop runs it (train.amp: bf16) against the floor (row none), peak memory
#      (benchmarks/distill_overhead.py --device cuda --coco --amp: the trainer's own step);
#   2. host-device syncs per training step (torch.cuda.set_sync_debug_mode; gpu_paths.py syncs);
#   3. 4 search trials packed at 0.25 GPU through both executors, against 1 GPU each
#      (benchmarks/ray_gpu.py --parts packing);
#   4. the same COCO-size methods in fp32;
#   5. FCOS, RetinaNet, Faster R-CNN and Mask R-CNN students with a heterogeneous teacher (gpu_paths.py archs);
#   6. box AP of one checkpoint with amp off and bf16 (gpu_paths.py amp_ap);
#   7. DDP with 2 ranks on the one GPU (gloo: NCCL refuses two ranks on one device; gpu_paths.py ddp).
# Writes into $OUT (default benchmarks/out/gpu): one .jsonl per step (one JSON object a line),
# the JSON files of the benchmarks and a log per step. Nothing in the project or its tests
# depends on this script or on a GPU. Dry run of the Python parts on a CPU (tiny sizes):
#   DRY_RUN=1 bash benchmarks/gpu_check.sh
#
#   bash benchmarks/gpu_check.sh
#
# On a machine without a package registry, wheels in .whl/ (raykd's dependencies that the
# machine lacks, for its Python) are installed into /tmp/site first (pip -c constraints.txt).
set -uo pipefail
OUT=${OUT:-benchmarks/out/gpu}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu; SIZE=(); AMP=(); TINY=(--tiny); REPEATS=(--repeats 1 --warmup 1 --methods none mgd samkd)
else
    DEVICE=cuda; SIZE=(--coco); AMP=(--amp); TINY=(); REPEATS=(--repeats 10 --warmup 3)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
fi
python3 -c "import torch, torchvision, ray, optuna, pycocotools, pydantic; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__, \
'optuna', optuna.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/versions.txt" || exit 1
status=0
BUDGET_END=$((SECONDS + 470))
step() {  # step NAME SECONDS COMMAND...: JSON lines of stdout to NAME.jsonl, the rest to NAME.log
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_END - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then echo "== $name: skipped (the 8 minutes are spent)"; status=1; return; fi
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>"$OUT/$name.log" | tee -a "$OUT/$name.log" | grep --line-buffered '^[{[]' \
        | tee "$OUT/$name.jsonl"
    local rc=${PIPESTATUS[0]}
    grep -v '^\s*$\|INFO\|WARNING\|│\|╭\|╰\|├\|^[{[]' "$OUT/$name.log" | tail -15
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || status=1
}
step distill_bf16 150 python3 benchmarks/distill_overhead.py --device "$DEVICE" "${SIZE[@]}" "${AMP[@]}" \
    "${REPEATS[@]}" --jsonl --out "$OUT/distill_bf16.json"
step syncs 45 python3 benchmarks/gpu_paths.py syncs --device "$DEVICE" "${TINY[@]}"
step packing 120 python3 benchmarks/ray_gpu.py --device "$DEVICE" --parts packing --steps 5 --epochs 1 \
    --packing 1:inline 0.25:inline 0.25:train --out "$OUT/ray_gpu.json"
step distill_fp32 80 python3 benchmarks/distill_overhead.py --device "$DEVICE" "${SIZE[@]}" \
    "${REPEATS[@]}" --methods none mgd dmkd samkd dfmsd --jsonl --out "$OUT/distill_fp32.json"
step archs 60 python3 benchmarks/gpu_paths.py archs --device "$DEVICE" "${TINY[@]}" --steps 20
step amp_ap 25 python3 benchmarks/gpu_paths.py amp_ap --device "$DEVICE" "${TINY[@]}" --steps 20
step ddp 30 python3 benchmarks/gpu_paths.py ddp --device "$DEVICE" "${TINY[@]}" --steps 10
exit $status
