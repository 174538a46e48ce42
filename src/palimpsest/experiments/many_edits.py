"""Many edits at once and one after another (``palimpsest experiment many-edits``).

Protocol:

1. *The benchmark* (:mod:`palimpsest.editing.benchmark`) is built once for the model: what it
   recalls of the shipped fact tables decides the counterfactual cases, what it gets wrong the
   corrections. It is written to ``benchmark.jsonl`` in the output folder.
2. *Draws*: per seed, the benchmark shuffled, its first ``n`` cases. Every method edits the same
   draw, from the same weights (each is undone bit for bit before the next).
3. *Modes*: ``n`` at once (one call), and ``n`` in sequence in batches of ``b`` (``b = 1``: one at
   a time), measured on the final model only.
4. *Methods*: FT-M (EasyEdit's recipe), palimpsest's constrained editor (Zhu et al.), the same
   editor keeping its changes in the null space of preserved keys instead of a norm ball
   (``constrained-preserve``), MEMIT and AlphaEdit as published (keys averaged over the
   contexts, no norm control; MEMIT without the earlier edits' keys, AlphaEdit with them), and
   ``palimpsest``: the batch editor with its defaults (:mod:`palimpsest.editing.memit`).
5. *Measured* before and after (:func:`~palimpsest.editing.benchmark.benchmark_metrics`): made
   (exact match, plain prompt and after unrelated text), P(new) > P(old), paraphrase,
   neighbourhood and same-subject facts kept, greedy generation, fluency, wiki-en perplexity;
   seconds and peak memory of the edit itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import save_file
from transformers import TrainerCallback

from palimpsest.claims import Claim, Outcome
from palimpsest.config import to_dict
from palimpsest.editing.benchmark import (
    BENCHMARK_SETS,
    BenchmarkCase,
    BenchmarkConfig,
    benchmark_metrics,
    build_benchmark,
    read_benchmark,
    write_benchmark,
)
from palimpsest.editing.config import EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.errors import ConfigError, DataError, PalimpsestError
from palimpsest.experiments.common import PeakMemory, mean_std, real_or_random_model, wiki_perplexity_set
from palimpsest.experiments.editing_real import EVIDENCE as EDITING_EVIDENCE
from palimpsest.experiments.editing_real import KEPT_GOAL
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.plotting import plot_curves
from palimpsest.report import Figure, Section, Table, pm
from palimpsest.results import Results
from palimpsest.storage import (
    as_stored,
    atomic_folder,
    machine_info,
    read_safetensors,
    remove_tree,
    write_json,
)
from palimpsest.training import evaluate_lm

logger = logging.getLogger(__name__)

#: FT-M as EasyEdit runs it (one MLP down-projection at relative depth 0.7, 25 steps, lr 5e-4,
#: no bound, loss on the object only).
FT_M = {
    "layers": "0.7", "modules": ["ffn-out"], "norm": None, "learning_rate": 5e-4, "steps": 25,
    "objective": "ft-m", "context_passages": 0,
}  # fmt: skip
#: The constrained editor with the batch editors' preserved-knowledge constraint instead of its
#: norm ball (each change kept in the null space of ordinary text's keys and of earlier edits').
CONSTRAINED_PRESERVE = {"norm": None, "preserve": "text"}
#: MEMIT and AlphaEdit as their papers set them, on the batch editor: a request's keys averaged
#: over its contexts (one least-squares column per request), no norm control of the targets;
#: MEMIT's least squares knows nothing of earlier batches, AlphaEdit keeps their keys.
AS_PUBLISHED = {
    "memit": {"key_contexts": "mean", "target_norm_limit": None, "accumulate_keys": False},
    "alphaedit": {"key_contexts": "mean", "target_norm_limit": None, "accumulate_keys": True},
}
METHODS = ("ft-m", "constrained", "constrained-preserve", "memit", "alphaedit", "palimpsest")
#: The fact tables of the demo's benchmark: small enough to probe every fact in seconds.
DEMO_SETS = ("country-capital", "country-language", "element-symbol")


@dataclass(frozen=True)
class ManyEditsScale:
    """Sizes of one run of the study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    #: Fact tables the benchmark is drawn from (None: every built-in one; building probes each fact).
    benchmark_sets: tuple[str, ...] | None = None
    at_once: tuple[int, ...] = (1, 10, 100, 1000)
    #: (edits, batch) of each sequence.
    in_sequence: tuple[tuple[int, int], ...] = ((1000, 1), (1000, 10))
    methods: tuple[str, ...] = METHODS
    #: Methods of the sequences (None: ``methods``).
    sequence_methods: tuple[str, ...] | None = None
    #: ``(method, sizes)``: that method edits only draws of those numbers of edits (a method not
    #: named edits every draw). The fine-tuning editors' cost grows with the batch while they fail
    #: past a handful (``results/editing-real/``), so a short run can show each where it makes its
    #: point and spend its time on the batch editor.
    method_sizes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    statistics_tokens: int = 100_000
    #: Blocks the batch editors write (None: their default, chosen on SmolLM2).
    batch_layers: tuple[int, ...] | None = None
    #: AlphaEdit's null-space threshold (None: its default; a random model's keys fill every direction).
    nullspace_threshold: float | None = None
    perplexity_blocks: int = 16
    block_size: int = 128
    generation_tokens: int = 8

    def __post_init__(self) -> None:
        # checked here, so a wrong name stops the run before a model is loaded or anything written
        unknown = [name for name in self.benchmark_sets or () if name not in BENCHMARK_SETS]
        if unknown:
            raise ConfigError(
                f"benchmark_sets: unknown fact table(s) {', '.join(unknown)} "
                f"(known: {', '.join(BENCHMARK_SETS)})"
            )
        named = [*self.methods, *(self.sequence_methods or ()), *(m for m, _ in self.method_sizes)]
        unknown = [name for name in named if name not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
        drawn = {*self.at_once, *(edits for edits, _ in self.in_sequence)}
        for method, sizes in self.method_sizes:
            if not set(sizes) & drawn:
                raise ConfigError(
                    f"method_sizes: {method} would edit no draw (sizes {list(sizes)}, drawn {sorted(drawn)})"
                )

    def runs(self, method: str, edits: int) -> bool:
        """Whether ``method`` edits a draw of ``edits`` requests (see ``method_sizes``)."""
        return edits in dict(self.method_sizes).get(method, (edits,))


SCALES: dict[str, ManyEditsScale] = {
    "smoke": ManyEditsScale(
        model=None, benchmark=BenchmarkConfig(size=12, neighbours=2, min_city_population=5_000_000),
        at_once=(1, 4), in_sequence=((4, 2),), seeds=(0,), statistics_tokens=2_000, batch_layers=(1, 2),
        nullspace_threshold=0.5,
        perplexity_blocks=2, block_size=32, generation_tokens=3,
    ),
    # Every method up to 100 edits, one seed (its cost on 2 cores: README, "The many-edits study").
    "real-quick": ManyEditsScale(at_once=(1, 10, 100), in_sequence=((100, 10),), seeds=(0,)),
    "real": ManyEditsScale(),
    # The demo's part: one edit and a batch at once, the batch again in a sequence, on fact tables
    # that are quick to probe (city-country's 4,706 facts are not); a few minutes on 2 cores.
    "demo": ManyEditsScale(
        benchmark=BenchmarkConfig(size=64), benchmark_sets=DEMO_SETS, at_once=(1, 10), in_sequence=((10, 5),),
        methods=("constrained", "ft-m", "palimpsest"), sequence_methods=("palimpsest",),
        method_sizes=(("constrained", (1,)), ("ft-m", (10,))), seeds=(0,), statistics_tokens=10_000,
        perplexity_blocks=4,
    ),
    # The demo's part on a random SmolLM2-shaped model, for tests.
    "demo-smoke": ManyEditsScale(
        model=None, benchmark=BenchmarkConfig(size=8, neighbours=2), benchmark_sets=DEMO_SETS,
        at_once=(1, 4), in_sequence=((4, 2),), methods=("constrained", "palimpsest"),
        sequence_methods=("palimpsest",), method_sizes=(("constrained", (1,)),), seeds=(0,),
        statistics_tokens=2_000, batch_layers=(1, 2),
        nullspace_threshold=0.5, perplexity_blocks=2, block_size=32, generation_tokens=3,
    ),
}  # fmt: skip


@dataclass
class EditOutcome:
    """One method on one draw: the metrics after, and what the edit cost."""

    method: str
    mode: str  # "at once" or "in sequence"
    edits: int
    batch: int
    seed: int
    metrics: dict[str, float]
    seconds: float
    peak_memory_mb: float


@dataclass
class DrawBaseline:
    """The metrics of one draw before any edit."""

    mode: str
    edits: int
    batch: int
    seed: int
    metrics: dict[str, float]


def _method_config(method: str, scale: ManyEditsScale) -> EditConfig | BatchEditConfig:
    if method == "ft-m":
        return EditConfig(**FT_M)
    if method == "constrained":
        return EditConfig()
    if method == "constrained-preserve":
        chosen = {"statistics_tokens": scale.statistics_tokens}
        if scale.nullspace_threshold is not None:
            chosen["nullspace_threshold"] = scale.nullspace_threshold
        return EditConfig(**CONSTRAINED_PRESERVE, **chosen)
    chosen: dict[str, Any] = {"layers": list(scale.batch_layers)} if scale.batch_layers is not None else {}
    if scale.nullspace_threshold is not None:
        chosen["nullspace_threshold"] = scale.nullspace_threshold
    if method == "palimpsest":  # the batch editor's defaults: MEMIT's least squares and more
        return BatchEditConfig(statistics_tokens=scale.statistics_tokens, **chosen)
    return BatchEditConfig(
        method=method, statistics_tokens=scale.statistics_tokens, **AS_PUBLISHED[method], **chosen
    )


def _editor(method: str, model: Any, tokenizer: Any, scale: ManyEditsScale, statistics: dict) -> Any:
    config = _method_config(method, scale)
    if isinstance(config, EditConfig):
        given = statistics if config.preserve == "text" and statistics else None
        return ConstrainedFinetune(model, tokenizer, config=config, statistics=given)
    return BatchEditor(model, tokenizer, config=config, statistics=statistics)


def _measure(model: Any, tokenizer: Any, cases: Sequence[BenchmarkCase], perplexity_set: Any, scale) -> dict:
    metrics = benchmark_metrics(model, tokenizer, cases, generation_tokens=scale.generation_tokens)
    metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    return metrics


#: Seconds of editing between two saves of a long sequence's progress (the batch editor's state:
#: its edited projections and kept keys, about 100 MB for SmolLM2's five blocks).
SEQUENCE_SAVE_SECONDS = 600.0


def _run(
    method: str, model: Any, tokenizer: Any, cases: list[BenchmarkCase], batch: int, mode: str,
    scale: ManyEditsScale, statistics: dict, perplexity_set: Any, seed: int,
    progress: Path | None = None, key: Any = None,
) -> EditOutcome:  # fmt: skip
    """One method on one draw; the model is put back exactly afterwards. A sequence by the batch
    editor saves its progress in ``progress`` (keyed by ``key``) and goes on from there."""
    editor = _editor(method, model, tokenizer, scale, statistics)
    requests = [case.request for case in cases]
    device = next(model.parameters()).device
    started = time.perf_counter()
    try:
        with PeakMemory(device) as memory:
            if mode == "at once":
                editor.apply(requests, measure=False)
            elif batch == 1 and isinstance(editor, ConstrainedFinetune):
                editor.apply(requests, sequential=True, measure=False)
            else:
                saved = progress if isinstance(editor, BatchEditor) else None
                started -= _sequence(editor, requests, batch, saved, key)
        seconds = time.perf_counter() - started
        metrics = _measure(model, tokenizer, cases, perplexity_set, scale)
    finally:
        editor.undo()
    if progress is not None:
        remove_tree(progress)
    kept = metrics.get("neighbourhood_kept", float("nan"))
    logger.info(
        "%s, %d %s (batch %d): made %.2f, neighbourhood kept %.2f, %.0f s",
        method, len(cases), mode, batch, metrics["made"], kept, seconds,
    )  # fmt: skip
    peak = memory.peak_mib if memory.peak_mib is not None else float("nan")
    return EditOutcome(method, mode, len(cases), batch, seed, metrics, seconds, peak)


def _sequence(editor: Any, requests: list, batch: int, progress: Path | None, key: Any) -> float:
    """Apply ``requests`` in batches. With ``progress``, a saved state of the same ``key`` is
    continued and the state is saved every :data:`SEQUENCE_SAVE_SECONDS` of editing. Returns the
    seconds to add to this process's clock for the whole sequence's editing time: the earlier
    processes' editing, less the time spent saving here."""
    done, earlier = 0, 0.0
    if progress is not None:
        saved = _read_progress(progress, key)
        if saved is not None:
            done, earlier, state = saved
            editor.load_sequence_state(state)
            batches = -(-len(requests) // batch)
            logger.info("continuing a sequence after batch %d of %d (%s)", done, batches, progress)
    since, saving, last_save = time.perf_counter(), 0.0, 0.0
    for first in range(done * batch, len(requests), batch):
        editor.apply(requests[first : first + batch], measure=False)
        done += 1
        editing = time.perf_counter() - since - saving
        if (
            progress is not None
            and first + batch < len(requests)
            and editing - last_save >= SEQUENCE_SAVE_SECONDS
        ):
            began = time.perf_counter()
            _save_progress(progress, key, done, earlier + editing, editor.sequence_state())
            saving += time.perf_counter() - began
            last_save = editing
    return earlier - saving


def _read_progress(folder: Path, key: Any) -> tuple[int, float, dict] | None:
    """``(batches done, seconds, state)`` saved for ``key``, or None (none, another key, unreadable)."""
    try:
        record = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
        if record.get("key") != as_stored(key):
            return None
        return (
            int(record["batches"]),
            float(record["seconds"]),
            read_safetensors(folder / "state.safetensors"),
        )
    except (OSError, ValueError, KeyError, TypeError, PalimpsestError) as error:
        if folder.exists():
            logger.warning("%s cannot be continued (%s); the sequence starts again", folder, error)
        return None


def _save_progress(folder: Path, key: Any, batches: int, seconds: float, state: dict) -> None:
    with atomic_folder(folder) as staging:
        save_file(
            {name: tensor.contiguous() for name, tensor in state.items()}, str(staging / "state.safetensors")
        )
        write_json(staging / "progress.json", {"key": as_stored(key), "batches": batches, "seconds": seconds})


def run_many_edits_study(
    out: str | Path,
    scale: str | ManyEditsScale | tuple[str, ManyEditsScale] = "real-quick",
    *,
    benchmark: str | Path | None = None,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> ManyEditsResults:
    """Run (or resume: every draw's baseline and every method's outcome is stored as it finishes).

    ``benchmark``: a file :func:`~palimpsest.editing.benchmark.write_benchmark` wrote (an earlier
    run's ``benchmark.jsonl``, or one made for another model) used instead of building one; the
    units are then keyed by its content, so another file redoes them."""
    results = ManyEditsStudy(benchmark).run(out, scale, callbacks_for=callbacks_for)
    return results  # type: ignore[return-value]


class ManyEditsStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: the benchmark (built, or
    a given file), then per seed and run a baseline unit and one unit per method."""

    name = "many-edits"
    title = "many-edits study"
    scales = SCALES

    def __init__(self, benchmark: str | Path | None = None):
        self.benchmark_path = Path(benchmark) if benchmark is not None else None
        # a bad file is refused in one line before any folder is made or model loaded
        self.given = read_benchmark(self.benchmark_path) if self.benchmark_path is not None else None

    def steps(self, run: StudyRun) -> Steps:
        from palimpsest.editing.statistics import cached_statistics

        out, scale = run.out, run.settings
        model, tokenizer = real_or_random_model(scale.model, out)
        model.eval()
        benchmark_file = out / "benchmark.jsonl"
        if self.given is not None:
            text = self.benchmark_path.read_bytes()  # type: ignore[union-attr]
            if not benchmark_file.is_file() or benchmark_file.read_bytes() != text:
                write_benchmark(benchmark_file, self.given)
            key: dict[str, Any] = {"model": scale.model, "benchmark": hashlib.sha256(text).hexdigest()}
            counts = _counts_of(self.given)
        else:

            def build() -> dict[str, dict[str, int]]:
                sets = {"sets": scale.benchmark_sets} if scale.benchmark_sets is not None else {}
                cases, counts = build_benchmark(model, tokenizer, scale.benchmark, **sets)
                write_benchmark(benchmark_file, cases)
                return counts

            key = {"model": scale.model, "benchmark": scale.benchmark}
            if scale.benchmark_sets is not None:
                key["sets"] = scale.benchmark_sets
            counts = yield Unit("units/benchmark.json", key, build)
            if not benchmark_file.is_file():
                counts = build()
        cases = self.given if self.given is not None else read_benchmark(benchmark_file)
        largest = max((*scale.at_once, *(edits for edits, _ in scale.in_sequence)))
        if len(cases) < largest:
            raise DataError(f"the benchmark has {len(cases)} cases; the study needs {largest}")
        perplexity_set = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
        statistics: dict = {}
        if {"memit", "alphaedit", "palimpsest", "constrained-preserve"} & set(scale.methods):
            blocks = _editor("memit", model, tokenizer, scale, {}).blocks
            statistics = cached_statistics(model, tokenizer, blocks, tokens=scale.statistics_tokens)
        runs = [("at once", n, n) for n in scale.at_once] + [
            ("in sequence", n, b) for n, b in scale.in_sequence
        ]
        baselines, outcomes = [], []
        #: metrics of the unedited model by (edits, seed): one draw, measured once for all its modes
        measured: dict[tuple[int, int], dict[str, float]] = {}

        def baseline(draw: list[BenchmarkCase], mode: str, batch: int, seed: int) -> DrawBaseline:
            if (len(draw), seed) not in measured:
                measured[len(draw), seed] = _measure(model, tokenizer, draw, perplexity_set, scale)
            return DrawBaseline(mode, len(draw), batch, seed, measured[len(draw), seed])

        for seed in scale.seeds:
            order = list(cases)
            random.Random(seed).shuffle(order)
            for mode, edits, batch in runs:
                draw = order[:edits]
                unit = f"units/{mode.replace(' ', '-')}-{edits}-b{batch}-s{seed}"
                common = {**key, "edits": edits, "seed": seed, "perplexity_blocks": scale.perplexity_blocks}
                unedited = partial(baseline, draw, mode, batch, seed)
                baselines.append((yield Unit(f"{unit}-before.json", common, unedited, kind=DrawBaseline)))
                methods = scale.methods
                if mode == "in sequence" and scale.sequence_methods is not None:
                    methods = scale.sequence_methods
                for method in (m for m in methods if scale.runs(m, edits)):
                    settings = {**common, "method": method, "mode": mode, "batch": batch,
                                "settings": to_dict(_method_config(method, scale))}  # fmt: skip
                    saved = out / f"{unit}-{method}.progress"
                    edit = partial(_run, method, model, tokenizer, draw, batch, mode, scale, statistics,
                                   perplexity_set, seed, saved, settings)  # fmt: skip
                    outcomes.append((yield Unit(f"{unit}-{method}.json", settings, edit, kind=EditOutcome)))
        results = ManyEditsResults(
            scale=run.scale_name, settings=scale, model=scale.model or "random SmolLM2-shaped model",
            benchmark=counts, benchmark_cases=len(cases),
            kinds={kind: sum(c.kind == kind for c in cases) for kind in ("counterfactual", "correction")},
            baselines=baselines, outcomes=outcomes,
            rows=summarise(baselines, outcomes), machine=machine_info(),
        )  # fmt: skip
        return results


def _counts_of(cases: Sequence[BenchmarkCase]) -> dict[str, dict[str, int]]:
    """Per relation of a given benchmark: its cases (``facts``, all ``usable``) and, as ``recalled``,
    its counterfactual cases (each edits a fact the model recalled when the file was built)."""
    counts: dict[str, dict[str, int]] = {}
    for case in cases:
        row = counts.setdefault(case.request.fact.relation.name, {"facts": 0, "usable": 0, "recalled": 0})
        row["facts"] += 1
        row["usable"] += 1
        row["recalled"] += case.kind == "counterfactual"
    return counts


#: The columns of the study's table, in order.
COLUMNS = (
    "made", "made@after-text", "efficacy", "paraphrase", "paraphrase@held-out", "neighbourhood_kept",
    "same_subject_kept",
    "generation", "generation@chat", "fluency", "perplexity",
)  # fmt: skip


#: What :meth:`ManyEditsResults.best` weighs, equally.
SCORED = ("made", "made@after-text", "neighbourhood_kept")


@dataclass
class SummaryRow:
    """Mean ± std over seeds of one (mode, edits, batch, method)."""

    method: str
    mode: str
    edits: int
    batch: int
    seeds: int
    metrics: dict[str, tuple[float, float]]
    seconds: tuple[float, float]
    peak_memory_mb: tuple[float, float]


def summarise(baselines: Sequence[DrawBaseline], outcomes: Sequence[EditOutcome]) -> list[SummaryRow]:
    """One row per (mode, edits, batch, method), the unedited model ("before") first."""
    rows = []
    cells: dict[tuple[str, int, int, str], list[Any]] = {}
    for base in baselines:
        cells.setdefault((base.mode, base.edits, base.batch, "before"), []).append(base)
    for outcome in outcomes:
        cells.setdefault((outcome.mode, outcome.edits, outcome.batch, outcome.method), []).append(outcome)
    for (mode, edits, batch, method), group in cells.items():
        metrics = {name: mean_std([g.metrics.get(name) for g in group]) for name in COLUMNS}
        metrics = {name: pair for name, pair in metrics.items() if not math.isnan(pair[0])}  # unmeasured
        costly = [g for g in group if isinstance(g, EditOutcome)]
        rows.append(
            SummaryRow(
                method, mode, edits, batch, len(group), metrics,
                mean_std([g.seconds for g in costly]) if costly else (0.0, 0.0),
                mean_std([g.peak_memory_mb for g in costly]) if costly else (0.0, 0.0),
            )
        )  # fmt: skip
    return rows


@dataclass
class ManyEditsResults(Results):
    """The study's results.json."""

    KIND: ClassVar[str] = "many-edits"

    scale: str
    settings: ManyEditsScale
    model: str
    benchmark: dict[str, dict[str, int]]
    benchmark_cases: int
    #: Cases of each kind (counterfactual, correction) in the benchmark.
    kinds: dict[str, int]
    baselines: list[DrawBaseline]
    outcomes: list[EditOutcome]
    rows: list[SummaryRow]
    machine: dict[str, Any]

    def best(self, mode: str, edits: int) -> SummaryRow | None:
        """The method with the highest mean of made (plain prompt), made after unrelated text and
        neighbourhood kept at (mode, edits): an edit must hold where users ask, without costing others."""
        cell = [r for r in self.rows if r.mode == mode and r.edits == edits and r.method != "before"]

        def score(row: SummaryRow) -> float:
            parts = [row.metrics.get(name, (0.0,))[0] for name in SCORED]
            return sum(parts) / len(parts)

        return max(cell, key=score, default=None)

    def claims(self) -> list[Claim]:
        return many_edits_claims(self)

    def headline(self) -> str:
        parts = []
        for mode, edits in dict.fromkeys((r.mode, r.edits) for r in self.rows):
            best = self.best(mode, edits)
            if best is not None:
                kept = best.metrics.get("neighbourhood_kept", (math.nan,))[0]
                parts.append(
                    f"{edits} {mode}: {best.method} (made {best.metrics['made'][0]:.0%}, "
                    f"neighbourhood kept {kept:.0%})"
                )
        return "Best by mean of made, made after text and neighbourhood kept — " + "; ".join(parts)

    @classmethod
    def report_section(cls, studies: Sequence[ManyEditsResults], plots_dir: Path) -> Section:
        section = Section("Many edits: at once and in sequence")
        for study in studies:
            section.blocks += _blocks(study, plots_dir)
        return section


#: The published batch editors' claims (PAPERS.md, "Many edits"), by mode.
PUBLISHED = {
    "at once": (
        "MEMIT: many edits at once, made and neighbours kept",
        "GPT-J, 10,000 at once: efficacy 98.9, paraphrase 88.6, neighbourhood 73.7 (CounterFact)",
    ),
    "in sequence": (
        "AlphaEdit: edits in sequence, earlier edits and other facts kept",
        "GPT-2 XL, 2,000 in batches of 100: efficacy 99.5, paraphrase 94.0, neighbourhood 66.4",
    ),
}
#: The field's bar for "made" (P(new) > P(old)) and "kept" in the verdict table; palimpsest's own
#: exact-match figures are reported beside them and are stricter.
EFFICACY_BAR, NEIGHBOURHOOD_BAR = 0.9, 0.66
#: The batch methods, the one palimpsest ships first: a claim is judged on the first present.
BATCH_METHODS = ("palimpsest", "alphaedit", "memit")
#: Where a committed run shows the study at the sizes users need.
EVIDENCE = "results/many-edits-real/"


def many_edits_claims(study: ManyEditsResults) -> list[Claim]:
    """MEMIT's and AlphaEdit's claims for the batch editor at each size this run measured, with
    FT-M's figures beside (see :mod:`palimpsest.claims`). Judged as the papers measure: P(new) >
    P(old) on the edit, neighbourhood facts kept."""
    claims = []
    for mode, edits, batch in dict.fromkeys((r.mode, r.edits, r.batch) for r in study.rows):
        if edits < 2:  # one edit says nothing of many: the single-edit claim below covers it
            continue
        cell = {r.method: r for r in study.rows if (r.mode, r.edits, r.batch) == (mode, edits, batch)}
        method = next((m for m in BATCH_METHODS if m in cell), None)
        if method is None:
            continue
        row = cell[method]
        efficacy = row.metrics.get("efficacy", (math.nan,))[0]
        kept = row.metrics.get("neighbourhood_kept", (math.nan,))[0]
        checks = [efficacy >= EFFICACY_BAR, kept >= NEIGHBOURHOOD_BAR]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
        if math.isnan(kept):
            outcome = Outcome.NOT_MEASURABLE
        baseline = cell.get("ft-m")
        beside = ""
        if baseline is not None and "efficacy" in baseline.metrics:
            baseline_kept = baseline.metrics.get("neighbourhood_kept", (math.nan,))[0]
            beside = f"; ft-m {baseline.metrics['efficacy'][0]:.0%} / {baseline_kept:.0%}"
        claim, paper = PUBLISHED[mode]
        size = f"{edits} at once" if mode == "at once" else f"{edits} in batches of {batch}"
        claims.append(
            Claim(
                "rewrite",
                f"{claim} ({size}, {method})",
                paper,
                f"efficacy {efficacy:.0%} / neighbourhood kept {kept:.0%} (exact match: made "
                f"{row.metrics.get('made', (math.nan,))[0]:.0%}){beside}",
                outcome,
                EVIDENCE,
            )
        )
    return [*_single_edit_claims(study), *claims]


def _single_edit_claims(study: ManyEditsResults) -> list[Claim]:
    """Zhu et al.'s claim for the constrained editor on one edit, judged as the editing study
    judges it (:data:`~palimpsest.experiments.editing_real.KEPT_GOAL`), with FT-M beside."""
    cell = {r.method: r for r in study.rows if (r.mode, r.edits) == ("at once", 1)}
    row = cell.get("constrained")
    if row is None:
        return []
    made = row.metrics.get("made", (math.nan,))[0]
    others = ("neighbourhood_kept", "same_subject_kept")
    kept = [row.metrics[name][0] for name in others if name in row.metrics]
    if kept:
        checks = [made >= 0.99, min(kept) >= KEPT_GOAL]
        outcome = (
            Outcome.REPRODUCED if all(checks) else Outcome.PARTLY if any(checks) else Outcome.NOT_REPRODUCED
        )
    else:
        outcome = Outcome.NOT_MEASURABLE  # the model recalled none of the facts to keep
    measured = f"made {made:.0%} / other facts kept " + (f"{min(kept):.0%}" if kept else "(none recalled)")
    if "ft-m" in cell:
        baseline = cell["ft-m"].metrics
        baseline_kept = baseline.get("neighbourhood_kept", (math.nan,))[0]
        measured += f"; ft-m {baseline['made'][0]:.0%} / {baseline_kept:.0%}"
    measured += f"; made after unrelated text {row.metrics.get('made@after-text', (math.nan,))[0]:.0%}"
    return [
        Claim(
            "rewrite",
            "Constrained fine-tuning: one edit made, and the other facts kept",
            "A_M high with A_F\\S almost unchanged, unlike plain fine-tuning (Zhu et al. 2020)",
            measured,
            outcome,
            "" if outcome is Outcome.REPRODUCED else EDITING_EVIDENCE,
        )
    ]


def _blocks(study: ManyEditsResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings = study.settings
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model}. Benchmark of {study.benchmark_cases} cases: "
        f"{study.kinds.get('counterfactual', 0)} counterfactual edits of facts the model recalls, "
        f"{study.kinds.get('correction', 0)} corrections of facts it gets wrong (at least "
        f"{settings.benchmark.corrections:.0%} corrections; more where too few facts are recalled), "
        f"{settings.benchmark.neighbours} neighbours each. "
        "Every figure is exact-match recall of the prompt as a user writes it (no token in front) unless "
        "marked @after-text (after a passage of unrelated text); kept = recalled before any edit and still "
        f"recalled. Mean ± std over {len(settings.seeds)} seed(s) of draws; seconds and peak memory of the "
        "edit alone (memory: resident set growth on CPU).",
        Table(
            ["relation", "facts", "usable", "recalled"],
            [[name, c["facts"], c["usable"], c["recalled"]] for name, c in study.benchmark.items()],
        ),
    ]
    table = [
        [r.edits, r.mode, r.batch, r.method, *(pm(r.metrics.get(c), digits=2) for c in COLUMNS),
         f"{r.seconds[0]:.0f}", f"{r.peak_memory_mb[0]:.0f}"]
        for r in study.rows
    ]  # fmt: skip
    blocks.append(Table(["edits", "mode", "batch", "method", *COLUMNS, "seconds", "peak MB"], table))
    at_once = [r for r in study.rows if r.mode == "at once" and r.method != "before"]
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in sorted(at_once, key=lambda r: r.edits):
        curves.setdefault(f"{row.method} made", []).append((row.edits, row.metrics["made"][0]))
        if "neighbourhood_kept" in row.metrics:
            kept = row.metrics["neighbourhood_kept"][0]
            curves.setdefault(f"{row.method} kept", []).append((row.edits, kept))
    if len({row.edits for row in at_once}) > 1:  # a curve needs two sizes at least
        methods = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in curves))
        styles = {
            f"{method} {what}": (f"C{index % 10}", style)
            for index, method in enumerate(methods)
            for what, style in (("made", "-"), ("kept", "--"))
        }
        path = plot_curves(
            curves, plots_dir / f"many-edits-{study.scale}.png",
            title=f"{study.model}: edits made (solid) and neighbours kept (dashed), at once",
            xlabel="edits at once", ylabel="share (exact match, plain prompt)",
            logx=True, styles=styles, legend_outside=True,
        )  # fmt: skip
        blocks.append(Figure(path, "learning vs keeping over the number of edits made at once"))
    blocks.append(study.headline())
    return blocks
