"""The gated memory as one more method of the study: new facts written into a memory that only
their prompts read (:mod:`palimpsest.memory.gated`), the weights of the model left as they were.

An edit request becomes a taught fact (its subject and relation, the new object as the answer).
"At once" teaches the whole draw in one round; "in sequence" teaches it in rounds of the batch,
each round refitting the gate on every fact taught so far and replaying them. The gate's hard
negatives are facts the user would name to keep — here the neighbours of benchmark cases *outside*
the draw, never the prompts the study measures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from palimpsest.data.facts import Fact
from palimpsest.editing.benchmark import BenchmarkCase
from palimpsest.editing.requests import EditRequest
from palimpsest.memory.gated import GateTraining
from palimpsest.memory.inject import PKMConfig, add_product_key_memory, memory_handle
from palimpsest.memory.learning import MemoryLearning, learn_facts


def _gated_memory() -> PKMConfig:
    """The knowledge study's memory (16,384 slots in the middle block, zero values) with a gate and
    room for a codebook of ~1,900 facts' inputs (the gate then stays closed for other subjects:
    ``results/gated-memory-probe-real/``, README, "A codebook of every taught phrasing"), read at an
    early block (a tenth of the depth: block 3 of SmolLM2's 30), where a subject's state is its own
    tokens' and not yet the words around it, so unseen phrasings of a taught fact open the gate too
    (``results/gated-memory-probe-real/``, README, "Which block's state should the codebook read?")."""
    return PKMConfig(
        layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True, sparse_updates=False,
        gate_hidden=256, gate_keys=16_384, gate_key_block=0.1,
    )  # fmt: skip


def _gated_learning() -> MemoryLearning:
    """Facts and their paraphrases; the early block's codebook opens from cosine 0.90, the threshold
    measured to keep other subjects' prompts closed while opening held-out paraphrases
    (``results/knowledge-gated-real/gate_fit-128-key_block.json``). The scorer takes 4,000 steps: with
    a thousand edits' inputs against their neighbours and text, 1,500 left it closed for some of the
    edits' own prompts, which the codebook opened (``results/many-edits-real/gate_probe-1000.json``)."""
    return MemoryLearning(paraphrases=True, gate=GateTraining(key_threshold=0.9, steps=4000))


@dataclass
class GatedMemoryMethod:
    """The memory added and how facts are written into it."""

    memory: PKMConfig = field(default_factory=_gated_memory)
    learning: MemoryLearning = field(default_factory=_gated_learning)


class GatedMemoryEditor:
    """The editor interface of the study (``apply``, ``undo``) over a gated memory."""

    def __init__(
        self, model: Any, tokenizer: Any, method: GatedMemoryMethod, *, keep: Sequence[Fact], seed: int,
        held_out: Sequence[Fact] = (),
    ):  # fmt: skip
        self.model, self.tokenizer, self.method = model, tokenizer, method
        self.keep, self.held_out, self.seed = list(keep), list(held_out), seed
        self._work = tempfile.TemporaryDirectory(prefix="palimpsest-gated-")

    def apply(self, requests: Sequence[EditRequest], *, measure: bool = False) -> None:
        """Teach ``requests``' new objects (one round); adds the memory at the first call."""
        if memory_handle(self.model) is None:
            add_product_key_memory(self.model, replace(self.method.memory, seed=self.seed))
        round_ = memory_handle(self.model).taught.rounds + 1
        work = Path(self._work.name) / f"round-{round_}"
        learn_facts(
            self.model, self.tokenizer, [r.fact for r in requests], self.method.learning, work,
            answers=[r.new_object for r in requests], keep=self.keep, held_out=self.held_out,
        )  # fmt: skip
        self.model.eval()

    def undo(self) -> None:
        """Take the memory out: the model computes exactly what it did before."""
        handle = memory_handle(self.model)
        if handle is not None:
            handle.remove()
        self._work.cleanup()


def measured_facts(draw: Sequence[BenchmarkCase]) -> list[Fact]:
    """Every fact the study measures a draw on besides its requests: neighbours and same-subject facts
    (the gate is never fitted closed on them)."""
    return [fact for case in draw for fact in (*case.neighbours, *case.same_subject)]


def facts_to_keep(
    draw: Sequence[BenchmarkCase], others: Sequence[BenchmarkCase], per_case: int = 4
) -> list[Fact]:
    """Neighbours of cases outside ``draw`` (up to ``per_case`` per drawn case), leaving out every fact
    the study measures on the draw (its requests, neighbours and same-subject facts) and every fact
    about a drawn subject."""
    measured = {
        (f.subject, f.relation.name) for c in draw for f in (c.request.fact, *c.neighbours, *c.same_subject)
    }
    subjects = {c.request.fact.subject for c in draw}
    keep: dict[tuple[str, str], Fact] = {}
    for case in others:
        for fact in case.neighbours:
            key = (fact.subject, fact.relation.name)
            if key not in measured and fact.subject not in subjects:
                keep.setdefault(key, fact)
        if len(keep) >= per_case * len(draw):
            break
    return list(keep.values())[: per_case * len(draw)]


__all__ = ["GatedMemoryEditor", "GatedMemoryMethod", "facts_to_keep", "measured_facts"]
