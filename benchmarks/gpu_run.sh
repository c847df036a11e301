#!/usr/bin/env bash
# The GPU benchmark run (issue 14), as one script for a lent machine (one H200: about 8 minutes for all of it).
# Needs: .bench/real (python -m benchmarks.random_folders .bench/real, made where the test extras are) and, where
# diffusers is not installed, its wheel in .whl (the device tool's README says how); results go to $OUT (or ./out).
#   bash benchmarks/gpu_run.sh                      # PARTS="step suite offload"
#   PARTS="suite offload" FAMILIES=kandinsky3,wuerstchen bash benchmarks/gpu_run.sh
# step: the PixArt step at 1024 and 2048 px (jaxgen cuDNN / XLA attention, diffusers eager), ceilings, MFU.
# suite: every family's whole pipeline per image at its default size and steps in bfloat16: jaxgen, diffusers eager
#   and torch.compile (TORCH_COMPILE=0 leaves it out), each family in its own process, JOBS at once.
# offload: jaxgen with enable_model_cpu_offload() for OFFLOAD_FAMILIES, alongside the suite (timed sections take
#   turns through one lock file).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
PARTS=${PARTS:-step suite offload}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/env.txt"
python3 -c "import jax, flax, torch, diffusers, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/env.txt"
if [[ " $PARTS " == *" step "* ]]; then
  timeout "${STEP_TIMEOUT:-170}" python3 benchmarks/step.py --sizes "${STEP_SIZES:-1024,2048}" --reps "${STEP_REPS:-5}" \
    --no-torch-compile --json "$OUT/step-gpu.json" 2>&1 | grep -v -i warn | tee "$OUT/step.log"
fi
common=(--checkpoints "${CHECKPOINTS:-.bench/real/map.json}" --random-weights --dtypes bfloat16
        --steps "${SUITE_STEPS:-default}" --reps "${REPS:-1}" --time-budget "${SUITE_BUDGET:-300}" --lock /tmp/bench.lock)
if [[ " $PARTS " == *" suite "* ]]; then
  compile=(); [[ "${TORCH_COMPILE:-1}" == 1 ]] && compile=(--torch-compile)
  timeout "${SUITE_TIMEOUT:-330}" python3 -m benchmarks "${common[@]}" "${compile[@]}" --sides diffusers,jaxgen \
    --jobs "${JOBS:-7}" ${SUITE_EXTRA:-} \
    --families "${FAMILIES:-kandinsky3,deepfloyd_if,pixart_1024,kandinsky2_2,wuerstchen,unidiffuser,kandinsky}" \
    --json "$OUT/suite-gpu.json" --table "$OUT/suite-gpu.md" 2> "$OUT/suite.log" &
fi
if [[ " $PARTS " == *" offload "* ]]; then
  timeout "${SUITE_TIMEOUT:-330}" python3 -m benchmarks "${common[@]}" --sides jaxgen --offload ${SUITE_EXTRA:-} \
    --jobs 3 --families "${OFFLOAD_FAMILIES:-pixart_1024,deepfloyd_if,kandinsky3}" \
    --json "$OUT/offload-gpu.json" --table "$OUT/offload-gpu.md" 2> "$OUT/offload.log" &
fi
wait
tail -4 "$OUT/step.log" 2>/dev/null; echo
cat "$OUT/suite-gpu.md" "$OUT/offload-gpu.md" 2>/dev/null
grep -h -A3 -E "Traceback|exit [^0]" "$OUT/suite.log" "$OUT/offload.log" 2>/dev/null | grep -v bfc_allocator | tail -30
