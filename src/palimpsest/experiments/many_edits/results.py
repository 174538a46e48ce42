"""The many-edits study's typed results.json."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.claims import Claim
from palimpsest.experiments.many_edits.claims import many_edits_claims
from palimpsest.experiments.many_edits.outcomes import DrawBaseline, EditOutcome
from palimpsest.experiments.many_edits.report import study_blocks
from palimpsest.experiments.many_edits.scales import ManyEditsScale
from palimpsest.experiments.many_edits.summary import SCORED, SummaryRow
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class ManyEditsResults(Results):
    """The study's results.json."""

    KIND: ClassVar[str] = "many-edits"

    scale: str
    settings: ManyEditsScale
    model: str
    benchmark: dict[str, dict[str, int]]
    benchmark_cases: int
    #: Cases of each kind (counterfactual, correction) in the benchmark.
    kinds: dict[str, int]
    baselines: list[DrawBaseline]
    outcomes: list[EditOutcome]
    rows: list[SummaryRow]
    machine: dict[str, Any]

    def best(self, mode: str, edits: int, batch: int) -> SummaryRow | None:
        """The method with the highest mean of made (plain prompt), made after unrelated text and
        neighbourhood kept at (mode, edits, batch): an edit must hold where users ask, without costing
        others. A sequence one at a time and one in batches of 10 are different questions."""
        cell = [
            r for r in self.rows
            if (r.mode, r.edits, r.batch) == (mode, edits, batch) and r.method != "before"
        ]  # fmt: skip

        def score(row: SummaryRow) -> float:
            parts = [row.metrics.get(name, (0.0,))[0] for name in SCORED]
            return sum(parts) / len(parts)

        return max(cell, key=score, default=None)

    def claims(self) -> list[Claim]:
        return many_edits_claims(self)

    def headline(self) -> str:
        parts = []
        for mode, edits, batch in dict.fromkeys((r.mode, r.edits, r.batch) for r in self.rows):
            best = self.best(mode, edits, batch)
            if best is not None:
                kept = best.metrics.get("neighbourhood_kept", (math.nan,))[0]
                cell = f"{edits} {mode}" + (
                    "" if mode == "at once" else " one at a time" if batch == 1 else f" in batches of {batch}"
                )
                made = best.metrics["made"][0]
                parts.append(f"{cell}: {best.method} (made {made:.0%}, neighbourhood kept {kept:.0%})")
        return "Best by mean of made, made after text and neighbourhood kept — " + "; ".join(parts)

    @classmethod
    def report_section(cls, studies: Sequence[ManyEditsResults], plots_dir: Path) -> Section:
        section = Section("Many edits: at once and in sequence")
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
