"""Typed results: what a command or study measured, as a dataclass that *is* its results.json.

Every command and study returns a :class:`Results` subclass. Its fields are the keys of its
``results.json`` (plus ``kind``, its class's :attr:`~Results.KIND`); reading a file back
checks every key and type with the config loader, so a renamed field fails where results
are made or read, never halfway through building a report.

Each class renders its own report section (:meth:`Results.report_section`); the report
module knows only tables, figures and Markdown/HTML. Classes are found by ``kind`` through
the entry-point group ``palimpsest.results`` (see pyproject.toml), the way training
extensions are, so the spine imports no study and a plugin package can add its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from palimpsest.config import from_dict, to_dict
from palimpsest.errors import ConfigError, DataError
from palimpsest.storage import write_json

if TYPE_CHECKING:
    from palimpsest.claims import Claim
    from palimpsest.report import Section

RESULTS_GROUP = "palimpsest.results"

R = TypeVar("R", bound="Results")


class Results:
    """Base of the results dataclasses; subclasses set ``KIND`` and their section."""

    KIND: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The results.json document: ``kind`` first, then every field (tuples as lists)."""
        return {"kind": self.KIND, **to_dict(self)}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """Read a results document back, checking every key and type against the class."""
        if not isinstance(data, Mapping):
            raise DataError(f"a '{cls.KIND}' results document must be a mapping, not {type(data).__name__}")
        body = {key: value for key, value in data.items() if key != "kind"}
        try:
            return from_dict(cls, body)
        except ConfigError as error:
            raise DataError(
                f"not a '{cls.KIND}' results document as this version writes it: {error}"
            ) from None

    @classmethod
    def report_section(cls: type[R], results: Sequence[R], plots_dir: Path) -> Section:
        """The report section of one or more results of this kind (plots go to ``plots_dir``)."""
        raise NotImplementedError(f"{cls.__name__} has no report section")

    def headline(self) -> str | None:
        """One line for the terminal after a run (a study's verdict); None: nothing to add."""
        return None

    def claims(self) -> list[Claim]:
        """The published claims this run bears on, each with its outcome here (none by default);
        the report opens with them in one table (:mod:`palimpsest.claims`)."""
        return []


def results_classes() -> dict[str, type[Results]]:
    """The installed results classes by ``kind``."""
    return {entry.name: entry.load() for entry in entry_points(group=RESULTS_GROUP)}


def read_results(data: Mapping[str, Any]) -> Results:
    """The typed results of a results.json document (its ``kind`` picks the class)."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    classes = results_classes()
    if kind not in classes:
        raise DataError(f"unknown results kind {kind!r} (known: {', '.join(sorted(classes))})")
    return classes[kind].from_json(data)
