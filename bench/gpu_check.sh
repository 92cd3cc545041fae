#!/usr/bin/env bash
# The full-size GPU check of issue 12, one prepared command for a lent GPU machine.
#
#   here:        bash bench/gpu_wheels.sh        # .whl/: diffusers, lycoris-lora, bitsandbytes,
#                                                # pydantic (the device image lacks them), ~51 MB
#   the device:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   dry run here (tiny model on the CPU, same script, ~8 min on this 2-core machine):
#     DEVICE=cpu PYTHON=.venv/bin/python RESUME_TIMEOUT=600 bash bench/gpu_check.sh
#
# Full-size SDXL 1.0 shapes with random weights (built on the GPU), the `delta` LoKr on the
# UNet and both text encoders (trained), batch 4 at 1024x1024, a ~106-token caption (two
# chunks, max_tokens 225), Lion 8-bit; each line of summary.txt: images/s, s/step, peak
# torch.cuda.max_memory_allocated, MFU against the plain UNet's 20.2 TFLOP/image:
#   1. bf16 and fp16, gradient checkpointing on and off (H200: nothing caps the memory);
#   2. the same with checkpointing on, capped at 24 GiB by
#      torch.cuda.set_per_process_memory_fraction: the RTX 3090/4090 fit;
#   3. a SIGKILL and resume from the trainer's checkpoint (bench/gpu_resume.py): the largest
#      difference of the final LoKr weights against a run never interrupted.
# $OUT (the device tool brings back at most 8 files) or bench/out/gpu gets summary.txt,
# results.json (every run's figures) and logs.tar.gz; the runs work in $WORK. Budget:
# about 7 minutes on an H100/H200 with the wheel install; each step has its own timeout so
# one hang does not cost the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/kohaku-gpu-check}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$SUMMARY"
  STEPS=${STEPS:-8}; WARMUP=${WARMUP:-2}; SIZE=(--no-size)
else
  STEPS=${STEPS:-2}; WARMUP=${WARMUP:-1}; SIZE=(--no-size)
fi

bench() {  # name, then bench_train.py arguments
  local name=$1; shift
  echo "== $name: $*" | tee -a "$SUMMARY"
  timeout "${STEP_TIMEOUT:-150}" $PY bench/bench_train.py --device "$DEVICE" --batch 4 \
    --steps "$STEPS" --warmup "$WARMUP" "${SIZE[@]}" --json "$WORK/$name.json" "$@" \
    > "$WORK/$name.log" 2>&1
  local code=$?
  grep -E "^(built|before|latents|torch)" "$WORK/$name.log" | tee -a "$SUMMARY"
  if [ $code -ne 0 ]; then
    echo "   exit $code; last lines:" | tee -a "$SUMMARY"
    tail -n 4 "$WORK/$name.log" | tee -a "$SUMMARY"
  fi
}

for prec in bf16 fp16; do
  bench "b4-$prec-ckpt" --precision "$prec" --grad-ckpt --latents both
  bench "b4-$prec-nockpt" --precision "$prec" --latents given
  bench "b4-$prec-ckpt-24gib" --precision "$prec" --grad-ckpt --latents both \
    --memory-fraction-gib 24
done
bench "b4-bf16-ckpt-adamw-24gib" --precision bf16 --grad-ckpt --latents vae --optimizer adamw \
  --memory-fraction-gib 24

echo "== kill and resume" | tee -a "$SUMMARY"
timeout "${RESUME_TIMEOUT:-240}" $PY bench/gpu_resume.py --device "$DEVICE" --steps 6 \
  --checkpoint-every 2 --kill-after 3 --out "$WORK/resume" > "$WORK/resume.log" 2>&1 \
  || echo "   resume check exit $?" | tee -a "$SUMMARY"
grep -E "^(result|resumed|SIGKILL)" "$WORK/resume.log" | tee -a "$SUMMARY"
$PY - "$WORK" "$OUT/results.json" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
resume = work / "resume" / "result.json"
runs["resume"] = json.loads(resume.read_text()) if resume.is_file() else None
Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
PY
tar -czf "$OUT/logs.tar.gz" -C "$WORK" $(cd "$WORK" && ls ./*.log)
echo "done: $SUMMARY, $OUT/results.json, $OUT/logs.tar.gz"
