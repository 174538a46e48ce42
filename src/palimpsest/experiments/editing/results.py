"""The editing study's typed results.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.experiments.editing.report import study_blocks
from palimpsest.experiments.editing.scales import EditingScale
from palimpsest.experiments.editing.summary import EditingSummary, PretrainedModel
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class EditingStudyResults(Results):
    """The study's results.json: settings, the pretrained models, every edit's record, the summary."""

    KIND: ClassVar[str] = "editing-study"

    scale: str
    settings: EditingScale
    pretrained: dict[str, PretrainedModel]
    #: one record per (family, edits, seed, method): before/after metrics, steps, seconds
    runs: list[dict[str, Any]]
    summary: EditingSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    @classmethod
    def report_section(cls, studies: Sequence[EditingStudyResults], plots_dir: Path) -> Section:
        section = Section("Rewrite: modifying facts while keeping the rest (Zhu et al. 2020)")
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
