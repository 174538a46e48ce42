"""``palimpsest edit``: read a fact file, edit a saved model, write the edited model and results.

Nothing is written until the whole fact file has been read and checked and the edit has
succeeded; the edited model is saved to a temporary folder and moved into place, so an
interrupted or failed run never leaves a partial model behind.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from palimpsest.config import to_dict
from palimpsest.data import load_tokenizer
from palimpsest.data.facts import Fact, Relation
from palimpsest.editing.config import EditConfig
from palimpsest.editing.datasets import read_edit_file
from palimpsest.editing.editor import ConstrainedFinetune, EditResult
from palimpsest.editing.history import EditHistory, EditRound, read_history, write_history
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.editing.metrics import edit_metrics
from palimpsest.editing.requests import EditRequest
from palimpsest.errors import DataError
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.report import Section, Table
from palimpsest.results import Results
from palimpsest.storage import machine_info, save_model


def choose_method(objective: str) -> str:
    """The editor ``method="auto"`` runs: MEMIT on a causal LM, whatever the number of requests
    (its edit holds after unrelated text and through a chat template, the constrained editor's
    does not: README, "Many edits"); the constrained editor on a masked LM, which the batch
    editors, reading the target at the next token, cannot edit."""
    return "memit" if objective == "clm" else "constrained"


def _request_record(request: EditRequest) -> dict[str, Any]:
    fact = request.fact
    return {
        "subject": fact.subject, "relation": fact.relation.name, "templates": list(fact.relation.templates),
        "old": fact.object, "new": request.new_object,
    }  # fmt: skip


def _unstored_requests(history: EditHistory, block: int) -> list[EditRequest]:
    """Earlier requests whose keys at ``block`` are not stored: those of the rounds after the last
    one that wrote ``block`` (which stored the keys of every request up to it there)."""
    writers = [i for i, r in enumerate(history.rounds) if block in r.settings.get("keys_stored_for", [])]
    last = max(writers, default=-1)
    return [
        EditRequest(Fact(r["subject"], Relation(r["relation"], tuple(r["templates"])), r["old"]), r["new"])
        for round_ in history.rounds[last + 1 :]
        for r in round_.requests
    ]


def load_statistics_file(path: str | Path, blocks: Sequence[int], accepted: Sequence[str]) -> dict:
    """Statistics a user gives (``--statistics``): refused unless computed on these weights."""
    from safetensors import SafetensorError, safe_open

    from palimpsest.editing.statistics import read_cached_statistics, statistics_path

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise DataError(f"--statistics {path}: not a readable safetensors file ({error})") from None
    fingerprint, corpus, tokens = (metadata.get(k) for k in ("fingerprint", "corpus", "tokens"))
    if not (fingerprint and corpus and tokens and tokens.isdigit()):
        raise DataError(f"--statistics {path}: not a statistics file palimpsest wrote (no fingerprint)")
    if fingerprint not in accepted:
        raise DataError(
            f"--statistics {path}: computed on other weights (fingerprint {fingerprint[:12]}…, this model "
            f"{accepted[0][:12]}…): statistics of another model would misplace every edit"
        )
    target = statistics_path(fingerprint, corpus, int(tokens))
    if target.resolve() != path.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    found = read_cached_statistics(fingerprint, corpus, int(tokens), blocks)
    if found is None:
        raise DataError(f"--statistics {path}: has no statistics of blocks {list(blocks)}")
    return found


def edit_saved_model(
    model_dir: str | Path,
    facts_path: str | Path,
    out: str | Path,
    config: EditConfig | BatchEditConfig,
    *,
    sequential: bool = False,
    progress: Callable[[int, int], None] | None = None,
    statistics_file: str | Path | None = None,
) -> EditResults:
    """Edit the model at ``model_dir`` with the requests in ``facts_path``; write under ``out``.

    ``config`` picks the editor: :class:`EditConfig` the constrained fine-tuning,
    :class:`BatchEditConfig` MEMIT or AlphaEdit (``progress`` then reports the statistics pass).
    A model palimpsest edited before continues its sequence: the batch editors preserve the keys
    of every earlier request (stored with it, :mod:`palimpsest.editing.history`, or read again
    where they were not stored), and the edited model carries the history one round longer."""
    from palimpsest.editing.statistics import weights_fingerprint

    requests, keep = read_edit_file(facts_path)
    model = load_pretrained(str(model_dir))
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    folder = Path(resolve_pretrained(str(model_dir)))
    history = read_history(folder) if folder.is_dir() else EditHistory()
    stored_for: list[int] = []
    written: dict = {}
    fingerprint = None
    if isinstance(config, BatchEditConfig):
        batch = BatchEditor(
            model, tokenizer, config=config, progress=progress, previous_keys=history.keys,
            statistics_fingerprint=history.statistics_fingerprint,
        )  # fmt: skip
        batch.check(requests, keep)
        preserved = {b: history.keys[b] for b in batch.blocks if b in history.keys}
        for block in batch.blocks:
            unstored = _unstored_requests(history, block)
            if unstored:  # edited by other blocks or by the constrained editor: read their keys now
                keys = batch.preserve(unstored, block).float()
                preserved[block] = torch.cat([preserved[block], keys], 1) if block in preserved else keys
        if statistics_file is not None:
            accepted = [weights_fingerprint(model, batch.blocks)]
            if history.statistics_fingerprint:
                accepted.append(history.statistics_fingerprint)
            batch.statistics = load_statistics_file(statistics_file, batch.blocks, accepted)
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
        written = {
            b: torch.cat([preserved[b], k.float()], 1) if b in preserved else k.float()
            for b, k in batch.written_keys.items()
        }  # every request so far, at each block this round wrote
        stored_for, fingerprint = sorted(written), batch.statistics_fingerprint
    else:
        # preserve="text" keeps the outputs of earlier edits: their stored keys, and those read again
        # for requests whose keys were not stored at the editor's blocks
        previous = history.keys if config.preserve == "text" else None
        editor = ConstrainedFinetune(model, tokenizer, config=config, previous_keys=previous)
        if config.preserve == "text":
            for block in sorted({block for block, _ in editor.preserved.values()}):
                editor.preserve(_unstored_requests(history, block))
        result = editor.apply(requests, unmodified=keep, sequential=sequential)
    new_round = EditRound(
        method=config.method if isinstance(config, BatchEditConfig) else "constrained",
        settings={**to_dict(config), "keys_stored_for": stored_for},
        requests=[_request_record(r) for r in requests],
        statistics_fingerprint=fingerprint,
        sequential=sequential,
    )
    history = history.extended(new_round, written)
    out = Path(out)
    save_model(model, tokenizer, out / "model", extra=lambda staging: write_history(staging, history))
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
        earlier_rounds=len(history.rounds) - 1,
        earlier_edits=sum(len(r.requests) for r in history.rounds[:-1]),
        earlier_preserved=isinstance(config, BatchEditConfig) or config.preserve == "text",
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
    #: Rounds of edits the model had before this one (``palimpsest-edits/`` of its folder).
    earlier_rounds: int = 0
    earlier_edits: int = 0
    #: Whether this round kept the outputs of those earlier edits (the batch editors, and the
    #: constrained editor with ``preserve="text"``; the norm ball alone does not).
    earlier_preserved: bool = True

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


@dataclass
class RecallRow:
    """Recall of one group of a fact file's facts (edited or kept) for one relation."""

    group: str  # "edited" (each line's new object) or "kept" (facts the file keeps)
    relation: str
    facts: int
    recall: float | None  # exact match through the first template, the prompt as a user writes it
    paraphrase: float | None  # the same through every other template (None: one template)
    after_text: float | None  # the first template after passages of unrelated text
    generation: float  # the greedy continuation names the object


@dataclass
class FactRecallResults(Results):
    """``palimpsest evaluate --facts``: what a model recalls of a fact file, per relation."""

    KIND: ClassVar[str] = "evaluate-facts"

    model: str
    facts: str
    rows: list[RecallRow]
    edit_rounds: int
    machine: dict[str, Any]

    @classmethod
    def report_section(cls, runs: Sequence[FactRecallResults], plots_dir: Path) -> Section:
        section = Section("Recall of a fact file")
        for run in runs:
            section.blocks.append(
                f"{run.model} ({run.edit_rounds} round(s) of edits by palimpsest) on {run.facts}: edited = "
                "each line's new object, kept = the facts the file keeps; exact match of the whole object."
            )
            table = [
                [r.group, r.relation, r.facts, r.recall, r.paraphrase, r.after_text, r.generation]
                for r in run.rows
            ]
            headers = ["group", "relation", "facts", "recall", "paraphrase", "after text", "generation"]
            section.blocks.append(Table(headers, table))
        return section


def _recall_share(model: Any, tokenizer: Any, facts: list[Fact], **settings: Any) -> float | None:
    """Exact-match recall of ``facts`` (None: none of them can be probed this way)."""
    from palimpsest.recall import fact_recall

    hits = fact_recall(model, tokenizer, facts, **settings).recalled
    return sum(hits) / len(hits) if hits else None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def fact_file_recall(model_dir: str | Path, facts_path: str | Path) -> FactRecallResults:
    """Recall of every fact of a fact file by a saved causal LM (see :class:`RecallRow`)."""
    from palimpsest.editing.metrics import greedy_continuations
    from palimpsest.errors import ModelError
    from palimpsest.models import objective_of
    from palimpsest.recall import EVALUATION_PASSAGES, after_text, text_passages

    requests, keep = read_edit_file(facts_path, require_edits=False)
    model = load_pretrained(str(model_dir))
    if objective_of(model.config) != "clm":
        raise ModelError("--facts: recall of a fact file is measured on causal LMs (the prompt is continued)")
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    folder = Path(resolve_pretrained(str(model_dir)))
    passages = [after_text(p) for p in text_passages(EVALUATION_PASSAGES, seed=0, split="validation")]
    groups = {"edited": [r.new_fact for r in requests], "kept": keep}
    rows = []
    for group, facts in groups.items():
        by_relation: dict[str, list[Fact]] = {}
        for fact in facts:
            by_relation.setdefault(fact.relation.name, []).append(fact)
        for relation, members in by_relation.items():
            recall = _recall_share(model, tokenizer, members)
            templates = range(1, len(members[0].relation.templates))
            paraphrase = _mean([_recall_share(model, tokenizer, members, template=t) for t in templates])
            after = _mean([_recall_share(model, tokenizer, members, context=c) for c in passages])
            texts = greedy_continuations(model, tokenizer, [f.prompt() for f in members])
            generation = sum(f.object in text for f, text in zip(members, texts, strict=True)) / len(members)
            rows.append(RecallRow(group, relation, len(members), recall, paraphrase, after, generation))
    return FactRecallResults(
        model=str(model_dir), facts=str(facts_path), rows=rows,
        edit_rounds=len(read_history(folder).rounds) if folder.is_dir() else 0, machine=machine_info(),
    )  # fmt: skip
