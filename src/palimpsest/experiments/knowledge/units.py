"""The knowledge study's units (a baseline per draw, one arm each) and the study that runs them."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.experiments.common import (
    real_or_random_model,
    wiki_perplexity_set,
)
from palimpsest.experiments.knowledge.arms import ArmRun, run_arm
from palimpsest.experiments.knowledge.facts import Baseline, draw, measure, survey
from palimpsest.experiments.knowledge.results import KnowledgeResults
from palimpsest.experiments.knowledge.scales import SCALES, Arm, KnowledgeScale
from palimpsest.experiments.knowledge.summary import summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.models import load_pretrained
from palimpsest.storage import machine_info


def _one_seed_editor(scale: KnowledgeScale, size: int, arm: Arm) -> bool:
    """The editor at an N from ``editor_one_seed_from`` on: it runs on the first seed only."""
    threshold = scale.editor_one_seed_from
    return arm.method == "editor" and threshold is not None and size >= threshold


def arms_to_run(scale: KnowledgeScale, size: int, seed: int) -> list[tuple[int, Arm]]:
    """``(index, arm)`` of the arms that run at this N and seed (``Arm.sizes``,
    ``editor_one_seed_from``)."""
    return [
        (index, arm)
        for index, arm in enumerate(scale.arms)
        if not (_one_seed_editor(scale, size, arm) and seed != scale.seeds[0])
        and (arm.sizes is None or size in arm.sizes)
    ]


def _unit_key(scale: KnowledgeScale, what: Any) -> Any:
    """What a stored unit depends on: the model, the draws, the measures and ``what``."""
    fields = ("model", "counterfactual_share", "known_sets", "cities", "kept", "known_only",
              "perplexity_blocks", "block_size", "generation_tokens")  # fmt: skip
    return {**{name: getattr(scale, name) for name in fields}, "unit": what}


def _arm_key(arm: Arm) -> dict[str, Any]:
    """An arm's settings as its units' keys hold them: ``round_size`` only where set and ``sizes`` never,
    so the units of arms stored before they existed stand (and an arm's unit at one N does not depend
    on the other N it runs at)."""
    data = to_dict(arm)
    if data["round_size"] is None:
        del data["round_size"]
    del data["sizes"]
    return data


def run_knowledge_study(
    out: str | Path,
    scale: str | KnowledgeScale | tuple[str, KnowledgeScale] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> KnowledgeResults:
    """Run (or resume: every unit is stored as it finishes) the study into ``out``."""
    return KnowledgeStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class KnowledgeStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: the survey of what the
    model knows, then per (N, seed) draw a baseline unit, then one unit per arm."""

    name = "knowledge"
    title = "knowledge study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, scale = run.out, run.settings
        model, tokenizer = real_or_random_model(scale.model, out)
        model.eval()
        source = scale.model if scale.model is not None else str(out / "random-model")
        known, recalled, wrong = survey(model, tokenizer, scale, stored=out / "units" / "survey.json")
        perplexity_set = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
        draws = {
            (size, seed): draw(recalled, wrong, size, seed, scale)
            for size in scale.sizes
            for seed in scale.seeds_of(size)
        }
        baselines, runs = [], []
        units: list[tuple[int, int, int, Arm]] = []
        for (size, seed), chosen in draws.items():
            unedited = partial(_baseline, model, tokenizer, chosen, perplexity_set, scale, size, seed)
            key = _unit_key(scale, ["before", size, seed])
            baselines.append((yield Unit(f"units/{size}-s{seed}-before.json", key, unedited, kind=Baseline)))
            units += [(size, seed, index, arm) for index, arm in arms_to_run(scale, size, seed)]
        # At each N, an editor that runs on one seed only (it is the costly arm) goes after every other
        # arm's seeds: a run cut short has the comparison on all seeds first.
        units.sort(key=lambda u: (scale.sizes.index(u[0]), _one_seed_editor(scale, u[0], u[3])))
        for size, seed, index, arm in units:
            name = f"{size}-s{seed}-arm{index}"
            compute = partial(
                _arm_unit, source, tokenizer, arm, draws[(size, seed)], perplexity_set, scale,
                out / "work" / name, size, seed, run.callbacks_for,
            )  # fmt: skip
            settings = [scale.steps(size), scale.batch_size, to_dict(scale.memory), to_dict(scale.editor)]
            if arm.method == "gated-memory":  # (not in the other arms' keys: their stored units stand)
                settings += [to_dict(scale.gated_memory), to_dict(scale.gate), scale.removal_share]
            elif arm.method == "batch-editor":
                settings.append(to_dict(scale.batch_editor))
            key = _unit_key(scale, [_arm_key(arm), size, seed, *settings, scale.background_blocks])
            runs.append((yield Unit(f"units/{name}.json", key, compute, kind=ArmRun)))
        return KnowledgeResults(
            scale=run.scale_name, settings=scale, model=scale.model or "random SmolLM2-shaped model",
            known=known, recalled_facts=len(recalled), unknown_cities=len(wrong), baselines=baselines,
            runs=runs, summary=summarise(baselines, runs, scale), machine=machine_info(),
        )  # fmt: skip


def _baseline(
    model, tokenizer, chosen, perplexity_set, scale: KnowledgeScale, size: int, seed: int
) -> Baseline:
    return Baseline(
        size, seed, chosen.counterfactuals, measure(model, tokenizer, chosen, perplexity_set, scale)
    )


def _arm_unit(
    source: str, tokenizer, arm: Arm, chosen, perplexity_set, scale: KnowledgeScale, work: Path,
    size: int, seed: int, callbacks_for: Callable[[str], Iterable[TrainerCallback]],
) -> ArmRun:  # fmt: skip
    """One arm on one draw, from a fresh copy of the model (its progress shown only when it runs)."""
    callbacks = callbacks_for(f"{arm.name}, {size} facts, seed {seed}")
    shutil.rmtree(work, ignore_errors=True)  # a unit killed midway starts again (the editor resumes)
    fresh = load_pretrained(source)
    result = run_arm(
        fresh, tokenizer, arm, chosen, perplexity_set, scale, work, size=size, seed=seed, callbacks=callbacks
    )
    shutil.rmtree(work, ignore_errors=True)
    return result
