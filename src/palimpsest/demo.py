"""``palimpsest demo``: the main job, each method shown doing what it is for, and one report.

Scales size the same pipeline for a purpose: ``smoke`` runs in seconds (tests), ``demo`` in
minutes on 2 CPU cores. The demo runs one study per method, in stages:

* forget: the plasticity study on a decoder body (:mod:`palimpsest.experiments.plasticity`
  with the GPT-2 family). Its standard pretraining is also the demo's causal LM: a tiny GPT-2
  that models wiki-en far below the unigram level, so relearning on it means something (a
  masked LM of the same size stays at the unigram level in the minutes a demo has);
* grow: the memory study (:mod:`palimpsest.experiments.memory`);
* rewrite: the many-edits study on the built-in SmolLM2-135M (:mod:`palimpsest.experiments.many_edits`,
  its ``demo`` scale; a random model of SmolLM2's shape at smoke scale): one edit by the
  constrained editor and the batch editor, then a batch of edits at once (FT-M beside) and the
  same batch in a sequence, where fine-tuning stops making them and the batch editor does not.
  The 1,000-edit runs take longer than a demo has: ``results/many-edits-real/``.

Each study turns its numbers into claims (:mod:`palimpsest.claims`); the report opens with
their table. Each run writes its own results as soon as it finishes; a re-run with the same
``--out`` reuses finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback

from palimpsest.claims import Claim
from palimpsest.errors import ConfigError
from palimpsest.experiments import many_edits, plasticity
from palimpsest.experiments.memory import run_memory_study
from palimpsest.report import write_report
from palimpsest.results import Results
from palimpsest.storage import write_json

logger = logging.getLogger(__name__)

SCALES = ("smoke", "demo")
#: The body of the forgetting part: a decoder learns below the unigram level in a few hundred
#: updates on 2 cores, where the paper's masked LM does not.
FORGETTING_FAMILY = "gpt2"

#: Called with a stage's name when it starts (``seconds`` None) and when it ends.
StageListener = Callable[[str, float | None], None]
T = TypeVar("T")


@dataclass
class DemoRun:
    """Every study's typed results, labelled by the method it shows, and the time each stage took."""

    scale: str
    seconds: float
    timings: dict[str, float]
    results: list[tuple[str, Results]]

    def claims(self) -> list[Claim]:
        """Every study's claims, in the order of the stages."""
        return [claim for _method, result in self.results for claim in result.claims()]

    def to_json(self) -> dict[str, Any]:
        """The bundle ``palimpsest report`` reads: ``{"kind": "demo", ..., "results": [...]}``."""
        return {
            "kind": "demo",
            "scale": self.scale,
            "seconds": self.seconds,
            "timings": self.timings,
            "results": [result.to_json() for _method, result in self.results],
        }


def forgetting_scale(scale: str, seed: int = 0) -> tuple[str, plasticity.PlasticityScale]:
    """The plasticity study's scale of that name on the decoder body, pretrained with ``seed``."""
    settings = plasticity.SCALES[scale].with_family(FORGETTING_FAMILY)
    pretrain = replace(settings.pretrain, training=replace(settings.pretrain.training, seed=seed))
    return f"{scale}, {FORGETTING_FAMILY}", replace(settings, pretrain=pretrain)


def run_demo(
    out: str | Path,
    scale: str = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
    on_stage: StageListener = lambda _name, _seconds: None,
    seed: int = 0,
) -> DemoRun:
    """Run every demo study into ``out`` and write ``results.json`` and the report.

    ``seed`` seeds the pretraining of the forgetting part's two bodies (the studies' own
    seeds are part of their scales); ``on_stage`` hears each stage start and end, so a caller
    can show progress where no progress bar can be drawn (a log file, CI).
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale '{scale}' (known: {', '.join(SCALES)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, work: Callable[[], T]) -> T:
        on_stage(name, None)
        mark = time.perf_counter()
        value = work()
        timings[name] = time.perf_counter() - mark
        on_stage(name, timings[name])
        return value

    forgetting = stage(
        "forget: active forgetting on a GPT-2 body",
        lambda: plasticity.run_plasticity(
            out / "plasticity", forgetting_scale(scale, seed), callbacks_for=callbacks_for
        ),
    )
    bodies = [forgetting.pretrain[variant].full_results() for variant in plasticity.VARIANTS]
    memory = stage(
        "grow: product-key memory",
        lambda: run_memory_study(out / "memory", scale, callbacks_for=callbacks_for),
    )
    real_model = "SmolLM2-135M" if scale == "demo" else "a random SmolLM2-shaped model"
    editing = "demo" if scale == "demo" else "demo-smoke"
    at_once = max(many_edits.SCALES[editing].at_once)
    edits = stage(
        f"rewrite: 1 edit, {at_once} at once and in sequence on {real_model}",
        lambda: many_edits.run_many_edits_study(out / "many-edits", (scale, many_edits.SCALES[editing])),
    )

    results: list[tuple[str, Results]] = [
        *(("pretrain", body) for body in bodies),
        ("forget", forgetting),
        ("grow", memory),
        ("rewrite", edits),
    ]
    summary = DemoRun(scale=scale, seconds=time.perf_counter() - started, timings=timings, results=results)
    write_json(out / "results.json", summary.to_json())
    write_report(
        [result for _method, result in results],
        out,
        title="palimpsest demo report",
        preface=(
            f"Scale '{scale}', {summary.seconds:.0f} s in all ("
            + "; ".join(f"{name}: {seconds:.0f} s" for name, seconds in timings.items())
            + "). Every number below was measured in this run; results.json holds them all."
        ),
    )
    return summary
