"""A model type of palimpsest's own, so that a model saved with added modules never loads without them.

Why: a product-key memory adds modules that a plain ``from_pretrained`` does not know. If
the saved ``config.json`` said ``llama``, transformers would build the base model, drop the
memory's tensors with one line in its load report, and hand lm-eval, vLLM, TRL or a user's
script a different model without a word. So while a model carries palimpsest's additions
its config is *extended* (:func:`extend_config`): it is saved as model type ``palimpsest``,
the base type kept as ``base_model_type``. Then

- without palimpsest, transformers refuses the folder ("model type `palimpsest` ... does not
  recognize this architecture"): loudly, naming the package that reads it;
- after ``import palimpsest`` (which calls :func:`register`), ``AutoConfig``,
  ``AutoModelForCausalLM`` / ``ForMaskedLM`` / ``ForSequenceClassification`` and
  ``pipeline(...)`` load it through :func:`palimpsest.models.load_pretrained`: the base
  model and every added weight, the outputs of the saved model exactly.

The spine owns the mechanism; which extension rebuilds the additions is read from the saved
config by :func:`palimpsest.extensions.saved_extension`, so this module imports no pillar.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

logger = logging.getLogger(__name__)

MODEL_TYPE = "palimpsest"
#: Keys of a config that belong to palimpsest's additions (``palimpsest_memory``), not to the base.
ADDITION_PREFIX = "palimpsest_"

#: ``from_pretrained`` keywords that only say where the files come from: nothing to apply.
_SOURCE_KEYWORDS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token",
     "_from_auto", "_from_pipeline", "_commit_hash", "trust_remote_code", "code_revision", "use_safetensors",
     "low_cpu_mem_usage", "output_loading_info"}
)  # fmt: skip


class _ExtendedConfig:
    """Mixed into a model's own config class while the model carries palimpsest's additions."""

    base_config_class: ClassVar[type[PretrainedConfig]]

    def to_dict(self) -> dict[str, Any]:
        document = super().to_dict()  # type: ignore[misc]
        document["model_type"] = MODEL_TYPE
        document["base_model_type"] = self.base_config_class.model_type
        return document

    def base_config(self) -> PretrainedConfig:
        """The config of the base model alone (palimpsest's keys left out)."""
        document = {
            key: value
            for key, value in PretrainedConfig.to_dict(self).items()  # type: ignore[arg-type]
            if not key.startswith(ADDITION_PREFIX) and key not in ("model_type", "base_model_type")
        }
        return self.base_config_class.from_dict(document)

    def __reduce__(self) -> Any:
        # The class is made at run time, so pickle and deepcopy name its base (importable) and
        # carry every attribute as it is, private ones too (the attention implementation, ...).
        return (_empty_extended, (self.base_config_class,), self.__dict__.copy())


def _empty_extended(base: type[PretrainedConfig]) -> PretrainedConfig:
    cls = extended_config_class(base)
    return cls.__new__(cls)


class PalimpsestConfig(PretrainedConfig):
    """What ``AutoConfig`` finds for model type ``palimpsest``: reads the base model's config
    class from ``base_model_type`` and returns that config, extended."""

    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        base_type = config_dict.get("base_model_type")
        if base_type not in CONFIG_MAPPING:
            raise ValueError(
                f"a palimpsest model of base model type {base_type!r}, which this transformers does not know"
            )
        document = {k: v for k, v in config_dict.items() if k not in ("model_type", "base_model_type")}
        return extended_config_class(CONFIG_MAPPING[base_type]).from_dict(document, **kwargs)


class _ExtendedModelLoader:
    """What an Auto class finds for an extended config: palimpsest's own loader."""

    config_class: ClassVar[type[PretrainedConfig]]
    task: ClassVar[str]
    objective: ClassVar[str | None]

    @classmethod
    def from_pretrained(cls, name_or_path: Any, *args: Any, config: Any = None, **kwargs: Any) -> Any:
        import torch

        from palimpsest.models import load_pretrained

        if args:
            raise ValueError("palimpsest models take no positional model arguments in from_pretrained")
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        device_map = kwargs.pop("device_map", None)
        num_labels = kwargs.pop("num_labels", None)
        if (kwargs.pop("adapter_kwargs", None) or {}).get("_adapter_model_path"):
            raise ValueError(f"{name_or_path}: a PEFT adapter on a palimpsest model is not loaded this way")
        effectful = sorted(key for key in kwargs if key not in _SOURCE_KEYWORDS)
        if effectful:  # a setting dropped in silence would give another model than asked for
            raise ValueError(
                f"palimpsest's loader does not apply from_pretrained({', '.join(effectful)}=...) to "
                f"{name_or_path}; load it without them"
            )
        model = load_pretrained(
            str(name_or_path), task=cls.task, num_labels=num_labels, objective=cls.objective
        )  # type: ignore[arg-type]
        if dtype is not None and dtype != "auto":
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device_map is not None:
            if isinstance(device_map, dict):
                raise ValueError("palimpsest models load on one device: give device_map as a device name")
            device = "cuda" if device_map == "auto" and torch.cuda.is_available() else device_map
            model.to("cpu" if device == "auto" else device)
        return model.eval()

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> Any:
        raise ValueError(
            "a palimpsest model is built by loading it (from_pretrained) or by adding to a base model "
            "(palimpsest.memory.add_product_key_memory), not from its config alone"
        )


_LOADERS = (
    ("AutoModelForCausalLM", "lm", "clm"),
    ("AutoModelForMaskedLM", "lm", "mlm"),
    ("AutoModelForSequenceClassification", "classification", None),
)


@functools.cache
def extended_config_class(base: type[PretrainedConfig]) -> type[PretrainedConfig]:
    """The extended form of a config class (made once per class), with its loaders registered."""
    import transformers

    name = f"Palimpsest{base.__name__}"
    extended = type(name, (_ExtendedConfig, base), {"model_type": MODEL_TYPE, "base_config_class": base})
    extended.__module__ = __name__
    for auto_name, task, objective in _LOADERS:
        loader = type(
            f"{name.removesuffix('Config')}{auto_name.removeprefix('AutoModel')}",
            (_ExtendedModelLoader,),
            {"config_class": extended, "task": task, "objective": objective, "__module__": __name__},
        )
        getattr(transformers, auto_name).register(extended, loader, exist_ok=True)
    return extended


def extend_config(config: PretrainedConfig) -> None:
    """Mark a model's config as carrying palimpsest's additions (saved as model type ``palimpsest``)."""
    if not isinstance(config, _ExtendedConfig):
        config.__class__ = extended_config_class(type(config))


def restore_config(config: PretrainedConfig) -> None:
    """Undo :func:`extend_config` once no addition is left in the config."""
    if isinstance(config, _ExtendedConfig) and not any(k.startswith(ADDITION_PREFIX) for k in vars(config)):
        config.__class__ = type(config).base_config_class


def base_config(config: PretrainedConfig) -> PretrainedConfig:
    """The base model's config of an extended config; any other config as it is."""
    return config.base_config() if isinstance(config, _ExtendedConfig) else config


def base_model_type(config: PretrainedConfig) -> str:
    """``llama`` for a Llama with a memory as for a plain one."""
    return (
        type(config).base_config_class.model_type
        if isinstance(config, _ExtendedConfig)
        else config.model_type
    )


def register() -> None:
    """Make transformers' ``AutoConfig`` read model type ``palimpsest`` (done by ``import palimpsest``)."""
    from transformers import AutoConfig

    AutoConfig.register(MODEL_TYPE, PalimpsestConfig, exist_ok=True)
