"""The skeleton a study runs on: scales, resumable units, and typed results.

A study says *what* to compute; the skeleton says *how* every study runs:

* its settings come from a named scale (or a settings object, or a ``(name, settings)`` pair
  that a command changed from a named one: :func:`~palimpsest.experiments.common.resolve_scale`);
* its work is a sequence of :class:`Unit`\\ s, each a computation with a key and a file of its
  own: stored as it finishes, reused when its key matches, recomputed when its settings or
  inputs changed (:func:`~palimpsest.storage.resumable`), so an interrupted study resumes at
  its first unfinished unit;
* its results are one :class:`~palimpsest.results.Results` written to ``results.json``; the
  report section and the verdict table come from that class.

A study writes :meth:`Study.steps` as a generator: it ``yield``\\ s each unit and receives the
unit's result (computed now or read back: the same value either way), so a later unit can be
built from an earlier one's result, and it ``return``\\ s the results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from transformers import TrainerCallback

from palimpsest.experiments.common import resolve_scale
from palimpsest.results import Results
from palimpsest.storage import resumable

T = TypeVar("T")
CallbacksFor = Callable[[str], Iterable[TrainerCallback]]


@dataclass(frozen=True)
class Unit(Generic[T]):
    """One resumable piece of a study.

    ``path`` is the unit's file, relative to the study's folder; ``key`` everything that decides
    its result (settings, the content of its inputs); ``kind`` the dataclass its result is
    stored as (plain JSON without); ``workdir`` where ``compute`` keeps what it resumes from
    (relative to the study's folder; see :func:`~palimpsest.storage.resumable`)."""

    path: str
    key: Any
    compute: Callable[[], T]
    kind: type[T] | None = None
    workdir: str | None = None


@dataclass(frozen=True)
class StudyRun:
    """What a study's steps are given: where to write, which scale, and the progress hooks."""

    out: Path
    scale_name: str
    settings: Any
    callbacks_for: CallbacksFor


Steps = Generator[Unit[Any], Any, Results]


class Study(ABC):
    """A study: its name, its scales and its steps; :meth:`run` is the same for every study."""

    #: The name it is registered under (:data:`palimpsest.experiments.STUDIES`) and errors use.
    name: ClassVar[str]
    #: What its report is called (``palimpsest: <title>``).
    title: ClassVar[str]
    #: Named settings objects, smallest first.
    scales: ClassVar[Mapping[str, Any]]

    @abstractmethod
    def steps(self, run: StudyRun) -> Steps:
        """Yield each unit (receiving its result) and return the study's results."""

    def run(
        self,
        out: str | Path,
        scale: str | Any = "smoke",
        *,
        callbacks_for: CallbacksFor = lambda _name: (),
    ) -> Results:
        """Run (or resume) the study into ``out`` and write its ``results.json``."""
        scale_name, settings = resolve_scale(scale, self.scales, self.name)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        steps = self.steps(StudyRun(out, scale_name, settings, callbacks_for))
        try:
            unit = next(steps)
            while True:
                workdir = out / unit.workdir if unit.workdir is not None else None
                value = resumable(out / unit.path, unit.key, unit.compute, kind=unit.kind, workdir=workdir)
                unit = steps.send(value)
        except StopIteration as finished:
            results = finished.value
        if not isinstance(results, Results):
            raise TypeError(f"the {self.name} study's steps returned {type(results).__name__}, not results")
        results.write(out / "results.json")
        return results
