"""The plasticity study: does pretraining with active forgetting make relearning easier?

Protocol (Chen et al. 2023 at small scale, see PAPERS.md section 1):

1. Pretrain the same model twice on the same English text, data order and seed:
   *standard*, and *forgetting* (token embeddings reset every K updates, per-episode
   learning rate). A share of the English documents is held out of pretraining: the
   synthetic languages are derived from it, so they are text the bodies never saw.
2. Task adaptation, once per model: shared-topic classification on English wiki text,
   embeddings frozen.
3. For each new language, token budget and seed: language adaptation (new tokenizer,
   embeddings re-drawn with that seed for *both* models, body frozen) — the relearning
   curve — then assembly with the task body and zero-shot topic accuracy in that
   language.

Seeds vary the language-adaptation run (embedding draw, data order, masking); each
variant is pretrained once per study, so the spread says nothing about pretraining noise.

Reported: relearning curves (mean ± std over seeds); the gap between them at every
evaluation, at the first one after the draw and where the standard model's becomes the
lower; steps the forgetting model needs to reach the standard model's final loss; the best
(kept) losses; zero-shot accuracy; and the paper's relative gain (mean over languages of
per-language relative accuracy gains).

Layout, in the order a reader meets the study: ``scales`` (settings: languages, task, scales),
``units`` (the resumable computations and :class:`PlasticityStudy`, which runs them on the
skeleton of :mod:`palimpsest.experiments.study`), ``summary`` (figures over seeds and the
verdict in prose), ``claims`` (the paper's claims judged), ``results`` (the typed results.json)
and ``report`` (its report section).
"""

from __future__ import annotations

from palimpsest.experiments.plasticity.claims import plasticity_claims
from palimpsest.experiments.plasticity.results import PlasticityResults, PretrainDigest
from palimpsest.experiments.plasticity.scales import (
    CONTROL_LANGUAGE,
    LANGUAGES,
    PAPER_LANGUAGES,
    SCALES,
    VARIANTS,
    NewLanguage,
    PlasticityScale,
    TaskSpec,
)
from palimpsest.experiments.plasticity.summary import (
    PlasticityCell,
    PlasticitySummary,
    VariantSummary,
    first_step_at_or_below,
    summarise,
)
from palimpsest.experiments.plasticity.units import (
    PlasticityStudy,
    embedding_alignment,
    language_split,
    language_task,
    run_plasticity,
    source_task,
)

__all__ = [
    "CONTROL_LANGUAGE",
    "LANGUAGES",
    "PAPER_LANGUAGES",
    "SCALES",
    "VARIANTS",
    "NewLanguage",
    "PlasticityCell",
    "PlasticityResults",
    "PlasticityScale",
    "PlasticityStudy",
    "PlasticitySummary",
    "PretrainDigest",
    "TaskSpec",
    "VariantSummary",
    "embedding_alignment",
    "first_step_at_or_below",
    "language_split",
    "language_task",
    "plasticity_claims",
    "run_plasticity",
    "source_task",
    "summarise",
]
