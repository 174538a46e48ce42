"""The real editing study's units (one editor's edits of one draw) and the study that runs them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.editing.config import PLAIN_FINETUNING, EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.errors import DataError
from palimpsest.experiments.common import real_or_random_model, wiki_perplexity_set
from palimpsest.experiments.editing_real.facts import (
    EditRun,
    RealEditUnit,
    draw_requests,
    examples_of,
    knowledge,
    measure,
)
from palimpsest.experiments.editing_real.results import RealEditingResults
from palimpsest.experiments.editing_real.scales import (
    EASYEDIT,
    KEPT,
    REAL_SCALE_NAMES,
    SCALES,
    RealEditingScale,
)
from palimpsest.experiments.editing_real.summary import summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.models import transformer_blocks
from palimpsest.storage import machine_info

logger = logging.getLogger(__name__)


def method_grid(
    scale: RealEditingScale, blocks: int, size: int, sequential: bool, seed: int = 0
) -> list[tuple[str, EditConfig]]:
    """(label, config) of every method the study runs at one size."""
    common = {"steps": scale.steps, "learning_rate": scale.learning_rate, **PLAIN_FINETUNING}
    named = {
        "ft": EditConfig(layers="all", modules=["ffn"], norm=None, **common),
        "ft+support": EditConfig(layers="all", modules=["ffn"], norm=None, **common),
        "ft-l": EditConfig(objective="ft-l", **{**EASYEDIT, **common}),
        "ft-m": EditConfig(objective="ft-m", **{**EASYEDIT, **common}),
        "default": EditConfig(),
    }
    if sequential:
        return [(name, named[name]) for name in scale.sequential_methods]
    sweep = size in scale.depth_sizes and (scale.depth_seeds is None or seed in scale.depth_seeds)
    chosen = tuple(named) if size in scale.depth_sizes else scale.large_methods
    grid = [(name, named[name]) for name in chosen]
    if sweep:
        # up to the last block but one: the last one's change at the subject's tokens reaches the
        # answer through no attention, and the editor refuses such an edit
        depths = sorted({*range(0, blocks - 1, scale.depth_every), blocks - 2})
        # The editor's own recipe (subject positions, stop at success; FT-M loss) with a
        # faster rate, 25 steps and each bound of the grid, one block's MLP down-projection at a time.
        for norm, deltas in (("linf", scale.linf_deltas), ("l2", scale.l2_deltas)):
            for delta in deltas:
                for block in depths:
                    config = EditConfig(
                        layers=[block], modules=["ffn-out"], norm=norm, delta=delta, delta_units="weight",
                        objective="ft-m", learning_rate=1e-3, steps=scale.steps,
                    )  # fmt: skip
                    grid.append((f"{norm} δ={delta:g} block {block}", config))
        for block in depths:  # the default editor moved across depth
            grid.append((f"default block {block}", EditConfig(layers=[block])))
    return grid


def _run_unit(
    model,
    tokenizer,
    facts,
    grid,
    requests_sets,
    perplexity_set,
    scale,
    *,
    size: int,
    sequential: bool,
    seed: int,
) -> RealEditUnit:
    """Every method on each request set of one unit; undone exactly after each."""
    started = time.perf_counter()
    runs = []
    for draw, (requests, kept, support) in enumerate(requests_sets):
        before = measure(model, tokenizer, requests, kept, perplexity_set, scale)
        for label, config in grid:
            editor = ConstrainedFinetune(model, tokenizer, config=config)
            started = time.perf_counter()
            result = editor.apply(
                requests,
                support=support if label == "ft+support" else (),
                sequential=sequential,
                measure=False,
            )
            seconds = time.perf_counter() - started
            after = measure(model, tokenizer, requests, kept, perplexity_set, scale)
            editor.undo()
            runs.append(
                EditRun(
                    draw=draw, label=label, method=label.split(" ")[0], layers=config.layers,
                    norm=config.norm, delta=config.delta if config.norm else None,
                    before={k: v for k, v in before.items() if k != "texts"},
                    after={k: v for k, v in after.items() if k != "texts"},
                    examples=examples_of(before["texts"], after["texts"]),
                    steps=result.steps, seconds=seconds, edited_parameters=result.edited_parameters,
                    size=size, sequential=sequential, seed=seed,
                )
            )  # fmt: skip
            logger.info("%s: A_M %.2f, A_F\\S %.2f", label, after["A_M"], after[KEPT])
    logger.info("unit of %d edit(s), seed %d done in %.0f s", size, seed, time.perf_counter() - started)
    return RealEditUnit(runs)


def _unit_key(scale: RealEditingScale, grid: list[tuple[str, EditConfig]]) -> Any:
    """What a saved unit depends on: the model, the draws and the methods (not the other units)."""
    draws = ("model", "edit_sets", "known_only", "singles", "kept", "support", "perplexity_blocks",
             "block_size", "generation_tokens")  # fmt: skip
    document = {name: getattr(scale, name) for name in draws}
    document["grid"] = [[label, to_dict(config)] for label, config in grid]
    return document


def run_real_scale(
    out: str | Path,
    scale: str | RealEditingScale | tuple[str, RealEditingScale] = "real",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> RealEditingResults:
    """The editing study at a scale named as users name it (``real``, ``real-smoke``, or such a
    scale with changed fields)."""
    return RealEditingStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


def run_real_editing_study(
    out: str | Path,
    scale: RealEditingScale,
    scale_name: str = "custom",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> RealEditingResults:
    """Run (or resume: every unit is stored as it finishes) the study with these settings."""
    return RealEditingStudy().run(out, (scale_name, scale), callbacks_for=callbacks_for)  # type: ignore[return-value]


class RealEditingStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: what the model knows,
    then one unit per (size, mode, seed) holding every method of the grid on its draws."""

    name = "editing-real"
    title = "editing study"
    scales: ClassVar = {name: SCALES[settings] for name, settings in REAL_SCALE_NAMES.items()}

    def steps(self, run: StudyRun) -> Steps:
        out, scale = run.out, run.settings
        model, tokenizer = real_or_random_model(scale.model, out)
        model.eval()
        known, facts = knowledge(model, tokenizer, scale)
        needed = max((*scale.sizes, *scale.sequential)) * 2 + 2
        if len(facts) < needed:
            raise DataError(
                f"the model knows {len(facts)} facts of {', '.join(scale.edit_sets)}; "
                f"the study needs {needed}"
            )
        perplexity_set = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
        blocks = len(transformer_blocks(model)[1])
        runs: list[EditRun] = []
        units = [(size, False) for size in scale.sizes] + [(size, True) for size in scale.sequential]
        for size, sequential in units:
            seeds = (
                scale.sequential_seeds if sequential and scale.sequential_seeds is not None else scale.seeds
            )
            for seed in seeds:
                grid = method_grid(scale, blocks, size, sequential, seed)
                name = f"{'sequential' if sequential else 'batch'}-{size}-s{seed}"
                draws = scale.singles if size == 1 else 1
                request_sets = [draw_requests(facts, size, seed * 100 + i, scale) for i in range(draws)]
                edit = partial(
                    _run_unit, model, tokenizer, facts, grid, request_sets, perplexity_set, scale,
                    size=size, sequential=sequential, seed=seed,
                )  # fmt: skip
                unit = yield Unit(f"units/{name}.json", _unit_key(scale, grid), edit, kind=RealEditUnit)
                runs += unit.runs
        return RealEditingResults(
            scale=run.scale_name,
            settings=scale,
            model=scale.model or "random SmolLM2-shaped model",
            blocks=blocks,
            knowledge=known,
            editable_facts=len(facts),
            runs=runs,
            summary=summarise(runs, known, blocks, scale),
            machine=machine_info(),
        )
