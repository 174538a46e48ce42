"""A long sequence of edits saves its progress as it goes, so that a re-run goes on from there."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from palimpsest.errors import PalimpsestError
from palimpsest.storage import (
    as_stored,
    atomic_folder,
    read_safetensors,
    write_json,
)

logger = logging.getLogger(__name__)


#: Seconds of editing between two saves of a long sequence's progress (the batch editor's state:
#: its edited projections and kept keys, about 100 MB for SmolLM2's five blocks).
SEQUENCE_SAVE_SECONDS = 600.0


def edit_in_sequence(editor: Any, requests: list, batch: int, progress: Path | None, key: Any) -> float:
    """Apply ``requests`` in batches. With ``progress``, a saved state of the same ``key`` is
    continued and the state is saved every :data:`SEQUENCE_SAVE_SECONDS` of editing. Returns the
    seconds to add to this process's clock for the whole sequence's editing time: the earlier
    processes' editing, less the time spent saving here."""
    done, earlier = 0, 0.0
    if progress is not None:
        saved = _read_progress(progress, key)
        if saved is not None:
            done, earlier, state = saved
            editor.load_sequence_state(state)
            batches = -(-len(requests) // batch)
            logger.info("continuing a sequence after batch %d of %d (%s)", done, batches, progress)
    since, saving, last_save = time.perf_counter(), 0.0, 0.0
    for first in range(done * batch, len(requests), batch):
        editor.apply(requests[first : first + batch], measure=False)
        done += 1
        editing = time.perf_counter() - since - saving
        if (
            progress is not None
            and first + batch < len(requests)
            and editing - last_save >= SEQUENCE_SAVE_SECONDS
        ):
            began = time.perf_counter()
            _save_progress(progress, key, done, earlier + editing, editor.sequence_state())
            saving += time.perf_counter() - began
            last_save = editing
    return earlier - saving


def _read_progress(folder: Path, key: Any) -> tuple[int, float, dict] | None:
    """``(batches done, seconds, state)`` saved for ``key``, or None (none, another key, unreadable)."""
    try:
        record = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
        if record.get("key") != as_stored(key):
            return None
        return (
            int(record["batches"]),
            float(record["seconds"]),
            read_safetensors(folder / "state.safetensors"),
        )
    except (OSError, ValueError, KeyError, TypeError, PalimpsestError) as error:
        if folder.exists():
            logger.warning("%s cannot be continued (%s); the sequence starts again", folder, error)
        return None


def _save_progress(folder: Path, key: Any, batches: int, seconds: float, state: dict) -> None:
    with atomic_folder(folder) as staging:
        save_file(
            {name: tensor.contiguous() for name, tensor in state.items()}, str(staging / "state.safetensors")
        )
        write_json(staging / "progress.json", {"key": as_stored(key), "batches": batches, "seconds": seconds})
