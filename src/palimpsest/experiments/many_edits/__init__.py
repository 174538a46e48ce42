"""Many edits at once and one after another (``palimpsest experiment many-edits``).

Protocol:

1. *The benchmark* (:mod:`palimpsest.editing.benchmark`) is built once for the model: what it
   recalls of the shipped fact tables decides the counterfactual cases, what it gets wrong the
   corrections. It is written to ``benchmark.jsonl`` in the output folder.
2. *Draws*: per seed, the benchmark shuffled, its first ``n`` cases. Every method edits the same
   draw, from the same weights (each is undone bit for bit before the next).
3. *Modes*: ``n`` at once (one call), and ``n`` in sequence in batches of ``b`` (``b = 1``: one at
   a time), measured on the final model only.
4. *Methods*: FT-M (EasyEdit's recipe), palimpsest's constrained editor (Zhu et al.), the same
   editor keeping its changes in the null space of preserved keys instead of a norm ball
   (``constrained-preserve``), MEMIT and AlphaEdit as published (keys averaged over the
   contexts, no norm control; MEMIT without the earlier edits' keys, AlphaEdit with them),
   ``palimpsest``: the batch editor with its defaults (:mod:`palimpsest.editing.memit`), and
   ``gated-memory``: the facts written into a gated memory instead of the weights (``gated``).
5. *Measured* before and after (:func:`~palimpsest.editing.benchmark.benchmark_metrics`): made
   (exact match, plain prompt and after unrelated text), P(new) > P(old), paraphrase,
   neighbourhood and same-subject facts kept, greedy generation, fluency, wiki-en perplexity;
   seconds and peak memory of the edit itself.

Layout, in the order a reader meets the study: ``scales`` (methods and scales), ``outcomes``
(what a unit records), ``progress`` (a long sequence's saved progress), ``units`` (the resumable
units and :class:`ManyEditsStudy` on the skeleton of :mod:`palimpsest.experiments.study`),
``gated`` (the gated memory as a method), ``summary`` (each row over seeds), ``claims`` (the
published claims judged), ``results`` (the typed results.json) and ``report`` (its report section).
"""

from __future__ import annotations

from palimpsest.experiments.many_edits.claims import many_edits_claims
from palimpsest.experiments.many_edits.outcomes import DrawBaseline, EditOutcome
from palimpsest.experiments.many_edits.results import ManyEditsResults
from palimpsest.experiments.many_edits.scales import (
    AS_PUBLISHED,
    CONSTRAINED_PRESERVE,
    DEMO_SETS,
    FT_M,
    METHODS,
    SCALES,
    ManyEditsScale,
)
from palimpsest.experiments.many_edits.summary import COLUMNS, SummaryRow, summarise
from palimpsest.experiments.many_edits.units import ManyEditsStudy, run_many_edits_study

__all__ = [
    "AS_PUBLISHED",
    "COLUMNS",
    "CONSTRAINED_PRESERVE",
    "DEMO_SETS",
    "FT_M",
    "METHODS",
    "SCALES",
    "DrawBaseline",
    "EditOutcome",
    "ManyEditsResults",
    "ManyEditsScale",
    "ManyEditsStudy",
    "SummaryRow",
    "many_edits_claims",
    "run_many_edits_study",
    "summarise",
]
