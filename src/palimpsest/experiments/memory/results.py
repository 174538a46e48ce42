"""The memory study's typed results.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.claims import Claim
from palimpsest.experiments.common import (
    FactDataInfo,
)
from palimpsest.experiments.memory.claims import memory_claims
from palimpsest.experiments.memory.report import study_blocks
from palimpsest.experiments.memory.scales import MemoryScale
from palimpsest.experiments.memory.summary import MemoryStudySummary, MemoryUnit
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class MemoryData(FactDataInfo):
    """The fact mixture's record, plus what recall is measured against."""

    cities: int
    statements: int
    #: recall of a model that answers every city with the most common country
    majority_recall: float


@dataclass
class MemoryStudyResults(Results):
    """The study's results.json: settings, data, every unit and the summary."""

    KIND: ClassVar[str] = "memory-study"

    scale: str
    settings: MemoryScale
    data: MemoryData
    units: list[MemoryUnit]
    summary: MemoryStudySummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return memory_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[MemoryStudyResults], plots_dir: Path) -> Section:
        section = Section(
            "Grow: product-key memory from scratch or from a pretrained model (Kim & Jung 2020)"
        )
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
