"""Edit requests: which fact to change and to what, and counterfactual edit sets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from palimpsest.data.facts import Fact
from palimpsest.errors import DataError


@dataclass(frozen=True)
class EditRequest:
    """Make the model answer ``new_object`` for ``fact`` (subject and relation stay)."""

    fact: Fact
    new_object: str

    def __post_init__(self) -> None:
        if not self.new_object.strip():
            raise DataError(f"edit of '{self.fact.subject}': the new object is empty")
        if self.new_object == self.fact.object:
            raise DataError(f"edit of '{self.fact.subject}': the new object equals the old one")

    @property
    def new_fact(self) -> Fact:
        return Fact(self.fact.subject, self.fact.relation, self.new_object)


def counterfactual_requests(facts: Sequence[Fact], count: int, *, seed: int = 0) -> list[EditRequest]:
    """``count`` facts drawn reproducibly, each to be changed to another object of its relation.

    The new object is drawn from the objects the same relation has for *other* subjects
    (so it is a plausible answer, e.g. another capital), never the fact's own object.
    """
    if count > len(facts):
        raise DataError(f"asked for {count} edits of {len(facts)} facts")
    objects: dict[str, list[str]] = {}
    for fact in facts:
        objects.setdefault(fact.relation.name, [])
        if fact.object not in objects[fact.relation.name]:
            objects[fact.relation.name].append(fact.object)
    rng = random.Random(seed)
    requests = []
    for fact in rng.sample(list(facts), count):
        candidates = [o for o in objects[fact.relation.name] if o != fact.object]
        if not candidates:
            raise DataError(f"relation '{fact.relation.name}' has a single object: nothing to change it to")
        requests.append(EditRequest(fact, rng.choice(candidates)))
    return requests
