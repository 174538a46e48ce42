"""Zhu et al.'s claim for one edit, judged on the real model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from palimpsest.claims import Claim, Outcome
from palimpsest.experiments.editing_real.scales import KEPT

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.editing_real.results import RealEditingResults


#: What "keeps the rest" means in the verdict table: every edit made (A_M) while at least this
#: share of the other facts the model recalled is still recalled (A_F\\S).
KEPT_GOAL = 0.9


#: Where the committed real-model runs are: of this study, and of the batch editors made for many edits.
EVIDENCE = "results/editing-real/"


MANY_EDITS_EVIDENCE = "results/many-edits-real/"


def real_editing_claims(study: RealEditingResults) -> list[Claim]:
    """Zhu et al.'s claim for the default editor at each size this run measured, beside FT-M
    (see :mod:`palimpsest.claims`): every edit made, and the facts not asked to change kept."""
    claims = []
    for row in study.summary.rows:
        if row.label != "default":
            continue
        made, kept = row.mean("A_M"), row.mean(KEPT)
        checks = [made >= 0.99, kept >= KEPT_GOAL]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
        others = [
            f"{r.label} {100 * r.mean('A_M'):.0f}% / {100 * r.mean(KEPT):.0f}%"
            for r in study.summary.rows
            if r.edits == row.edits and r.sequential == row.sequential and r.label in ("ft", "ft-m")
        ]
        size = (
            "one edit"
            if row.edits == 1
            else f"{row.edits} edits {'in a row' if row.sequential else 'at once'}"
        )
        before = row.mean(KEPT + " before")
        claims.append(
            Claim(
                "rewrite",
                f"{size}: made, and the other facts kept",
                "A_M high with A_F\\S almost unchanged, unlike plain fine-tuning (Zhu et al. 2020)",
                f"A_M {100 * made:.0f}% / A_F\\S {100 * kept:.0f}% (before {100 * before:.0f}%)"
                + (f"; {', '.join(others)}" if others else ""),
                outcome,
                "" if outcome is Outcome.REPRODUCED else EVIDENCE if row.edits == 1 else MANY_EDITS_EVIDENCE,
            )
        )
    return claims
