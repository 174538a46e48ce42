"""The memory study's findings that are published claims, judged for the verdict table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from palimpsest.claims import Claim, Outcome, outcome_of
from palimpsest.experiments.memory.findings import FINDINGS
from palimpsest.experiments.memory.summary import Comparison

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.memory.results import MemoryStudyResults


#: Where a committed run shows the memory study's claims with 3 seeds.
EVIDENCE = "results/memory-cpu/"


_METRIC_WORDS = {
    "validation_loss": "val. loss",
    "recall": "recall",
    "kl_weights": "KL",
    "slots_90": "slots@90%",
}


def memory_claims(study: MemoryStudyResults) -> list[Claim]:
    """The published findings as this run measured them (see :mod:`palimpsest.claims`).

    A recall comparison counts only where one of its arms recalls more than answering every
    city with the most common country: below that both arms guess, and their difference says
    nothing about the memory.
    """
    arms, chance = study.summary.arms, study.data.majority_recall
    claims = []
    for finding in FINDINGS:
        if finding.claim is None:
            continue
        found = [c for c in study.summary.comparisons if (c.a, c.b, c.metric) in finding.checks]
        blind = [
            c
            for c in found
            if c.metric == "recall" and max(arms[c.a].recall[0], arms[c.b].recall[0]) <= chance
        ]
        judged = [c for c in found if c not in blind]
        by_metric: dict[str, list[Comparison]] = {}
        for comparison in judged:
            by_metric.setdefault(comparison.metric, []).append(comparison)
        measured = "; ".join(
            f"{_METRIC_WORDS.get(metric, metric)} {sum(c.holds for c in group)}/{len(group)} held "
            f"({', '.join(f'{c.difference[0]:+.3f}' for c in group)})"
            for metric, group in by_metric.items()
        )
        if blind:
            measured += (
                "; " if measured else ""
            ) + f"recall at chance ({100 * chance:.0f}%) in every arm compared"
        outcome = outcome_of(c.holds for c in judged)
        evidence = "" if outcome is Outcome.REPRODUCED and len(study.settings.seeds) > 1 else EVIDENCE
        claims.append(
            Claim(
                "grow", finding.claim, finding.paper, measured or "not run at this scale", outcome, evidence
            )
        )
    return claims
