#!/usr/bin/env bash
# One short GPU session: the tiny recipe's pretrain on one GPU (bf16), the same under the FSDP config
# with one process, then the ~0.5B-model throughput/MFU benchmark (SKIP_BENCH=1 skips it). Needs runs/tiny/{prepare,base_model}
# from `domainpt prepare recipes/demo/tiny.yaml`. Output: $OUT/gpu_check.log (or ./gpu_check.log).
set -uo pipefail
LOG=${OUT:-.}/gpu_check.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
  for d in gpu-single gpu-fsdp; do rm -rf runs/$d; mkdir -p runs/$d; cp -r runs/tiny/prepare runs/$d/; done
  echo "== single GPU, tiny recipe"
  time python3 -m domainpt pretrain recipes/demo/tiny.yaml out_dir=runs/gpu-single 2>&1 | grep -v "it/s\]" | tail -8
  tail -2 runs/gpu-single/pretrain/metrics.jsonl
  echo "== FSDP config, 1 process, tiny recipe"
  time accelerate launch --config_file recipes/accelerate/fsdp_8gpu.yaml --num_processes 1 -m domainpt pretrain recipes/demo/tiny.yaml out_dir=runs/gpu-fsdp 2>&1 | grep -v "it/s\]" | tail -8
  tail -2 runs/gpu-fsdp/pretrain/metrics.jsonl
  ls runs/gpu-fsdp/pretrain/model 2>&1
  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    echo "== 0.5B Llama throughput and MFU"
    time python3 bench/gpu_pretrain.py --steps 12 2>&1 | grep -E "RESULT|CHECK|device|Error|error"
  fi
} 2>&1 | tee "$LOG"
