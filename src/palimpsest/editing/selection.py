"""Which weights an edit writes: blocks by index, relative depth, span or name, and within them
the FFN, its output projection (found by shape), the attention, the whole block, or the token
embeddings; anything else by glob patterns over parameter names.

Blocks are found by structure (the module list with one entry per layer), their FFN and
attention children by the conventional attribute names of HF models (``mlp``, ``intermediate``
+ ``output``; ``attn``, ``attention``, ``self_attn``). Shared by every editor and by the
statistics of ordinary text, so that a block index means the same thing everywhere.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from palimpsest.errors import ConfigError, ModelError
from palimpsest.models import block_indices, hidden_size, transformer_blocks

FFN_CHILDREN = ("mlp", "intermediate", "output", "feed_forward", "ffn")
ATTENTION_CHILDREN = ("attn", "attention", "self_attn", "self_attention")
MODULE_KINDS = ("ffn", "ffn-out", "attention", "block", "embeddings")


def _matrix_shape(module: nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of a Linear or of GPT-2's Conv1D; None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def ffn_output_projections(ffn_parts: Sequence[nn.Module], hidden: int) -> list[nn.Module]:
    """The FFN's output projection(s): matrices from a wider space back to the hidden size.

    Found by shape, not by name: Llama's ``down_proj``, GPT-2's ``c_proj``, BERT's
    ``output.dense`` all map ``intermediate -> hidden``. This is the weight EasyEdit's FT-M and
    ROME edit: the FFN's "value" side, where a key-value reading of the FFN stores facts.
    """
    found = []
    for part in ffn_parts:
        for module in part.modules():
            shape = _matrix_shape(module)
            if shape is not None and shape[1] == hidden and shape[0] != hidden:
                found.append(module)
    return found


def select_parameters(
    model: nn.Module,
    layers: str | Sequence[int | float] = "first+last",
    modules: Sequence[str] = ("ffn",),
    patterns: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The parameters an edit may change, by name (tied tensors once)."""
    names = {id(p): n for n, p in model.named_parameters()}
    chosen: dict[str, nn.Parameter] = {}
    unknown = [kind for kind in modules if kind not in MODULE_KINDS]
    if unknown:
        raise ConfigError(f"modules: unknown kind(s) {', '.join(unknown)} (known: {', '.join(MODULE_KINDS)})")
    block_kinds = [kind for kind in modules if kind != "embeddings"]
    if block_kinds:
        prefix, blocks = transformer_blocks(model)
        for index in block_indices(layers, len(blocks)):
            block = blocks[index]
            for kind in block_kinds:
                wanted = {"ffn": FFN_CHILDREN, "ffn-out": FFN_CHILDREN, "attention": ATTENTION_CHILDREN}
                parts = [m for n, m in block.named_children() if kind not in wanted or n in wanted[kind]]
                if parts and kind == "ffn-out":
                    parts = ffn_output_projections(parts, hidden_size(model))
                if not parts:
                    children = ", ".join(f"{n} ({type(m).__name__})" for n, m in block.named_children())
                    raise ModelError(
                        f"cannot find the {kind} of block {index} of {prefix}; its children are: {children}. "
                        "Name the weights with parameters=[glob, ...]"
                    )
                for part in parts:
                    for parameter in part.parameters():
                        chosen[names[id(parameter)]] = parameter
    if "embeddings" in modules:
        embeddings = model.get_input_embeddings()
        if embeddings is None:
            raise ModelError(f"{type(model).__name__} has no input embeddings to edit")
        chosen[names[id(embeddings.weight)]] = embeddings.weight
    for pattern in patterns:
        matched = {n: p for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)}
        if not matched:
            raise ModelError(f"no parameter matches '{pattern}'")
        chosen.update(matched)
    if not chosen:
        raise ConfigError("the edit selects no parameters")
    return chosen


#: Zhu et al.'s constrained fine-tuning as the small-model study and EasyEdit's baselines run
#: it: gradient from every position, δ in absolute units, stop at a training loss of 0.01,
#: trained on the prompt alone.


def ffn_output_projection(model: nn.Module, block: int) -> nn.Module:
    """The matrix of block ``block``'s FFN that maps the intermediate width back to the hidden size
    (Llama's ``down_proj``, GPT-2's ``c_proj``, BERT's ``output.dense``), found by shape."""
    _prefix, blocks = transformer_blocks(model)
    parts = [module for name, module in blocks[block].named_children() if name in FFN_CHILDREN]
    found = ffn_output_projections(parts, hidden_size(model))
    if len(found) != 1:
        raise ModelError(f"block {block} has {len(found)} FFN output projections, not one")
    return found[0]
