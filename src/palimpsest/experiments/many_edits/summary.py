"""The many-edits study's summary: each (mode, size, method) over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from palimpsest.experiments.common import mean_std
from palimpsest.experiments.many_edits.outcomes import DrawBaseline, EditOutcome

#: The columns of the study's table, in order.
COLUMNS = (
    "made", "made@after-text", "efficacy", "paraphrase", "paraphrase@held-out", "neighbourhood_kept",
    "same_subject_kept",
    "generation", "generation@chat", "fluency", "perplexity",
)  # fmt: skip


#: What :meth:`ManyEditsResults.best` weighs, equally.
SCORED = ("made", "made@after-text", "neighbourhood_kept")


@dataclass
class SummaryRow:
    """Mean ± std over seeds of one (mode, edits, batch, method)."""

    method: str
    mode: str
    edits: int
    batch: int
    seeds: int
    metrics: dict[str, tuple[float, float]]
    seconds: tuple[float, float]
    peak_memory_mb: tuple[float, float]


def summarise(baselines: Sequence[DrawBaseline], outcomes: Sequence[EditOutcome]) -> list[SummaryRow]:
    """One row per (mode, edits, batch, method), the unedited model ("before") first."""
    rows = []
    cells: dict[tuple[str, int, int, str], list[Any]] = {}
    for base in baselines:
        cells.setdefault((base.mode, base.edits, base.batch, "before"), []).append(base)
    for outcome in outcomes:
        cells.setdefault((outcome.mode, outcome.edits, outcome.batch, outcome.method), []).append(outcome)
    for (mode, edits, batch, method), group in cells.items():
        metrics = {name: mean_std([g.metrics.get(name) for g in group]) for name in COLUMNS}
        metrics = {name: pair for name, pair in metrics.items() if not math.isnan(pair[0])}  # unmeasured
        costly = [g for g in group if isinstance(g, EditOutcome)]
        rows.append(
            SummaryRow(
                method, mode, edits, batch, len(group), metrics,
                mean_std([g.seconds for g in costly]) if costly else (0.0, 0.0),
                mean_std([g.peak_memory_mb for g in costly]) if costly else (0.0, 0.0),
            )
        )  # fmt: skip
    return rows
