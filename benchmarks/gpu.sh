#!/usr/bin/env bash
# One prepared GPU run (benchmarks/gpu.py): the CUDA tests, the memory on the card, SmolLM2-135M
# training with and without a memory, a 1,000-edit batch; gpu.json and gpu.md in --out.
# usage: benchmarks/gpu.sh [--device cuda|cpu] [--out DIR] [--sections machine,tests,memory,...]
#
# Uses no network. On a GPU machine whose image has torch, triton, transformers and peft, what else
# it needs comes from .gpu/ (benchmarks/gpu_prepare.sh fills it where PyPI is reachable) and
# palimpsest itself from src/. Where palimpsest is installed (make's .venv), that is used as it is:
#   PYTHON=.venv/bin/python benchmarks/gpu.sh --device cpu --out /tmp/gpu-dry   (the dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import palimpsest, datasets, product_key_memory" 2>/dev/null; then
  if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/palimpsest-gpu-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .gpu/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu.py "$@"
