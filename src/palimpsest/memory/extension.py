"""Product-key memory as an extension of one training run (the ``memory:`` config section).

The run's config records the memory's settings, the model's config carries them into
``config.json`` (so the saved model reloads with its memory), the values train at their
own learning rate, and a usage callback logs how many slots went unread.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from palimpsest.errors import ConfigError
from palimpsest.extensions import TrainingExtension
from palimpsest.memory.inject import (
    MEMORY_CONFIG_KEY,
    PKMConfig,
    add_product_key_memory,
    load_merged,
    memories,
)
from palimpsest.memory.usage import MemoryUsageCallback, memory_param_groups
from palimpsest.seeds import MEMORY_SEED_OFFSET


class MemoryExtension(TrainingExtension):
    """Add product-key memories before training; values on their own (constant) learning rate."""

    section = "memory"
    config_class = PKMConfig
    model_config_key = MEMORY_CONFIG_KEY

    def __init__(self, config: PKMConfig | None = None, *, run_seed: int = 0):
        super().__init__(config or PKMConfig(), run_seed=run_seed)
        self.usage = MemoryUsageCallback()

    @property
    def seed(self) -> int:
        return self.run_seed + MEMORY_SEED_OFFSET if self.config.seed is None else self.config.seed

    def resolved_config(self) -> PKMConfig:
        return replace(self.config, seed=self.seed)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return add_product_key_memory(model, self.resolved_config())

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return memory_param_groups(model, lr=self.config.value_lr)

    def callbacks(self) -> list[TrainerCallback]:
        return [_ShardingCheck(), self.usage]

    def summary(self) -> dict[str, Any]:
        return self.usage.snapshot()

    @classmethod
    def load_saved(cls, path: str | Path, *, task: str = "lm", num_labels: int | None = None) -> nn.Module:
        return load_merged(path, task=task, num_labels=num_labels)


class _ShardingCheck(TrainerCallback):
    """Refuse sparse value updates once the Trainer has wrapped the model for FSDP."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            check_sharding(model)


def check_sharding(model: nn.Module) -> None:
    """One line instead of a failure deep in FSDP's backward: sparse value gradients cannot be
    sharded (FSDP reduce-scatters dense gradients only); dense memories shard like any layer,
    without the reused value-gradient buffer (it would keep a whole unsharded gradient)."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if not any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        return
    for layer in memories(model).values():  # a reused buffer would hold a whole unsharded gradient
        layer.reuse_gradient_buffer = False
        layer.gradient_buffers = type(layer.gradient_buffers)()
        layer.allow_sparse_gradients(False)  # "auto" stays dense
    sparse = [name for name, layer in memories(model).items() if layer.sparse_updates is True]
    if sparse:
        raise ConfigError(
            f"memory.sparse_updates is not supported under FSDP (memories {', '.join(sparse)}); "
            "set sparse_updates: false (dense value gradients shard like any other layer)"
        )
