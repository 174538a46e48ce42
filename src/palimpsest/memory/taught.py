"""What a gated memory was taught: the facts, their answers, and the round that taught them.

A gate is fitted on the inputs of *every* fact its memory holds (:mod:`palimpsest.memory.gated`),
so teaching more facts later, or taking some out, refits it from this list; ``memory list`` shows
it. It travels with the memory as ``memory_facts.json`` beside the weights (merged model or
adapter). A folder whose gate was fitted but which lacks the list (saved by something that did not
know about it) still computes the same outputs, but cannot be taught or made to forget: that is
refused in one line, never done with the earlier facts silently dropped.

The list also keeps the facts a user asked to keep (``memory learn``'s facts without a new object):
the gate is fitted closed on them, so a later round, or a refit after taking facts out, keeps them
closed too instead of forgetting that they were asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from palimpsest.data.facts import Fact, Relation
from palimpsest.errors import DataError, ModelError
from palimpsest.storage import write_text

#: The file beside a memory's weights that lists what it was taught.
TAUGHT_FILE = "memory_facts.json"


@dataclass(frozen=True)
class TaughtFact:
    """One fact a memory holds: ``subject`` -> ``answer`` through ``relation``'s templates."""

    subject: str
    relation: str
    templates: tuple[str, ...]
    answer: str
    #: Which ``memory learn`` round taught it (1 for the first) and when (UTC, ISO 8601).
    round: int
    taught_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.relation)

    @property
    def fact(self) -> Fact:
        """The fact with its taught answer as the object."""
        return Fact(self.subject, Relation(self.relation, self.templates), self.answer)


def taught_fact(fact: Fact, answer: str, round_: int, taught_at: str) -> TaughtFact:
    return TaughtFact(
        fact.subject, fact.relation.name, tuple(fact.relation.templates), answer, round_, taught_at
    )


@dataclass
class TaughtFacts:
    """The facts a memory holds, in the order they were taught (one entry per subject and relation),
    and the facts its gate is kept closed for (``answer`` is the object to keep; ``round`` the round
    that asked for it)."""

    facts: list[TaughtFact]
    kept: list[TaughtFact] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return max((fact.round for fact in self.facts), default=0)

    def keys(self) -> set[tuple[str, str]]:
        return {fact.key for fact in self.facts}

    def adding(self, new: Iterable[TaughtFact], keep: Iterable[TaughtFact] = ()) -> TaughtFacts:
        """This list with ``new`` taught after it (a fact taught again replaces its earlier answer) and
        ``keep`` among the facts kept (the earliest request for a fact stands; a fact taught is not kept)."""
        new = list(new)
        replaced = {fact.key for fact in new}
        facts = [fact for fact in self.facts if fact.key not in replaced] + new
        taught_keys = {fact.key for fact in facts}
        kept: dict[tuple[str, str], TaughtFact] = {}
        for fact in [*self.kept, *keep]:
            if fact.key not in taught_keys:
                kept.setdefault(fact.key, fact)
        return TaughtFacts(facts, list(kept.values()))

    def without(self, facts: Sequence[Fact]) -> TaughtFacts:
        """This list without ``facts`` (by subject and relation); each must be in it."""
        held = self.keys()
        unknown = [fact for fact in facts if (fact.subject, fact.relation.name) not in held]
        if unknown:
            raise DataError(
                f"the memory was never taught '{unknown[0].prompt(0)}' ({unknown[0].subject}, "
                f"{unknown[0].relation.name}): nothing to forget"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        gone = {(fact.subject, fact.relation.name) for fact in facts}
        return TaughtFacts([fact for fact in self.facts if fact.key not in gone], list(self.kept))

    def write(self, folder: str | Path) -> None:
        document = {"facts": [asdict(f) for f in self.facts], "kept": [asdict(f) for f in self.kept]}
        write_text(Path(folder) / TAUGHT_FILE, json.dumps(document, indent=1, ensure_ascii=False))

    @classmethod
    def read(cls, folder: str | Path) -> TaughtFacts | None:
        """The list saved in ``folder``; ``None`` where there is none."""
        path = Path(folder) / TAUGHT_FILE
        if not path.is_file():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            facts = [_entry(row) for row in document["facts"]]
            kept = [_entry(row) for row in document.get("kept", [])]  # lists saved before it was kept
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ModelError(f"{path} is not a list of taught facts ({error})") from None
        return cls(facts, kept)


def _entry(row: dict) -> TaughtFact:
    return TaughtFact(**{**row, "templates": tuple(row["templates"])})


__all__ = ["TAUGHT_FILE", "TaughtFact", "TaughtFacts", "taught_fact"]
