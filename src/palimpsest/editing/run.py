"""``palimpsest edit``: read a fact file, edit a saved model, write the edited model and results.

Nothing is written until the whole fact file has been read and checked and the edit has
succeeded; the edited model is saved to a temporary folder and moved into place, so an
interrupted or failed run never leaves a partial model behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.data import load_tokenizer
from palimpsest.editing.datasets import read_edit_file
from palimpsest.editing.editor import ConstrainedFinetune, EditConfig, EditResult
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.editing.metrics import edit_metrics
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.report import Section, Table
from palimpsest.results import Results
from palimpsest.storage import machine_info, save_model


def edit_saved_model(
    model_dir: str | Path,
    facts_path: str | Path,
    out: str | Path,
    config: EditConfig | BatchEditConfig,
    *,
    sequential: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EditResults:
    """Edit the model at ``model_dir`` with the requests in ``facts_path``; write under ``out``.

    ``config`` picks the editor: :class:`EditConfig` the constrained fine-tuning,
    :class:`BatchEditConfig` MEMIT or AlphaEdit (``progress`` then reports the statistics pass)."""
    requests, keep = read_edit_file(facts_path)
    model = load_pretrained(str(model_dir))
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    if isinstance(config, BatchEditConfig):
        batch = BatchEditor(model, tokenizer, config=config, progress=progress)
        if sequential:  # one request after another, each batch preserving the keys of those before
            before = edit_metrics(model, tokenizer, requests, keep)
            started = time.perf_counter()
            for request in requests:
                batch.apply([request], measure=False)
            seconds = time.perf_counter() - started
            after = edit_metrics(model, tokenizer, requests, keep)
            result = EditResult(
                before, after, len(requests), seconds, float("nan"), batch.changes(), batch.edited_parameters
            )
        else:
            result = batch.apply(requests, unmodified=keep)
    else:
        editor = ConstrainedFinetune(model, tokenizer, config=config)
        result = editor.apply(requests, unmodified=keep, sequential=sequential)
    out = Path(out)
    save_model(model, tokenizer, out / "model")
    changes = result.changes.values()
    results = EditResults(
        model=str(model_dir),
        facts=str(facts_path),
        edited_model=str(out / "model"),
        config=config,
        sequential=sequential,
        requests=[
            EditedFact(
                subject=r.fact.subject, relation=r.fact.relation.name, old=r.fact.object, new=r.new_object
            )
            for r in requests
        ],
        before=result.before,
        after=result.after,
        steps=result.steps,
        seconds=result.seconds,
        final_loss=result.final_loss,
        edited_parameters=result.edited_parameters,
        max_abs_change=max((c["linf"] for c in changes), default=0.0),
        max_l2_change=max((c["l2"] for c in changes), default=0.0),
        machine=machine_info(),
    )
    results.write(out / "results.json")
    return results


@dataclass
class EditedFact:
    subject: str
    relation: str
    old: str
    new: str


@dataclass
class EditResults(Results):
    """What ``palimpsest edit`` did: the requests, both sides' metrics before and after, the cost."""

    KIND: ClassVar[str] = "edit"

    model: str
    facts: str
    edited_model: str
    config: EditConfig | BatchEditConfig
    sequential: bool
    requests: list[EditedFact]
    before: dict[str, int | float]
    after: dict[str, int | float]
    steps: int
    seconds: float
    final_loss: float
    edited_parameters: int
    max_abs_change: float
    max_l2_change: float
    machine: dict[str, Any]

    @classmethod
    def report_section(cls, runs: Sequence[EditResults], plots_dir: Path) -> Section:
        section = Section("Rewrite: fact edits")
        section.blocks.append(
            "A_M: exact match of the whole new object on the edited facts; A_F\\S: exact match of the true "
            "object on the facts kept; efficacy / paraphrase efficacy: share with P(new) > P(old) through "
            "the edit template / a held-out paraphrase; neighbourhood: share of kept facts with "
            "P(true) > P(a new object of the same relation). Every metric before the edit beside after it."
        )
        for run in runs:
            config = run.config
            order = " one after another" if run.sequential else ""
            if isinstance(config, BatchEditConfig):
                how = (
                    f"{config.method} on blocks {config.layers} (statistics of {config.statistics_tokens:,} "
                    f"tokens of {config.statistics_corpus}): {run.seconds:.1f} s; "
                )
            else:
                bound = "unconstrained" if config.norm is None else f"{config.norm} ≤ {config.delta:g}"
                how = (
                    f"layers {config.layers} ({', '.join(config.modules)}), {bound}, objective "
                    f"{config.objective}, lr {config.learning_rate:g}: {run.steps} steps in "
                    f"{run.seconds:.1f} s; "
                )
            section.blocks.append(
                f"{run.model}: {len(run.requests)} edit(s){order}, {how}"
                f"largest weight change {run.max_abs_change:.2e} (L-inf), {run.max_l2_change:.2e} (L2)."
            )
            keys = [key for key, value in run.after.items() if isinstance(value, float)]
            section.blocks.append(
                Table(["metric", "before", "after"], [[key, run.before[key], run.after[key]] for key in keys])
            )
            section.blocks.append(
                Table(
                    ["subject", "relation", "old", "new"],
                    [[r.subject, r.relation, r.old, r.new] for r in run.requests[:20]],
                )
            )
        return section
