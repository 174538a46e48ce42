"""Model factory: tiny models of four families built from a config, or pretrained ones.

Named sizes are what the CPU studies need (``micro`` for tests, ``tiny`` ~1M parameters,
``small`` ~10M; ``mini`` is micro's width at tiny's depth, for layer-choice studies) plus
``base``, the paper-scale size for GPUs. Families cover a masked LM
(``bert``, ``roberta``) and a causal LM (``gpt2``, ``llama``). Which objective a model
trains with is read from its config and architecture, never from its name.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError
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

from palimpsest.data.tokenization import boundary_ids
from palimpsest.errors import ConfigError, ModelError
from palimpsest.extensions import saved_extension
from palimpsest.hf_auto import base_model_type
from palimpsest.model_sources import (  # noqa: F401  (re-exported: where models come from)
    BUILTIN_GGUF,
    BUILTIN_NAMES,
    BUILTIN_PRETRAINED,
    GGUFModel,
    locate_model,
    model_cache_dir,
    resolve_pretrained,
)

logger = logging.getLogger(__name__)

LMObjective = Literal["mlm", "clm"]
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
FAMILY_OBJECTIVE: dict[str, LMObjective] = {"bert": "mlm", "roberta": "mlm", "gpt2": "clm", "llama": "clm"}


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    bos, eos = boundary_ids(tokenizer)
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": bos, "eos_token_id": eos}


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


def build_smollm2_like(
    tokenizer: PreTrainedTokenizerBase, *, hidden: int = 48, layers: int = 6, seed: int | None = None
) -> PreTrainedModel:
    """A random causal LM with the built-in SmolLM2-135M's structure at toy width.

    Llama blocks with tied input and output embeddings, 3:1 grouped-query attention and a
    SiLU-gated MLP ``8/3`` times as wide as the hidden size: what tests and smoke runs use in
    place of the real weights (every method finds the same modules in both).
    """
    import torch

    if hidden % 6:
        raise ModelError(f"hidden size must be a multiple of 6 (6 query, 2 key/value heads), got {hidden}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=6,
        num_key_value_heads=2, intermediate_size=hidden * 8 // 3, max_position_embeddings=256,
        tie_word_embeddings=True, **{k: v for k, v in _special_ids(tokenizer).items() if v is not None},
    )  # fmt: skip
    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def cache_argument(module: nn.Module) -> str | None:
    """The keyword under which ``module``'s forward takes a key/value cache (``cache`` in
    transformers 5, ``past_key_values`` before), where it also takes explicit positions; None
    where it does not, so a prompt's shared start cannot be run once and reused."""
    import inspect

    parameters = inspect.signature(module.forward).parameters
    if "position_ids" not in parameters:
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def returned_cache(output: object, argument: str) -> object:
    """The key/value cache a forward returned (under the name it takes it by, or the older one)."""
    cache = getattr(output, argument, None) or getattr(output, "past_key_values", None)
    if cache is None:
        raise ModelError(f"{type(output).__name__} holds no key/value cache")
    return cache


def objective_of(config: PretrainedConfig) -> LMObjective:
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
    model_type = base_model_type(config)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "mlm"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "clm"
    raise ModelError(f"model type '{config.model_type}' is neither a masked nor a causal LM in transformers")


def load_base(
    name_or_path: str,
    *,
    task: Task = "lm",
    num_labels: int | None = None,
    objective: LMObjective | None = None,
) -> PreTrainedModel:
    """``from_pretrained`` of a local folder, built-in name or hub id, and nothing more.

    Heads the checkpoint lacks (e.g. MiniLM has no MLM head) are initialised fresh, as
    transformers does, and logged. A folder saved with additions palimpsest made (a
    product-key memory) loads as its base model alone here (its base config, the base
    weights): use :func:`load_pretrained` for the whole model. Weights are read from
    safetensors only, and no code from the folder is ever run.
    """
    from palimpsest.hf_auto import base_config

    location = resolve_pretrained(name_or_path)
    local = Path(location).expanduser()
    source = str(local) if local.exists() else location
    if local.is_dir():
        check_safetensors_weights(local)
    config = base_config(load_config(name_or_path))
    safe = {"trust_remote_code": False, "use_safetensors": True}
    try:
        if task == "classification":
            if num_labels is not None and num_labels != config.num_labels:
                config.num_labels = num_labels
            return AutoModelForSequenceClassification.from_pretrained(source, config=config, **safe)
        chosen = objective or objective_of(config)
        auto = AutoModelForMaskedLM if chosen == "mlm" else AutoModelForCausalLM
        return auto.from_pretrained(source, config=config, **safe)
    except (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        SafetensorError,
    ) as error:  # missing, torn or corrupt
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot load model '{name_or_path}': {reason}") from None


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def without_load_report() -> Iterator[None]:
    """Silence transformers' table of unexpected keys while a caller that checks every key
    itself (a model with additions, loaded as its base first) loads the base weights."""
    source = logging.getLogger("transformers.modeling_utils")
    dropper = _DropLoadReport()
    source.addFilter(dropper)
    try:
        yield
    finally:
        source.removeFilter(dropper)


@contextlib.contextmanager
def trainable_flags_kept(model: nn.Module) -> Iterator[None]:
    """Inside, a caller may freeze and unfreeze what it trains; afterwards every parameter's
    ``requires_grad`` is what it was before, so weights the user froze stay frozen."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


#: Weight files that are Python pickles: loading one can run code, so palimpsest reads none.
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt.index", "tf_model.h5")


def check_safetensors_weights(folder: Path) -> None:
    """Refuse a model folder whose weights are not in safetensors (a pickle can run code on load)."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()] or [
        p.name
        for p in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    ]
    if pickled:
        raise ModelError(
            f"{folder / pickled[0]} is a pickle, which palimpsest never loads (it can run code); convert it "
            "once where you trust it: AutoModel.from_pretrained(folder).save_pretrained(folder) writes "
            "model.safetensors"
        )
    raise ModelError(f"'{folder}' has no model weights (expected model.safetensors)")


def load_config(name_or_path: str) -> PretrainedConfig:
    """The config of a local folder, built-in name or hub id (see :func:`locate_model`).

    A config that asks to run code of its own (``auto_map``) is refused: a model folder is
    untrusted input, and palimpsest never runs code from one (transformers would otherwise
    ask on standard input, where a ``yes |`` in a script answers for the user).
    """
    import palimpsest.hf_auto  # noqa: F401  (model type "palimpsest" readable here too)

    location = locate_model(name_or_path)
    local = Path(location)
    if local.is_dir():
        check_config_file(local / "config.json")
    try:
        config = AutoConfig.from_pretrained(
            str(local) if local.exists() else location, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelError(f"cannot load model '{name_or_path}': {str(error).splitlines()[0]}") from None
    if getattr(config, "auto_map", None):
        raise ModelError(
            f"'{name_or_path}' needs custom code (auto_map); palimpsest never runs code from a model"
        )
    return config


def check_config_file(path: Path) -> None:
    """One line for a config.json that is not a mapping of the shape transformers reads, or
    that asks to run custom code: before transformers sees it (it would trace back, or ask)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path} is not a readable JSON config ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise ModelError(f"{path} is not a model config (a JSON object), it holds {type(document).__name__}")
    if "auto_map" in document:
        raise ModelError(
            f"{path} asks to run custom code from the folder (auto_map); palimpsest never runs code from a "
            "model folder: use a model whose architecture transformers ships"
        )
    for key, kind in (("architectures", list), ("model_type", str)):
        if key in document and document[key] is not None and not isinstance(document[key], kind):
            raise ModelError(f"{path}: '{key}' must be a {kind.__name__}, got {document[key]!r}")
    if not isinstance(document.get("model_type"), str):
        raise ModelError(f"{path} names no model_type (not a transformers model config)")


def load_pretrained(
    name_or_path: str,
    *,
    task: Task = "lm",
    num_labels: int | None = None,
    objective: LMObjective | None = None,
) -> PreTrainedModel:
    """Load a model exactly as it was saved: a local folder, a built-in name or a hub id.

    A folder saved with modules a training extension added (a product-key memory) is
    rebuilt by that extension with every weight (outputs identical to the saved model); a
    plain ``from_pretrained`` would drop them. The spine does not know which extensions
    exist: the saved config names one (:func:`palimpsest.extensions.saved_extension`).
    Everything else is :func:`load_base`.
    """
    config = load_config(name_or_path)
    extension = saved_extension(config)
    if extension is not None:
        return extension.load_saved(resolve_pretrained(name_or_path), task=task, num_labels=num_labels)
    return load_base(name_or_path, task=task, num_labels=num_labels, objective=objective)


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


def position_limit(model: nn.Module) -> int | None:
    """The most tokens one sequence may have: the rows of a learned position embedding (less
    RoBERTa's offset past its padding index); ``None`` where positions are computed (rotary)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and (
            name.endswith("position_embeddings") or name.endswith("wpe")
        ):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - offset
    return None


def fit_block_size(model: nn.Module, block_size: int, *, option: str = "block_size") -> int:
    """``block_size``, or the model's position limit where that is smaller (with a warning: a block
    past the last position would fail inside the embedding, or be read by no position)."""
    limit = position_limit(model)
    if limit is not None and block_size > limit:
        logger.warning(
            "%s %d is more than the model's %d positions: using %d", option, block_size, limit, limit
        )
        return limit
    return block_size


def hidden_size(model: nn.Module) -> int:
    """The width of the residual stream, read from the model's config."""
    config = getattr(model, "config", None)
    size = (
        getattr(config, "hidden_size", None)
        or getattr(config, "n_embd", None)
        or getattr(config, "d_model", None)
    )
    if size is None:
        raise ModelError(f"cannot read the hidden size of {type(model).__name__} from its config")
    return int(size)


def relative_block(depth: float, count: int) -> int:
    """The block at relative depth ``depth`` (0 = first, 1 = last) of ``count`` blocks."""
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"layers: a relative depth must be in [0, 1], got {depth}")
    return round(depth * (count - 1))


def block_indices(layers: str | Sequence[int | float], count: int) -> list[int]:
    """Block indices from names, indices or relative depths.

    One parser for every method that picks blocks (the editors, the memory, the command line).
    Names: ``"first"``, ``"last"``, ``"all"``, joined with ``+`` (``"first+last"``); an int is
    a block index (negative from the end); a float, or a string with a decimal point such as
    ``"0.7"``, is a relative depth, so one setting means the same place in a 4-block and a
    30-block model; ``"a:b"`` is every block from ``a`` to ``b``, both included (``"0.1:0.25"``:
    a span of depths, blocks 3-7 of 30 and 0-1 of 4).
    """
    if isinstance(layers, str):
        named = {"first": [0], "last": [count - 1], "all": list(range(count))}

        def one(part: str) -> int:
            index = relative_block(float(part), count) if "." in part else int(part)
            if not -count <= index < count:
                raise ConfigError(f"layers: block {index} is not in 0..{count - 1}")
            return index % count

        indices: list[int] = []
        for part in layers.split("+"):
            if part in named:
                indices += named[part]
                continue
            try:
                if ":" in part:
                    first, last = (one(end) for end in part.split(":"))
                    indices += list(range(first, last + 1))
                else:
                    indices.append(one(part))
            except ValueError:
                raise ConfigError(
                    f"layers: unknown choice '{part}' (first, last, all, indices, depths like 0.7, "
                    "or spans like 0.1:0.25)"
                ) from None
        if not indices:
            raise ConfigError(f"layers: '{layers}' names no block")
        return block_indices(indices, count)
    if not layers:
        raise ConfigError(f"layers: name at least one block of 0..{count - 1}")
    resolved = [relative_block(i, count) if isinstance(i, float) else i for i in layers]
    bad = [i for i in resolved if not -count <= i < count]
    if bad:
        raise ConfigError(f"layers {list(layers)} are not all block indices in 0..{count - 1}")
    return sorted({i % count for i in resolved})


def typed_blocks(text: str) -> str | list[int | float]:
    """Blocks as a user types them: a comma list of numbers becomes indices (``2``, ``-1``) and
    relative depths (``0.5``); names and spans (``first+last``, ``0.1:0.25``) stay text, for
    :func:`block_indices` to read."""
    parts = [part.strip() for part in text.split(",")]
    if all(part.removeprefix("-").replace(".", "", 1).isdigit() for part in parts):
        return [float(part) if "." in part else int(part) for part in parts]
    return text


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
