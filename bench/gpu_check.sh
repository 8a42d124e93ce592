#!/usr/bin/env bash
# One short GPU session (device time is scarce: ~10 minutes a call). By default only the unmeasured
# issue-9 work: the 0.5B Llama throughput/MFU benchmark with each attention kernel and fast-path switch,
# then the best combination on the ~1B shape. TINY=1 first runs the tiny recipe's pretrain on one GPU
# and under the FSDP config with one process (measured in session 1); DEEPSPEED=1 the same under the
# ZeRO-2 and ZeRO-3 configs (issue 5). Both need runs/tiny from `domainpt prepare recipes/demo/tiny.yaml`;
# DEEPSPEED=1 also .whl/ from bench/gpu_wheels.sh. Carry them: run(carry=["runs/tiny", ".whl"], ...).
# Every part has a timeout so one hang cannot take the call's other numbers. Output: $OUT/gpu_check.log.
set -uo pipefail
LOG=${OUT:-.}/gpu_check.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VARIANTS=${VARIANTS:-default,varlen,flex_attention,chunked_loss,varlen_chunked_b16,varlen_compile,no_isolation}
BIG=${BIG-default,varlen_chunked_b16}  # BIG= (empty) skips the ~1B runs
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
  if [ "${TINY:-0}" = 1 ]; then
    for d in gpu-single gpu-fsdp; do rm -rf runs/$d; mkdir -p runs/$d; cp -r runs/tiny/prepare runs/$d/; done
    echo "== single GPU, tiny recipe"
    time python3 -m domainpt pretrain recipes/demo/tiny.yaml out_dir=runs/gpu-single 2>&1 | grep -v "it/s\]" | tail -8
    tail -2 runs/gpu-single/pretrain/metrics.jsonl
    echo "== FSDP config, 1 process, tiny recipe"
    time accelerate launch --config_file recipes/accelerate/fsdp_8gpu.yaml --num_processes 1 -m domainpt pretrain recipes/demo/tiny.yaml out_dir=runs/gpu-fsdp 2>&1 | grep -v "it/s\]" | tail -8
    tail -2 runs/gpu-fsdp/pretrain/metrics.jsonl
  fi
  if [ "${DEEPSPEED:-0}" = 1 ]; then  # issue 5: needs .whl/ (bench/gpu_wheels.sh) and runs/tiny carried
    # the image python3's own pip (a bare `pip` there is another interpreter's, without numpy); --no-deps for what is missing if the resolver balks
    python3 -m pip install -q --no-index --find-links .whl deepspeed 2>&1 | tail -3 || true
    python3 -c "import deepspeed" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --find-links .whl deepspeed hjson \
      py-cpuinfo einops pydantic pydantic-core typing-inspection annotated-types msgpack ninja 2>&1 | tail -3
    python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
    for z in 2 3; do
      rm -rf runs/gpu-zero$z; mkdir -p runs/gpu-zero$z; cp -r runs/tiny/prepare runs/gpu-zero$z/
      echo "== DeepSpeed ZeRO-$z config, 1 process, tiny recipe (checkpoint at step 6, final model)"
      time timeout 150 accelerate launch --config_file recipes/accelerate/deepspeed_zero$z.yaml --num_processes 1 -m domainpt \
        pretrain recipes/demo/tiny.yaml out_dir=runs/gpu-zero$z train.save_every=6 2>&1 | grep -E "^\[domainpt\]|^domainpt|Error" | tail -8
      [ -f runs/gpu-zero$z/pretrain/manifest.json ] || continue
      head -1 runs/gpu-zero$z/pretrain/metrics.jsonl; tail -1 runs/gpu-zero$z/pretrain/metrics.jsonl
      python3 -c "import json; m = json.load(open('runs/gpu-zero$z/pretrain/manifest.json')); print('manifest:', m['distributed_type'], m['steps'], 'steps', m['eval_history'][-1])"
      ls runs/gpu-zero$z/pretrain/model runs/gpu-zero$z/pretrain/checkpoints
    done
  fi
  echo "== 0.5B Llama throughput and MFU: $VARIANTS"
  time timeout ${BENCH_S:-360} python3 bench/gpu_pretrain.py --steps 12 --variants "$VARIANTS" 2>&1 | grep -E "RESULT|CHECK|FAILED|device|Error"
  if [ -n "$BIG" ]; then
    echo "== ~1B Llama: $BIG"
    time timeout ${BIG_S:-120} python3 bench/gpu_pretrain.py --steps 12 --shape 1b --variants "$BIG" 2>&1 | grep -E "RESULT|CHECK|FAILED|Error"
  fi
} 2>&1 | tee "$LOG"
