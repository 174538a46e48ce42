r"""The editing study on a real pretrained model (``palimpsest experiment editing --scale real``).

Protocol (PAPERS.md section 2, on the built-in SmolLM2-135M instead of a model trained here):

1. *What the model knows*: exact-match recall of every built-in country and element relation
   (reported per relation); edits are drawn from the facts it recalls in the ``edit_sets``.
2. *Edits*: per seed, counterfactual requests (a new object the same relation has for another
   subject) at each size — single edits (``singles`` of them per seed, each made and undone
   alone), batches of 16 and 64 at once, and 64 one after another — with an unmodified set of
   known facts to score (A_F\S) and a disjoint support set (for ``ft+support`` only). Every
   method sees the same requests and is undone exactly before the next.
3. Methods: ``ft`` (unconstrained fine-tuning of every block's MLP), ``ft+support``, ``ft-l``
   and ``ft-m`` (EasyEdit's settings: one MLP down-projection at relative depth 0.7, 25 steps
   at lr 5e-4, loss at the last prompt token / teacher-forced on the object), palimpsest's
   default editor; and across depth, one block's MLP down-projection at a time: the default
   editor moved to that block, and the editor's recipe (subject positions, stop at success)
   at lr 1e-3 for 25 steps under each L-inf and L2 bound of the grid (in units of the weight).
4. Measured before and after: A_M, A_F\S, their mean, paraphrase, efficacy, neighbourhood (see
   :mod:`palimpsest.editing.metrics`), *generation* success (greedy continuation of up to 8
   tokens names the new object; the kept facts' continuations still name theirs), wiki-en
   perplexity (fluency), steps and seconds. Mean ± std over every draw.

The ``smoke`` scale runs the same code on a random model of SmolLM2's structure (no facts
known: the numbers mean nothing, the plumbing is tested).

Layout, in the order a reader meets the study: ``scales`` (fact sets, editors, scales), ``facts``
(what the model knows, the draws, the measurement, a run's record), ``units`` (the resumable
units and :class:`RealEditingStudy` on the skeleton of :mod:`palimpsest.experiments.study`),
``summary`` (over draws; the verdict), ``claims`` (Zhu et al.'s claim judged), ``results`` (the
typed results.json) and ``report`` (its report section).
"""

from __future__ import annotations

from palimpsest.experiments.editing_real.claims import EVIDENCE, KEPT_GOAL, real_editing_claims
from palimpsest.experiments.editing_real.facts import (
    Continuation,
    EditRun,
    Examples,
    Knowledge,
    RealEditUnit,
    knowledge,
)
from palimpsest.experiments.editing_real.results import RealEditingResults
from palimpsest.experiments.editing_real.scales import (
    ANCHORS,
    EASYEDIT,
    KEPT,
    KNOWLEDGE_SETS,
    SCALES,
    RealEditingScale,
)
from palimpsest.experiments.editing_real.summary import METRICS, summarise
from palimpsest.experiments.editing_real.units import (
    RealEditingStudy,
    method_grid,
    run_real_editing_study,
    run_real_scale,
)

__all__ = [
    "ANCHORS",
    "EASYEDIT",
    "EVIDENCE",
    "KEPT",
    "KEPT_GOAL",
    "KNOWLEDGE_SETS",
    "METRICS",
    "SCALES",
    "Continuation",
    "EditRun",
    "Examples",
    "Knowledge",
    "RealEditUnit",
    "RealEditingResults",
    "RealEditingScale",
    "RealEditingStudy",
    "knowledge",
    "method_grid",
    "real_editing_claims",
    "run_real_editing_study",
    "run_real_scale",
    "summarise",
]
