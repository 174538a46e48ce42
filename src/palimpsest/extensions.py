"""Extensions of one training run: how memory and forgetting plug into the spine.

A method that changes how a model is trained — product-key memory, active forgetting —
is a :class:`TrainingExtension`: it may change the model before training, claim optimizer
groups, add Trainer callbacks, save what it added, and it owns one section of the run's
config (``memory:``, ``forgetting:``). The spine (``training.py``, ``pretraining.py``,
``models.py``) knows only this interface: it finds the extensions by the section names
their packages declare as entry points (group ``palimpsest.extensions`` in
``pyproject.toml``), never by importing a pillar. A third-party package can add its own
extension the same way.

Why sections in the run's config: a saved ``config.yaml`` then records every extension
of the run, so ``palimpsest pretrain --config OUT/config.yaml`` re-runs the same run and a
resumed run knows it forgets.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from transformers import PretrainedConfig, TrainerCallback

from palimpsest.errors import ConfigError

ENTRY_POINT_GROUP = "palimpsest.extensions"


class TrainingExtension:
    """One method plugged into a training run; every hook has a do-nothing default.

    Subclasses set ``section`` (their key in the run's config) and ``config_class`` (the
    dataclass of that section) and are built from a config object: ``Ext(config)``.
    ``run_seed`` is the training run's seed, for extensions that derive their own from it.
    """

    section: ClassVar[str] = ""
    config_class: ClassVar[type]
    #: The key this extension leaves in a saved model's ``config.json`` when the saved
    #: model cannot be rebuilt without it (a memory adds modules); ``None`` if it leaves none.
    model_config_key: ClassVar[str | None] = None

    def __init__(self, config: Any, *, run_seed: int = 0):
        self.config = config
        self.run_seed = run_seed

    def resolved_config(self) -> Any:
        """The config with every derived value (a seed taken from the run's) written out, so the
        run's saved config repeats this extension exactly."""
        return self.config

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Change the model before training (add modules); returns the model to train."""
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups this extension claims (see :data:`palimpsest.training.ParamGroupsFn`)."""
        return []

    def callbacks(self) -> list[TrainerCallback]:
        """Trainer callbacks of this extension (built once per run)."""
        return []

    def save(self, model: nn.Module, path: Path) -> None:
        """Write what the extension needs beside a saved model (most need nothing)."""

    def summary(self) -> dict[str, Any]:
        """What the run's ``results.json`` records about this extension after training."""
        return {}

    @classmethod
    def load_saved(cls, path: str | Path, *, task: str = "lm", num_labels: int | None = None) -> nn.Module:
        """Load a saved model whose config carries :attr:`model_config_key`."""
        raise NotImplementedError(f"the {cls.section} extension does not change how a model is loaded")


def extension_classes() -> dict[str, type[TrainingExtension]]:
    """The installed extensions by config section (``{"forgetting": ..., "memory": ...}``)."""
    found: dict[str, type[TrainingExtension]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, TrainingExtension)):
            raise ConfigError(f"entry point '{entry.name}' ({entry.value}) is not a TrainingExtension")
        found[cls.section] = cls
    return dict(sorted(found.items()))


def extension_class(section: str) -> type[TrainingExtension]:
    """The extension that owns config section ``section``, or one line naming those installed."""
    classes = extension_classes()
    if section not in classes:
        known = ", ".join(classes) or "none (is palimpsest installed with pip install -e .?)"
        raise ConfigError(f"no training extension owns the config section '{section}' (installed: {known})")
    return classes[section]


def saved_extension(config: PretrainedConfig) -> type[TrainingExtension] | None:
    """The extension a saved model needs to be rebuilt (its config.json names it), if any."""
    for cls in extension_classes().values():
        if cls.model_config_key and getattr(config, cls.model_config_key, None) is not None:
            return cls
    return None
