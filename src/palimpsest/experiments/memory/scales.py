"""The memory study's settings: its arms and its scales from smoke to cpu."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from palimpsest.errors import ConfigError
from palimpsest.memory import (
    PKMConfig,
)
from palimpsest.pretraining import DataConfig, ModelConfig
from palimpsest.training import TrainingConfig

MEMORY_ARMS = ("replace-scratch", "replace-pretrained", "residual-scratch", "residual-pretrained")


CONTROL_ARMS = ("no-ffn", "wide-ffn", "ffn-equal-params", "ffn-equal-compute")


ARMS = ("no-memory", "no-memory-continued", *CONTROL_ARMS, *MEMORY_ARMS)


CONTINUED_ARMS = ("no-memory-continued", "replace-pretrained", "residual-pretrained")


def _data(**fields: Any) -> DataConfig:
    return DataConfig(**{"vocab_size": 4096, "max_eval_blocks": 128, **fields})


def _memory(**fields: Any) -> PKMConfig:
    """The memory of the memory arms (their ``mode`` is set per arm; its ``layers[0]`` is the
    block the capacity controls change too)."""
    return PKMConfig(**{"layers": [2], "n_keys": 128, "k_dim": 128, "sparse_updates": False, **fields})


def _training(**fields: Any) -> TrainingConfig:
    """The full run's schedule (a continuation follows its rest, see :func:`_unit_training`)."""
    return TrainingConfig(
        **{"steps": 600, "batch_size": 16, "learning_rate": 2e-3, "eval_every": 100, **fields}
    )


@dataclass(frozen=True)
class MemoryScale:
    """One run of the study: the library's configs of the model, its data, training and memory,
    and the study's own knobs (facts, arms, seeds, usage measurement)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(family="gpt2", size="tiny", dropout=0.0))
    data: DataConfig = field(default_factory=_data)
    training: TrainingConfig = field(default_factory=_training)
    memory: PKMConfig = field(default_factory=_memory)
    cities: int | None = 3000
    #: Each fact statement appears this many times (differently shuffled) in the training text.
    fact_repeats: int = 1
    #: The pretrained arms start from the no-memory run after this share of the updates.
    pretrained_fraction: float = 0.5
    wide_ffn: int = 2048
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1)
    usage_blocks: int = 64
    usage_window: int = 50
    keep_models: bool = False

    def __post_init__(self) -> None:
        if len(self.memory.layers) != 1:
            raise ConfigError(
                f"memory.layers: the study compares arms in one block, got {self.memory.layers}"
            )
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)} (known: {', '.join(ARMS)})")
        if any(arm in CONTINUED_ARMS for arm in self.arms) and "no-memory" not in self.arms:
            raise ConfigError("the -pretrained arms continue the no-memory run: keep 'no-memory' in arms")
        if not 0.0 < self.pretrained_fraction < 1.0:
            raise ConfigError(f"pretrained_fraction must be in (0, 1), got {self.pretrained_fraction}")

    @property
    def layer(self) -> int:
        """The block the memory joins and the capacity controls change."""
        return self.memory.layers[0]

    def pretrained_step(self) -> int:
        return max(1, round(self.training.steps * self.pretrained_fraction))


SCALES: dict[str, MemoryScale] = {
    "smoke": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=300, vocab_size=600, block_size=32, max_eval_blocks=16),
        training=_training(steps=12, batch_size=8, eval_every=6),
        memory=_memory(layers=[1], n_keys=16, heads=2, k=4, k_dim=32),
        cities=200,
        wide_ffn=256,
        seeds=(0,),
        usage_blocks=8,
        usage_window=4,
    ),
    "demo": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=3000, vocab_size=2048, block_size=64, max_eval_blocks=64),
        training=_training(steps=200, batch_size=16, eval_every=50),
        memory=_memory(layers=[1], n_keys=64, heads=4, k=16, k_dim=64),
        cities=500,
        fact_repeats=4,
        wide_ffn=1024,
        usage_blocks=32,
        usage_window=20,
        arms=("no-memory", "no-memory-continued", *MEMORY_ARMS),
    ),
    # Sized by probes of the capacity check, so that capacity matters at this scale (the probes'
    # figures: README, "The memory study").
    "cpu": MemoryScale(
        model=ModelConfig(family="gpt2", size="micro", dropout=0.0),
        data=_data(max_documents=500, vocab_size=2048, block_size=64, max_eval_blocks=64),
        training=_training(steps=3000, batch_size=16, eval_every=300),
        memory=_memory(layers=[1], n_keys=128, heads=4, k=16, k_dim=64),
        cities=1000,
        fact_repeats=12,
        wide_ffn=1024,
        seeds=(0, 1, 2),
        usage_blocks=32,
        usage_window=100,
    ),
    # Kim & Jung's setting for GPUs with a network: a BERT-base-sized masked LM, memory of
    # 512^2 slots (4 heads, k 32, k_dim 256) in one block, trained on WikiText-103 plus the
    # city facts; run under `accelerate launch`.
    "full": MemoryScale(
        model=ModelConfig(family="bert", size="base", dropout=0.0),
        data=_data(
            corpus="hf:wikitext:wikitext-103-raw-v1",
            max_documents=2_000_000,
            vocab_size=30_000,
            block_size=512,
            max_eval_blocks=1024,
        ),
        training=_training(steps=100_000, batch_size=32, learning_rate=1e-4, eval_every=5000),
        memory=_memory(layers=[6], n_keys=512, k_dim=256),
        cities=None,
        wide_ffn=3072 * 4,
        seeds=(0, 1, 2),
        usage_blocks=256,
        usage_window=1000,
    ),
}


def matched_ffn_widths(scale: MemoryScale, dim: int) -> dict[str, int]:
    """Hidden widths of a dense FFN (``dim -> width -> dim``) with as many parameters as the study's
    memory (``ffn-equal-params``) and as many multiply-adds per token (``ffn-equal-compute``)."""
    with torch.device("meta"):  # sized, not allocated
        memory = scale.memory.layer(dim)
    parameters = sum(p.numel() for p in memory.parameters())
    return {
        "ffn-equal-params": max(1, round((parameters - dim) / (2 * dim + 1))),
        "ffn-equal-compute": max(1, round(memory.multiply_adds_per_token() / (2 * dim))),
    }
