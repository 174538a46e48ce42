"""New knowledge in a memory: grow meets rewrite on a real model (``palimpsest experiment knowledge``).

Lin et al. 2025 ("Continual learning via sparse memory finetuning") taught a pretrained model
new facts by updating only the memory slots the facts select far more than background text
does, and lost 11% of NaturalQuestions F1 doing it, against 89% for full fine-tuning and 71%
for LoRA on the same facts. Zhu et al. 2020 found their memory-augmented model the easiest to
modify locally. This study asks whether that holds at our scale, on the built-in SmolLM2-135M:

1. *What it knows*: exact-match recall of the built-in country and element relations and of
   the cities of ``city_facts`` (city -> country) through each fact's first template.
2. *What it is taught*, per N and seed: ``counterfactual_share`` of the N facts are
   counterfactual edits of facts it recalls (another object of the same relation), the rest
   true city -> country facts it gets wrong (checked before training). ``kept`` other facts
   it recalls are never trained on; they measure forgetting, with wiki-en perplexity.
3. *Arms*, each from the same pretrained weights and for the same number of optimizer steps
   on the same examples (the fact's first template, loss on the answer's tokens only):
   full fine-tuning; LoRA through ``peft`` on every linear layer of the blocks; the
   constrained editor (:class:`~palimpsest.editing.ConstrainedFinetune`, its defaults; its
   steps see every fact and it stops when all have taken); a residual memory with zero
   values added at ``memory.layers`` and only its values trained; and sparse memory
   fine-tuning (only the top-t slots per step by TF-IDF against wiki-en).
4. *Measured*, before and after: recall of the taught facts (first template, the held-out
   paraphrase, and greedy generation naming the answer), recall of the kept facts (and their
   greedy continuations), wiki-en perplexity; the cost (parameters trained or changed,
   seconds, peak resident memory above the start); for memories, slots changed and how many
   of those wiki text reads.

Every (N, seed, arm) unit is stored as it finishes; a re-run resumes. The ``smoke`` scale
runs the same code on a random model of SmolLM2's structure (it knows nothing: every
probeable fact counts as known, the numbers mean nothing, the plumbing is tested).

Layout, in the order a reader meets the study: ``scales`` (arms and scales), ``facts`` (what the
model knows, the draws, the measurement), ``arms`` (one arm on one draw), ``units`` (the resumable
units and :class:`KnowledgeStudy` on the skeleton of :mod:`palimpsest.experiments.study`),
``summary`` (arms over seeds, the verdict), ``results`` (the typed results.json) and ``report``
(its report section).
"""

from __future__ import annotations

from palimpsest.experiments.knowledge.arms import ArmRun, run_arm
from palimpsest.experiments.knowledge.facts import Baseline, Draw, Known, draw, measure, survey
from palimpsest.experiments.knowledge.results import KnowledgeResults
from palimpsest.experiments.knowledge.scales import ANCHORS, KNOWN_SETS, SCALES, Arm, KnowledgeScale, Method
from palimpsest.experiments.knowledge.summary import (
    EQUAL_LEARNING,
    METRICS,
    KnowledgeRow,
    KnowledgeSummary,
    summarise,
)
from palimpsest.experiments.knowledge.units import KnowledgeStudy, arms_to_run, run_knowledge_study

__all__ = [
    "ANCHORS",
    "EQUAL_LEARNING",
    "KNOWN_SETS",
    "METRICS",
    "SCALES",
    "Arm",
    "ArmRun",
    "Baseline",
    "Draw",
    "KnowledgeResults",
    "KnowledgeRow",
    "KnowledgeScale",
    "KnowledgeStudy",
    "KnowledgeSummary",
    "Known",
    "Method",
    "arms_to_run",
    "draw",
    "measure",
    "run_arm",
    "run_knowledge_study",
    "summarise",
    "survey",
]
