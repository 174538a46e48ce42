"""Active forgetting as an extension of one training run (the ``forgetting:`` config section).

The run's config records the section, so a saved ``config.yaml`` re-runs a forgetting run
and a resumed run keeps resetting at the same steps with the same draws.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn
from transformers import TrainerCallback

from palimpsest.extensions import TrainingExtension
from palimpsest.forgetting.callback import ActiveForgettingCallback, ForgettingConfig


class ForgettingExtension(TrainingExtension):
    """Reset the token embeddings every K updates; their own optimizer group and schedule."""

    section = "forgetting"
    config_class = ForgettingConfig

    def __init__(self, config: ForgettingConfig | None = None, *, run_seed: int = 0):
        super().__init__(config or ForgettingConfig(), run_seed=run_seed)
        self.callback = ActiveForgettingCallback.from_config(self.config, run_seed=run_seed)

    def resolved_config(self) -> ForgettingConfig:
        return replace(self.config, seed=self.callback.seed)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return self.callback.param_groups(model)

    def callbacks(self) -> list[TrainerCallback]:
        return [self.callback]

    def summary(self) -> dict[str, Any]:
        return {"seed": self.callback.seed, "resets_this_run": list(self.callback.resets)}
