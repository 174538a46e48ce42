"""The editing study on a real pretrained model (``palimpsest experiment editing --scale real``).

Protocol (PAPERS.md section 2, on the built-in SmolLM2-135M instead of a model trained here):

1. *What the model knows*: exact-match recall of every built-in country and element relation
   (reported per relation); edits are drawn from the facts it recalls in the ``edit_sets``.
2. *Edits*: per seed, counterfactual requests (a new object the same relation has for another
   subject) at each size — single edits (``singles`` of them per seed, each made and undone
   alone), batches of 16 and 64 at once, and 64 one after another — with an unmodified set of
   known facts to score (A_F\\S) and a disjoint support set (for ``ft+support`` only). Every
   method sees the same requests and is undone exactly before the next.
3. Methods: ``ft`` (unconstrained fine-tuning of every block's MLP), ``ft+support``, ``ft-l``
   and ``ft-m`` (EasyEdit's settings: one MLP down-projection at relative depth 0.7, 25 steps
   at lr 5e-4, loss at the last prompt token / teacher-forced on the object), palimpsest's
   default editor; and across depth, one block's MLP down-projection at a time: the default
   editor moved to that block, and the editor's recipe (subject positions, stop at success)
   at lr 1e-3 for 25 steps under each L-inf and L2 bound of the grid (in units of the weight).
4. Measured before and after: A_M, A_F\\S, their mean, paraphrase, efficacy, neighbourhood (see
   :mod:`palimpsest.editing.metrics`), *generation* success (greedy continuation of up to 8
   tokens names the new object; the kept facts' continuations still name theirs), wiki-en
   perplexity (fluency), steps and seconds. Mean ± std over every draw.

The ``smoke`` scale runs the same code on a random model of SmolLM2's structure (no facts
known: the numbers mean nothing, the plumbing is tested).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerCallback

from palimpsest.claims import Claim, Outcome
from palimpsest.config import from_dict, to_dict
from palimpsest.data.facts import Fact, builtin_facts
from palimpsest.editing.config import PLAIN_FINETUNING, EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.metrics import edit_metrics, generation_metrics
from palimpsest.editing.requests import counterfactual_requests
from palimpsest.errors import DataError
from palimpsest.experiments.common import mean_std, real_or_random_model, wiki_perplexity_set
from palimpsest.experiments.editing import EditingRow, EditingSummary, _layer_outcome, best_single_blocks
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.models import transformer_blocks
from palimpsest.plotting import plot_bars, plot_points
from palimpsest.recall import fact_recall
from palimpsest.report import Figure, Section, Table, pm
from palimpsest.results import Results
from palimpsest.storage import machine_info
from palimpsest.training import evaluate_lm

logger = logging.getLogger(__name__)

KEPT = "A_F\\S"
KNOWLEDGE_SETS = (
    "country-capital", "country-language", "country-currency", "country-continent",
    "element-symbol", "atomic-number",
)  # fmt: skip
#: EasyEdit's fine-tuning baselines on Llama (FT-L / FT-M): one MLP down-projection at block 21
#: of 32 (relative depth 0.7), 25 steps of Adam at lr 5e-4, no bound.
EASYEDIT = {
    "layers": "0.7", "modules": ["ffn-out"], "norm": None, "learning_rate": 5e-4, "steps": 25,
    "context_passages": 0,
}  # fmt: skip
#: Anchors printed beside the table (EasyEdit / KnowEdit, Llama-2-7b-chat, ZsRE; PAPERS.md).
ANCHORS = (
    ("FT-L (EasyEdit, Llama-2-7b-chat, ZsRE)", 53.9, 73.4),
    ("FT-M (EasyEdit, Llama-2-7b-chat, ZsRE)", 99.98, 89.8),
    ("FT+L (ROME paper, GPT-2 XL, CounterFact)", 99.1, 70.3),
)


@dataclass(frozen=True)
class RealEditingScale:
    """Sizes of one run of the real-model study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    knowledge_sets: tuple[str, ...] = KNOWLEDGE_SETS
    edit_sets: tuple[str, ...] = ("country-capital", "country-language", "element-symbol")
    #: Edit only facts the model recalls (off for a random model, which knows none).
    known_only: bool = True
    sizes: tuple[int, ...] = (1, 16, 64)
    sequential: tuple[int, ...] = (64,)
    #: Single edits per seed at size 1 (each made and undone alone).
    singles: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    kept: int = 40
    support: int = 16
    #: The per-depth sweep: every ``depth_every``-th block (and the last), at these sizes.
    depth_every: int = 3
    depth_sizes: tuple[int, ...] = (1,)
    #: Seeds whose draws the per-depth sweep runs on (None: every seed).
    depth_seeds: tuple[int, ...] | None = None
    linf_deltas: tuple[float, ...] = (0.05, 0.2)
    l2_deltas: tuple[float, ...] = (0.05,)
    #: Methods at the larger sizes and one after another (the sweep is too costly there).
    large_methods: tuple[str, ...] = ("ft", "ft+support", "ft-l", "ft-m", "default")
    sequential_methods: tuple[str, ...] = ("ft-m", "default")
    #: Seeds of the sequential runs (None: every seed); 64 edits in a row are the costliest unit.
    sequential_seeds: tuple[int, ...] | None = None
    steps: int = 25
    learning_rate: float = 5e-4
    perplexity_blocks: int = 8
    block_size: int = 128
    generation_tokens: int = 8


SCALES: dict[str, RealEditingScale] = {
    "smoke": RealEditingScale(
        model=None,
        edit_sets=("country-capital",),
        known_only=False,
        sizes=(1, 4),
        sequential=(3,),
        singles=1,
        seeds=(0,),
        kept=6,
        support=2,
        depth_every=2,
        depth_sizes=(1,),
        linf_deltas=(0.2,),
        l2_deltas=(0.05,),
        large_methods=("ft", "ft-m", "default"),
        sequential_methods=("default",),
        steps=3,
        perplexity_blocks=2,
        block_size=32,
        generation_tokens=3,
    ),
    # Every method at 1, 16 and 64 edits on three seeds; the per-depth sweep (single edits) on
    # the first seed's draws and 64 edits in a row on one seed (its cost: README, "On a real model").
    "real": RealEditingScale(depth_seeds=(0,), sequential_seeds=(0,)),
}


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


def knowledge(model, tokenizer, scale: RealEditingScale) -> tuple[dict[str, Knowledge], list[Fact]]:
    """Recall per relation, and the facts of ``edit_sets`` the study may edit."""
    per_set, editable = {}, []
    for name in dict.fromkeys((*scale.knowledge_sets, *scale.edit_sets)):
        facts = builtin_facts(name)
        recall = fact_recall(model, tokenizer, facts)
        probed = [f for f in facts if _probeable(tokenizer, f)]
        known = [f for f, hit in zip(probed, recall.recalled, strict=True) if hit]
        per_set[name] = Knowledge(facts=len(facts), known=len(known), recall=recall.accuracy)
        if name in scale.edit_sets:
            editable += known if scale.known_only else probed
    return per_set, editable


def _probeable(tokenizer, fact: Fact) -> bool:
    from palimpsest.recall import build_probe

    return build_probe(tokenizer, fact, causal=True) is not None


def _draw(facts: list[Fact], size: int, seed: int, scale: RealEditingScale):
    """(requests, unmodified facts to score, support facts): disjoint, reproducible."""
    requests = counterfactual_requests(facts, size, seed=seed)
    edited = {(r.fact.subject, r.fact.relation.name) for r in requests}
    rest = [f for f in facts if (f.subject, f.relation.name) not in edited]
    random.Random(seed + 1).shuffle(rest)
    kept = rest[: min(scale.kept, len(rest) // 2)]
    support = rest[len(kept) : len(kept) + scale.support]
    return requests, kept, support


def _measure(model, tokenizer, requests, kept, perplexity_set, scale) -> dict[str, Any]:
    metrics = edit_metrics(model, tokenizer, requests, kept)
    generated = generation_metrics(model, tokenizer, requests, kept, max_new_tokens=scale.generation_tokens)
    metrics.update({k: v for k, v in generated.items() if k != "texts"})
    metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    metrics["texts"] = generated["texts"]
    return metrics


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
        before = _measure(model, tokenizer, requests, kept, perplexity_set, scale)
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
            after = _measure(model, tokenizer, requests, kept, perplexity_set, scale)
            editor.undo()
            runs.append(
                EditRun(
                    draw=draw, label=label, method=label.split(" ")[0], layers=config.layers,
                    norm=config.norm, delta=config.delta if config.norm else None,
                    before={k: v for k, v in before.items() if k != "texts"},
                    after={k: v for k, v in after.items() if k != "texts"},
                    examples=_examples(before["texts"], after["texts"]),
                    steps=result.steps, seconds=seconds, edited_parameters=result.edited_parameters,
                    size=size, sequential=sequential, seed=seed,
                )
            )  # fmt: skip
            logger.info("%s: A_M %.2f, A_F\\S %.2f", label, after["A_M"], after[KEPT])
    logger.info("unit of %d edit(s), seed %d done in %.0f s", size, seed, time.perf_counter() - started)
    return RealEditUnit(runs)


def _examples(before: dict[str, Any], after: dict[str, Any], count: int = 2) -> Examples:
    """A few continuations before and after an edit, of edited and of kept prompts."""
    return from_dict(
        Examples,
        {
            "before": before["edits"][:count], "after": after["edits"][:count],
            "kept_before": before["kept"][:count], "kept_after": after["kept"][:count],
        },
    )  # fmt: skip


def _unit_key(scale: RealEditingScale, grid: list[tuple[str, EditConfig]]) -> Any:
    """What a saved unit depends on: the model, the draws and the methods (not the other units)."""
    draws = ("model", "edit_sets", "known_only", "singles", "kept", "support", "perplexity_blocks",
             "block_size", "generation_tokens")  # fmt: skip
    document = {name: getattr(scale, name) for name in draws}
    document["grid"] = [[label, to_dict(config)] for label, config in grid]
    return document


#: The scale names of the editing study that edit the built-in model (``palimpsest experiment
#: editing --scale real``), and which settings each runs.
REAL_SCALE_NAMES = {"real": "real", "real-smoke": "smoke"}


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
                request_sets = [_draw(facts, size, seed * 100 + i, scale) for i in range(draws)]
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


METRICS = (
    "A_M", KEPT, "A_mean", "paraphrase", "efficacy", "neighbourhood", "generation", "generation_paraphrase",
    "generation_kept", "perplexity",
)  # fmt: skip


def summarise(
    runs: Sequence[EditRun], known: dict[str, Knowledge], blocks: int, scale: RealEditingScale
) -> EditingSummary:
    """Per (size, mode, label): mean ± std over every draw of every metric, and the verdicts."""
    cells: dict[tuple[int, bool, str], list[EditRun]] = {}
    for run in runs:
        cells.setdefault((run.size, run.sequential, run.label), []).append(run)
    rows = []
    for (size, sequential, label), group in cells.items():
        first = group[0]
        metrics: dict[str, tuple[float, float]] = {}
        for metric in METRICS:
            metrics[metric] = mean_std([r.after.get(metric) for r in group])
            metrics[f"{metric} before"] = mean_std([r.before.get(metric) for r in group])
        rows.append(
            EditingRow(
                family="sequential" if sequential else "batch", edits=size, label=label, method=first.method,
                layers=first.layers, norm=first.norm, delta=first.delta,
                steps=mean_std([r.steps for r in group]),
                # the median: robust to a draw slowed by other work on the machine
                seconds=(statistics.median(r.seconds for r in group), 0.0),
                metrics=metrics, sequential=sequential, draws=len(group),
            )
        )  # fmt: skip
    return EditingSummary(rows=rows, verdict=_verdict(rows, known, blocks, scale))


def _verdict(
    rows: list[EditingRow], known: dict[str, Knowledge], blocks: int, scale: RealEditingScale
) -> str:
    parts = [
        "The model recalls "
        + ", ".join(f"{v.known} of {v.facts} {name}" for name, v in known.items())
        + " (exact match)."
    ]
    for size in scale.sizes:
        cell = {r.label: r for r in rows if r.edits == size and not r.sequential}
        if not cell:
            continue
        named = [
            f"{label} A_M {100 * r.mean('A_M'):.0f}% / A_F\\S {100 * r.mean(KEPT):.0f}% / generation "
            f"{100 * r.mean('generation'):.0f}% / perplexity {r.mean('perplexity'):.1f}"
            for label, r in cell.items()
            if len(label.split(" ")) == 1
        ]
        first = next(iter(cell.values()))
        parts.append(
            f"{size} edit(s) at once (A_F\\S before {100 * first.mean(KEPT + ' before'):.0f}%, "
            f"perplexity before {first.mean('perplexity before'):.1f}): " + "; ".join(named) + "."
        )
        if size in scale.depth_sizes:
            default = EditConfig()
            for name, norm, deltas in (
                ("linf at lr 1e-3", "linf", scale.linf_deltas), ("l2 at lr 1e-3", "l2", scale.l2_deltas),
                ("the default editor", default.norm, (default.delta,)),
            ):  # fmt: skip
                best = best_single_blocks(rows, "batch", size, norm, deltas)
                if len(best) >= 3:
                    outcome, sentence = _layer_outcome(best)
                    tops = sorted(best, key=lambda r: -r.mean("A_mean"))[:3]
                    parts.append(
                        f"{size} edit(s), {name}, one block's MLP at a time (best A mean: "
                        + ", ".join(f"block {r.layers[0]} {100 * r.mean('A_mean'):.0f}%" for r in tops)
                        + f"; first {100 * best[0].mean('A_mean'):.0f}%, "
                        + f"last {100 * best[-1].mean('A_mean'):.0f}%): "
                        + f"'first and last most effective' — {outcome}: {sentence}"
                    )
    for size in scale.sequential:
        cell = [r for r in rows if r.edits == size and r.sequential]
        if cell:
            parts.append(
                f"{size} edits one after another: "
                + "; ".join(
                    f"{r.label} A_M {100 * r.mean('A_M'):.0f}% / A_F\\S {100 * r.mean(KEPT):.0f}% / "
                    f"perplexity {r.mean('perplexity'):.1f}"
                    for r in cell
                )
                + "."
            )
    default = [r for r in rows if r.label == "default" and r.edits == 1 and not r.sequential]
    if default:
        r = default[0]
        goal = r.mean("A_M") >= 0.99 and r.mean(KEPT) >= 0.9
        parts.append(
            f"Goal (single edits at A_M 100% keeping A_F\\S >= 90%) with the default editor: "
            f"{'MET' if goal else 'NOT met'} (A_M {100 * r.mean('A_M'):.0f}%, "
            f"A_F\\S {100 * r.mean(KEPT):.0f}% ± {100 * r.metrics[KEPT][1]:.0f}, "
            f"over {r.draws} single edits)."
        )
    return " ".join(parts)


#: What "keeps the rest" means in the verdict table: every edit made (A_M) while at least this
#: share of the other facts the model recalled is still recalled (A_F\\S).
KEPT_GOAL = 0.9
#: Where the committed real-model runs are: of this study, and of the batch editors made for many edits.
EVIDENCE = "results/editing-real/"
MANY_EDITS_EVIDENCE = "results/many-edits-real/"


def real_editing_claims(study: RealEditingResults) -> list[Claim]:
    """Zhu et al.'s claim for the default editor at each size this run measured, beside FT-M
    (see :mod:`palimpsest.claims`): every edit made, and the facts not asked to change kept."""
    claims = []
    for row in study.summary.rows:
        if row.label != "default":
            continue
        made, kept = row.mean("A_M"), row.mean(KEPT)
        checks = [made >= 0.99, kept >= KEPT_GOAL]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
        others = [
            f"{r.label} {100 * r.mean('A_M'):.0f}% / {100 * r.mean(KEPT):.0f}%"
            for r in study.summary.rows
            if r.edits == row.edits and r.sequential == row.sequential and r.label in ("ft", "ft-m")
        ]
        size = (
            "one edit"
            if row.edits == 1
            else f"{row.edits} edits {'in a row' if row.sequential else 'at once'}"
        )
        before = row.mean(KEPT + " before")
        claims.append(
            Claim(
                "rewrite",
                f"{size}: made, and the other facts kept",
                "A_M high with A_F\\S almost unchanged, unlike plain fine-tuning (Zhu et al. 2020)",
                f"A_M {100 * made:.0f}% / A_F\\S {100 * kept:.0f}% (before {100 * before:.0f}%)"
                + (f"; {', '.join(others)}" if others else ""),
                outcome,
                "" if outcome is Outcome.REPRODUCED else EVIDENCE if row.edits == 1 else MANY_EDITS_EVIDENCE,
            )
        )
    return claims


def _one_line(text: str) -> str:
    """A continuation as one table cell: line breaks shown, not rendered."""
    return text.replace("\n", " ⏎ ")


# --------------------------------------------------------------------------- results


@dataclass
class Knowledge:
    """How many facts of one relation the model recalls before any edit."""

    facts: int
    known: int
    recall: float


@dataclass
class Continuation:
    prompt: str
    continuation: str


@dataclass
class Examples:
    """Greedy continuations of edited and of kept prompts, before and after an edit."""

    before: list[Continuation]
    after: list[Continuation]
    kept_before: list[Continuation]
    kept_after: list[Continuation]


@dataclass
class EditRun:
    """One method on one draw of requests: every metric before and after, and the cost."""

    draw: int
    label: str
    method: str
    layers: str | list[int | float]
    norm: str | None
    delta: float | None
    before: dict[str, int | float]
    after: dict[str, int | float]
    examples: Examples
    steps: int
    seconds: float
    edited_parameters: int
    size: int
    sequential: bool
    seed: int


@dataclass
class RealEditUnit:
    """Every method on the draws of one (size, mode, seed): the unit a resumed study skips."""

    runs: list[EditRun]


@dataclass
class RealEditingResults(Results):
    """The study's results.json: what the model knew, every edit's record and the summary."""

    KIND: ClassVar[str] = "editing-real"

    scale: str
    settings: RealEditingScale
    model: str
    blocks: int
    knowledge: dict[str, Knowledge]
    editable_facts: int
    runs: list[EditRun]
    summary: EditingSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return real_editing_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[RealEditingResults], plots_dir: Path) -> Section:
        """Knowledge, the table, anchors, verdict, examples, plots."""
        section = Section("Rewrite on a real model: SmolLM2-135M (built in)")
        for study in studies:
            section.blocks += _study_blocks(study, plots_dir)
        return section


def _study_blocks(study: RealEditingResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, rows = study.settings, study.summary.rows
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model} ({study.blocks} blocks), nothing trained before. "
        f"Edits are counterfactual (another subject's object of the same relation) drawn from the "
        f"{study.editable_facts} facts of {', '.join(settings.edit_sets)} it recalls; A_F\\S is "
        f"measured on up to {settings.kept} other recalled facts (never trained on), generation = the "
        f"greedy continuation ({settings.generation_tokens} tokens) names the new object, generation "
        "kept = the kept facts' continuations still name theirs, perplexity on held-out wiki-en. "
        f"Mean ± std over {len(settings.seeds)} seed(s) of draws (single edits: "
        f"{settings.singles} per seed, each made and undone alone); seconds: the median over draws."
    ]
    blocks.append(
        Table(
            ["relation", "facts", "recalled", "recall %"],
            [[name, v.facts, v.known, 100 * v.recall] for name, v in study.knowledge.items()],
        )
    )
    headers = [
        "edits", "mode", "method", "A_M", "A_F\\S", "A_F\\S before", "paraphrase", "generation",
        "generation kept",
        "perplexity", "perplexity before", "steps", "seconds", "draws",
    ]  # fmt: skip
    table = [
        [
            r.edits, r.family, r.label, pm(r.metrics["A_M"]), pm(r.metrics[KEPT]),
            pm(r.metrics[KEPT + " before"]),
            pm(r.metrics["paraphrase"]), pm(r.metrics["generation"]), pm(r.metrics["generation_kept"]),
            pm(r.metrics["perplexity"], digits=2), pm(r.metrics["perplexity before"], digits=2),
            f"{r.steps[0]:.0f}", f"{r.seconds[0]:.1f}", r.draws,
        ]
        for r in rows
    ]  # fmt: skip
    blocks.append(Table(headers, table))
    blocks.append(
        Table(
            ["anchor (not this model)", "edit success %", "locality / neighbourhood %"],
            [list(anchor) for anchor in ANCHORS],
        )
    )
    blocks.append(study.summary.verdict)
    examples = [r for r in study.runs if r.size == min(settings.sizes) and not r.sequential]
    shown = [r for r in examples if r.label in ("default", "ft-m") and r.seed == settings.seeds[0]]
    if shown:
        lines = []
        for run in shown[:6]:
            pairs = (
                ("edit", run.examples.before, run.examples.after),
                ("kept", run.examples.kept_before, run.examples.kept_after),
            )
            for kind, befores, afters in pairs:
                for b, a in zip(befores, afters, strict=False):
                    lines.append(
                        [run.label, kind, b.prompt, _one_line(b.continuation), _one_line(a.continuation)]
                    )
        blocks.append(Table(["method", "prompt", "prompt text", "before", "after"], lines))
    for size in sorted({r.edits for r in rows}):
        for sequential in (False, True):
            cell = [r for r in rows if r.edits == size and r.sequential == sequential]
            if not cell:
                continue
            mode = "sequential" if sequential else "batch"
            path = plot_points(
                {r.label: (r.mean(KEPT), r.mean("A_M")) for r in cell if " block " not in r.label},
                plots_dir / f"editing-real-frontier-{mode}-{size}.png",
                title=f"SmolLM2-135M, {size} edit(s) ({mode}): edits made vs facts kept",
                xlabel="A_F\\S (recalled facts still right)", ylabel="A_M (edits that took)",
                reference_x=cell[0].metrics[KEPT + " before"][0],
            )  # fmt: skip
            blocks.append(
                Figure(path, f"{size} edit(s), {mode}: one point per method (per-block runs: next plot)")
            )
            single = [r for r in cell if r.norm and isinstance(r.layers, list) and len(r.layers) == 1]
            if single:
                groups: dict[str, dict[str, tuple[float, float]]] = {}
                for r in sorted(single, key=lambda r: r.layers[0]):
                    groups.setdefault(str(r.layers[0]), {})[r.label.rsplit(" block", 1)[0]] = tuple(
                        r.metrics["A_mean"]
                    )
                path = plot_bars(
                    groups, plots_dir / f"editing-real-depth-{size}.png",
                    title=f"SmolLM2-135M, {size} edit(s): one block's MLP at a time (by block)",
                    ylabel="A mean (edits made and facts kept)",
                )  # fmt: skip
                blocks.append(Figure(path, f"{size} edit(s): A mean by depth"))
    return blocks
