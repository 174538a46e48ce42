"""The many-edits study's units (a draw measured before any edit, one method's edit of it) and
the study that runs them."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data.facts import Fact
from palimpsest.editing.benchmark import (
    BenchmarkCase,
    benchmark_metrics,
    build_benchmark,
    read_benchmark,
    write_benchmark,
)
from palimpsest.editing.config import EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.errors import DataError
from palimpsest.experiments.common import PeakMemory, real_or_random_model, wiki_perplexity_set
from palimpsest.experiments.many_edits.gated import (
    GatedMemoryEditor,
    GatedMemoryMethod,
    facts_to_keep,
    measured_facts,
)
from palimpsest.experiments.many_edits.outcomes import DrawBaseline, EditOutcome
from palimpsest.experiments.many_edits.progress import edit_in_sequence
from palimpsest.experiments.many_edits.results import ManyEditsResults
from palimpsest.experiments.many_edits.scales import (
    AS_PUBLISHED,
    CONSTRAINED_PRESERVE,
    FT_M,
    SCALES,
    ManyEditsScale,
)
from palimpsest.experiments.many_edits.summary import summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.storage import (
    machine_info,
    remove_tree,
)
from palimpsest.training import evaluate_lm

logger = logging.getLogger(__name__)


def _method_config(method: str, scale: ManyEditsScale) -> EditConfig | BatchEditConfig | GatedMemoryMethod:
    if method == "gated-memory":
        return scale.gated_memory
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


def _editor(
    method: str, model: Any, tokenizer: Any, scale: ManyEditsScale, statistics: dict, *,
    keep: Sequence[Fact] = (), seed: int = 0, held_out: Sequence[Fact] = (),
) -> Any:  # fmt: skip
    config = _method_config(method, scale)
    if isinstance(config, GatedMemoryMethod):
        return GatedMemoryEditor(model, tokenizer, config, keep=keep, seed=seed, held_out=held_out)
    if isinstance(config, EditConfig):
        given = statistics if config.preserve == "text" and statistics else None
        return ConstrainedFinetune(model, tokenizer, config=config, statistics=given)
    return BatchEditor(model, tokenizer, config=config, statistics=statistics)


def _measure(model: Any, tokenizer: Any, cases: Sequence[BenchmarkCase], perplexity_set: Any, scale) -> dict:
    metrics = benchmark_metrics(model, tokenizer, cases, generation_tokens=scale.generation_tokens)
    metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    return metrics


def _run(
    method: str, model: Any, tokenizer: Any, cases: list[BenchmarkCase], batch: int, mode: str,
    scale: ManyEditsScale, statistics: dict, perplexity_set: Any, seed: int,
    progress: Path | None = None, key: Any = None, keep: Sequence[Fact] = (),
) -> EditOutcome:  # fmt: skip
    """One method on one draw; the model is put back exactly afterwards. A sequence by the batch
    editor saves its progress in ``progress`` (keyed by ``key``) and goes on from there. ``keep``:
    facts outside the draw a gated memory may keep its gate closed for (never the draw's measured
    facts' subjects)."""
    editor = _editor(
        method, model, tokenizer, scale, statistics, keep=keep, seed=seed, held_out=measured_facts(cases)
    )
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
                started -= edit_in_sequence(editor, requests, batch, saved, key)
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
                if seed not in scale.seeds_of(edits):
                    continue
                draw = order[:edits]
                unit = f"units/{mode.replace(' ', '-')}-{edits}-b{batch}-s{seed}"
                common = {**key, "edits": edits, "seed": seed, "perplexity_blocks": scale.perplexity_blocks}
                unedited = partial(baseline, draw, mode, batch, seed)
                baselines.append((yield Unit(f"{unit}-before.json", common, unedited, kind=DrawBaseline)))
                methods = scale.methods
                if mode == "in sequence" and scale.sequence_methods is not None:
                    methods = scale.sequence_methods
                sequence_batch = batch if mode == "in sequence" else None
                for method in (m for m in methods if scale.runs(m, edits, sequence_batch)):
                    settings = {**common, "method": method, "mode": mode, "batch": batch,
                                "settings": to_dict(_method_config(method, scale))}  # fmt: skip
                    saved = out / f"{unit}-{method}.progress"
                    keep = facts_to_keep(draw, order[edits:]) if method == "gated-memory" else ()
                    edit = partial(_run, method, model, tokenizer, draw, batch, mode, scale, statistics,
                                   perplexity_set, seed, saved, settings, keep)  # fmt: skip
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
