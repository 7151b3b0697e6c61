#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine: the CUDA tests (Triton kernel against the float64
# reference), the KLA scan kernel timings, DC-MPC throughput at paper size with each uncertainty estimator,
# and a short paper-size training run with the ensemble estimator and optimistic planning.
#
#     bash benchmarks/gpu_checks.sh [out_dir] [train_seconds]
#     DEVICE=cpu SIZE=small bash benchmarks/gpu_checks.sh   # a dry run of the script itself on a CPU machine
#
# Each step has its own time cap so that one slow step cannot eat the others' time; every log lands in out_dir.
set -u
OUT_DIR=${1:-runs/gpu_checks}
TRAIN_S=${2:-100}
ENV=dmc/reacher-easy
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
SIZE=${SIZE:-paper}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-disabled}  # no videos here: rendering off
status=0

step() {  # step <name> <seconds> <command...>: run, log to out_dir/<name>.log, remember a failure
    local name=$1 cap=$2
    shift 2
    echo "=== $name (cap ${cap}s): $*"
    local t0=$SECONDS
    timeout "$cap" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    echo "=== $name: rc $rc, $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || [ "$rc" -eq "${ok_rc:-0}" ] || status=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.is_available())"

step cuda_tests 100 $PY -m pytest -q -rs tests/world_models/kla -k "cuda or triton"
step kla_scan 50 $PY benchmarks/kla_scan.py --device $DEVICE --no-loop
step kla_scan_wide 40 $PY benchmarks/kla_scan.py --device $DEVICE --no-loop --batch 16 --channels 64 --lengths 4096 16384
for est in none entropy ensemble sfr; do
    planner=()
    [ "$est" = none ] || planner=(agent.planner.optimism=1.0)
    step "throughput_$est" 70 $PY benchmarks/throughput.py --agents dcmpc --size $SIZE --device $DEVICE \
        --env "$ENV" --env-decisions 500 --acts 50 --updates 50 \
        --override world_model.uncertainty.estimator="$est" "${planner[@]}"
done
# The training run is cut by its cap (rc 124) by design: its log holds the env steps/s it reached.
ok_rc=124 step train_ensemble "$TRAIN_S" $PY train.py env="$ENV" device=$DEVICE agent.size=$SIZE wandb.mode=disabled \
    trainer.video=none trainer.progress_bar=false trainer.seed_steps=2000 trainer.eval_every=100000 \
    world_model.uncertainty.estimator=ensemble agent.planner.optimism=1.0 run_dir="$OUT_DIR/train_ensemble"
grep -E "env_steps_per_s|Error|error" "$OUT_DIR/train_ensemble.log" | tail -n 5
exit $status
