"""The plasticity study's typed results.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.claims import Claim
from palimpsest.errors import DataError
from palimpsest.experiments.plasticity.claims import plasticity_claims
from palimpsest.experiments.plasticity.report import study_blocks
from palimpsest.experiments.plasticity.scales import PlasticityScale
from palimpsest.experiments.plasticity.summary import PlasticitySummary
from palimpsest.pretraining import PretrainResults
from palimpsest.report import Section
from palimpsest.results import Results


@dataclass
class PretrainDigest:
    """What the study keeps of one variant's pretraining run."""

    path: str
    validation_loss: float
    unigram_loss: float
    steps: int
    eval_curve: list[tuple[int, float]]
    reset_every: int | None

    def full_results(self) -> PretrainResults:
        """The whole pretraining run's results (curves, settings, model), read from beside its model."""
        written = Path(self.path).parent / "results.json"
        try:
            return PretrainResults.from_json(json.loads(written.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise DataError(f"{written}: the pretraining run's results cannot be read ({error})") from None

    @classmethod
    def of(cls, run: PretrainResults) -> PretrainDigest:
        forgetting = run.config.extensions.get("forgetting")
        return cls(
            path=run.model.path,
            validation_loss=run.metrics.validation_loss,
            unigram_loss=run.metrics.unigram_loss,
            steps=run.metrics.steps,
            eval_curve=run.curves.eval_loss,
            reset_every=forgetting.reset_every if forgetting is not None else None,
        )


@dataclass
class PlasticityResults(Results):
    """The study's results.json: settings, each unit's record and the summary."""

    KIND: ClassVar[str] = "plasticity"

    scale: str
    settings: PlasticityScale
    pretrain: dict[str, PretrainDigest]
    #: task adaptation per variant (:func:`~palimpsest.forgetting.relearning.adapt_task`'s record)
    task: dict[str, dict[str, Any]]
    #: one record per language-adaptation unit (:func:`~palimpsest.forgetting.relearning.adapt_language`'s
    #: plus zero-shot accuracy, variant, language, budget and seed)
    runs: list[dict[str, Any]]
    summary: PlasticitySummary
    #: where the study's results were assembled (:func:`~palimpsest.storage.machine_info`);
    #: None in results written before it was recorded
    machine: dict[str, Any] | None = None

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return plasticity_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[PlasticityResults], plots_dir: Path) -> Section:
        section = Section("Forget: active forgetting and relearning (Chen et al. 2023)")
        for study in studies:
            section.blocks += study_blocks(study, plots_dir)
        return section
