"""rewrite: modifying facts in a transformer while keeping the rest (Zhu et al. 2020).

:class:`Relation`, :class:`Fact` (shared with the rest of palimpsest, from
:mod:`palimpsest.data.facts`) and :class:`EditRequest` say what to change;
:class:`ConstrainedFinetune` changes it by fine-tuning chosen weights inside an L-inf or L2
ball around their original values, and undoes it exactly; :func:`edit_metrics` measures
both sides (the modified facts, the unmodified ones) with one definition per metric.
"""

from palimpsest.data.facts import FACT_SETS, Fact, Relation, builtin_facts
from palimpsest.editing.config import EditConfig
from palimpsest.editing.editor import ConstrainedFinetune, EditResult
from palimpsest.editing.metrics import edit_metrics
from palimpsest.editing.requests import EditRequest, counterfactual_requests
from palimpsest.editing.selection import select_parameters

__all__ = [
    "FACT_SETS",
    "ConstrainedFinetune",
    "EditConfig",
    "EditRequest",
    "EditResult",
    "Fact",
    "Relation",
    "builtin_facts",
    "counterfactual_requests",
    "edit_metrics",
    "select_parameters",
]
