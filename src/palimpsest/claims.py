"""Claims: what a paper says, what a run measured, and whether it held — as data, not prose.

A study turns its numbers into :class:`Claim` objects (``Results.claims``); the report and the
console render every claim the same way, in one table that opens the report, so a reader
sees each method's verdict before the details, and tests can assert an :class:`Outcome`
instead of matching sentences.

The outcome words are deliberately few. "Not measurable here" is not a failure: it says the
run's scale cannot show the effect either way (a zero recall for every arm compares nothing),
and the claim's ``evidence`` points at the committed run where it can be seen.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """How a claim fared in one run."""

    REPRODUCED = "reproduced"
    PARTLY = "partly"
    NOT_REPRODUCED = "not reproduced"
    NOT_MEASURABLE = "not measurable here"


@dataclass(frozen=True)
class Claim:
    """One line of the verdict table.

    ``paper`` is the published figure or statement the claim comes from, ``measured`` this
    run's figure in the same terms, ``evidence`` where a committed run shows the claim at a
    scale where it can be judged (a path under ``results/``; empty when this run is the evidence).
    """

    method: str
    claim: str
    paper: str
    measured: str
    outcome: Outcome
    evidence: str = ""

    def line(self) -> str:
        """The claim as one short line: ``method: claim — outcome (measured)``."""
        pointer = f"; see {self.evidence}" if self.evidence else ""
        return f"{self.method}: {self.claim} — {self.outcome} ({self.measured}{pointer})"


def outcome_of(holds: Iterable[bool]) -> Outcome:
    """Every check held: reproduced; some: partly; none: not reproduced; no check: not measurable."""
    checks = list(holds)
    if not checks:
        return Outcome.NOT_MEASURABLE
    if all(checks):
        return Outcome.REPRODUCED
    return Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED


CLAIM_HEADERS = ("method", "claim", "paper", "this run", "verdict", "committed run")


def claim_rows(claims: Iterable[Claim]) -> list[list[str]]:
    """The table rows of :data:`CLAIM_HEADERS`, in the order given."""
    return [
        [claim.method, claim.claim, claim.paper, claim.measured, str(claim.outcome), claim.evidence or "–"]
        for claim in claims
    ]
