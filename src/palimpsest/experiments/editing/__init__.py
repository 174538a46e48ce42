r"""The editing study: change facts in a small model by (constrained) fine-tuning (Zhu et al. 2020).

Protocol (PAPERS.md section 2, at small scale):

1. *A model that knows the facts*: per family (a causal GPT-2 and a masked RoBERTa), a
   small model is pretrained from scratch on wiki text mixed with the built-in country
   facts (capital, continent; four templates each, each subject's held-out paraphrase
   left out). Its recall before any edit is reported: the edit template, and the held-out
   paraphrase.
2. *Edits*: per seed and edit-set size, counterfactual requests (a new object of the same
   relation, never the old one) and, for the support-set baseline, as many unmodified facts
   to train on. Every method is applied to the same requests, measured, and undone
   exactly before the next:
   ``ft`` (unconstrained fine-tuning of every weight), ``ft+support`` (the same with the
   support set), ``linf`` and ``l2`` (constrained fine-tuning) for every layer choice
   ("first", "last", "first+last", "all", and each block alone) and bound δ.
3. Reported: A_M, A_F\S (on the unmodified facts, support facts excluded), their mean,
   paraphrase accuracy, efficacy / neighbourhood (ROME-style probability comparisons),
   steps and seconds, each mean ± std over seeds, beside the pre-edit values; the A_M vs
   A_F\S frontier and per-layer effectiveness as plots; and whether "the first and last
   blocks are the most effective to modify" reproduced.

Layout, in the order a reader meets the study: ``scales`` (editors, fact sets, scales), ``units``
(the pretrained models, the editors' edits and :class:`EditingStudy` on the skeleton of
:mod:`palimpsest.experiments.study`), ``summary`` (over seeds, per block; the verdict),
``results`` (the typed results.json) and ``report`` (its report section).
"""

from __future__ import annotations

from palimpsest.experiments.editing.results import EditingStudyResults
from palimpsest.experiments.editing.scales import FULL_FACT_SETS, METHODS, SCALES, EditingScale
from palimpsest.experiments.editing.summary import (
    KEPT,
    METRICS,
    EditingRow,
    EditingSummary,
    PretrainedModel,
    best_single_blocks,
    per_layer,
    summarise,
)
from palimpsest.experiments.editing.units import (
    EditingStudy,
    method_grid,
    run_editing_study,
    study_facts,
    support_split,
)

__all__ = [
    "FULL_FACT_SETS",
    "KEPT",
    "METHODS",
    "METRICS",
    "SCALES",
    "EditingRow",
    "EditingScale",
    "EditingStudy",
    "EditingStudyResults",
    "EditingSummary",
    "PretrainedModel",
    "best_single_blocks",
    "method_grid",
    "per_layer",
    "run_editing_study",
    "study_facts",
    "summarise",
    "support_split",
]
