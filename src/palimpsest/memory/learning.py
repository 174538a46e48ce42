"""Writing new facts into a memory while the rest of the model stays as it was.

A pretrained model gets a residual product-key memory with zero values, so its outputs are
unchanged (Kim & Jung 2020: a memory beside the FFN, initialised without changing the model);
then only the memory trains on the new facts. Everything else is frozen, so backward stops at
the lowest memory block and no other weight can move.

*Sparse memory fine-tuning* (Lin et al. 2025, "Continual learning via sparse memory
finetuning") goes further: per optimizer step, only the ``top_t`` slots this step's batch
selects far more than background text does are updated. A slot's score is TF-IDF: its share of
the batch's selections (TF) times ``log((D + 1) / (df + 1))``, with ``df`` the number of
background batches (of ``D``) that selected it. The gradient reaching the values is restricted
to those rows, and the values' optimizer (:class:`palimpsest.optim.LazyAdamW`, with sparse
value gradients) moves only the rows that have a gradient, so no other slot changes — not even
through Adam's momentum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from palimpsest.data.facts import Fact
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.memory.gated import (
    GateFits,
    GateTraining,
    check_taught_list,
    fact_templates,
    fit_memory_gates,
    gated_memories,
    same_subject_anchors,
    training_contexts,
)
from palimpsest.memory.inject import memories, memory_handle
from palimpsest.memory.taught import TaughtFacts, taught_fact
from palimpsest.memory.usage import validation_batches
from palimpsest.recall import PLAIN, PromptContext, build_probe
from palimpsest.report import Section, Table
from palimpsest.results import Results
from palimpsest.training import TrainingConfig, train_only

if TYPE_CHECKING:  # datasets (and pandas) load at first use: importing palimpsest stays quick
    from datasets import Dataset

logger = logging.getLogger(__name__)

Trainable = Literal["values", "values+keys", "memory"]


def _learning_schedule() -> TrainingConfig:
    """Chosen by measuring on the built-in SmolLM2-135M (README, "Library": new facts into the
    memory alone)."""
    return TrainingConfig(
        steps=100, batch_size=16, learning_rate=1e-2, schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
        eval_every=None, save_every=None,
    )  # fmt: skip


@dataclass
class MemoryLearning:
    """What trains when facts are written into a memory, and how sparsely."""

    #: "values" (the slots' contents), "values+keys" (and the sub-keys that address them), or
    #: "memory" (everything the memory added, the query network included).
    trainable: Trainable = "values"
    #: Sparse memory fine-tuning: update only this many slots per step (None: every slot read).
    sparse_top_t: int | None = None
    #: The background text slot accesses are compared with (its validation split).
    background: str = "wiki-en"
    background_blocks: int = 64
    block_size: int = 64
    #: Templates of each fact the memory trains on (0: the edit template).
    templates: list[int] = field(default_factory=lambda: [0])
    #: Also train on every other template of a fact's relation but one held out per subject
    #: (:meth:`~palimpsest.data.facts.Fact.held_out_template`): its paraphrases.
    paraphrases: bool = False
    #: How the gate of a gated memory is fitted to the facts (unused without a gate).
    gate: GateTraining = field(default_factory=GateTraining)
    #: The run: steps, batch size and the memory's learning rate (constant, no warmup).
    training: TrainingConfig = field(default_factory=lambda: _learning_schedule())

    def __post_init__(self) -> None:
        if self.trainable not in ("values", "values+keys", "memory"):
            raise ConfigError(f"trainable: expected values, values+keys or memory, got {self.trainable!r}")
        if self.sparse_top_t is not None and self.sparse_top_t < 1:
            raise ConfigError(f"sparse_top_t must be at least 1 slot, got {self.sparse_top_t}")
        for name in ("background_blocks", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.templates:
            raise ConfigError("templates: name at least one template")


def trainable_memory_parameters(model: nn.Module, trainable: Trainable = "values") -> dict[str, nn.Parameter]:
    """The memory parameters that train, by name (values; keys; or all the memory added)."""
    layers = memories(model)
    if not layers:
        raise ModelError("the model has no product-key memory to write into (add one first: memory add)")
    chosen: dict[str, nn.Parameter] = {}
    for layer_name, layer in layers.items():
        for name, parameter in layer.named_parameters():
            part = name.split(".")[0]
            if trainable == "memory" or part == "values" or (trainable == "values+keys" and part == "keys"):
                chosen[f"{layer_name}.{name}"] = parameter
    return chosen


def freeze_all_but_memory(model: nn.Module, trainable: Trainable = "values") -> list[str]:
    """Freeze every parameter except the memory's ``trainable`` part; returns the names left trainable."""
    return train_only(model, trainable_memory_parameters(model, trainable).values())


def fact_examples(
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Fact],
    *,
    answers: Sequence[str] | None = None,
    causal: bool,
    templates: Sequence[int] = (0,),
    paraphrases: bool = False,
    contexts: Sequence[PromptContext] = (PLAIN,),
    extra: Sequence[tuple[list[int], list[int]]] = (),
) -> Dataset:
    """Training examples that teach each fact (with ``answers[i]`` as its object, if given):
    the statement through each template (and, with ``paraphrases``, the relation's other
    templates but the fact's held-out one) in each context, the loss on the answer's tokens only;
    ``extra`` rows (token ids, labels) join them as they are.

    Examples are padded to one length (``attention_mask`` marks the real tokens) so they batch
    without a collator of their own. A fact whose answer the tokenizer cannot separate from
    its prompt is refused, naming it.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[tuple[list[int], list[int]]] = []
    for index, fact in enumerate(facts):
        answer = answers[index] if answers is not None else fact.object
        for template in fact_templates(fact, templates, paraphrases) if paraphrases else templates:
            for context in contexts if causal else (PLAIN,):
                probe = build_probe(
                    tokenizer, fact, template=template, object_=answer, causal=causal, context=context
                )
                if probe is None:
                    raise DataError(
                        f"cannot teach '{fact.statement(template, answer)}': the tokenizer merges the answer"
                    )
                labels = [-100] * len(probe.input_ids)
                for position, token in zip(probe.answer_positions, probe.answer_ids, strict=True):
                    labels[position] = token
                rows.append((probe.input_ids, labels))
    if not rows:
        raise DataError("no facts to learn")
    rows += [(list(ids), list(labels)) for ids, labels in extra]
    from datasets import Dataset

    length = max(len(ids) for ids, _ in rows)
    return Dataset.from_dict(
        {
            "input_ids": [ids + [pad] * (length - len(ids)) for ids, _ in rows],
            "attention_mask": [[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in rows],
            "labels": [labels + [-100] * (length - len(labels)) for _, labels in rows],
        }
    )


@torch.no_grad()
def slot_document_frequency(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[dict, int]:
    """Per memory layer, in how many background batches each slot was selected; and the count.

    These are the DF and D of the TF-IDF ranking (Lin et al.: how commonly a slot is used by
    ordinary text, so that slots a new fact uses *specifically* rank first).
    """
    layers = memories(model)
    frequency = {name: torch.zeros(layer.size, dtype=torch.long) for name, layer in layers.items()}
    documents = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with _SlotCounter(layers) as counter:
        for batch in batches:
            counter.reset()
            model(**{key: value.to(device) for key, value in batch.items()})
            for name, counts in counter.counts.items():
                frequency[name] += (counts > 0).long()
            documents += 1
    model.train(was_training)
    return frequency, documents


def tfidf_top_slots(
    counts: torch.Tensor, frequency: torch.Tensor, documents: int, top_t: int
) -> torch.Tensor:
    """The ``top_t`` slots (indices) with the highest TF-IDF among those ``counts`` selected."""
    read = torch.nonzero(counts > 0).reshape(-1)
    if read.numel() <= top_t:
        return read
    tf = counts[read].double() / counts.sum().clamp_min(1).double()
    idf = torch.log((documents + 1) / (frequency[read].double() + 1))
    return read[torch.topk(tf * idf, top_t).indices]


class _SlotCounter:
    """Counts, per memory layer, the slots real tokens select (padding excluded) while active."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.counts = {name: torch.zeros(layer.size, dtype=torch.long) for name, layer in layers.items()}
        self._hooks: list[Any] = []
        self._recording: dict[str, bool] = {}

    def reset(self) -> None:
        for counts in self.counts.values():
            counts.zero_()

    def __enter__(self) -> _SlotCounter:
        for name, layer in self.layers.items():
            self._recording[name] = layer.record_selection
            layer.record_selection = True
            self._hooks.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name, layer in self.layers.items():
            layer.record_selection = self._recording.get(name, False)
            layer.last_selection = None

    def _hook(self, name: str):
        def count(layer: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
            indices = layer.last_selection.indices  # (tokens, heads, k)
            keep = args[1] if len(args) > 1 and args[1] is not None else None
            rows = layer.last_selection.rows(keep)
            if rows is not None:
                indices = indices[rows]
            self.counts[name] += torch.bincount(indices.reshape(-1).cpu(), minlength=layer.size)

        return count


class SparseSlotUpdates(TrainerCallback):
    """Sparse memory fine-tuning: per optimizer step only the ``top_t`` slots of each memory that
    this step's batches select most specifically (TF-IDF against background text) keep their
    gradient. The memories must produce sparse value gradients (``sparse_updates``), which
    :class:`~palimpsest.optim.LazyAdamW` applies row by row.

    ``updated`` collects, per layer, every slot that was allowed to change.
    """

    def __init__(self, model: nn.Module, frequency: dict[str, torch.Tensor], documents: int, top_t: int):
        self.layers = memories(model)
        dense = [name for name, layer in self.layers.items() if layer.sparse_updates is not True]
        if dense:
            raise ConfigError(
                f"sparse slot updates need sparse value gradients (sparse_updates) in {dense[0]}"
            )
        self.frequency, self.documents, self.top_t = frequency, documents, top_t
        self.updated = {
            name: torch.zeros(layer.size, dtype=torch.bool) for name, layer in self.layers.items()
        }
        self._counter = _SlotCounter(self.layers)

    def on_train_begin(self, args, state, control, **kwargs):
        self._counter.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self._counter.__exit__(None, None, None)

    def on_step_begin(self, args, state, control, **kwargs):
        self._counter.reset()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for name, layer in self.layers.items():
            grad = layer.values.weight.grad
            if grad is None:
                continue
            chosen = tfidf_top_slots(
                self._counter.counts[name], self.frequency[name], self.documents, self.top_t
            )
            self.updated[name][chosen] = True
            layer.values.weight.grad = _rows_only(grad, chosen.to(grad.device))


def _rows_only(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The gradient restricted to ``rows`` (sparse stays sparse, so the lazy optimizer skips the rest)."""
    if grad.is_sparse:
        grad = grad.coalesce()
        keep = torch.isin(grad.indices()[0], rows)
        return torch.sparse_coo_tensor(  # rows of a coalesced gradient: the invariants hold
            grad.indices()[:, keep],
            grad.values()[keep],
            grad.shape,
            device=grad.device,
            check_invariants=False,
        ).coalesce()
    masked = torch.zeros_like(grad)
    masked[rows] = grad[rows]
    return masked


def check_learnable(model: nn.Module, settings: MemoryLearning) -> None:
    """One line before any training when the model cannot learn as asked."""
    if memory_handle(model) is None:
        raise ModelError("the model has no product-key memory to write into (add one first: memory add)")
    if gated_memories(model):
        from palimpsest.models import objective_of

        if objective_of(model.config) != "clm":
            raise ModelError("a gated memory learns facts in causal language models only (it opens at the "
                             "subject's last token of a prompt the model continues)")  # fmt: skip
        check_taught_list(model)
    if settings.sparse_top_t is not None:
        too_many = [n for n, layer in memories(model).items() if settings.sparse_top_t > layer.size]
        if too_many:
            raise ConfigError(f"sparse_top_t {settings.sparse_top_t} exceeds the slots of {too_many[0]}")


def background_batches(
    tokenizer: PreTrainedTokenizerBase,
    settings: MemoryLearning,
    *,
    batch_size: int = 8,
    model: nn.Module | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Blocks of the background corpus's validation split, batched (for the DF of TF-IDF); no
    longer than ``model`` has positions."""
    from palimpsest.models import fit_block_size

    block_size = settings.block_size if model is None else fit_block_size(model, settings.block_size)
    return validation_batches(
        tokenizer, settings.background, block_size=block_size, max_blocks=settings.background_blocks,
        batch_size=batch_size,
    )  # fmt: skip


def learn_facts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Fact],
    settings: MemoryLearning,
    output_dir: str | Path,
    *,
    answers: Sequence[str] | None = None,
    keep: Sequence[Fact] = (),
    held_out: Sequence[Fact] = (),
    callbacks: Iterable[TrainerCallback] = (),
) -> LearnedFacts:
    """Write ``facts`` (with ``answers`` as their objects, if given) into the model's memory.

    Only the memory's ``settings.trainable`` part trains (everything else is frozen meanwhile;
    afterwards every parameter's ``requires_grad`` is what it was before); with
    ``settings.sparse_top_t`` only the top-t slots per step move. Training
    (``settings.training``) goes through :func:`palimpsest.training.train`, so it checkpoints and
    resumes like every run.

    A gated memory (:mod:`palimpsest.memory.gated`) first has its gate fitted to every fact it
    holds — those taught before and these — with ``keep``'s facts among the inputs it stays closed
    for (and no subject of ``held_out``, facts a study measures on); then its values train on all
    of them (the earlier facts are replayed, so a new round does not overwrite the slots they share),
    each prompt also after passages of text; the facts join the memory's list of taught facts
    (``memory_facts.json`` when saved).
    """
    from palimpsest.models import objective_of, position_limit, trainable_flags_kept
    from palimpsest.training import train

    check_learnable(model, settings)
    causal = objective_of(model.config) == "clm"
    gate_fits: GateFits | None = None
    contexts = [PLAIN]
    anchors: list[tuple[list[int], list[int]]] = []
    taught: TaughtFacts | None = None
    if gated_memories(model):
        handle = memory_handle(model)
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        objects = answers if answers is not None else [fact.object for fact in facts]
        round_ = handle.taught.rounds + 1
        new = [taught_fact(fact, answer, round_, when) for fact, answer in zip(facts, objects, strict=True)]
        kept = [taught_fact(fact, fact.object, round_, when) for fact in keep]
        taught = handle.taught.adding(new, keep=kept)
        keep = [entry.fact for entry in taught.kept]  # this round's and the earlier rounds'
        gate_fits = fit_memory_gates(
            model, tokenizer, taught.facts, templates=settings.templates, paraphrases=settings.paraphrases,
            settings=settings.gate, keep=keep, held_out=held_out,
        )  # fmt: skip
        anchors = same_subject_anchors(model, tokenizer, taught.facts, keep, settings.gate)
        facts, answers = [entry.fact for entry in taught.facts], None
        contexts = training_contexts(settings.gate)
    dataset = fact_examples(
        tokenizer, facts, answers=answers, causal=causal, templates=settings.templates,
        paraphrases=settings.paraphrases, contexts=contexts, extra=anchors,
    )  # fmt: skip
    limit = position_limit(model)
    longest = max(len(ids) for ids in dataset["input_ids"])
    if limit is not None and longest > limit:
        raise ConfigError(
            f"the training examples need {longest} positions, the model has {limit}"
            + (" (prompts after passages of text: set gate.passages to 0)" if taught is not None else "")
        )
    training = settings.training
    if taught is not None:  # the values train through the gate: their own rate, passes over every fact
        passes = math.ceil(settings.gate.epochs * len(dataset) / training.batch_size)
        training = replace(
            training, learning_rate=settings.gate.values_learning_rate, steps=max(training.steps, passes)
        )
    with trainable_flags_kept(model):
        trained = freeze_all_but_memory(model, settings.trainable)
        extra: list[TrainerCallback] = []
        sparse: SparseSlotUpdates | None = None
        layers = memories(model)
        previous_sparse = {name: layer.sparse_updates for name, layer in layers.items()}
        try:
            if settings.sparse_top_t is not None:
                frequency, documents = slot_document_frequency(
                    model, background_batches(tokenizer, settings, model=model)
                )
                for layer in layers.values():
                    layer.sparse_updates = True
                sparse = SparseSlotUpdates(model, frequency, documents, settings.sparse_top_t)
                extra.append(sparse)
            result = train(
                model, tokenizer, dataset, training, output_dir,
                objective="clm" if causal else "mlm", callbacks=[*extra, *callbacks],
            )  # fmt: skip
        finally:
            for name, layer in layers.items():
                layer.sparse_updates = previous_sparse[name]
    updated = {name: int(mask.sum()) for name, mask in sparse.updated.items()} if sparse is not None else None
    if taught is not None:
        memory_handle(model).taught = taught
    return LearnedFacts(trained=trained, examples=len(dataset), steps=result.steps,
                        seconds=result.train_seconds, slots_updated=updated, gate=gate_fits)  # fmt: skip


@dataclass
class LearnedFacts:
    """What :func:`learn_facts` trained: the parameter names, examples, steps, seconds and, for
    sparse fine-tuning, how many slots per memory were allowed to change."""

    trained: list[str]
    examples: int
    steps: int
    seconds: float
    slots_updated: dict[str, int] | None
    #: A gated memory: how its gate fitted every fact it now holds.
    gate: GateFits | None = None


def learn_saved_model(
    model_dir: str | Path,
    facts: Sequence[Fact],
    answers: Sequence[str],
    keep: Sequence[Fact],
    settings: MemoryLearning,
    out: str | Path,
    *,
    callbacks: Iterable[TrainerCallback] = (),
) -> MemoryLearnResults:
    """``palimpsest memory learn``: teach a saved model with a memory ``facts`` (with ``answers``),
    measure recall of what it learned and of the ``keep`` facts before and after, and save the
    model with its memory (base names unchanged) to ``out/model``."""
    from palimpsest.data import load_tokenizer
    from palimpsest.memory.inject import save_merged
    from palimpsest.models import load_pretrained, objective_of, position_limit, resolve_pretrained
    from palimpsest.recall import EVALUATION_PASSAGES, after_text, fact_recall, text_passages
    from palimpsest.storage import machine_info

    model = load_pretrained(str(model_dir))
    check_learnable(model, settings)
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    taught = [Fact(fact.subject, fact.relation, answer) for fact, answer in zip(facts, answers, strict=True)]

    passages = text_passages(EVALUATION_PASSAGES, seed=0, split="validation")
    limit = position_limit(model)
    causal = objective_of(model.config) == "clm"
    longest = max(
        (len(probe.input_ids) for fact in taught for passage in passages
         if (probe := build_probe(tokenizer, fact, causal=causal, context=after_text(passage))) is not None),
        default=0,
    )  # fmt: skip
    measurable = causal and (limit is None or longest <= limit)  # else: a passage would not fit

    def recall() -> tuple[float, float | None, float | None]:
        model.eval()
        learned = fact_recall(model, tokenizer, taught).accuracy
        after_passages = [
            fact_recall(model, tokenizer, taught, context=after_text(passage)).accuracy
            for passage in (passages if measurable else [])
        ]
        kept = fact_recall(model, tokenizer, list(keep)).accuracy if keep else None
        return learned, sum(after_passages) / len(after_passages) if measurable else None, kept

    before = recall()
    out = Path(out)
    learned = learn_facts(
        model, tokenizer, facts, settings, out / "trainer", answers=answers, keep=keep, callbacks=callbacks
    )
    after = recall()
    save_merged(model, tokenizer, out / "model")
    results = MemoryLearnResults(
        model=str(model_dir), settings=settings, facts=len(facts), kept_facts=len(keep),
        learned_recall_before=before[0], learned_recall_after=after[0],
        learned_recall_after_text_before=before[1], learned_recall_after_text_after=after[1],
        kept_recall_before=before[2], kept_recall_after=after[2],
        learned=learned, saved_model=str(out / "model"), machine=machine_info(),
    )  # fmt: skip
    results.write(out / "results.json")
    return results


@dataclass
class MemoryLearnResults(Results):
    """What ``palimpsest memory learn`` taught and what the model still knows."""

    KIND: ClassVar[str] = "memory-learn"

    model: str
    settings: MemoryLearning
    facts: int
    kept_facts: int
    learned_recall_before: float
    learned_recall_after: float
    #: The same prompts after a passage of unrelated text (mean over a few held-out passages;
    #: None for a masked LM, or where a passage and a prompt do not fit the model's positions).
    learned_recall_after_text_before: float | None
    learned_recall_after_text_after: float | None
    kept_recall_before: float | None
    kept_recall_after: float | None
    learned: LearnedFacts
    saved_model: str
    machine: dict[str, Any]

    @classmethod
    def report_section(cls, runs: Sequence[MemoryLearnResults], plots_dir: Path) -> Section:
        section = Section("Grow meets rewrite: new facts written into the memory alone")
        section.blocks.append(
            "Recall is the exact match of the whole object (greedy) through the fact's first template, "
            "the prompt as a user writes it ('after text': behind a passage of unrelated text); "
            "'learned' are the facts taught (with their new objects), 'kept' the facts listed to keep. "
            "Only the memory trained; with sparse fine-tuning only the top-t slots per step; a gated "
            "memory reads only where its gate, fitted to every fact it holds, opens."
        )
        rows = [
            [
                run.model, run.settings.trainable, run.settings.sparse_top_t, run.facts,
                run.learned_recall_before, run.learned_recall_after, run.learned_recall_after_text_after,
                run.kept_recall_before, run.kept_recall_after, run.learned.steps, run.learned.seconds,
            ]
            for run in runs
        ]  # fmt: skip
        headers = [
            "model", "trains", "top-t", "facts", "learned before", "learned after",
            "learned after (after text)", "kept before", "kept after", "steps", "seconds",
        ]  # fmt: skip
        section.blocks.append(Table(headers, rows))
        return section


__all__ = [
    "LearnedFacts",
    "MemoryLearnResults",
    "MemoryLearning",
    "SparseSlotUpdates",
    "background_batches",
    "check_learnable",
    "fact_examples",
    "freeze_all_but_memory",
    "learn_facts",
    "learn_saved_model",
    "slot_document_frequency",
    "tfidf_top_slots",
    "trainable_memory_parameters",
]
