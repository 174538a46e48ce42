"""One arm on one draw: teach the facts its way, measure what was learned and what was kept."""

from __future__ import annotations

import logging
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
from palimpsest.memory.inject import add_product_key_memory, memories
from palimpsest.memory.learning import (
    MemoryLearning,
    fact_examples,
    learn_facts,
    slot_document_frequency,
)
from palimpsest.memory.usage import validation_batches
from palimpsest.models import count_parameters
from palimpsest.training import TrainingConfig, train

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
            settings = MemoryLearning(
                paraphrases=True, block_size=scale.block_size, background_blocks=scale.background_blocks,
                gate=replace(scale.gate, seed=seed), training=training,
            )  # fmt: skip
            # the kept facts are what the study measures: never among the gate's closed inputs
            learned = learn_facts(
                model, tokenizer, chosen.taught, settings, work, held_out=chosen.kept, callbacks=callbacks
            )
            steps, trained, measured = learned.steps, _count(learned.trained, model), model
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
    return ArmRun(
        arm=arm.name, method=arm.method, size=size, seed=seed, counterfactuals=chosen.counterfactuals,
        after=after, steps=steps, seconds=seconds, peak_mib=peak.peak_mib, trained_parameters=trained,
        changed_parameters=changed, **memory_facts,
    )  # fmt: skip


def _requests(chosen: Draw) -> list[EditRequest]:
    """The draw's facts as edit requests (a fact the model got wrong has no old object to name)."""
    return [
        EditRequest(Fact(f.subject, f.relation, previous if previous is not None else "(unknown)"), f.object)
        for f, previous in zip(chosen.taught, chosen.previous, strict=True)
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
