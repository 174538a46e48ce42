"""What a model palimpsest edited carries of its edits, so that the next edit continues them.

A batch editor keeps the keys of every request it wrote (the FFN output projection's inputs at
the subject) and leaves their outputs alone in later edits (:mod:`palimpsest.editing.memit`).
Across processes that needs the keys on disk: ``palimpsest edit`` saves, inside the edited
model's folder, ``palimpsest-edits/``:

* ``log.jsonl``: one line per round of edits (when, which method and settings, which requests,
  the fingerprint of the weights whose text statistics it used);
* ``keys.safetensors``: per block a batch editor wrote, the keys there of every request edited up
  to the last round that wrote it (float32, ``block.<b>`` of shape (projection inputs, keys): a key
  per request and prompt context);
  the requests of later rounds are listed in the log, and their keys are read again when needed.

Plain ``transformers`` ignores the folder; the model loads as any other. The next
``palimpsest edit`` of that folder reads both, preserves the stored keys and appends its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from palimpsest.errors import DataError

STATE_FOLDER = "palimpsest-edits"
LOG_FILE = "log.jsonl"
KEYS_FILE = "keys.safetensors"


@dataclass
class EditRound:
    """One ``palimpsest edit`` of a model: what it changed and how."""

    method: str
    settings: dict[str, Any]
    requests: list[dict[str, str]]  # subject, relation, old, new
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    statistics_fingerprint: str | None = None
    sequential: bool = False


@dataclass
class EditHistory:
    """Every earlier round, and the keys of every request the batch editors wrote, by block."""

    rounds: list[EditRound] = field(default_factory=list)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def statistics_fingerprint(self) -> str | None:
        """The weights whose text statistics the first batch edit used (later rounds reuse them)."""
        return next((r.statistics_fingerprint for r in self.rounds if r.statistics_fingerprint), None)

    def extended(self, new_round: EditRound, keys: dict[int, torch.Tensor]) -> EditHistory:
        """This history with one more round; ``keys`` (the keys of *every* request so far at each
        block the round wrote) replace the stored ones of those blocks."""
        merged = {**self.keys, **{block: k.to(torch.float32) for block, k in keys.items()}}
        return EditHistory([*self.rounds, new_round], merged)


def read_history(model_dir: str | Path) -> EditHistory:
    """The edit history saved in a model folder (empty for a model palimpsest never edited)."""
    folder = Path(model_dir) / STATE_FOLDER
    if not folder.is_dir():
        return EditHistory()
    rounds = []
    log = folder / LOG_FILE
    try:
        lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{log}: unreadable ({error}); move the folder away to start anew") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rounds.append(EditRound(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as error:
            raise DataError(f"{log}:{number}: not an edit log line ({error}); move the folder away") from None
    keys: dict[int, torch.Tensor] = {}
    path = folder / KEYS_FILE
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if not name.startswith("block.") or not name[6:].isdigit():
                        raise DataError(f"{path}: unexpected tensor '{name}'")
                    keys[int(name[6:])] = handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise DataError(f"{path}: unreadable ({error}); move the folder away to start anew") from None
    return EditHistory(rounds, keys)


def write_history(model_dir: str | Path, history: EditHistory) -> None:
    """Write ``history`` into a model folder (called on the staging folder of an atomic save)."""
    folder = Path(model_dir) / STATE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r.__dict__, ensure_ascii=False) for r in history.rounds]
    (folder / LOG_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if history.keys:
        tensors = {f"block.{b}": k.to(torch.float32).contiguous() for b, k in sorted(history.keys.items())}
        save_file(tensors, str(folder / KEYS_FILE))
