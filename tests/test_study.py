"""The study skeleton: units stored as they finish, reused when their key matches, recomputed when
it does not, later units built from earlier results, typed results written."""

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from palimpsest.errors import ConfigError
from palimpsest.experiments.study import Study, StudyRun, Unit
from palimpsest.results import Results


@dataclass(frozen=True)
class Counting:
    base: int = 1
    extra: int = 10


@dataclass
class Sums(Results):
    KIND: ClassVar[str] = "sums"

    scale: str
    totals: list[int]


class TwoSteps(Study):
    """A first unit per seed, and a second one built from the first's result."""

    name = "two-steps"
    scales: ClassVar = {"small": Counting(), "large": Counting(base=100)}

    def __init__(self):
        self.computed: list[str] = []

    def _compute(self, name: str, value: int) -> int:
        self.computed.append(name)
        return value

    def steps(self, run: StudyRun):
        totals = []
        settings = run.settings
        for seed in (0, 1):
            first = yield Unit(
                f"units/first-{seed}.json", {"base": settings.base, "seed": seed},
                lambda seed=seed: self._compute(f"first-{seed}", settings.base + seed),
            )  # fmt: skip
            second = yield Unit(
                f"units/second-{seed}.json", {"first": first, "extra": settings.extra},
                lambda first=first, seed=seed: self._compute(f"second-{seed}", first + settings.extra),
            )  # fmt: skip
            totals.append(second)
        return Sums(scale=run.scale_name, totals=totals)


def test_a_study_runs_its_units_in_order_and_writes_its_results(tmp_path):
    study = TwoSteps()
    results = study.run(tmp_path, "small")
    assert results.totals == [11, 12]
    assert study.computed == ["first-0", "second-0", "first-1", "second-1"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"kind": "sums", "scale": "small", "totals": [11, 12]}
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "first-0.json", "first-1.json", "second-0.json", "second-1.json"
    ]  # fmt: skip


def test_a_rerun_reuses_every_unit_and_a_changed_setting_redoes_only_what_depends_on_it(tmp_path):
    TwoSteps().run(tmp_path, "small")
    again = TwoSteps()
    assert again.run(tmp_path, "small").totals == [11, 12] and again.computed == []
    changed = TwoSteps()
    assert changed.run(tmp_path, ("small, more", Counting(extra=20))).totals == [21, 22]
    assert changed.computed == ["second-0", "second-1"]  # the first units' keys did not change
    rebased = TwoSteps()
    assert rebased.run(tmp_path, "large").totals == [110, 111]
    assert rebased.computed == ["first-0", "second-0", "first-1", "second-1"]  # their inputs changed too


def test_an_unknown_scale_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="huge"):
        TwoSteps().run(tmp_path / "out", "huge")
    assert not (tmp_path / "out").exists()


def test_every_registered_study_is_a_study_under_its_own_name():
    from palimpsest.experiments import STUDIES, get_study

    for name in STUDIES:
        study = get_study(name)
        assert isinstance(study, Study) and study.name == name and study.scales and study.title
    with pytest.raises(ConfigError, match="no-such-study"):
        get_study("no-such-study")
