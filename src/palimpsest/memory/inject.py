"""Adding product-key memory to a Hugging Face model, PEFT-style: by config, removable, and
saved either with the model (base names unchanged) or on its own.

Two ways to use a layer's feed-forward network (FFN):

``"residual"`` (Kim & Jung 2020)
    the memory output is *added* to the FFN output: the memory runs in parallel with the
    FFN, and a pretrained model keeps its FFN knowledge;
``"replace"`` (Lample et al. 2019)
    the memory takes the FFN's place.

FFNs are found by the model's structure, not its name: the block list is the
``nn.ModuleList`` with one entry per layer; in a block, a ``mlp`` child (GPT-2, Llama,
most decoders) or the BERT pair ``intermediate`` + ``output`` (post-LayerNorm encoders),
or a child the user names with ``PKMConfig(ffn_module=...)``.

Every base parameter keeps its name: a residual memory becomes a ``memory`` child of the
FFN module (``...mlp.memory.keys``) whose read a forward hook adds to the FFN's output, so
a merged checkpoint is the base checkpoint plus the memory's tensors. The memory's
settings have one home, the model's config (``palimpsest_memory``, written into
``config.json`` by ``save_pretrained``); :class:`MemoryHandle` undoes the injection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from palimpsest.config import OMITTED_AT_DEFAULT
from palimpsest.errors import ConfigError, ModelError
from palimpsest.gpu_kernels import GPU_KERNEL_CHOICES, GpuKernels
from palimpsest.hf_auto import base_model_type, extend_config, restore_config
from palimpsest.memory.gate import KeyInput
from palimpsest.memory.layer import SPARSE_UPDATES_CHOICES, ProductKeyMemory, QueryNorm, SparseUpdates
from palimpsest.memory.taught import TAUGHT_FILE, TaughtFacts
from palimpsest.models import block_indices, hidden_size, transformer_blocks
from palimpsest.seeds import check_seed
from palimpsest.storage import is_main_process, read_safetensors, save_model, write_text

#: The key of the memory's settings in a model's config (and so in its config.json).
MEMORY_CONFIG_KEY = "palimpsest_memory"
#: The adapter format (:func:`save_memory`): the settings and the added tensors alone.
CONFIG_FILE = "memory_config.json"
WEIGHTS_FILE = "memory.safetensors"
#: The name of the memory module inside the FFN it joins (``...mlp.memory``).
MEMORY_CHILD = "memory"


@dataclass
class PKMConfig:
    """Where and how big the memories are (one per listed layer)."""

    #: Block indices (negative from the end) or relative depths (floats in [0, 1], 0.5 = middle).
    layers: list[int | float] = field(default_factory=lambda: [0])
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
    #: :class:`palimpsest.optim.LazyAdamW`); dense gradients work with any optimizer. "auto":
    #: sparse for batches that read few of the rows (faster there), in palimpsest's training
    #: only (single process, ``LazyAdamW``); dense anywhere else.
    sparse_updates: SparseUpdates = "auto"
    #: Name of the FFN child inside a block, for families the structure rules do not know.
    ffn_module: str | None = None
    #: Seed of the memories' initialisation; ``None`` draws from torch's global generator.
    seed: int | None = None
    #: Learning rate of the memory values in training (XLM: a constant 1e-3, no weight decay).
    value_lr: float = 1e-3
    #: Hidden width of a gate that opens the memory only for inputs like those it was taught
    #: (:mod:`palimpsest.memory.gate`; closed for every input until fitted); ``None``: no gate,
    #: every token reads the memory.
    gate_hidden: int | None = None
    #: Room for keys in the gate's codebook (0: none): the gate then opens only where an input lies
    #: near one it was taught at (:meth:`MemoryGate.set_keys`; about 9 keys per taught fact).
    gate_keys: int = 0
    #: The block (an index or a relative depth, at or before the memory's) whose FFN input the
    #: codebook's keys are taken from and compared at (``None``: the memory's own input). An early
    #: block's state at a subject is more the subject's tokens than the words around it, so unseen
    #: phrasings of a taught subject open and other subjects stay closed
    #: (``results/gated-memory-probe-real/key_layers-128.json``); the scorer reads the memory's input.
    gate_key_block: int | float | None = field(default=None, metadata={OMITTED_AT_DEFAULT: True})
    #: The value read's implementation on a GPU: ``"triton"`` (:mod:`palimpsest.gpu_kernels`),
    #: ``"torch"`` (torch ops, the reference) or ``"auto"`` (torch ops until the kernels are measured
    #: faster: ``benchmarks/gpu.sh``). No effect on a CPU.
    gpu_kernels: GpuKernels = "auto"

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("memory.layers: name at least one block")
        check_seed(self.seed, "memory.seed")
        if self.mode not in ("residual", "replace"):
            raise ConfigError(f"memory.mode: expected 'residual' or 'replace', got {self.mode!r}")
        if self.query_norm not in ("layernorm", "batchnorm", "none"):
            raise ConfigError(
                f"memory.query_norm: expected layernorm, batchnorm or none, got {self.query_norm!r}"
            )
        for name in ("n_keys", "heads", "k", "k_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"memory.{name} must be positive, got {getattr(self, name)}")
        if self.sparse_updates not in SPARSE_UPDATES_CHOICES:
            raise ConfigError(
                f"memory.sparse_updates: expected true, false or 'auto', got {self.sparse_updates!r}"
            )
        if self.k > self.n_keys:
            raise ConfigError(f"memory.k ({self.k}) cannot exceed memory.n_keys ({self.n_keys})")
        if self.k_dim % 2:
            raise ConfigError(f"memory.k_dim must be even (two half-keys), got {self.k_dim}")
        for name in ("input_dropout", "query_dropout", "value_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"memory.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.value_lr > 0.0 or self.value_lr == float("inf"):
            raise ConfigError(f"memory.value_lr must be a positive number, got {self.value_lr}")
        if self.gate_hidden is not None and (isinstance(self.gate_hidden, bool) or self.gate_hidden <= 0):
            raise ConfigError(
                f"memory.gate_hidden must be a positive width or null, got {self.gate_hidden!r}"
            )
        if self.gpu_kernels not in GPU_KERNEL_CHOICES:
            raise ConfigError(
                f"memory.gpu_kernels: expected one of {', '.join(GPU_KERNEL_CHOICES)}, "
                f"got {self.gpu_kernels!r}"
            )
        if isinstance(self.gate_keys, bool) or not isinstance(self.gate_keys, int) or self.gate_keys < 0:
            raise ConfigError(f"memory.gate_keys must be a whole number >= 0, got {self.gate_keys!r}")
        if self.gate_keys and self.gate_hidden is None:
            raise ConfigError("memory.gate_keys: a codebook belongs to a gate (set memory.gate_hidden)")
        if self.gate_key_block is not None and not self.gate_keys:
            raise ConfigError(
                "memory.gate_key_block: the block a codebook reads needs a codebook (set memory.gate_keys)"
            )
        if isinstance(self.gate_key_block, bool):
            raise ConfigError(
                f"memory.gate_key_block must be a block index or depth, got {self.gate_key_block!r}"
            )
        if self.gate_hidden is not None and self.mode != "residual":
            raise ConfigError(
                "memory.gate_hidden: a gate needs a residual memory (a closed replace memory drops the FFN)"
            )

    def layer(self, dim: int, *, generator: torch.Generator | None = None) -> ProductKeyMemory:
        """One memory of these settings for a residual stream of width ``dim``."""
        return ProductKeyMemory(
            dim, n_keys=self.n_keys, heads=self.heads, k=self.k, k_dim=self.k_dim,
            query_norm=self.query_norm, input_dropout=self.input_dropout,
            query_dropout=self.query_dropout, value_dropout=self.value_dropout,
            zero_values=self.zero_values, sparse_updates=self.sparse_updates, generator=generator,
            gate_hidden=self.gate_hidden, gate_keys=self.gate_keys,
            gate_separate_keys=self.gate_key_block is not None, gpu_kernels=self.gpu_kernels,
        )  # fmt: skip


class _MaskContext:
    """The attention mask of the current forward pass, shared with the memories (for BatchNorm).

    Hooks are objects with methods, not closures: ``copy.deepcopy`` of a model then gives
    hooks that talk to the copy's modules, not the original's.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def remember(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.mask = kwargs.get("attention_mask")


class _AddMemoryRead:
    """Forward hook of an FFN with a residual memory: ``ffn(h) + memory(h)``."""

    def __init__(self, memory: nn.Module, context: _MaskContext):
        self.memory = memory
        self.context = context

    def __call__(self, _ffn: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = args[0] if args else next(iter(kwargs.values()))
        return output + self.memory(hidden, self.context.mask)


class MemoryFFN(nn.Module):
    """A memory in an FFN's place (``"replace"``): ``hidden -> memory(hidden)``."""

    def __init__(self, memory: nn.Module, context: _MaskContext):
        super().__init__()
        self.memory = memory
        self._context = context

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.memory(hidden, self._context.mask)


class MemoryBertOutput(nn.Module):
    """BERT's FFN output (``LayerNorm(dropout(dense(h)) + x)``) with a memory of ``x`` added or instead.

    The attribute names are BertOutput's (``dense``, ``LayerNorm``), so pretrained weights
    keep their names; the memory is ``output.memory``.
    """

    def __init__(self, output: nn.Module, memory: nn.Module, context: _MaskContext, replace: bool):
        super().__init__()
        self.dense = None if replace else output.dense
        self.LayerNorm = output.LayerNorm
        self.dropout = output.dropout
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


Undo = Callable[[], None]


def attach_to_ffn(
    model: nn.Module,
    layers: Sequence[int | float],
    make: Callable[[int], nn.Module],
    *,
    mode: Literal["residual", "replace"],
    ffn_module: str | None = None,
) -> list[Undo]:
    """Put ``make(dim)`` beside (``"residual"``) or in place of (``"replace"``) each listed FFN.

    ``layers`` are block indices (negative from the end) or relative depths (a float in [0, 1]:
    0.5 is the middle block, whatever the model's depth).

    The module is called as ``module(hidden, attention_mask)`` on the FFN's input and
    returns a tensor of the same shape. The product-key memory is one such module; the
    memory study also attaches dense FFNs and an empty one as capacity controls. Returns
    the steps that undo the change (run them in reverse order).
    """
    prefix, blocks = transformer_blocks(model)
    if not layers:
        raise ConfigError(f"memory layers: name at least one block of 0..{len(blocks) - 1}")
    given = list(layers)
    layers = [block_indices([index], len(blocks))[0] for index in given]  # in the order given
    if len(set(layers)) < len(layers):
        raise ConfigError(f"memory layers {given} name one block twice")
    dim = hidden_size(model)
    context = _MaskContext()
    reference = next(model.parameters())
    replace = mode == "replace"
    undo: list[Undo] = []
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
            if replace:
                setattr(block, name, MemoryFFN(module, context))
                undo.append(_restore(block, name, ffn))
            else:
                if MEMORY_CHILD in dict(ffn.named_children()):
                    raise ModelError(f"block {index}'s {name} already has a child named '{MEMORY_CHILD}'")
                ffn.add_module(MEMORY_CHILD, module)
                hook = ffn.register_forward_hook(_AddMemoryRead(module, context), with_kwargs=True)
                undo.append(_detach(ffn, hook))
        elif all(
            hasattr(getattr(block, part, None), attr)
            for part, attr in (("intermediate", "dense"), ("output", "LayerNorm"))
        ):
            undo.append(_restore(block, "output", block.output))
            block.output = MemoryBertOutput(block.output, module, context, replace)
            if replace:
                undo.append(_restore(block, "intermediate", block.intermediate))
                block.intermediate = _PassThrough()
        else:
            children = ", ".join(f"{n} ({type(m).__name__})" for n, m in block.named_children())
            raise ModelError(
                f"cannot find the FFN of block {index} of {prefix}; its children are: {children}. "
                "Name it with PKMConfig(ffn_module=...)"
            )
    mask_hook = model.register_forward_pre_hook(context.remember, with_kwargs=True)
    undo.append(mask_hook.remove)
    return undo


def _feed_key_inputs(model: nn.Module, config: PKMConfig) -> list[Undo]:
    """Give each memory's gate the input of the FFN of ``config.gate_key_block`` (a forward pre-hook
    fills one :class:`KeyInput` the memories share); returns the undo steps."""
    _, blocks = transformer_blocks(model)
    try:
        key_block = block_indices([config.gate_key_block], len(blocks))[0]
    except ConfigError:
        raise ConfigError(
            f"memory.gate_key_block: {config.gate_key_block} is no block of this model (0..{len(blocks) - 1})"
        ) from None
    memory_blocks = block_indices(config.layers, len(blocks))
    if key_block > min(memory_blocks):
        raise ConfigError(
            f"memory.gate_key_block: block {key_block} comes after the memory's block {min(memory_blocks)} "
            "(its state is not computed yet when the memory reads)"
        )
    name = config.ffn_module or "mlp"
    ffn = getattr(blocks[key_block], name, None)
    if not isinstance(ffn, nn.Module):
        raise ModelError(
            f"memory.gate_key_block: block {key_block} has no FFN module '{name}' (a causal LM's)"
        )
    holder = KeyInput()
    hook = ffn.register_forward_pre_hook(holder)
    layers = list(memories(model).values())
    for layer in layers:
        layer.key_input = holder

    def undo() -> None:
        hook.remove()
        for layer in layers:
            layer.key_input = None

    return [undo]


class _restore:
    """Undo step: put ``original`` back as ``parent.name``."""

    def __init__(self, parent: nn.Module, name: str, original: nn.Module):
        self.parent, self.name, self.original = parent, name, original

    def __call__(self) -> None:
        setattr(self.parent, self.name, self.original)


class _detach:
    """Undo step: remove a residual memory's hook and child from its FFN."""

    def __init__(self, ffn: nn.Module, hook: Any):
        self.ffn, self.hook = ffn, hook

    def __call__(self) -> None:
        self.hook.remove()
        del self.ffn._modules[MEMORY_CHILD]


class MemoryHandle:
    """The memories added to one model: their settings and how to take them out again.

    ``model.palimpsest_memory`` holds it after :func:`add_product_key_memory`; the settings
    live in the model's config (one home, saved in config.json) and are read from there.
    """

    def __init__(self, model: nn.Module, undo: list[Undo]):
        self._model = model
        self._undo = undo
        #: The facts a gated memory was taught (:mod:`palimpsest.memory.taught`); saved beside it.
        self.taught = TaughtFacts([])

    @property
    def config(self) -> PKMConfig:
        from palimpsest.config import from_dict

        return from_dict(PKMConfig, dict(getattr(self._model.config, MEMORY_CONFIG_KEY)), prefix="memory.")

    @property
    def layers(self) -> dict[str, ProductKeyMemory]:
        return memories(self._model)

    def remove(self) -> nn.Module:
        """Take every memory out: the model computes exactly what it did before they were added.

        A ``"replace"`` memory can be removed only from the model it was added to (a model
        reloaded with its memory never had the replaced FFN's weights).
        """
        if not self._undo:
            raise ModelError(
                "this memory replaced FFNs of a model loaded from disk; the original FFN weights are "
                "not there to restore"
            )
        for step in reversed(self._undo):
            step()
        self._undo = []
        self._model.config.__dict__.pop(MEMORY_CONFIG_KEY, None)
        restore_config(self._model.config)
        del self._model.palimpsest_memory
        return self._model


def memory_handle(model: nn.Module) -> MemoryHandle | None:
    """The :class:`MemoryHandle` of a model with product-key memory, else ``None``."""
    handle = getattr(model, "palimpsest_memory", None)
    return handle if isinstance(handle, MemoryHandle) else None


def add_product_key_memory(
    model: nn.Module, config: PKMConfig, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Insert one memory per ``config.layers`` block, in place; returns the model.

    The memories draw their initial weights from ``generator`` (else from one seeded with
    ``config.seed``, else from torch's global generator). ``model.palimpsest_memory`` is
    the :class:`MemoryHandle` (``.remove()``); the model's config records the settings, so
    ``save_pretrained`` carries them and :func:`load_merged` rebuilds the memories.
    """
    if memory_handle(model) is not None:
        raise ModelError("this model already has product-key memory")
    if generator is None and config.seed is not None:
        generator = torch.Generator().manual_seed(config.seed)

    def make(dim: int) -> ProductKeyMemory:
        return config.layer(dim, generator=generator)

    undo = attach_to_ffn(model, config.layers, make, mode=config.mode, ffn_module=config.ffn_module)
    if config.gate_key_block is not None:
        try:
            undo += _feed_key_inputs(model, config)
        except Exception:
            for step in reversed(undo):
                step()
            raise
    setattr(model.config, MEMORY_CONFIG_KEY, asdict(config))
    extend_config(model.config)  # saved as model type "palimpsest": never loaded without the memory
    model.palimpsest_memory = MemoryHandle(model, undo)
    return model


def memories(model: nn.Module) -> dict[str, ProductKeyMemory]:
    """The memory layers of a model, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, ProductKeyMemory)}


def memory_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the tensors the memories added (parameters and BatchNorm statistics)."""
    prefixes = tuple(f"{name}." for name in memories(model))
    return {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}


def save_memory(model: nn.Module, path: str | Path) -> Path:
    """The adapter format: ``memory_config.json`` (settings + base model type) and
    ``memory.safetensors`` (the added tensors alone). Written by the main process only."""
    handle = memory_handle(model)
    if handle is None:
        raise ModelError("this model has no product-key memory to save")
    path = Path(path)
    document = {"memory": asdict(handle.config), "base_model_type": base_model_type(model.config)}
    if is_main_process():  # each file under a temporary name first: a kill never leaves a torn one
        path.mkdir(parents=True, exist_ok=True)
        tensors = {key: value.detach().contiguous().cpu() for key, value in memory_state_dict(model).items()}
        save_file(tensors, str(path / f".{WEIGHTS_FILE}.tmp"))
        (path / f".{WEIGHTS_FILE}.tmp").replace(path / WEIGHTS_FILE)
        _write_taught(handle, path)
    write_text(path / CONFIG_FILE, json.dumps(document, indent=2))
    return path


def _write_taught(handle: MemoryHandle, folder: Path) -> None:
    """The list of taught facts beside the weights (none written, and a stale one removed, when
    the memory holds none)."""
    if handle.taught.facts:
        handle.taught.write(folder)
    else:
        (folder / TAUGHT_FILE).unlink(missing_ok=True)


def _read_taught(model: nn.Module, folder: Path) -> None:
    taught = TaughtFacts.read(folder)
    if taught is not None:
        model.palimpsest_memory.taught = taught


def load_memory(model: nn.Module, path: str | Path) -> nn.Module:
    """Inject the memories saved at ``path`` (adapter format) into ``model`` and load their weights.

    Refused with one line when the memory was saved for another model type or width.
    """
    from palimpsest.config import from_dict

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ModelError(f"no saved memory at '{path}' (expected {CONFIG_FILE})")
    try:
        document = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        settings = from_dict(PKMConfig, document["memory"], prefix="memory.")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"{path / CONFIG_FILE} is not a palimpsest memory config ({error})") from None
    base_type = document.get("base_model_type")
    if base_type is not None and base_type != base_model_type(model.config):
        raise ModelError(
            f"the memory at '{path}' was saved for a {base_type} model, not a {base_model_type(model.config)}"
        )
    add_product_key_memory(model, settings)
    stored = read_safetensors(path / WEIGHTS_FILE)
    expected = memory_state_dict(model)
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ModelError(f"{path / WEIGHTS_FILE} lacks memory weights, e.g. {missing[0]}")
    wrong = [key for key in expected if stored[key].shape != expected[key].shape]
    if wrong:
        raise ModelError(
            f"the memory at '{path}' does not fit this model: {wrong[0]} is {tuple(stored[wrong[0]].shape)}, "
            f"the model needs {tuple(expected[wrong[0]].shape)}"
        )
    model.load_state_dict({key: stored[key] for key in expected}, strict=False)
    _read_taught(model, path)
    return model


def save_merged(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """The whole model (base + memories) in one folder by ``save_pretrained``, main process only.

    The base tensors keep their names and config.json carries the memory settings;
    :func:`palimpsest.models.load_pretrained` (or :func:`load_merged`) rebuilds it exactly.
    """
    handle = memory_handle(model)
    if handle is None:
        raise ModelError("this model has no product-key memory to save")
    return save_model(model, tokenizer, path, extra=lambda staging: _write_taught(handle, staging))


def load_merged(path: str | Path, *, task: str = "lm", num_labels: int | None = None) -> nn.Module:
    """Load a model saved with its memories (:func:`save_merged`, ``pretrain`` with a memory, or
    any ``save_pretrained`` of a model with memory): base structure, memories, then every weight.

    The result has the saved model's outputs exactly; a weight file that lacks a tensor the
    rebuilt model has, or holds one it does not, is refused rather than loaded partially.
    Single-file and sharded (``model.safetensors.index.json``) checkpoints are read.
    """
    from palimpsest.config import from_dict
    from palimpsest.models import load_base, load_config, without_load_report

    path = Path(path)
    config = load_config(str(path))
    document = getattr(config, MEMORY_CONFIG_KEY, None)
    if document is None:
        raise ModelError(f"no merged memory model at '{path}' (its config names no memory)")
    settings = from_dict(PKMConfig, dict(document), prefix=f"{path}/config.json: memory.")
    stored = read_safetensors(path)
    with without_load_report():  # the memory's tensors are checked below, not reported as unexpected
        model = load_base(str(path), task=task, num_labels=num_labels)  # type: ignore[arg-type]
    add_product_key_memory(model, settings)
    if settings.mode == "replace":
        model.palimpsest_memory._undo = []  # the replaced FFNs were never saved: nothing to restore
    names = dict(model.named_parameters(remove_duplicate=False))
    buffers = {name for name, _ in model.named_buffers()}
    unexpected = sorted(set(stored) - set(names) - buffers)
    if unexpected:
        raise ModelError(f"{path} holds weights this model does not have, e.g. {unexpected[0]}")
    model.load_state_dict(stored, strict=False)
    loaded = {id(parameter) for name, parameter in names.items() if name in stored}
    unloaded = [name for name, parameter in names.items() if id(parameter) not in loaded]
    if unloaded:
        raise ModelError(f"{path} lacks weights, e.g. {unloaded[0]}")
    _read_taught(model, path)
    return model
