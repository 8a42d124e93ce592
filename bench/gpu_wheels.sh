#!/usr/bin/env bash
# The device machine has no network: fetch DeepSpeed and what it needs beyond torch/transformers/accelerate
# into .whl/ (git-ignored) here, then carry ".whl" in the device call; `DEEPSPEED=1 bash bench/gpu_check.sh`
# installs them from there. DeepSpeed's wheel is built locally (its sdist imports torch to build; no ops
# are compiled: ZeRO with a torch optimizer needs none). Binary dependencies for CPython 3.10-3.13.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip wheel "deepspeed==${DEEPSPEED_VERSION:-0.19.8}" --no-deps --no-build-isolation -w .whl
pip download --no-deps -d .whl hjson py-cpuinfo einops "pydantic>=2" typing-inspection annotated-types typing-extensions
for py in 3.10 3.11 3.12 3.13; do
  pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --python-version "$py" -d .whl \
    msgpack ninja pydantic-core psutil
done
du -sh .whl
