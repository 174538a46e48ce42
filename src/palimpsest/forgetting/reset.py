"""One act of forgetting: re-draw the token embeddings and forget their optimizer state.

Chen et al. (2023) reset the token-embedding matrix every K updates during pretraining so
that the transformer body cannot lean on any particular lexical embedding, which later
lets a new language's embeddings be learned quickly from little data. What is reset:

* the input token embeddings, N(0, initializer_range) (``init="normal"``) or drawn to
  match their current mean and std (``init="match"``); the padding row is zeroed again
  (unless the padding token is also the bos/eos/unk token, as in many decoders);
* a tied output head follows automatically (it *is* the same tensor); an untied head is
  reset only with ``reset_output_head=True``;
* the head's per-token bias is *not* touched, as in the official code (it resets only
  ``embed_tokens``; the LM-head bias, dense and LayerNorm keep training normally);
  ``reset_output_bias=True`` zeroes it too, for those who want no trace of old tokens;
* the optimizer state of exactly the tensors reset: Adam's moments are zeroed and their step
  count restarts, so bias correction restarts for them alone (without it the first
  updates of the new rows are scaled by up to 1/(1-beta2)^0.5 wrongly).

Nothing else is touched, bit for bit: position embeddings, LayerNorms, the body and the
body's optimizer state. Values come from a generator seeded by ``seed``, so every DDP
rank that calls this with the same seed draws the same matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from palimpsest.errors import ModelError

logger = logging.getLogger(__name__)

Init = Literal["normal", "match"]


@dataclass
class ForgetReport:
    """What one reset did (names of the parameters it re-drew or zeroed)."""

    reset: list[str] = field(default_factory=list)
    optimizer_states_reset: int = 0
    mean: float = 0.0
    std: float = 0.0
    seed: int | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a DDP / accelerate wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def find_token_embeddings(model: nn.Module) -> nn.Embedding:
    """The input token embeddings, or a :class:`ModelError` that lists what was found."""
    model = _unwrap(model)
    embedding = None
    if hasattr(model, "get_input_embeddings"):
        try:
            embedding = model.get_input_embeddings()
        except NotImplementedError:
            embedding = None
    if not isinstance(embedding, nn.Embedding):
        found = [
            f"{name} {tuple(m.weight.shape)}"
            for name, m in model.named_modules()
            if isinstance(m, nn.Embedding)
        ]
        listing = ", ".join(found) if found else "no nn.Embedding at all"
        raise ModelError(
            f"cannot find the token embeddings of {type(model).__name__} (get_input_embeddings() gave "
            f"{type(embedding).__name__}); embedding modules found: {listing}"
        )
    return embedding


def _parameter_names(model: nn.Module) -> dict[int, str]:
    """Each tensor's first name (a tied head's weight is named as the embeddings it is)."""
    names: dict[int, str] = {}
    for name, parameter in _unwrap(model).named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), name)
    return names


def _padding_index(model: nn.Module, embedding: nn.Embedding) -> int | None:
    """The row to zero, or None. Many decoders (SmolLM2, Llama fine-tunes) pad with their
    end-of-text token: that row is a real token the model reads, so it is drawn like the others."""
    config = getattr(_unwrap(model), "config", None)
    pad = (
        embedding.padding_idx if embedding.padding_idx is not None else getattr(config, "pad_token_id", None)
    )
    if not isinstance(pad, int) or not 0 <= pad < embedding.num_embeddings:
        return None
    used = {getattr(config, name, None) for name in ("bos_token_id", "eos_token_id", "unk_token_id")}
    return None if pad in used else int(pad)


def output_head(model: nn.Module) -> tuple[nn.Module | None, bool]:
    """The output projection and whether its weight is the input embedding matrix."""
    model = _unwrap(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        return None, False
    tied = head.weight is find_token_embeddings(model).weight
    return head, tied


def embedding_parameters(
    model: nn.Module, *, include_output_head: bool = False, include_output_bias: bool = False
) -> list[nn.Parameter]:
    """The parameters a reset re-draws: the token embeddings (a tied head's weight is the same
    tensor), optionally an untied head's weight and the head's per-token bias."""
    embedding = find_token_embeddings(model)
    parameters = [embedding.weight]
    head, tied = output_head(model)
    if head is not None:
        if include_output_head and not tied:
            parameters.append(head.weight)
        bias = getattr(head, "bias", None)
        if include_output_bias and isinstance(bias, nn.Parameter):
            parameters.append(bias)
    return parameters


def _reset_optimizer_state(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> int:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    count = 0
    for parameter in parameters:
        state = inner.state.get(parameter)
        if not state:
            continue
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()  # moments, and a tensor step count, restart at zero
            elif key == "step":
                state[key] = 0
        count += 1
    return count


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, also of a parameter FSDP2 has sharded into a DTensor (gathered)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _assign(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Write a full-size ``value`` into ``parameter``, whole or sharded.

    Under FSDP2 a parameter is a DTensor holding this rank's shard: the value is scattered
    from rank 0 with the parameter's own placements, so every rank keeps its part of one
    and the same draw (even unseeded).
    """
    value = value.to(device=parameter.device, dtype=parameter.dtype)
    if isinstance(parameter, DTensor):
        value = distribute_tensor(value, parameter.device_mesh, parameter.placements, src_data_rank=0)
    parameter.copy_(value)


@torch.no_grad()
def forget_embeddings(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    seed: int | None = None,
    init: Init = "normal",
    std: float | None = None,
    reset_output_head: bool = False,
    reset_output_bias: bool = False,
) -> ForgetReport:
    """Re-initialise the token embeddings (and what depends on them); see the module doc.

    ``std`` defaults to the model's ``initializer_range`` (0.02 when it has none). With
    ``seed=None`` values come from the global generator, which DDP ranks do not share:
    pass a seed in distributed training. Parameters sharded by FSDP2 (DTensors) are reset
    shard by shard from the same full draw, their optimizer state with them.
    """
    if init not in ("normal", "match"):
        raise ValueError(f"init must be 'normal' or 'match', got {init!r}")
    embedding = find_token_embeddings(model)
    weight = embedding.weight
    padding = _padding_index(model, embedding)
    if init == "match":
        rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        if padding is not None:
            rows[padding] = False
        whole = _full(weight)
        mean, spread = whole[rows].float().mean().item(), whole[rows].float().std().item()
    else:
        config = getattr(_unwrap(model), "config", None)
        mean, spread = 0.0, std if std is not None else float(getattr(config, "initializer_range", 0.02))
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    fresh = torch.randn(weight.shape, generator=generator, dtype=torch.float32) * spread + mean
    if padding is not None:
        fresh[padding] = 0.0
    _assign(weight, fresh)

    names = _parameter_names(model)
    report = ForgetReport(reset=[names.get(id(weight), "embeddings")], mean=mean, std=spread, seed=seed)
    parameters = embedding_parameters(
        model, include_output_head=reset_output_head, include_output_bias=reset_output_bias
    )
    head, tied = output_head(model)
    if head is not None and reset_output_head and not tied:
        head_fresh = torch.randn(head.weight.shape, generator=generator, dtype=torch.float32) * spread
        _assign(head.weight, head_fresh)
        report.reset.append(names.get(id(head.weight), "output_head.weight"))
    for parameter in parameters[1:]:
        if parameter.dim() == 1:  # an output bias, one entry per (old) token
            parameter.zero_()
            report.reset.append(names.get(id(parameter), "output_head.bias"))
    if optimizer is not None:
        report.optimizer_states_reset = _reset_optimizer_state(optimizer, parameters)
    logger.info("forgot embeddings (%s), seed %s", ", ".join(report.reset), seed)
    return report
