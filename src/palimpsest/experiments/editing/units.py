"""The editing study's units (a model pretrained on the facts, then each editor's edits of it)
and the study that runs them."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from palimpsest.data import load_tokenizer
from palimpsest.data.facts import Fact, builtin_facts
from palimpsest.editing.config import EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.metrics import edit_metrics
from palimpsest.editing.requests import counterfactual_requests
from palimpsest.errors import ConfigError
from palimpsest.experiments.common import fact_mixture
from palimpsest.experiments.editing.results import EditingStudyResults
from palimpsest.experiments.editing.scales import SCALES, EditingScale
from palimpsest.experiments.editing.summary import KEPT, PretrainedModel, summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.models import FAMILY_OBJECTIVE, SIZES, build_model, load_pretrained
from palimpsest.recall import fact_recall
from palimpsest.seeds import SUPPORT_FACTS_SEED_OFFSET
from palimpsest.storage import machine_info, save_model
from palimpsest.training import TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)


def study_facts(scale: EditingScale) -> list[Fact]:
    """The facts of the study's sets; with ``max_subjects``, those of a seeded draw of subjects."""
    facts = [fact for name in scale.fact_sets for fact in builtin_facts(name)]
    if not facts:
        raise ConfigError("the editing study needs at least one fact set")
    if scale.max_subjects is not None:
        subjects = sorted({fact.subject for fact in facts})
        kept = set(random.Random(0).sample(subjects, min(scale.max_subjects, len(subjects))))
        facts = [fact for fact in facts if fact.subject in kept]
    return facts


def _family_training(scale: EditingScale, objective: str) -> TrainingConfig:
    """The scale's pretraining, longer for a masked LM; evaluated 4 times, checkpointed halfway."""
    steps = scale.training.steps
    if objective == "mlm" and scale.masked_pretrain_steps is not None:
        steps = scale.masked_pretrain_steps
    return replace(
        scale.training, steps=steps, eval_every=max(1, steps // 4), save_every=max(1, steps // 2), seed=0
    )


def _pretrain(
    scale: EditingScale, family: str, facts: list[Fact], run_dir: Path, callbacks
) -> PretrainedModel:
    """A small model of ``family`` that knows the facts."""
    objective = FAMILY_OBJECTIVE[family]
    config = _family_training(scale, objective)
    mixture = fact_mixture(
        facts, run_dir, scale.data, objective=objective, fact_repeats=scale.fact_repeats, hold_out=True,
        mlm_probability=config.mlm_probability,
    )  # fmt: skip
    model = build_model(
        family, scale.size, mixture.tokenizer, max_positions=scale.data.block_size, dropout=0.0, seed=0
    )
    result = train(
        model, mixture.tokenizer, mixture.train_blocks, config, run_dir / "trainer", objective=objective,
        eval_dataset=mixture.eval_set, callbacks=callbacks,
    )  # fmt: skip
    save_model(model, mixture.tokenizer, run_dir / "model")
    recall = fact_recall(model, mixture.tokenizer, facts)
    paraphrased = [0, 0]  # recalled, probed: each fact through its held-out paraphrase
    for template in {f.held_out_template() for f in facts} - {None}:
        subset = [f for f in facts if f.held_out_template() == template]
        held = fact_recall(model, mixture.tokenizer, subset, template=template)
        paraphrased = [paraphrased[0] + sum(held.recalled), paraphrased[1] + len(held.recalled)]
    by_relation = {
        name: fact_recall(model, mixture.tokenizer, [f for f in facts if f.relation.name == name]).accuracy
        for name in dict.fromkeys(f.relation.name for f in facts)
    }
    return PretrainedModel(
        family=family,
        objective=objective,
        model_path=str(run_dir / "model"),
        data=mixture.info,
        validation_loss=evaluate_lm(model, mixture.eval_set)["loss"],
        recall=recall.accuracy,
        recall_by_relation=by_relation,
        paraphrase_recall=paraphrased[0] / paraphrased[1] if paraphrased[1] else math.nan,
        unprobeable=recall.unprobeable,
        train_seconds=result.train_seconds,
        steps=result.steps,
    )


def method_grid(scale: EditingScale, blocks: int) -> list[tuple[str, EditConfig]]:
    """(label, config) of every method x layer choice x bound of the study."""
    choices: list[str | list[int]] = []
    for choice in scale.layer_choices:
        choices += [[index] for index in range(blocks)] if choice == "single" else [choice]
    grid: list[tuple[str, EditConfig]] = []
    for method in scale.methods:
        if method in ("ft", "ft+support"):
            grid.append(
                (method, replace(scale.edit, layers="all", modules=["block", "embeddings"], norm=None))
            )
            continue
        deltas = scale.linf_deltas if method == "linf" else scale.l2_deltas
        for delta in deltas:
            for choice in choices:
                name = choice if isinstance(choice, str) else f"block {choice[0]}"
                label = f"{method} δ={delta:g} {name}"
                grid.append(
                    (label, replace(scale.edit, layers=choice, modules=["ffn"], norm=method, delta=delta))
                )
    return grid


def run_editing_study(
    out: str | Path,
    scale: str | EditingScale | tuple[str, Any] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> EditingStudyResults:
    """Run (or resume: every unit is stored as it finishes) the study into ``out``, on models
    pretrained here (the built-in SmolLM2-135M's scales, ``real``, are
    :func:`palimpsest.experiments.editing_real.run_real_scale`)."""
    return EditingStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class EditingStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: one pretraining unit per
    family, then one unit per (family, edits, seed) holding every method of the grid."""

    name = "editing"
    title = "editing study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, settings = run.out, run.settings
        facts = study_facts(settings)
        pretrained: dict[str, PretrainedModel] = {}
        for family in settings.families:
            folder = f"pretrain-{family}"
            train = partial(
                _pretrain, settings, family, facts, out / folder,
                list(run.callbacks_for(f"editing: pretrain {family}")),
            )  # fmt: skip
            key = {"scale": asdict(settings), "family": family}
            pretrained[family] = yield Unit(
                f"{folder}/unit.json", key, train, kind=PretrainedModel, workdir=folder
            )
        runs: list[dict[str, Any]] = []
        for family in settings.families:
            model = load_pretrained(pretrained[family].model_path)
            tokenizer = load_tokenizer(pretrained[family].model_path)
            grid = method_grid(settings, SIZES[settings.size].layers)
            key = {
                "model": asdict(pretrained[family]),
                "grid": [(label, asdict(config)) for label, config in grid],
            }
            for edits in settings.edits:
                for seed in settings.seeds:
                    edit = partial(_edit_unit, model, tokenizer, facts, grid, edits, seed, family)
                    runs += yield Unit(
                        f"edits-{family}-{edits}-s{seed}.json", {**key, "edits": edits, "seed": seed}, edit
                    )
        return EditingStudyResults(
            scale=run.scale_name,
            settings=settings,
            pretrained=pretrained,
            runs=runs,
            summary=summarise(runs, pretrained, settings),
            machine=machine_info(),
        )


def support_split(facts: list[Fact], requests, seed: int) -> tuple[list[Fact], list[Fact]]:
    """(support set, unmodified facts F\\S) among the facts the requests leave alone.

    The support set (the baseline's unmodified facts to train on) has as many facts as there
    are edits, but never more than half of the rest, so that A_F\\S is always measured on at
    least as many facts as the support set holds. Support facts are never scored: A_F\\S of
    every method is measured on the same held-apart facts.
    """
    edited = {(r.fact.subject, r.fact.relation.name) for r in requests}
    rest = [f for f in facts if (f.subject, f.relation.name) not in edited]
    support = random.Random(seed + SUPPORT_FACTS_SEED_OFFSET).sample(rest, min(len(requests), len(rest) // 2))
    chosen = {(f.subject, f.relation.name) for f in support}
    return support, [f for f in rest if (f.subject, f.relation.name) not in chosen]


def _edit_unit(model, tokenizer, facts, grid, edits: int, seed: int, family: str) -> list[dict[str, Any]]:
    """Every method on one draw of requests (and support set); each edit undone before the next."""
    requests = counterfactual_requests(facts, edits, seed=seed)
    support, unmodified = support_split(facts, requests, seed)
    before = edit_metrics(model, tokenizer, requests, unmodified)
    runs = []
    for label, config in grid:
        editor = ConstrainedFinetune(model, tokenizer, config=config)
        result = editor.apply(requests, support=support if label == "ft+support" else (), measure=False)
        after = edit_metrics(model, tokenizer, requests, unmodified)
        editor.undo()
        runs.append(
            {
                "family": family, "edits": edits, "seed": seed, "method": label.split(" ")[0], "label": label,
                "layers": config.layers, "norm": config.norm, "delta": config.delta if config.norm else None,
                "before": before, "after": after, "steps": result.steps, "seconds": result.seconds,
                "edited_parameters": result.edited_parameters,
            }
        )  # fmt: skip
        logger.info("%s %s: A_M %.3f, A_F\\S %.3f", family, label, after["A_M"], after[KEPT])
    return runs
