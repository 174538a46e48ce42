"""The knowledge study's settings: the arms (ways to teach new facts) and the scales."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from palimpsest.editing.config import EditConfig
from palimpsest.editing.memit import BatchEditConfig
from palimpsest.errors import ConfigError
from palimpsest.experiments.common import check_size_seeds, seeds_of
from palimpsest.memory.gated import GateTraining
from palimpsest.memory.inject import PKMConfig
from palimpsest.memory.learning import (
    Trainable,
)

#: Relations whose recalled facts are edited (counterfactuals) or kept.
KNOWN_SETS = (
    "country-capital", "country-language", "country-continent", "element-symbol", "atomic-number",
)  # fmt: skip


#: Lin et al. 2025 (Table/Fig. 1, NaturalQuestions F1 lost after learning the same new facts).
ANCHORS = (("sparse memory fine-tuning", 11.0), ("LoRA", 71.0), ("full fine-tuning", 89.0))


Method = Literal["full", "lora", "editor", "memory", "batch-editor", "gated-memory"]
METHODS = ("full", "lora", "editor", "memory", "batch-editor", "gated-memory")
#: Methods with their own learning rates (the editors' defaults; the gated memory's ``GateTraining``).
OWN_RATES = ("editor", "batch-editor", "gated-memory")


@dataclass(frozen=True)
class Arm:
    """One way of teaching the facts."""

    name: str
    method: Method
    #: The optimizer's learning rate (``None`` for the methods of ``OWN_RATES``: theirs).
    learning_rate: float | None = None
    #: LoRA's rank (its alpha is twice the rank).
    lora_rank: int | None = None
    #: Memory arms: what trains, and sparse fine-tuning's slots per step (None: every slot read).
    trainable: Trainable = "values"
    sparse_top_t: int | None = None
    #: The gated memory: teach the facts in rounds of this many (``memory learn`` run again on its
    #: output; each round refits the gate on every fact so far and replays the earlier ones). None:
    #: all at once.
    round_size: int | None = None
    #: The numbers of facts this arm is measured at (None: every N of the scale): an arm whose
    #: failure is already measured at small N need not spend hours confirming it at large N.
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.sizes is not None:
            if (
                not isinstance(self.sizes, list | tuple)
                or not self.sizes
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.sizes)
            ):
                raise ConfigError(f"arm {self.name}: sizes are positive fact counts, got {self.sizes!r}")
            object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.method not in METHODS:
            known = ", ".join(METHODS)
            raise ConfigError(f"arm {self.name}: method must be one of {known}, got {self.method!r}")
        if self.method == "lora" and (self.lora_rank is None or self.lora_rank < 1):
            raise ConfigError(f"arm {self.name}: a LoRA arm needs a positive lora_rank")
        if self.method not in OWN_RATES and self.learning_rate is None:
            raise ConfigError(f"arm {self.name}: set its learning_rate")
        if self.learning_rate is not None and not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ConfigError(f"arm {self.name}: learning_rate must be a positive number")
        if self.sparse_top_t is not None and (self.method != "memory" or self.sparse_top_t < 1):
            raise ConfigError(f"arm {self.name}: sparse_top_t is a positive slot count of a memory arm")
        if self.round_size is not None and (self.method != "gated-memory" or self.round_size < 1):
            raise ConfigError(f"arm {self.name}: round_size is a positive fact count of a gated-memory arm")


def _real_arms() -> tuple[Arm, ...]:
    """The arms, each at the learning rate chosen by measuring on SmolLM2-135M (the figures: README,
    "The knowledge study")."""
    return (
        Arm("full fine-tuning", "full", learning_rate=1e-5),
        Arm("LoRA r=4", "lora", learning_rate=1e-4, lora_rank=4),
        Arm("LoRA r=32", "lora", learning_rate=1e-4, lora_rank=32),
        Arm("editor", "editor"),
        Arm("memory values", "memory", learning_rate=1e-2),
        Arm("sparse memory t=1000", "memory", learning_rate=1e-1, sparse_top_t=1000),
        Arm("sparse memory t=250", "memory", learning_rate=1e-1, sparse_top_t=250),
        # the issue "A memory only the taught facts read": the memory gated to the taught facts, and
        # the strongest weight editor of the many-edits study beside it
        Arm("gated memory", "gated-memory"),
        Arm("batch editor", "batch-editor"),
    )


def _memory_for_real() -> PKMConfig:
    """A 16,384-slot residual memory in the middle block, starting at zero (outputs unchanged)."""
    return PKMConfig(
        layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True, sparse_updates=False
    )


def _gated_memory_for_real() -> PKMConfig:
    """The same memory with a gate and room for a codebook of ~1,900 facts' taught inputs, read at a
    tenth of the depth (block 3 of 30; the many-edits study's gated memory:
    ``palimpsest.experiments.many_edits.gated``). Measured against the memory's own block as the
    codebook's source: ``results/knowledge-gated-keyblock-real/``."""
    return replace(_memory_for_real(), gate_hidden=256, gate_keys=16_384, gate_key_block=0.1)


def _gate_for_real() -> GateTraining:
    """The gate's fit with the early block's codebook opening from cosine 0.90
    (``results/knowledge-gated-real/gate_fit-128-key_block.json``)."""
    return GateTraining(key_threshold=0.9)


@dataclass(frozen=True)
class KnowledgeScale:
    """Sizes of one run of the study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    sizes: tuple[int, ...] = (16, 128, 512)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: ``(N, seeds)``: draws of N facts run on those seeds only (an N not named runs on every seed):
    #: a large N costs far more than a small one, so a run can spread the small N over seeds and
    #: keep the large ones to the first.
    size_seeds: tuple[tuple[int, tuple[int, ...]], ...] = ()
    arms: tuple[Arm, ...] = field(default_factory=_real_arms)
    #: Share of the N taught facts that are counterfactual edits of recalled facts (the rest:
    #: true city -> country facts the model gets wrong).
    counterfactual_share: float = 0.25
    known_sets: tuple[str, ...] = KNOWN_SETS
    #: The most populous cities checked for what the model knows.
    cities: int = 3000
    #: Recalled facts never trained on, measured before and after.
    kept: int = 64
    #: Count facts as known only if recalled (off for a random model, which knows none).
    known_only: bool = True
    #: Optimizer steps of every arm: at least ``min_steps``, and ``epochs`` passes over the facts.
    min_steps: int = 100
    epochs: int = 6
    batch_size: int = 16
    memory: PKMConfig = field(default_factory=_memory_for_real)
    #: The editor arm's settings (steps are the study's).
    editor: EditConfig = field(default_factory=EditConfig)
    #: The gated memory arm: its memory and how its gate is fitted (its values train for at least
    #: the study's steps, at the gate's own rate); it also trains through the relations' paraphrases
    #: but each fact's held-out one, as ``memory learn --paraphrases`` does.
    gated_memory: PKMConfig = field(default_factory=_gated_memory_for_real)
    gate: GateTraining = field(default_factory=_gate_for_real)
    #: The batch editor arm (MEMIT's least squares with palimpsest's defaults; all facts at once).
    batch_editor: BatchEditConfig = field(default_factory=BatchEditConfig)
    #: The gated memory arms, once measured: this share of the taught facts is taken out again
    #: (``memory forget``: every other fact, so both kinds of fact go) and the model measured once more;
    #: then the rest, and the model's logits compared with the base model's. 0: no removal.
    removal_share: float = 0.5
    perplexity_blocks: int = 16
    block_size: int = 128
    background_blocks: int = 64
    #: From this N on, the editor runs on the first seed only: each of its steps sees every fact,
    #: so it costs N / batch_size times a step of the other arms (None: every seed).
    editor_one_seed_from: int | None = 512
    generation_tokens: int = 6

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError("sizes: name at least one positive number of facts")
        if not self.arms:
            raise ConfigError("arms: name at least one")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError("arms: every arm needs its own name")
        check_size_seeds(self.size_seeds, self.sizes, self.seeds, "facts")
        for arm in self.arms:
            unknown = sorted(set(arm.sizes or ()) - set(self.sizes))
            if unknown:
                raise ConfigError(f"arm {arm.name}: size {unknown[0]} is not one of the study's sizes")
        if not 0.0 <= self.removal_share < 1.0:
            raise ConfigError(f"removal_share must be in [0, 1), got {self.removal_share}")
        if not 0.0 <= self.counterfactual_share <= 1.0:
            raise ConfigError(f"counterfactual_share must be in [0, 1], got {self.counterfactual_share}")
        for name in ("cities", "kept", "min_steps", "epochs", "batch_size", "perplexity_blocks", "block_size",
                     "background_blocks", "generation_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def seeds_of(self, size: int) -> tuple[int, ...]:
        """The seeds a draw of ``size`` facts runs on (see ``size_seeds``)."""
        return seeds_of(self.size_seeds, size, self.seeds)

    def steps(self, size: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * size / self.batch_size))


def _smoke_arms() -> tuple[Arm, ...]:
    return (
        Arm("full fine-tuning", "full", learning_rate=1e-3),
        Arm("LoRA r=4", "lora", learning_rate=1e-2, lora_rank=4),
        Arm("editor", "editor"),
        Arm("memory values", "memory", learning_rate=1e-1),
        Arm("sparse memory t=8", "memory", learning_rate=1e-1, sparse_top_t=8),
        Arm("gated memory", "gated-memory"),
        Arm("batch editor", "batch-editor"),
    )


SCALES: dict[str, KnowledgeScale] = {
    "smoke": KnowledgeScale(
        model=None,
        sizes=(4,),
        seeds=(0,),
        arms=_smoke_arms(),
        counterfactual_share=0.5,
        cities=300,
        kept=4,
        known_only=False,
        min_steps=3,
        batch_size=4,
        memory=PKMConfig(
            layers=[0.5], n_keys=16, heads=2, k=4, k_dim=16, zero_values=True, sparse_updates=False
        ),
        gated_memory=PKMConfig(
            layers=[0.5],
            n_keys=16,
            heads=2,
            k=4,
            k_dim=16,
            zero_values=True,
            sparse_updates=False,
            gate_hidden=16,
            gate_keys=256,
        ),
        gate=GateTraining(passages=1, neighbours=2, background_tokens=256, steps=100, batch_size=512),
        batch_editor=BatchEditConfig(layers=[1, 2], statistics_tokens=2_000, target_steps=5),
        perplexity_blocks=2,
        block_size=32,
        background_blocks=4,
        generation_tokens=3,
    ),
    # The demo's part: 16 facts, one seed, full fine-tuning beside the two memory arms.
    "demo": KnowledgeScale(
        sizes=(16,),
        seeds=(0,),
        arms=tuple(a for a in _real_arms() if a.method in ("full", "memory"))[:3],
        cities=1000,
        kept=32,
        perplexity_blocks=8,
    ),
    "real": KnowledgeScale(),
}
