"""forget: active forgetting (Chen et al. 2023) and the relearning pipeline it serves.

``forget_embeddings`` resets the token embeddings and their optimizer state;
``ActiveForgettingCallback`` does it every K updates inside any ``transformers.Trainer``;
:mod:`palimpsest.forgetting.relearning` adapts a pretrained body to a new language
(language adaptation, task adaptation, assembly, zero-shot evaluation).
"""

from palimpsest.forgetting.callback import (
    ActiveForgettingCallback,
    EpisodeSchedule,
    best_checkpoint,
    episode_end_checkpoints,
)
from palimpsest.forgetting.reset import (
    ForgetReport,
    embedding_parameters,
    find_token_embeddings,
    forget_embeddings,
    output_head,
)

__all__ = [
    "ActiveForgettingCallback",
    "EpisodeSchedule",
    "ForgetReport",
    "best_checkpoint",
    "embedding_parameters",
    "episode_end_checkpoints",
    "find_token_embeddings",
    "forget_embeddings",
    "output_head",
]
