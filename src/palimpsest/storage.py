"""Writing results and models safely: atomically, and once under multi-process training.

Under ``torchrun`` / ``accelerate launch`` every process runs the same pipeline code; only
the main process (rank 0) writes, and the others wait at a barrier until the files exist,
so no two processes write the same file and nobody reads a half-written one. Without
``torch.distributed`` these are plain writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist


def is_main_process() -> bool:
    """Rank 0 (or not distributed at all)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across processes, when there are several."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a kill mid-write never leaves a truncated file), on rank 0."""
    path = Path(path)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        tmp.replace(path)
    wait_for_everyone()


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    wait_for_everyone()


def save_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """``save_pretrained`` of a model (safetensors) and/or its tokenizer into one folder, on rank 0."""
    path = Path(path)
    if is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        if model is not None:
            model.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
    wait_for_everyone()
    return path


def remove_tree(path: str | Path) -> None:
    """Delete a folder (intermediate checkpoints), on rank 0."""
    if is_main_process():
        shutil.rmtree(path, ignore_errors=True)
    wait_for_everyone()
