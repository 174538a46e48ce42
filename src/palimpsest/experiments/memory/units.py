"""The memory study's data, its units (one arm and seed each) and the study that runs them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data.facts import city_facts
from palimpsest.experiments.common import (
    fact_mixture,
)
from palimpsest.experiments.memory.results import MemoryData, MemoryStudyResults
from palimpsest.experiments.memory.scales import (
    ARMS,
    CONTINUED_ARMS,
    MEMORY_ARMS,
    SCALES,
    MemoryScale,
    matched_ffn_widths,
)
from palimpsest.experiments.memory.summary import MemoryUnit, summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.memory import (
    MemoryUsageCallback,
    add_product_key_memory,
    memories,
    memory_param_groups,
    memory_usage,
)
from palimpsest.memory.inject import attach_to_ffn
from palimpsest.memory.report import cumulative_curve, slot_mass
from palimpsest.models import FAMILY_OBJECTIVE, build_model, count_parameters, hidden_size, load_pretrained
from palimpsest.recall import fact_recall
from palimpsest.seeds import CONTINUED_DATA_SEED_OFFSET, MEMORY_SEED_OFFSET
from palimpsest.storage import machine_info, remove_tree
from palimpsest.training import TrainingConfig, evaluate_lm, train


class _DenseFFN(nn.Module):
    """A plain FFN (``dim -> width -> dim``) called like a memory: the wide-FFN control."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.up, self.down = nn.Linear(dim, width), nn.Linear(width, dim)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(hidden)))


class _Nothing(nn.Module):
    """An FFN that outputs zeros: replacing a block's FFN with it removes that FFN."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(hidden)


@dataclass
class _Data:
    tokenizer: Any
    train_blocks: Any
    eval_set: Any
    facts: list
    info: MemoryData


def _prepare(scale: MemoryScale, out: Path) -> _Data:
    """The tokenizer (trained on wiki text + statements, saved once), blocks and facts."""
    facts = city_facts(scale.cities)
    objective = FAMILY_OBJECTIVE[scale.model.family]
    mixture = fact_mixture(facts, out, scale.data, objective=objective, fact_repeats=scale.fact_repeats)
    info = MemoryData(
        **asdict(mixture.info),
        cities=len(facts),
        statements=len(facts) * len(facts[0].relation.templates),
        majority_recall=max(Counter(f.object for f in facts).values()) / len(facts),
    )
    return _Data(mixture.tokenizer, mixture.train_blocks, mixture.eval_set, facts, info)


def add_study_memory(model: nn.Module, scale: MemoryScale, arm: str, seed: int) -> nn.Module:
    """The memory of a memory arm, drawn as every palimpsest run with this seed draws it: from a
    generator seeded with ``seed + MEMORY_SEED_OFFSET`` (what ``palimpsest pretrain --seed S
    --memory-layer ...`` uses), never from torch's global generator, whose state depends on
    whatever ran before."""
    config = replace(scale.memory, mode=arm.split("-")[0], seed=seed + MEMORY_SEED_OFFSET)
    return add_product_key_memory(model, config)


def _unit_training(scale: MemoryScale, steps: int, seed: int, save_every: int) -> TrainingConfig:
    """The whole run's schedule, or for a continuation the rest of it (peak lr scaled down)."""
    full = scale.training
    config = replace(
        full, steps=steps, eval_every=min(full.eval_every or steps, steps), save_every=save_every,
        save_total_limit=100, log_every=max(1, min(10, steps // 4)), seed=seed,
    )  # fmt: skip
    if steps < full.steps:  # linear decay from the full run's lr at the start step to 0 at its end
        warmup = config.warmup_ratio * full.steps
        config.learning_rate = full.learning_rate * steps / (full.steps - warmup)
    return config


def _run_unit(
    scale: MemoryScale, data: _Data, arm: str, seed: int, out: Path, callbacks: Iterable[TrainerCallback]
) -> MemoryUnit:
    """Train one arm with one seed; measure loss, recall and (with a memory) its usage."""
    unit_dir = out / f"{arm}-s{seed}"
    start_step = 0
    if arm in CONTINUED_ARMS:
        start_step = scale.pretrained_step()
        checkpoint = out / f"no-memory-s{seed}" / "trainer" / f"checkpoint-{start_step}"
        model = load_pretrained(str(checkpoint))
    else:
        model = build_model(
            scale.model.family,
            scale.model.size,
            data.tokenizer,
            max_positions=scale.data.block_size,
            dropout=scale.model.dropout,
            seed=seed,
        )
    base_parameters = count_parameters(model)
    param_groups = None
    extra_callbacks: list[TrainerCallback] = []
    usage_callback: MemoryUsageCallback | None = None
    if arm in MEMORY_ARMS:
        add_study_memory(model, scale, arm, seed)
        param_groups = lambda m: memory_param_groups(m, lr=scale.memory.value_lr)  # noqa: E731
        usage_callback = MemoryUsageCallback(window=scale.usage_window, log_every=scale.usage_window)
        extra_callbacks.append(usage_callback)
    elif arm == "no-ffn":
        attach_to_ffn(model, [scale.layer], lambda dim: _Nothing(), mode="replace")
    elif arm in ("wide-ffn", "ffn-equal-params", "ffn-equal-compute"):
        width = scale.wide_ffn if arm == "wide-ffn" else matched_ffn_widths(scale, hidden_size(model))[arm]
        torch.manual_seed(seed + MEMORY_SEED_OFFSET)
        attach_to_ffn(model, [scale.layer], lambda dim: _DenseFFN(dim, width), mode="residual")
    steps = scale.training.steps - start_step
    save_every = scale.pretrained_step() if arm == "no-memory" else steps
    objective = FAMILY_OBJECTIVE[scale.model.family]
    result = train(
        model, data.tokenizer, data.train_blocks, _unit_training(scale, steps, seed, save_every),
        unit_dir / "trainer", objective=objective, eval_dataset=data.eval_set,
        callbacks=[*callbacks, *extra_callbacks], param_groups=param_groups,
        # a continuation sees a fresh shuffle, not the first half of the no-memory run again
        training_arguments={"data_seed": seed + CONTINUED_DATA_SEED_OFFSET} if start_step else None,
    )  # fmt: skip
    final = evaluate_lm(model, data.eval_set)
    recall = fact_recall(model, data.tokenizer, data.facts)
    unit = MemoryUnit(
        arm=arm,
        seed=seed,
        start_step=start_step,
        steps=result.steps,
        parameters=count_parameters(model),
        added_parameters=count_parameters(model) - base_parameters,
        validation_loss=final["loss"],
        validation_perplexity=final["perplexity"],
        recall=recall.accuracy,
        recall_facts=len(recall.recalled),
        unprobeable_facts=recall.unprobeable,
        train_seconds=result.train_seconds,
        tokens_per_second=result.tokens_per_second,
        eval_curve=[(start_step + s, v) for s, v in result.curve("eval_loss")],
        train_curve=[(start_step + s, v) for s, v in result.curve("loss")],
    )
    if memories(model):
        batches = [
            {"input_ids": torch.tensor(data.eval_set[i : i + scale.training.batch_size]["input_ids"])}
            for i in range(0, min(scale.usage_blocks, len(data.eval_set)), scale.training.batch_size)
        ]
        unit.usage = next(iter(memory_usage(model, batches).values()))
        unit.slot_mass_curve = cumulative_curve(next(iter(slot_mass(model, batches).values())), points=200)
        name = next(iter(memories(model)))
        history = usage_callback.history if usage_callback else []
        unit.outdated_curve = [
            (start_step + e["step"], e[f"memory/{name}/outdated"])
            for e in history
            if f"memory/{name}/outdated" in e
        ]
        unit.outdated = unit.outdated_curve[-1][1] if unit.outdated_curve else math.nan
    return unit


def run_memory_study(
    out: str | Path,
    scale: str | MemoryScale | tuple[str, MemoryScale] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> MemoryStudyResults:
    """Run (or resume: every (arm, seed) unit is stored as it finishes) the study into ``out``."""
    return MemoryStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class MemoryStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: the fact mixture, then
    one unit per (seed, arm), no-memory first (the continued arms start from its checkpoint)."""

    name = "memory"
    title = "memory study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, settings = run.out, run.settings
        arms = sorted(settings.arms, key=ARMS.index)
        data = _prepare(settings, out)
        # what decides a unit besides its arm and seed (more seeds or arms reuse the units done)
        key = {k: v for k, v in to_dict(settings).items() if k not in ("arms", "seeds", "keep_models")}
        units: list[MemoryUnit] = []
        for seed in settings.seeds:
            for arm in arms:
                train = partial(
                    _run_unit, settings, data, arm, seed, out, run.callbacks_for(f"memory {arm} s{seed}")
                )
                units.append(
                    (yield Unit(f"{arm}-s{seed}/result.json", {**key, "arm": arm, "seed": seed}, train,
                                kind=MemoryUnit, workdir=f"{arm}-s{seed}/trainer"))
                )  # fmt: skip
        if not settings.keep_models:
            for seed in settings.seeds:
                for arm in arms:
                    remove_tree(out / f"{arm}-s{seed}" / "trainer")
        return MemoryStudyResults(
            scale=run.scale_name,
            settings=settings,
            data=data.info,
            units=units,
            summary=summarise(units, settings),
            machine=machine_info(),
        )
