"""The published claims (Zhu et al., MEMIT, AlphaEdit) the many-edits study bears on, judged."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from palimpsest.claims import Claim, Outcome
from palimpsest.experiments.editing_real import EVIDENCE as EDITING_EVIDENCE
from palimpsest.experiments.editing_real import KEPT_GOAL

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.many_edits.results import ManyEditsResults

#: The published batch editors' claims (PAPERS.md, "Many edits"), by mode.
PUBLISHED = {
    "at once": (
        "MEMIT: many edits at once, made and neighbours kept",
        "GPT-J, 10,000 at once: efficacy 98.9, paraphrase 88.6, neighbourhood 73.7 (CounterFact)",
    ),
    "in sequence": (
        "AlphaEdit: edits in sequence, earlier edits and other facts kept",
        "GPT-2 XL, 2,000 in batches of 100: efficacy 99.5, paraphrase 94.0, neighbourhood 66.4",
    ),
}


#: The field's bar for "made" (P(new) > P(old)) and "kept" in the verdict table; palimpsest's own
#: exact-match figures are reported beside them and are stricter.
EFFICACY_BAR, NEIGHBOURHOOD_BAR = 0.9, 0.66


#: The batch methods, the one palimpsest ships first: a claim is judged on the first present.
BATCH_METHODS = ("palimpsest", "alphaedit", "memit")


#: Where a committed run shows the study at the sizes users need.
EVIDENCE = "results/many-edits-real/"


def many_edits_claims(study: ManyEditsResults) -> list[Claim]:
    """MEMIT's and AlphaEdit's claims for the batch editor at each size this run measured, with
    FT-M's figures beside (see :mod:`palimpsest.claims`). Judged as the papers measure: P(new) >
    P(old) on the edit, neighbourhood facts kept."""
    claims = []
    for mode, edits, batch in dict.fromkeys((r.mode, r.edits, r.batch) for r in study.rows):
        if edits < 2:  # one edit says nothing of many: the single-edit claim below covers it
            continue
        cell = {r.method: r for r in study.rows if (r.mode, r.edits, r.batch) == (mode, edits, batch)}
        method = next((m for m in BATCH_METHODS if m in cell), None)
        if method is None:
            continue
        row = cell[method]
        efficacy = row.metrics.get("efficacy", (math.nan,))[0]
        kept = row.metrics.get("neighbourhood_kept", (math.nan,))[0]
        checks = [efficacy >= EFFICACY_BAR, kept >= NEIGHBOURHOOD_BAR]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
        if math.isnan(kept):
            outcome = Outcome.NOT_MEASURABLE
        baseline = cell.get("ft-m")
        beside = ""
        if baseline is not None and "efficacy" in baseline.metrics:
            baseline_kept = baseline.metrics.get("neighbourhood_kept", (math.nan,))[0]
            beside = f"; ft-m {baseline.metrics['efficacy'][0]:.0%} / {baseline_kept:.0%}"
        claim, paper = PUBLISHED[mode]
        size = f"{edits} at once" if mode == "at once" else f"{edits} in batches of {batch}"
        claims.append(
            Claim(
                "rewrite",
                f"{claim} ({size}, {method})",
                paper,
                f"efficacy {efficacy:.0%} / neighbourhood kept {kept:.0%} (exact match: made "
                f"{row.metrics.get('made', (math.nan,))[0]:.0%}){beside}",
                outcome,
                EVIDENCE,
            )
        )
    return [*_single_edit_claims(study), *claims]


def _single_edit_claims(study: ManyEditsResults) -> list[Claim]:
    """Zhu et al.'s claim for the constrained editor on one edit, judged as the editing study
    judges it (:data:`~palimpsest.experiments.editing_real.KEPT_GOAL`), with FT-M beside."""
    cell = {r.method: r for r in study.rows if (r.mode, r.edits) == ("at once", 1)}
    row = cell.get("constrained")
    if row is None:
        return []
    made = row.metrics.get("made", (math.nan,))[0]
    others = ("neighbourhood_kept", "same_subject_kept")
    kept = [row.metrics[name][0] for name in others if name in row.metrics]
    if kept:
        checks = [made >= 0.99, min(kept) >= KEPT_GOAL]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
    else:
        outcome = Outcome.NOT_MEASURABLE  # the model recalled none of the facts to keep
    measured = f"made {made:.0%} / other facts kept " + (f"{min(kept):.0%}" if kept else "(none recalled)")
    if "ft-m" in cell:
        baseline = cell["ft-m"].metrics
        baseline_kept = baseline.get("neighbourhood_kept", (math.nan,))[0]
        measured += f"; ft-m {baseline['made'][0]:.0%} / {baseline_kept:.0%}"
    measured += f"; made after unrelated text {row.metrics.get('made@after-text', (math.nan,))[0]:.0%}"
    return [
        Claim(
            "rewrite",
            "Constrained fine-tuning: one edit made, and the other facts kept",
            "A_M high with A_F\\S almost unchanged, unlike plain fine-tuning (Zhu et al. 2020)",
            measured,
            outcome,
            "" if outcome is Outcome.REPRODUCED else EDITING_EVIDENCE,
        )
    ]
