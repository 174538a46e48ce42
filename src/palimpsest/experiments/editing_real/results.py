"""The real editing study's typed results.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.claims import Claim
from palimpsest.experiments.editing.summary import (
    EditingSummary,
)
from palimpsest.experiments.editing_real.claims import real_editing_claims
from palimpsest.experiments.editing_real.facts import EditRun, Knowledge
from palimpsest.experiments.editing_real.report import study_blocks
from palimpsest.experiments.editing_real.scales import RealEditingScale
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class RealEditingResults(Results):
    """The study's results.json: what the model knew, every edit's record and the summary."""

    KIND: ClassVar[str] = "editing-real"

    scale: str
    settings: RealEditingScale
    model: str
    blocks: int
    knowledge: dict[str, Knowledge]
    editable_facts: int
    runs: list[EditRun]
    summary: EditingSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return real_editing_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[RealEditingResults], plots_dir: Path) -> Section:
        """Knowledge, the table, anchors, verdict, examples, plots."""
        section = Section("Rewrite on a real model: SmolLM2-135M (built in)")
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
