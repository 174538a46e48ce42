"""Active forgetting during training, as a ``transformers.TrainerCallback``.

The reset happens at the *beginning* of update K+1, 2K+1, ... — that is, after K, 2K, ...
optimizer updates, but after the Trainer has logged, evaluated and checkpointed step K.
So every evaluation and checkpoint at an episode boundary sees the end-of-episode
embeddings (never freshly drawn ones), a resumed run resets at exactly the same points,
and no reset happens after the final update. ``save_at_episode_end`` additionally makes
the Trainer checkpoint at every boundary, so the kept checkpoints are the good ones
(the paper keeps the best checkpoint for the same reason).

The per-episode learning-rate schedule of the paper (warmup, then linear decay to ~0
right before each reset) needs the embeddings in their own optimizer group: pass
:meth:`ActiveForgettingCallback.param_groups` as ``param_groups`` to
:func:`palimpsest.training.train`. The body keeps the run's normal schedule.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from palimpsest.errors import ConfigError
from palimpsest.forgetting.reset import Init, embedding_parameters, forget_embeddings
from palimpsest.seeds import FORGETTING_SEED_OFFSET, check_seed

logger = logging.getLogger(__name__)


class EpisodeSchedule:
    """Learning-rate factor inside each K-step episode: linear warmup, then linear decay.

    ``factor(s)`` is the multiplier for the update that follows ``s`` completed updates
    (the convention of ``LambdaLR``); it restarts at every multiple of K.
    """

    def __init__(self, reset_every: int, warmup_fraction: float = 0.08):
        self.reset_every = reset_every
        self.warmup = max(1, round(warmup_fraction * reset_every))

    def __call__(self, step: int) -> float:
        position = step % self.reset_every
        if position < self.warmup:
            return (position + 1) / self.warmup
        return max(0.0, (self.reset_every - position) / (self.reset_every - self.warmup))


@dataclass
class ForgettingConfig:
    """Active forgetting during a training run: the ``forgetting:`` section of its config.

    Defaults follow the official code: reset only the token embeddings (a tied head's
    weight is the same tensor) every 1000 updates, N(0, initializer_range), their Adam
    state restarted, the embeddings on their own per-episode schedule.
    """

    reset_every: int = 1000
    #: Reset ``i`` draws from ``seed + i``; ``None``: the run's seed + FORGETTING_SEED_OFFSET.
    seed: int | None = None
    init: Init = "normal"
    #: Also re-draw an untied output head (a tied one always follows the embeddings).
    reset_output_head: bool = False
    #: Also zero the head's per-token bias (the official code leaves it training normally).
    reset_output_bias: bool = False
    episode_schedule: bool = True
    warmup_fraction: float = 0.08
    save_at_episode_end: bool = True

    def __post_init__(self) -> None:
        check_seed(self.seed, "forgetting.seed")
        if self.reset_every <= 0:
            raise ConfigError(
                f"forgetting.reset_every must be a positive number of updates, got {self.reset_every}"
            )
        if self.init not in ("normal", "match"):
            raise ConfigError(f"forgetting.init: expected 'normal' or 'match', got {self.init!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"forgetting.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


class ActiveForgettingCallback(TrainerCallback):
    """Reset the token embeddings every ``reset_every`` optimizer updates.

    ``seed`` makes reset number ``i`` draw from seed ``seed + i``: identical on every DDP
    rank and in a resumed run. ``episode_schedule`` enables the per-episode learning rate
    for the embeddings (through :meth:`param_groups`). The keywords are the fields of
    :class:`ForgettingConfig` (``seed`` defaults to 0 here).
    """

    def __init__(
        self,
        reset_every: int = 1000,
        *,
        seed: int = 0,
        init: Init = "normal",
        reset_output_head: bool = False,
        reset_output_bias: bool = False,
        episode_schedule: bool = True,
        warmup_fraction: float = 0.08,
        save_at_episode_end: bool = True,
    ):
        self.config = ForgettingConfig(
            reset_every=reset_every, seed=seed, init=init, reset_output_head=reset_output_head,
            reset_output_bias=reset_output_bias, episode_schedule=episode_schedule,
            warmup_fraction=warmup_fraction, save_at_episode_end=save_at_episode_end,
        )  # fmt: skip
        self.reset_every = reset_every
        self.seed = seed
        self.resets: list[int] = []

    @classmethod
    def from_config(cls, config: ForgettingConfig, *, run_seed: int = 0) -> ActiveForgettingCallback:
        """The callback of a ``forgetting:`` section (``seed=None`` resolved from the run's seed)."""
        seed = run_seed + FORGETTING_SEED_OFFSET if config.seed is None else config.seed
        settings = {name: getattr(config, name) for name in config.__dataclass_fields__ if name != "seed"}
        return cls(seed=seed, **settings)

    def _reset_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return embedding_parameters(
            model,
            include_output_head=self.config.reset_output_head,
            include_output_bias=self.config.reset_output_bias,
        )

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """One optimizer group holding the reset parameters, on the per-episode schedule."""
        group: dict[str, Any] = {
            "params": self._reset_parameters(model),
            "weight_decay": 0.0,
            "name": "forgotten-embeddings",
        }
        if self.config.episode_schedule:
            group["lr_lambda"] = EpisodeSchedule(self.reset_every, self.config.warmup_fraction)
        return [group]

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step  # updates completed so far
        if step > 0 and step % self.reset_every == 0 and (not self.resets or self.resets[-1] != step):
            index = step // self.reset_every
            forget_embeddings(
                model,
                optimizer,
                seed=self.seed + index,
                init=self.config.init,
                reset_output_head=self.config.reset_output_head,
                reset_output_bias=self.config.reset_output_bias,
            )
            self.resets.append(step)
            logger.info("active forgetting: reset %d after %d updates", index, step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.config.save_at_episode_end and state.global_step % self.reset_every == 0:
            control.should_save = True
        return control


def episode_end_checkpoints(output_dir: str | Path, reset_every: int) -> list[Path]:
    """Checkpoints saved at episode boundaries (end-of-episode embeddings), oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and int(step) % reset_every == 0:
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def best_checkpoint(output_dir: str | Path, metric: str = "eval_loss") -> Path | None:
    """The checkpoint with the lowest ``metric`` in the run's log history (paper's choice)."""
    checkpoints = {
        int(p.name.rsplit("-", 1)[-1]): p
        for p in Path(output_dir).glob("checkpoint-*")
        if p.name[11:].isdigit()
    }
    if not checkpoints:
        return None
    latest = checkpoints[max(checkpoints)]
    state_file = latest / "trainer_state.json"
    if not state_file.is_file():
        return latest
    history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    scored = [
        (entry[metric], entry["step"])
        for entry in history
        if metric in entry and entry["step"] in checkpoints
    ]
    return checkpoints[min(scored)[1]] if scored else latest
