"""The knowledge study's typed results.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.experiments.knowledge.arms import ArmRun
from palimpsest.experiments.knowledge.facts import Baseline, Known
from palimpsest.experiments.knowledge.report import study_blocks
from palimpsest.experiments.knowledge.scales import KnowledgeScale
from palimpsest.experiments.knowledge.summary import KnowledgeSummary
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class KnowledgeResults(Results):
    """The study's results.json: what the model knew, every unit and the summary."""

    KIND: ClassVar[str] = "knowledge"

    scale: str
    settings: KnowledgeScale
    model: str
    known: dict[str, Known]
    recalled_facts: int
    unknown_cities: int
    baselines: list[Baseline]
    runs: list[ArmRun]
    summary: KnowledgeSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    @classmethod
    def report_section(cls, studies: Sequence[KnowledgeResults], plots_dir: Path) -> Section:
        section = Section("Grow meets rewrite: new knowledge in a memory (Lin et al. 2025, Zhu et al. 2020)")
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
