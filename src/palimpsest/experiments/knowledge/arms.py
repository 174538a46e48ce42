"""One arm on one draw: teach the facts its way, measure what was learned and what was kept."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from palimpsest.data.facts import Fact
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditor
from palimpsest.editing.requests import EditRequest
from palimpsest.experiments.common import PeakMemory
from palimpsest.experiments.knowledge.facts import Draw, measure
from palimpsest.experiments.knowledge.scales import Arm, KnowledgeScale
from palimpsest.memory.gated import forget_facts
from palimpsest.memory.inject import add_product_key_memory, memories
from palimpsest.memory.learning import (
    MemoryLearning,
    fact_examples,
    learn_facts,
    slot_document_frequency,
)
from palimpsest.memory.usage import validation_batches
from palimpsest.models import count_parameters, objective_of
from palimpsest.recall import build_probe, fact_recall
from palimpsest.training import TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)


@dataclass
class ArmRun:
    """One arm on one draw: every measure before and after, and what it cost."""

    arm: str
    method: str
    size: int
    seed: int
    counterfactuals: int
    after: dict[str, float]
    steps: int
    seconds: float
    peak_mib: float | None
    #: Parameters the optimizer trained (LoRA: the adapters; memory: its trained tensors).
    trained_parameters: int
    #: Parameters whose value changed (memory: rows of changed slots times their width).
    changed_parameters: int
    #: Memory arms: slots whose value changed, and how many of them wiki-en text reads.
    slots_changed: int | None = None
    slots_changed_read_by_wiki: int | None = None
    slots_used_by_wiki: float | None = None
    #: Gated memory arms: the removal of part of the taught facts (``KnowledgeScale.removal_share``).
    removal: dict[str, float] | None = None
    #: Which facts the shares above count as missed: taught facts not recalled through the taught
    #: template, and kept facts no longer recalled (``"subject | relation"``), so that a loss can be
    #: traced to its facts (None in units stored before they were kept).
    not_learned: list[str] | None = None
    kept_lost: list[str] | None = None


def _training(scale: KnowledgeScale, arm: Arm, size: int, seed: int) -> TrainingConfig:
    return TrainingConfig(
        steps=scale.steps(size), batch_size=scale.batch_size, learning_rate=arm.learning_rate or 1e-3,
        schedule="constant", warmup_ratio=0.0, weight_decay=0.0, eval_every=None, save_every=None,
        log_every=max(scale.steps(size) // 10, 1), seed=seed,
    )  # fmt: skip


def run_arm(
    model,
    tokenizer,
    arm: Arm,
    chosen: Draw,
    perplexity_set,
    scale: KnowledgeScale,
    work: Path,
    *,
    size: int,
    seed: int,
    callbacks: Iterable[TrainerCallback] = (),
) -> ArmRun:
    """Teach ``chosen`` to ``model`` (fresh pretrained weights, changed in place) the arm's way.

    Full fine-tuning and LoRA train on :func:`~palimpsest.memory.learning.fact_examples`, the
    examples :func:`~palimpsest.memory.learning.learn_facts` builds for the memory arms."""
    training = _training(scale, arm, size, seed)
    memory_facts: dict[str, Any] = {}
    removal_base: _RemovalBaseline | None = None  # the gated memory's removal, measured afterwards
    gated: MemoryLearning | None = None
    if arm.method == "gated-memory" and scale.removal_share > 0:
        removal_base = _removal_baseline(model, tokenizer, chosen, perplexity_set)
    with PeakMemory(next(model.parameters()).device) as peak:
        started = time.perf_counter()
        if arm.method == "full":
            trained = count_parameters(model)
            examples = fact_examples(tokenizer, chosen.taught, causal=True)
            result = train(model, tokenizer, examples, training, work, objective="clm", callbacks=callbacks)
            steps, measured = result.steps, model
            changed = trained
        elif arm.method == "lora":
            examples = fact_examples(tokenizer, chosen.taught, causal=True)
            measured, trained, steps = _train_lora(
                model, tokenizer, examples, training, arm, work, callbacks, seed
            )
            changed = trained
        elif arm.method == "editor":
            editor = ConstrainedFinetune(model, tokenizer, config=scale.editor, steps=training.steps)
            # N=512 takes hours on a CPU: its progress outlives a stopped run (removed when done)
            progress = work.with_name(f"{work.name}.editor-progress.safetensors")
            steps = editor.apply(_requests(chosen), measure=False, progress=progress).steps
            trained, measured = editor.edited_parameters, model
            changed = sum(int((p != editor.original[n]).sum()) for n, p in editor.parameters.items())
        elif arm.method == "batch-editor":  # every fact at once: one least-squares write
            batch = BatchEditor(model, tokenizer, config=replace(scale.batch_editor, seed=seed))
            batch.apply(_requests(chosen), measure=False)
            steps, trained, measured = 0, batch.edited_parameters, model
            changed = sum(
                int((batch.projections[block].weight != original).sum())
                for block, original in batch.original.items()
            )
        elif arm.method == "gated-memory":
            add_product_key_memory(model, replace(scale.gated_memory, seed=seed))
            gated = MemoryLearning(
                paraphrases=True, block_size=scale.block_size, background_blocks=scale.background_blocks,
                gate=replace(scale.gate, seed=seed), training=training,
            )  # fmt: skip
            size_of_round = arm.round_size or len(chosen.taught)
            taught = chosen.taught
            rounds = [taught[i : i + size_of_round] for i in range(0, len(taught), size_of_round)]
            steps = 0
            for number, facts in enumerate(rounds, start=1):
                # the kept facts are what the study measures: never among the gate's closed inputs
                learned = learn_facts(
                    model, tokenizer, facts, gated, work / f"round-{number}", held_out=chosen.kept,
                    callbacks=callbacks,
                )  # fmt: skip
                steps += learned.steps
                logger.info("%s: round %d of %d taught (%d facts)", arm.name, number, len(rounds), len(facts))
            trained, measured = _count(learned.trained, model), model
            memory_facts = _memory_changes(model, tokenizer, scale)
            changed = memory_facts.pop("changed_parameters")
        else:
            add_product_key_memory(model, replace(scale.memory, seed=seed))
            settings = MemoryLearning(
                trainable=arm.trainable, sparse_top_t=arm.sparse_top_t, block_size=scale.block_size,
                background_blocks=scale.background_blocks, training=training,
            )  # fmt: skip
            learned = learn_facts(model, tokenizer, chosen.taught, settings, work, callbacks=callbacks)
            steps, trained, measured = learned.steps, _count(learned.trained, model), model
            memory_facts = _memory_changes(model, tokenizer, scale)
            changed = memory_facts.pop("changed_parameters")
        seconds = time.perf_counter() - started
    after = measure(measured, tokenizer, chosen, perplexity_set, scale)
    logger.info(
        "%s, %d facts, seed %d: learned %.2f, kept %.2f, perplexity %.2f (%.0f s)",
        arm.name, size, seed, after["learned"], after["kept"], after["perplexity"], seconds,
    )  # fmt: skip
    memory_facts["not_learned"] = _missed(measured, tokenizer, chosen.taught)
    memory_facts["kept_lost"] = _missed(measured, tokenizer, chosen.kept)
    if removal_base is not None and gated is not None and removal_indices(chosen, scale.removal_share):
        memory_facts["removal"] = _removal(
            model, tokenizer, chosen, perplexity_set, scale, gated, removal_base, after
        )
    return ArmRun(
        arm=arm.name, method=arm.method, size=size, seed=seed, counterfactuals=chosen.counterfactuals,
        after=after, steps=steps, seconds=seconds, peak_mib=peak.peak_mib, trained_parameters=trained,
        changed_parameters=changed, **memory_facts,
    )  # fmt: skip


def _missed(model, tokenizer, facts: Sequence[Fact]) -> list[str]:
    """``facts`` the model does not recall through their first template, as ``subject | relation``
    (a fact the tokenizer cannot probe counts as missed, as recall leaves it out)."""
    causal = objective_of(model.config) == "clm"
    probeable = [fact for fact in facts if build_probe(tokenizer, fact, causal=causal) is not None]
    recalled = dict(zip(probeable, fact_recall(model, tokenizer, probeable).recalled, strict=True))
    return [f"{fact.subject} | {fact.relation.name}" for fact in facts if not recalled.get(fact, False)]


def removal_indices(chosen: Draw, share: float) -> list[int]:
    """Indices of the taught facts the removal takes out: ``share`` of them, spread evenly over the
    draw (which lists counterfactuals first, then cities), so both kinds of fact are taken out."""
    return [i for i in range(len(chosen.taught)) if math.floor((i + 1) * share) > math.floor(i * share)]


@dataclass
class _RemovalBaseline:
    """The base model before any teaching: per taught fact, whether it recalled the taught answer and
    (counterfactuals) the object it held before; and its logits on the first perplexity block."""

    taught: list[bool]
    previous: list[bool | None]
    logits: torch.Tensor


@torch.no_grad()
def _first_block_logits(model, perplexity_set) -> torch.Tensor:
    block = perplexity_set[0]
    ids = torch.tensor([block["input_ids"]], device=next(model.parameters()).device)
    return model(input_ids=ids).logits.float().cpu()


def _previous_facts(chosen: Draw) -> list[Fact | None]:
    return [
        Fact(f.subject, f.relation, previous) if previous is not None else None
        for f, previous in zip(chosen.taught, chosen.previous, strict=True)
    ]


def _recalled(model, tokenizer, facts: Sequence[Fact | None]) -> list[bool | None]:
    present = [f for f in facts if f is not None]
    hits = iter(fact_recall(model, tokenizer, present).recalled if present else [])
    return [next(hits) if f is not None else None for f in facts]


def _removal_baseline(model, tokenizer, chosen: Draw, perplexity_set) -> _RemovalBaseline:
    model.eval()
    return _RemovalBaseline(
        taught=fact_recall(model, tokenizer, chosen.taught).recalled,
        previous=_recalled(model, tokenizer, _previous_facts(chosen)),
        logits=_first_block_logits(model, perplexity_set),
    )


def _removal(
    model, tokenizer, chosen: Draw, perplexity_set, scale: KnowledgeScale, settings: MemoryLearning,
    base: _RemovalBaseline, after: dict[str, float],
) -> dict[str, float]:  # fmt: skip
    """Take ``scale.removal_share`` of the taught facts out of the gated memory (as ``memory forget``
    does) and measure: the removed facts back to the base model's recall (the taught answer, and the
    old object of a counterfactual), the other taught facts as they were, the kept facts and wiki-en
    perplexity; then take the rest out too and compare the logits with the base model's bit for bit."""
    gone = set(removal_indices(chosen, scale.removal_share))

    def removed_part(values: Sequence) -> list:
        return [value for i, value in enumerate(values) if i in gone]

    removed = removed_part(chosen.taught)
    others = [f for i, f in enumerate(chosen.taught) if i not in gone]
    others_before = fact_recall(model, tokenizer, others).accuracy if others else math.nan
    options = {
        "templates": settings.templates, "paraphrases": settings.paraphrases, "settings": settings.gate
    }  # fmt: skip
    started = time.perf_counter()
    forgotten = forget_facts(model, tokenizer, removed, held_out=chosen.kept, **options)
    seconds = time.perf_counter() - started
    model.eval()
    taught_now = fact_recall(model, tokenizer, removed).recalled
    previous_now = _recalled(model, tokenizer, removed_part(_previous_facts(chosen)))
    pairs = zip(taught_now, removed_part(base.taught), previous_now, removed_part(base.previous), strict=True)
    restored = [now == before and then == earlier for now, before, then, earlier in pairs]
    others_after = fact_recall(model, tokenizer, others).accuracy if others else math.nan
    kept_after = fact_recall(model, tokenizer, chosen.kept).accuracy
    perplexity = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    forget_facts(model, tokenizer, others, **options)
    identical = bool(torch.equal(_first_block_logits(model, perplexity_set), base.logits))
    logger.info(
        "removal of %d facts: restored %.2f, others %.2f -> %.2f, kept %.2f -> %.2f; all out: identical %s",
        len(removed), sum(restored) / len(restored), others_before, others_after, after["kept"], kept_after,
        identical,
    )  # fmt: skip
    return {
        "removed": float(len(removed)),
        "slots_zeroed": float(sum(forgotten.slots_zeroed.values())),
        "restored": sum(restored) / len(restored),
        "removed_learned": sum(taught_now) / len(taught_now),
        "others_learned_before": others_before,
        "others_learned": others_after,
        "kept": kept_after,
        "perplexity": perplexity,
        "seconds": seconds,
        "base_identical_once_all_removed": float(identical),
    }


def _requests(chosen: Draw) -> list[EditRequest]:
    """The draw's facts as edit requests (a fact the model got wrong has no old object to name)."""
    return [
        EditRequest(old if old is not None else Fact(f.subject, f.relation, "(unknown)"), f.object)
        for f, old in zip(chosen.taught, _previous_facts(chosen), strict=True)
    ]


def _count(names: Sequence[str], model) -> int:
    parameters = dict(model.named_parameters())
    return sum(parameters[name].numel() for name in names)


def _train_lora(
    model, tokenizer, examples, training: TrainingConfig, arm: Arm, work: Path, callbacks, seed: int
):
    """LoRA through ``peft`` on every linear layer of the blocks (not the head); returns the
    adapted model, its trained parameter count and the steps taken."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' initialisation
    config = LoraConfig(
        r=arm.lora_rank, lora_alpha=2 * arm.lora_rank, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    adapted = get_peft_model(model, config)
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    result = train(adapted, tokenizer, examples, training, work, objective="clm", callbacks=callbacks)
    return adapted, trained, result.steps


@torch.no_grad()
def _memory_changes(model, tokenizer, scale: KnowledgeScale) -> dict[str, Any]:
    """Slots whose value moved from zero, how many of those wiki text reads, and slot usage."""
    batches = validation_batches(
        tokenizer, "wiki-en", block_size=scale.block_size, max_blocks=scale.background_blocks, batch_size=8
    )
    frequency, _documents = slot_document_frequency(model, batches)
    changed = read = slots = 0
    width = 0
    used = 0.0
    for name, layer in memories(model).items():
        moved = layer.values.weight.ne(0).any(dim=1).cpu()
        changed += int(moved.sum())
        read += int((moved & (frequency[name] > 0)).sum())
        used += float((frequency[name] > 0).sum())
        slots += layer.size
        width = layer.values.weight.shape[1]
    return {
        "changed_parameters": changed * width,
        "slots_changed": changed,
        "slots_changed_read_by_wiki": read,
        "slots_used_by_wiki": used / slots,
    }
