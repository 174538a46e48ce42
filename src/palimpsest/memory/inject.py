"""Adding product-key memory to a Hugging Face model, and saving only what was added.

Like PEFT adapters, the memory is injected by config into an existing model and saved on
its own (``memory_config.json`` + ``memory.safetensors``), so the base weights stay where
they are. Two ways to use a layer's feed-forward network (FFN):

``"residual"`` (Kim & Jung 2020)
    the memory output is *added* to the FFN output: the memory runs in parallel with the
    FFN, and a pretrained model keeps its FFN knowledge;
``"replace"`` (Lample et al. 2019)
    the memory takes the FFN's place.

FFNs are found by the model's structure, not its name: the block list is the
``nn.ModuleList`` with one entry per layer; in a block, a ``mlp`` child (GPT-2, Llama,
most decoders) or the BERT pair ``intermediate`` + ``output`` (post-LayerNorm encoders),
or a child the user names with ``PKMConfig(ffn_module=...)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory.layer import ProductKeyMemory, QueryNorm
from palimpsest.models import MEMORY_CONFIG_KEY, hidden_size, transformer_blocks

CONFIG_FILE = "memory_config.json"
WEIGHTS_FILE = "memory.safetensors"


@dataclass
class PKMConfig:
    """Where and how big the memories are (one per listed layer)."""

    layers: list[int] = field(default_factory=lambda: [0])
    mode: Literal["residual", "replace"] = "residual"
    n_keys: int = 512
    heads: int = 4
    k: int = 32
    k_dim: int = 256
    query_norm: QueryNorm = "layernorm"
    input_dropout: float = 0.0
    query_dropout: float = 0.0
    value_dropout: float = 0.0
    #: Start with all-zero values (a residual memory then leaves the model unchanged).
    zero_values: bool = False
    #: Sparse value gradients over the rows read, for lazy optimizer updates (see
    #: :class:`palimpsest.optim.LazyAdamW`); dense gradients work with any optimizer.
    sparse_updates: bool = False
    #: Name of the FFN child inside a block, for families the structure rules do not know.
    ffn_module: str | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("memory.layers: name at least one block")
        if self.mode not in ("residual", "replace"):
            raise ConfigError(f"memory.mode: expected 'residual' or 'replace', got {self.mode!r}")
        if self.query_norm not in ("layernorm", "batchnorm", "none"):
            raise ConfigError(
                f"memory.query_norm: expected layernorm, batchnorm or none, got {self.query_norm!r}"
            )
        for name in ("n_keys", "heads", "k", "k_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"memory.{name} must be positive, got {getattr(self, name)}")
        if self.k > self.n_keys:
            raise ConfigError(f"memory.k ({self.k}) cannot exceed memory.n_keys ({self.n_keys})")
        if self.k_dim % 2:
            raise ConfigError(f"memory.k_dim must be even (two half-keys), got {self.k_dim}")


class _MaskContext:
    """The attention mask of the current forward pass, shared with the memories (for BatchNorm)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


class MemoryFFN(nn.Module):
    """A decoder-style FFN (``hidden -> hidden``) with a memory beside it or in its place.

    ``memory`` is any module called as ``memory(hidden, attention_mask)``.
    """

    def __init__(self, ffn: nn.Module | None, memory: ProductKeyMemory, context: _MaskContext):
        super().__init__()
        self.ffn = ffn
        self.memory = memory
        self._context = context

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        read = self.memory(hidden, self._context.mask)
        return read if self.ffn is None else self.ffn(hidden, *args, **kwargs) + read


class MemoryBertOutput(nn.Module):
    """BERT's FFN output (``LayerNorm(dropout(dense(h)) + x)``) with a memory of ``x`` added or instead."""

    def __init__(self, output: nn.Module, memory: ProductKeyMemory, context: _MaskContext, replace: bool):
        super().__init__()
        self.dense = None if replace else output.dense
        self.dropout = output.dropout
        self.LayerNorm = output.LayerNorm  # keep the HF name: pretrained LayerNorm weights stay addressable
        self.memory = memory
        self._context = context

    def forward(self, intermediate: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        update = self.memory(input_tensor, self._context.mask)
        if self.dense is not None:
            update = update + self.dense(intermediate)
        return self.LayerNorm(self.dropout(update) + input_tensor)


class _PassThrough(nn.Module):
    """Stands in for BERT's ``intermediate`` when the memory replaces the FFN (no wasted compute)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def attach_to_ffn(
    model: nn.Module,
    layers: list[int],
    make: Callable[[int], nn.Module],
    *,
    mode: Literal["residual", "replace"],
    ffn_module: str | None = None,
) -> None:
    """Put ``make(dim)`` beside (``"residual"``) or in place of (``"replace"``) each listed FFN.

    The module is called as ``module(hidden, attention_mask)`` on the FFN's input and
    returns a tensor of the same shape. The product-key memory is one such module; the
    memory study also attaches dense FFNs and an empty one as capacity controls.
    """
    prefix, blocks = transformer_blocks(model)
    bad = [index for index in layers if not -len(blocks) <= index < len(blocks)]
    if bad or not layers:
        raise ModelError(f"memory layers {layers or '[]'} are not all in 0..{len(blocks) - 1}")
    dim = hidden_size(model)
    context = _MaskContext()
    reference = next(model.parameters())
    replace = mode == "replace"
    for index in layers:
        block = blocks[index]
        module = make(dim).to(device=reference.device, dtype=reference.dtype)
        module.train(model.training)  # follow the model's mode (BatchNorm, dropout)
        name = ffn_module or ("mlp" if isinstance(getattr(block, "mlp", None), nn.Module) else None)
        if name is not None:
            ffn = getattr(block, name, None)
            if not isinstance(ffn, nn.Module):
                children = ", ".join(n for n, _ in block.named_children())
                raise ModelError(f"block {index} has no module '{name}' (children: {children})")
            setattr(block, name, MemoryFFN(None if replace else ffn, module, context))
        elif all(
            hasattr(getattr(block, part, None), attr)
            for part, attr in (("intermediate", "dense"), ("output", "LayerNorm"))
        ):
            block.output = MemoryBertOutput(block.output, module, context, replace)
            if replace:
                block.intermediate = _PassThrough()
        else:
            children = ", ".join(f"{n} ({type(m).__name__})" for n, m in block.named_children())
            raise ModelError(
                f"cannot find the FFN of block {index} of {prefix}; its children are: {children}. "
                "Name it with PKMConfig(ffn_module=...)"
            )

    def remember_mask(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        context.mask = kwargs.get("attention_mask")

    model.register_forward_pre_hook(remember_mask, with_kwargs=True)


def add_product_key_memory(model: nn.Module, config: PKMConfig) -> nn.Module:
    """Insert one memory per ``config.layers`` block, in place; returns the model.

    The model's config records the memory settings (``palimpsest_memory``), and
    :func:`save_memory` / :func:`load_memory` move the added weights alone.
    """
    if getattr(model, "_palimpsest_memory", None) is not None:
        raise ModelError("this model already has product-key memory")

    def make(dim: int) -> ProductKeyMemory:
        return ProductKeyMemory(
            dim, n_keys=config.n_keys, heads=config.heads, k=config.k, k_dim=config.k_dim,
            query_norm=config.query_norm, input_dropout=config.input_dropout,
            query_dropout=config.query_dropout, value_dropout=config.value_dropout,
            zero_values=config.zero_values, sparse_updates=config.sparse_updates,
        )  # fmt: skip

    attach_to_ffn(model, config.layers, make, mode=config.mode, ffn_module=config.ffn_module)
    model._palimpsest_memory = config  # type: ignore[attr-defined]
    setattr(model.config, MEMORY_CONFIG_KEY, asdict(config))
    return model


def memories(model: nn.Module) -> dict[str, ProductKeyMemory]:
    """The memory layers of a model, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, ProductKeyMemory)}


def memory_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the tensors the memories added (parameters and BatchNorm statistics)."""
    prefixes = tuple(f"{name}." for name in memories(model))
    return {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}


def save_memory(model: nn.Module, path: str | Path) -> Path:
    """``memory_config.json`` + ``memory.safetensors`` (the added weights alone)."""
    config = getattr(model, "_palimpsest_memory", None)
    if config is None:
        raise ModelError("this model has no product-key memory to save")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in memory_state_dict(model).items()}
    save_file(tensors, str(path / WEIGHTS_FILE))
    write_memory_config(config, model.config.model_type, path)
    return path


def load_memory(model: nn.Module, path: str | Path) -> nn.Module:
    """Inject the memories saved at ``path`` into ``model`` and load their weights."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ModelError(f"no saved memory at '{path}' (expected {CONFIG_FILE})")
    from palimpsest.config import from_dict

    document = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    add_product_key_memory(model, from_dict(PKMConfig, document["memory"]))
    weights_file = path / WEIGHTS_FILE if (path / WEIGHTS_FILE).is_file() else path / "model.safetensors"
    stored = load_file(str(weights_file))
    expected = memory_state_dict(model)
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ModelError(f"{weights_file} lacks memory weights, e.g. {missing[0]}")
    model.load_state_dict({key: stored[key] for key in expected}, strict=False)
    return model


def save_merged(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """The whole model (base + memories) in one folder: ``save_pretrained`` plus the memory config.

    Reload with :func:`load_merged` (``from_pretrained`` alone would not know the memories).
    """
    path = Path(path)
    model.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    write_memory_config(model._palimpsest_memory, model.config.model_type, path)  # type: ignore[attr-defined]
    return path


def write_memory_config(config: PKMConfig, base_model_type: str, path: str | Path) -> None:
    """``memory_config.json`` beside a saved model: :func:`load_merged` reads it back."""
    from palimpsest.storage import write_text

    document = {"memory": asdict(config), "base_model_type": base_model_type}
    write_text(Path(path) / CONFIG_FILE, json.dumps(document, indent=2))


def load_merged(path: str | Path, *, task: str = "lm", num_labels: int | None = None) -> nn.Module:
    """Load a model saved with its memories (:func:`save_merged`, ``pretrain --memory-layer``, or
    any ``save_pretrained`` of a model with memory): base structure, memories, then every weight.

    The result has the saved model's outputs exactly; a weight file that lacks a tensor the
    rebuilt model has, or holds one it does not, is refused rather than loaded partially.
    """
    from palimpsest.config import from_dict
    from palimpsest.models import MEMORY_CONFIG_KEY, load_base, load_config

    path = Path(path)
    config = load_config(str(path))
    document = getattr(config, MEMORY_CONFIG_KEY, None)
    base_type = config.model_type
    if document is None and (path / CONFIG_FILE).is_file():
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        document, base_type = saved["memory"], saved.get("base_model_type", base_type)
    if document is None:
        raise ModelError(f"no merged memory model at '{path}' (its config names no memory)")
    if base_type != config.model_type:
        raise ModelError(
            f"'{path}': the memory was saved for a {base_type} model, the folder holds a {config.model_type}"
        )
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise ModelError(f"'{path}' has no model.safetensors (a sharded or .bin checkpoint is not read here)")
    model = load_base(str(path), task=task, num_labels=num_labels)  # type: ignore[arg-type]
    model.config.__dict__.pop(MEMORY_CONFIG_KEY, None)  # add_product_key_memory writes it again
    add_product_key_memory(model, from_dict(PKMConfig, dict(document)))
    stored = load_file(str(weights_file))
    names = dict(model.named_parameters(remove_duplicate=False))
    buffers = {name for name, _ in model.named_buffers()}
    unexpected = sorted(set(stored) - set(names) - buffers)
    if unexpected:
        raise ModelError(f"{weights_file} holds weights this model does not have, e.g. {unexpected[0]}")
    model.load_state_dict(stored, strict=False)
    loaded = {id(parameter) for name, parameter in names.items() if name in stored}
    unloaded = [name for name, parameter in names.items() if id(parameter) not in loaded]
    if unloaded:
        raise ModelError(f"{weights_file} lacks weights, e.g. {unloaded[0]}")
    return model
