"""What one unit of the many-edits study records: a draw before any edit, one method's edit of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EditOutcome:
    """One method on one draw: the metrics after, and what the edit cost."""

    method: str
    mode: str  # "at once" or "in sequence"
    edits: int
    batch: int
    seed: int
    metrics: dict[str, float]
    seconds: float
    peak_memory_mb: float


@dataclass
class DrawBaseline:
    """The metrics of one draw before any edit."""

    mode: str
    edits: int
    batch: int
    seed: int
    metrics: dict[str, float]
