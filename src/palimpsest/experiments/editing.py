"""The editing study: change facts in a small model by (constrained) fine-tuning (Zhu et al. 2020).

Protocol (PAPERS.md section 2, at small scale):

1. *A model that knows the facts*: per family (a causal GPT-2 and a masked RoBERTa), a
   small model is pretrained from scratch on wiki text mixed with the built-in country
   facts (capital, continent; four templates each, each subject's held-out paraphrase
   left out). Its recall before any edit is reported: the edit template, and the held-out
   paraphrase.
2. *Edits*: per seed and edit-set size, counterfactual requests (a new object of the same
   relation, never the old one) and, for the support-set baseline, as many unmodified facts
   to train on. Every method is applied to the same requests, measured, and undone
   exactly before the next:
   ``ft`` (unconstrained fine-tuning of every weight), ``ft+support`` (the same with the
   support set), ``linf`` and ``l2`` (constrained fine-tuning) for every layer choice
   ("first", "last", "first+last", "all", and each block alone) and bound δ.
3. Reported: A_M, A_F\\S (on the unmodified facts, support facts excluded), their mean,
   paraphrase accuracy, efficacy / neighbourhood (ROME-style probability comparisons),
   steps and seconds, each mean ± std over seeds, beside the pre-edit values; the A_M vs
   A_F\\S frontier and per-layer effectiveness as plots; and whether "the first and last
   blocks are the most effective to modify" reproduced.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerCallback

from palimpsest.data import load_tokenizer
from palimpsest.data.facts import Fact, builtin_facts
from palimpsest.editing.config import PLAIN_FINETUNING, EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.metrics import edit_metrics
from palimpsest.editing.requests import counterfactual_requests
from palimpsest.errors import ConfigError
from palimpsest.experiments.common import FactDataInfo, fact_mixture, mean_std
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.models import FAMILY_OBJECTIVE, SIZES, build_model, load_pretrained
from palimpsest.plotting import plot_bars, plot_points
from palimpsest.pretraining import DataConfig
from palimpsest.recall import fact_recall
from palimpsest.report import Figure, Section, Table, pm
from palimpsest.results import Results
from palimpsest.seeds import SUPPORT_FACTS_SEED_OFFSET
from palimpsest.storage import machine_info, save_model
from palimpsest.training import TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)

METHODS = ("ft", "ft+support", "linf", "l2")


def _data(**fields: Any) -> DataConfig:
    return DataConfig(
        **{"max_documents": 2000, "vocab_size": 2048, "block_size": 64, "max_eval_blocks": 64, **fields}
    )


def _training(**fields: Any) -> TrainingConfig:
    """Pretraining (evaluated 4 times, checkpointed halfway; see :func:`_family_training`)."""
    return TrainingConfig(
        **{"steps": 800, "batch_size": 16, "learning_rate": 3e-3, "mlm_probability": 0.2, **fields}
    )


def _edit(**fields: Any) -> EditConfig:
    """What every method shares: the paper's plain constrained fine-tuning at one lr and step count
    (each method sets its layers, modules and bound)."""
    return EditConfig(**{"learning_rate": 1e-3, "steps": 100, **PLAIN_FINETUNING, **fields})


@dataclass(frozen=True)
class EditingScale:
    """One run of the study: the library's configs of the data, pretraining and edits, and the
    study's own grid (families, facts, edit counts, methods, layer choices, bounds, seeds)."""

    families: tuple[str, ...] = ("gpt2", "roberta")
    size: str = "mini"
    data: DataConfig = field(default_factory=_data)
    training: TrainingConfig = field(default_factory=_training)
    #: Masked LMs learn facts far more slowly than causal ones (README, "The editing study").
    masked_pretrain_steps: int | None = None
    edit: EditConfig = field(default_factory=_edit)
    fact_sets: tuple[str, ...] = ("country-capital", "country-continent")
    #: Keep the facts of this many subjects (a seeded draw, the same for every fact set).
    max_subjects: int | None = None
    fact_repeats: int = 6
    edits: tuple[int, ...] = (32,)
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = METHODS
    #: Layer choices of the constrained methods; "single" adds every block alone.
    layer_choices: tuple[str, ...] = ("first", "last", "first+last", "all", "single")
    linf_deltas: tuple[float, ...] = (5e-3,)
    l2_deltas: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")


FULL_FACT_SETS = (
    "country-capital", "country-continent", "country-currency", "country-language",
    "element-symbol", "atomic-number",
)  # fmt: skip

SCALES: dict[str, EditingScale] = {
    "smoke": EditingScale(
        families=("gpt2", "bert"),
        size="micro",
        data=_data(max_documents=200, vocab_size=600, block_size=32, max_eval_blocks=8),
        training=_training(steps=10, batch_size=8),
        edit=_edit(steps=3),
        fact_sets=("country-continent",),
        fact_repeats=2,
        edits=(4,),
        seeds=(0,),
        layer_choices=("first+last", "single"),
    ),
    # A causal model only: a masked LM needs several times more updates to learn the facts.
    "demo": EditingScale(
        families=("gpt2",),
        data=_data(max_documents=100),
        training=_training(steps=800, learning_rate=5e-3),
        max_subjects=60,
        fact_repeats=16,
        layer_choices=("first+last", "single"),
        linf_deltas=(5e-3, 2e-2),
        l2_deltas=(1.0,),
    ),
    # Both families and all three edit-set sizes: four relations of every country (~990 facts,
    # so that 512 edits leave facts to score). Pretraining lengths measured: the causal model
    # recalls 98.4% of the 988 facts after 5,000 updates, the masked one 96.9% after 25,000.
    "cpu": EditingScale(
        data=_data(max_documents=300, max_eval_blocks=128),
        training=_training(steps=5000, learning_rate=3e-3, mlm_probability=0.3),
        masked_pretrain_steps=25_000,
        fact_sets=("country-capital", "country-continent", "country-currency", "country-language"),
        fact_repeats=12,
        edits=(32, 128, 512),
        seeds=(0, 1, 2),
        linf_deltas=(5e-3, 2e-2, 5e-2),
        l2_deltas=(0.3, 1.0),
    ),
    # For a GPU: 8-block models (so "first and last" are 2 of 8 blocks, not 2 of 4), every
    # built-in country and element relation (~1,230 facts), all of the shipped wiki text, five
    # seeds. Not run on the 2-core development machine; the pretraining lengths scale the
    # cpu scale's by the model size.
    "full": EditingScale(
        size="small",
        data=_data(max_documents=None, vocab_size=8192, block_size=128, max_eval_blocks=512),
        training=_training(steps=20_000, batch_size=32, learning_rate=1e-3, mlm_probability=0.3),
        masked_pretrain_steps=100_000,
        edit=_edit(steps=200),
        fact_sets=FULL_FACT_SETS,
        fact_repeats=12,
        edits=(32, 128, 512),
        seeds=(0, 1, 2, 3, 4),
        linf_deltas=(2e-3, 5e-3, 2e-2, 5e-2),
        l2_deltas=(0.3, 1.0, 3.0),
    ),
}


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


KEPT = "A_F\\S"  # accuracy on the unmodified facts F \\ S
METRICS = ("A_M", KEPT, "A_mean", "paraphrase", "efficacy", "neighbourhood")


def summarise(
    runs: list[dict[str, Any]], pretrained: dict[str, PretrainedModel], settings: EditingScale
) -> EditingSummary:
    """Per (family, edits, label): mean ± std over seeds of every metric, and the verdict."""
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["family"], run["edits"], run["label"]), []).append(run)
    rows = []
    for group in cells.values():
        first = group[0]
        metrics: dict[str, tuple[float, float]] = {}
        for metric in METRICS:
            metrics[metric] = mean_std([r["after"].get(metric) for r in group])
            metrics[f"{metric} before"] = mean_std([r["before"].get(metric) for r in group])
        rows.append(
            EditingRow(
                **{
                    key: first[key]
                    for key in ("family", "edits", "label", "method", "layers", "norm", "delta")
                },
                steps=mean_std([r["steps"] for r in group]),
                seconds=mean_std([r["seconds"] for r in group]),
                seeds=len(group),
                metrics=metrics,
            )
        )
    return EditingSummary(rows=rows, verdict=_verdict(rows, pretrained, settings))


def per_layer(rows: list[EditingRow], family: str, edits: int, norm: str, delta: float) -> list[EditingRow]:
    """The single-block rows of one (family, edits, bound), in block order."""
    single = [
        r for r in rows
        if r.family == family and r.edits == edits and r.norm == norm and r.delta == delta
        and isinstance(r.layers, list) and len(r.layers) == 1
    ]  # fmt: skip
    return sorted(single, key=lambda r: r.layers[0])


def best_single_blocks(
    rows: list[EditingRow], family: str, edits: int, norm: str, deltas: Iterable[float]
) -> list[EditingRow]:
    """Per block (in order), its single-block row with the highest A mean over the bounds ``deltas``.

    A layer is compared at the bound that suits it, as a paper tuning δ per layer choice would:
    at one fixed δ a block may be unable to move an answer at all while another overshoots.
    """
    best: dict[int, EditingRow] = {}
    for delta in deltas:
        for row in per_layer(rows, family, edits, norm, delta):
            block = row.layers[0]
            if block not in best or row.mean("A_mean") > best[block].mean("A_mean"):
                best[block] = row
    return [best[block] for block in sorted(best)]


def _layer_outcome(best: list[EditingRow]) -> tuple[str, str]:
    """Whether the end blocks lead, for one setting's per-block rows: (outcome, sentence).

    A comparison only counts where some block makes at least half of the edits while doing better
    than leaving the model unedited (A mean before any edit, plus the spread over seeds): where the
    edits fail, the block that changes least "wins", and the ranking says nothing about where facts
    are best modified.
    """
    scores = [r.mean("A_mean") for r in best]
    spread = max(r.metrics["A_mean"][1] for r in best)
    unedited = best[0].mean("A_mean before")
    if not any(r.mean("A_M") >= 0.5 and r.mean("A_mean") > unedited + spread for r in best):
        return "untestable", (
            "no block makes half of the edits while doing better than leaving the model unedited "
            f"(A mean {100 * unedited:.0f}%), so this setting says nothing about layers."
        )
    margin = min(scores[0], scores[-1]) - max(scores[1:-1])
    if margin < 0:
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:2]
        return "failed", f"NOT first and last (best: blocks {sorted(best[i].layers[0] for i in ranked)})."
    if margin <= spread:
        return "within spread", "first and last ahead, but by less than the spread over seeds."
    return "held", "first and last blocks most effective."


def _verdict(rows: list[EditingRow], pretrained: dict[str, PretrainedModel], settings: EditingScale) -> str:
    parts = []
    for family, info in pretrained.items():
        parts.append(
            f"{family}: recalls {100 * info.recall:.1f}% of the {info.data.facts} facts before any "
            f"edit ({100 * info.paraphrase_recall:.1f}% through the held-out paraphrase)."
        )
    blocks = SIZES[settings.size].layers
    outcomes: dict[str, int] = {"held": 0, "within spread": 0, "failed": 0, "untestable": 0}
    for family in settings.families:
        for edits in settings.edits:
            for norm, deltas in (("linf", settings.linf_deltas), ("l2", settings.l2_deltas)):
                best = best_single_blocks(rows, family, edits, norm, deltas)
                if len(best) < 3 or len(best) != blocks:
                    continue
                outcome, verdict = _layer_outcome(best)
                outcomes[outcome] += 1
                parts.append(
                    f"{family}, {edits} edits, {norm}: A mean editing one block at a time, each at its best "
                    f"δ of {', '.join(f'{d:g}' for d in deltas)} = "
                    + ", ".join(
                        f"block {i}: {100 * r.mean('A_mean'):.0f}% (A_M {100 * r.mean('A_M'):.0f}%, "
                        f"δ={r.delta:g})"
                        for i, r in enumerate(best)
                    )
                    + f" — {verdict}"
                )
    if sum(outcomes.values()):
        tested = outcomes["held"] + outcomes["within spread"] + outcomes["failed"]
        if not tested:
            conclusion = (
                "could NOT be tested: no single block made the edits and beat leaving the model unedited."
            )
        elif outcomes["failed"]:
            conclusion = "did NOT reproduce."
        elif outcomes["within spread"]:
            conclusion = "PARTLY reproduced (never contradicted, but not always by more than the spread)."
        else:
            conclusion = "REPRODUCED."
        parts.append(
            "'The first and last blocks are the most effective to modify' (Zhu et al.; judged by A mean, "
            "the paper's measure, each block at its best bound): of the settings where some block made half "
            f"of the edits and beat leaving the model unedited ({tested} of {sum(outcomes.values())}), it "
            f"held clearly in {outcomes['held']}, by less than the spread over seeds in "
            f"{outcomes['within spread']}, and "
            f"failed in {outcomes['failed']} — {conclusion}"
        )
    for family in settings.families:
        for edits in settings.edits:
            cell = [r for r in rows if r.family == family and r.edits == edits]
            by_label = {r.label: r for r in cell}
            constrained = [r for r in cell if r.norm]
            if "ft" not in by_label or not constrained:
                continue
            line = f"{family}, {edits} edits: " + "; ".join(
                f"{label} keeps A_F\\S {100 * r.mean(KEPT):.0f}% at A_M {100 * r.mean('A_M'):.0f}%"
                for label, r in by_label.items()
                if label in ("ft", "ft+support")
            )
            working = [r for r in constrained if r.mean("A_M") >= 0.5]
            if working:
                best = max(working, key=lambda r: r.mean("A_mean"))
                line += (
                    f"; the best constrained setting that makes at least half of the edits ({best.label}) "
                    f"keeps {100 * best.mean(KEPT):.0f}% at A_M {100 * best.mean('A_M'):.0f}%"
                )
            else:
                top = max(constrained, key=lambda r: r.mean("A_M"))
                line += (
                    f"; no constrained setting makes half of the edits (most: {top.label}, "
                    f"A_M {100 * top.mean('A_M'):.0f}%)"
                )
            parts.append(line + f" (A_F\\S before: {100 * cell[0].mean(KEPT + ' before'):.0f}%).")
    seeds = len(settings.seeds)
    parts.append(f"Mean over {seeds} seed(s) of edit requests; each family is pretrained once.")
    return " ".join(parts)


# --------------------------------------------------------------------------- results


@dataclass
class PretrainedModel:
    """A model pretrained by the study on wiki text and the facts, and what it knows before any edit."""

    family: str
    objective: str
    model_path: str
    data: FactDataInfo
    validation_loss: float
    recall: float
    recall_by_relation: dict[str, float]
    paraphrase_recall: float
    unprobeable: int
    train_seconds: float
    steps: int


@dataclass
class EditingRow:
    """One method on one (family, edits) cell: every metric ``(mean, std)`` over seeds.

    ``metrics`` holds each metric of :func:`~palimpsest.editing.metrics.edit_metrics` after the
    edit and, as "<metric> before", before it; in results.json they sit beside the row's fields.
    """

    FLAT_MAPPING: ClassVar[str] = "metrics"

    family: str
    edits: int
    label: str
    method: str
    layers: str | list[int | float]
    norm: str | None
    delta: float | None
    steps: tuple[float, float]
    seconds: tuple[float, float]
    metrics: dict[str, tuple[float, float]]
    #: seeds averaged over (study on small models), or draws and the edit mode (real-model study)
    seeds: int | None = None
    sequential: bool = False
    draws: int | None = None

    def mean(self, metric: str) -> float:
        """The mean over seeds (or draws) of one metric."""
        return self.metrics[metric][0]


@dataclass
class EditingSummary:
    rows: list[EditingRow]
    verdict: str


@dataclass
class EditingStudyResults(Results):
    """The study's results.json: settings, the pretrained models, every edit's record, the summary."""

    KIND: ClassVar[str] = "editing-study"

    scale: str
    settings: EditingScale
    pretrained: dict[str, PretrainedModel]
    #: one record per (family, edits, seed, method): before/after metrics, steps, seconds
    runs: list[dict[str, Any]]
    summary: EditingSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    @classmethod
    def report_section(cls, studies: Sequence[EditingStudyResults], plots_dir: Path) -> Section:
        section = Section("Rewrite: modifying facts while keeping the rest (Zhu et al. 2020)")
        for study in studies:
            section.blocks += _study_blocks(study, plots_dir)
        return section


def _study_blocks(study: EditingStudyResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, summary = study.settings, study.summary
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': per family a {settings.size} model pretrained from scratch "
        f"on {settings.data.corpus} mixed with the facts "
        f"({', '.join(settings.fact_sets)}; four templates each, every subject's held-out paraphrase "
        "left out). Then, per seed, counterfactual edits (a new object of the same relation) made by "
        "every method on the same requests and undone exactly before the next. A_M: exact match of the "
        "whole new object; A_F\\S: exact match on the unmodified facts (support facts excluded); "
        "paraphrase: A_M through the held-out template; efficacy / neighbourhood: P(new) > P(old) on the "
        "edits / P(true) > P(new) on the unmodified facts. Mean ± std over "
        f"{len(settings.seeds)} seed(s); 'before' is the model before any edit."
    ]
    blocks.append(
        Table(
            [
                "model",
                "pretraining updates",
                "facts known (recall)",
                "held-out paraphrase recall %",
                "validation loss",
            ],
            [
                [
                    f,
                    p.steps,
                    f"{100 * p.recall:.1f}% of {p.data.facts}",
                    100 * p.paraphrase_recall,
                    p.validation_loss,
                ]
                for f, p in study.pretrained.items()
            ],
        )
    )
    rows = [
        [
            r.family, r.edits, r.label, pm(r.metrics["A_M"]), pm(r.metrics[KEPT]),
            pm(r.metrics[KEPT + " before"]),
            pm(r.metrics["A_mean"]), pm(r.metrics["paraphrase"]), pm(r.metrics["efficacy"]),
            pm(r.metrics["neighbourhood"]), f"{r.steps[0]:.0f}", f"{r.seconds[0]:.2f}",
        ]
        for r in summary.rows
    ]  # fmt: skip
    headers = [
        "model", "edits", "method", "A_M", "A_F\\S", "A_F\\S before", "A mean", "paraphrase", "efficacy",
        "neighbourhood", "steps", "seconds",
    ]  # fmt: skip
    blocks.append(Table(headers, rows))
    blocks.append(summary.verdict)
    for family in settings.families:
        for edits in settings.edits:
            cell = [r for r in summary.rows if r.family == family and r.edits == edits]
            if not cell:
                continue
            path = plot_points(
                {r.label: (r.mean(KEPT), r.mean("A_M")) for r in cell},
                plots_dir / f"editing-frontier-{family}-{edits}.png",
                title=f"{family}, {edits} edits: edit success vs facts kept",
                xlabel="A_F\\S (unmodified facts still right)",
                ylabel="A_M (edits that took)",
                reference_x=cell[0].metrics[KEPT + " before"][0],
            )
            blocks.append(Figure(path, f"{family}, {edits} edits: the trade-off, one point per method"))
            single = sorted(
                (r for r in cell if isinstance(r.layers, list) and len(r.layers) == 1),
                key=lambda r: (r.norm, r.delta, r.layers[0]),
            )
            for metric, name in (("A_M", "A_M"), ("A_mean", "A mean")):
                if not single:
                    break
                groups: dict[str, dict[str, tuple[float, float]]] = {}
                for r in single:
                    bound = f"{r.norm} δ={r.delta:g}"
                    groups.setdefault(f"block {r.layers[0]}", {})[bound] = tuple(r.metrics[metric])
                path = plot_bars(
                    groups,
                    plots_dir / f"editing-layers-{metric}-{family}-{edits}.png",
                    title=f"{family}, {edits} edits: editing one block at a time",
                    ylabel=name,
                )
                blocks.append(
                    Figure(path, f"Per-layer effectiveness, {name} (constrained, FFN of one block)")
                )
    return blocks
