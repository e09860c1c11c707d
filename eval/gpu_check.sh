#!/usr/bin/env bash
# One prepared check for the day a GPU is lent (an H100-class card: the workplace lends an H200).
# Under 8 minutes in all, every stage under its own `timeout`, results under $OUT (the device tool's
# output folder; eval/results/gpu/ when $OUT is unset), the device, versions and command recorded:
#
#   1. correctness of every Triton kernel (forward + LSE, backward dQ and dK/dV, INT8 QK, block
#      scores) in bf16 at real shapes vs a float64 reference and SDPA   (eval/gpu_kernel_check.py)
#   2. the attention benchmark: ours vs FlexAttention vs SDPA on the method layouts of Wan 480p,
#      forward and forward+backward                                      (eval/bench_attention.py)
#   3. end to end: the Wan2.1-T2V-1.3B transformer (30 layers, 12 heads x 128 = dim 1536, FFN 8960),
#      random weights, 480p x 81 frames (latent 21x60x104 = 32760 tokens), one denoiser step:
#      stock vs dense vs radial vs sliding_window                        (eval/bench_transformer.py)
#   3b. the same, stock vs radial, each model compiled (Diffusers' compile_repeated_blocks,
#      fullgraph, Inductor): what users who compile compare          (appended to bench_wan.txt)
#   4. with what is left of the budget: a launch-configuration sweep of the three kernels (tiles,
#      warps, stages) on the radial and the dense layout, to set the dispatcher from measurements
#                                                                        (eval/gpu_tune.py)
#
# The machine's image has python3 3.12 with torch 2.11 and triton 3.6 (not our pins) and no
# Diffusers, and reaches no registry. Before the call, here:  bash eval/gpu_wheels.sh  (Diffusers'
# wheel into .whl/, git-ignored). Then one device call:
#     run(command="bash eval/gpu_check.sh", carry=[".whl"], timeout_s=540)
# and copy the files that come back (files_at) into eval/results/gpu/ to commit them.
# Without a GPU (catches errors in every piece on tiny shapes, kernels in the Triton interpreter):
#     bash eval/gpu_check.sh --dry-run
# Variables: GPU_CHECK_BUDGET (seconds, default 460), PYTHON (default python3), ATTN_LAYOUTS,
# ATTN_GRIDS, E2E_METHODS (below).
set -uo pipefail  # no -e: every stage runs and its status goes into the summary
export PYTHONUNBUFFERED=1

# ---- what stage 2 benchmarks: bench_attention.py's --layout values (radial | sliding_window | grat |
# ---- band | random), --grids (TxHxW latent grids), and for `random` the lengths and densities
# ---- (density 1.0 is our dense mode against SDPA-flash). Edit here.
ATTN_LAYOUTS=${ATTN_LAYOUTS:-"radial sliding_window random"}
ATTN_GRIDS=${ATTN_GRIDS:-"21x30x52"}
ATTN_SEQS=${ATTN_SEQS:-"32760"}
ATTN_DENSITIES=${ATTN_DENSITIES:-"1.0 0.5 0.25 0.1"}
# ---- what stage 3 compares (the stock Diffusers run is always the first row)
E2E_METHODS=${E2E_METHODS:-"dense,radial,sliding_window"}

cd "$(dirname "$0")/.." || exit 2
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then RES=$OUT
elif [ $DRY = 1 ]; then RES=${TMPDIR:-/tmp}/gpu_check_dry
else RES=eval/results/gpu
fi
mkdir -p "$RES"
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
CMD="bash eval/gpu_check.sh $*"

# seconds a stage may take: its own cap, or what is left of the budget (minus a margin)
stage_time() {
    local want=$1 left
    left=$(( START + BUDGET - $(date +%s) - 5 ))
    if [ "$left" -lt "$want" ]; then echo "$left"; else echo "$want"; fi
}

declare -a SUMMARY=()
run_stage() {  # name, cap seconds, output file (+file: append to it), command...
    local name=$1 cap=$2 file=$3 tee_args=(); shift 3
    if [ "${file:0:1}" = "+" ]; then file=${file:1}; tee_args=(-a); fi
    local t rc t0
    t=$(stage_time "$cap")
    if [ "$t" -lt 15 ]; then
        SUMMARY+=("$(printf '%-16s %-14s %6s  %s' "$name" "SKIPPED(budget)" "-" "$file")")
        echo "== $name: skipped, ${t}s of the budget left"
        return
    fi
    echo
    echo "== $name (timeout ${t}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$t" "$@" 2>&1 | tee "${tee_args[@]}" "$RES/$file"
    rc=$?
    local dt=$(( $(date +%s) - t0 )) status=ok
    if [ $rc = 124 ] || [ $rc = 137 ]; then status="TIMEOUT(${t}s)"; elif [ $rc != 0 ]; then status="FAIL(rc=$rc)"; fi
    SUMMARY+=("$(printf '%-16s %-14s %6s  %s' "$name" "$status" "${dt}s" "$file")")
}

main() {
    echo "\$ $CMD"
    echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(hostname); $(uname -srm); budget ${BUDGET}s; results in $RES"

    # ---- imports: Diffusers from the carried wheels, diffsparse from the repo root (no pip install -e)
    if [ $DRY = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
            || echo "# WARNING: installing the carried wheels failed; stage 3 needs Diffusers"
    elif [ $DRY = 0 ]; then
        echo "# WARNING: no .whl/ carried (run bash eval/gpu_wheels.sh here, carry [\".whl\"]): stage 3 needs Diffusers"
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

    # ---- device, driver, versions (read only: nothing about the card is changed)
    {
        echo "\$ $CMD"
        echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(uname -srm)"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
                --format=csv 2>&1
        fi
        timeout 120 "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda})")
for name in ("triton", "diffusers", "transformers", "numpy"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("device: no CUDA device")
try:
    import diffsparse
    print(f"diffsparse {diffsparse.__version__} from {diffsparse.__file__}")
except Exception as e:
    print(f"diffsparse: package import failed ({type(e).__name__}: {e}); stage 1 imports the kernels without it")
EOF
    } 2>&1 | tee "$RES/env.txt"

    # ---- 1. kernel correctness
    if [ $DRY = 1 ]; then
        run_stage kernel_check 150 kernel_check.txt env TRITON_INTERPRET=1 "$PY" eval/gpu_kernel_check.py --dry-run \
            --json "$RES/kernel_check.json"
    else
        run_stage kernel_check 150 kernel_check.txt "$PY" eval/gpu_kernel_check.py --json "$RES/kernel_check.json"
    fi

    # ---- 2. attention benchmark: ours vs compiled FlexAttention vs SDPA-flash, forward and fwd+bwd
    local -a attn
    if [ $DRY = 1 ]; then
        attn=(--device cpu --dtype fp32 --heads 2 --head-dims 64 --block-size 16 --backward --warmup 0 --repeats 1
              --no-flex --grids 3x8x16 --seqs 384)
    else
        attn=(--device cuda --dtype bf16 --heads 12 --head-dims 128 --block-size 128 --backward --warmup 1 --repeats 3)
        # shellcheck disable=SC2206
        attn+=(--grids $ATTN_GRIDS --seqs $ATTN_SEQS)
    fi
    # shellcheck disable=SC2206
    attn+=(--layout $ATTN_LAYOUTS --densities $ATTN_DENSITIES)
    run_stage bench_attention 200 bench_attention.txt "$PY" eval/bench_attention.py "${attn[@]}"

    # ---- 3. end to end, Wan2.1-T2V-1.3B at 480p x 81 frames, random weights
    local -a e2e
    if [ $DRY = 1 ]; then
        e2e=(--frames 3 --height 16 --width 16 --heads 2 --head-dim 64 --ffn 128 --layers 2 --block-size 16
             --device cpu --dtype fp32 --repeats 1)
    else
        e2e=(--frames 21 --height 60 --width 104 --heads 12 --head-dim 128 --ffn 8960 --layers 30 --block-size 128
             --device cuda --dtype bf16 --repeats 3)
    fi
    run_stage bench_wan1.3b 150 bench_wan.txt "$PY" eval/bench_transformer.py "${e2e[@]}" --methods "$E2E_METHODS"
    local compiler=inductor
    [ $DRY = 1 ] && compiler=aot_eager  # the dry run checks the path, not Inductor's code generation
    run_stage wan_compiled 150 +bench_wan.txt "$PY" eval/bench_transformer.py "${e2e[@]}" --methods radial \
        --compile $compiler --regional

    # ---- 4. launch-configuration sweep (last: it only informs the next dispatcher change)
    if [ $DRY = 1 ]; then
        run_stage kernel_tune 120 kernel_tune.txt env TRITON_INTERPRET=1 "$PY" eval/gpu_tune.py --dry-run
    else
        run_stage kernel_tune 120 kernel_tune.txt "$PY" eval/gpu_tune.py
    fi

    # ---- summary (printed last)
    {
        echo
        echo "==================== gpu_check summary ($(( $(date +%s) - START ))s of ${BUDGET}s) ===================="
        echo "\$ $CMD"
        grep -m1 '^device' "$RES/env.txt" || true
        grep -E -m3 '^(python|triton|diffusers) ' "$RES/env.txt" | paste -sd ';' - | sed 's/;/; /g' || true
        printf '%-16s %-14s %6s  %s\n' stage status time file
        printf '%s\n' "${SUMMARY[@]}"
        echo "-- kernel check:"
        grep -E ' FAIL|^kernel check:' "$RES/kernel_check.txt" 2>/dev/null | tail -n 12 || true
        echo "-- attention (best ms; ours/ideal):"
        grep -E '^(radial|sliding_window|grat|band|random)' "$RES/bench_attention.txt" 2>/dev/null | tail -n 12 || true
        echo "-- Wan 1.3B, one step:"
        grep -E '^(# .*compiled: |method |stock |dense |radial |sliding_window |grat )' "$RES/bench_wan.txt" 2>/dev/null || true
        echo "-- kernel launch configurations:"
        grep -E '^best ' "$RES/kernel_tune.txt" 2>/dev/null || true
        echo "files: $RES/{gpu_check.log,env.txt,kernel_check.txt,kernel_check.json,bench_attention.txt,bench_wan.txt,kernel_tune.txt,summary.txt}"
    } | tee "$RES/summary.txt"
    local s
    for s in "${SUMMARY[@]}"; do
        case "$s" in *" ok "*) ;; *) return 1 ;; esac
    done
    return 0
}

main 2>&1 | tee "$RES/gpu_check.log"
exit "${PIPESTATUS[0]}"
