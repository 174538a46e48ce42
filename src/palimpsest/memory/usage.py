"""How a product-key memory is used: which slots are read, how evenly, and how recently.

Measured on evaluation data (XLM's evaluator): every forward pass records the selected
slots and their softmax weights, per memory layer. Per layer:

``used``            share of slots selected at least once;
``kl_counts``       KL divergence from uniform of the selection counts, ``log N + sum p log p``
                    (0 = perfectly even use, ``log N`` = a single slot);
``kl_weights``      the same for the summed softmax weights;
``gini``            Gini coefficient of the weight mass over slots (0 even, 1 one slot);
``slots_50/90/99``  share of slots holding 50 / 90 / 99% of the weight mass.

"% used" saturates quickly (many selections over few slots), so KL and the mass shares are
the informative ones. During training, :class:`MemoryUsageCallback` also tracks
*staleness* in the spirit of Kim & Jung's "outdated slots": ``outdated`` is the share of
slots **not selected in any of the last W training steps** — slots whose values received
no gradient for W updates (W = ``window``; documented choice, their exact definition is
not public).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from palimpsest.memory.inject import memories


def distribution_metrics(counts: torch.Tensor, mass: torch.Tensor) -> dict[str, float]:
    """The usage figures of one layer from per-slot selection counts and weight mass."""
    counts, mass = counts.double(), mass.double()
    slots = counts.numel()

    def kl_from_uniform(values: torch.Tensor) -> float:
        total = values.sum()
        if total <= 0:
            return math.nan
        p = values / total
        p = p[p > 0]
        return float(math.log(slots) + (p * p.log()).sum())

    sorted_mass = mass.sort(descending=True).values
    total = float(sorted_mass.sum())
    shares = {}
    for level in (50, 90, 99):
        if total <= 0:
            shares[f"slots_{level}"] = math.nan
            continue
        cumulative = sorted_mass.cumsum(0) / total
        shares[f"slots_{level}"] = float((cumulative < level / 100).sum() + 1) / slots
    ascending = mass.sort().values
    index = torch.arange(1, slots + 1, dtype=ascending.dtype)
    gini = (
        float((2 * index - slots - 1).mul(ascending).sum() / (slots * ascending.sum()))
        if total > 0
        else math.nan
    )
    return {
        "used": float((counts > 0).double().mean()),
        "kl_counts": kl_from_uniform(counts),
        "kl_weights": kl_from_uniform(mass),
        "gini": gini,
        **shares,
    }


@contextmanager
def recording(model: nn.Module):
    """Make every memory of ``model`` keep its last selection while inside the block."""
    layers = memories(model)
    previous = {name: layer.record_selection for name, layer in layers.items()}
    for layer in layers.values():
        layer.record_selection = True
    try:
        yield layers
    finally:
        for name, layer in layers.items():
            layer.record_selection = previous[name]
            layer.last_selection = None


@torch.no_grad()
def memory_usage(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Usage metrics per memory layer over ``batches`` (model inputs, e.g. input_ids)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with recording(model) as layers:
        counts = {name: torch.zeros(layer.size) for name, layer in layers.items()}
        mass = {name: torch.zeros(layer.size) for name, layer in layers.items()}
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            model(**inputs)
            keep = inputs.get("attention_mask")
            for name, layer in layers.items():
                selection = layer.last_selection
                indices, weights = selection.indices.cpu(), selection.weights.float().cpu()
                rows = selection.rows(keep)
                if rows is not None:
                    indices, weights = indices[rows.cpu()], weights[rows.cpu()]
                counts[name].index_add_(0, indices.reshape(-1), torch.ones(indices.numel()))
                mass[name].index_add_(0, indices.reshape(-1), weights.reshape(-1))
    model.train(was_training)
    return {name: distribution_metrics(counts[name], mass[name]) for name in counts}


class MemoryUsageCallback(TrainerCallback):
    """Tracks, during training, when each slot was last selected; logs ``outdated`` shares.

    Every ``log_every`` updates it adds ``memory/<layer>/outdated`` (share of slots not
    selected within the last ``window`` updates) and ``.../ever_used`` to the Trainer's
    log history (so the reports get them). With gradient accumulation only the last
    micro-batch of each update is seen, so ``outdated`` is then an upper bound.
    """

    def __init__(self, window: int = 100, log_every: int = 50):
        self.window = window
        self.log_every = log_every
        self.last_seen: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self._layers: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._layers = memories(model)
        for name, layer in self._layers.items():
            layer.record_selection = True
            self.last_seen.setdefault(name, torch.full((layer.size,), -1, dtype=torch.long))

    def on_step_end(self, args, state, control, **kwargs):
        for name, layer in self._layers.items():
            selection = layer.last_selection
            if selection is not None:
                rows = selection.rows()  # a gated memory: only the tokens that read it
                indices = selection.indices if rows is None else selection.indices[rows]
                self.last_seen[name][indices.reshape(-1).cpu()] = state.global_step
        self.step = state.global_step
        if state.global_step % self.log_every == 0:
            entry = self.snapshot()
            self.history.append(entry)
            state.log_history.append(entry)

    def snapshot(self) -> dict[str, Any]:
        """``outdated`` and ``ever_used`` per layer after the last update seen."""
        entry: dict[str, Any] = {"step": self.step}
        for name, seen in self.last_seen.items():
            recent = seen > self.step - self.window
            entry[f"memory/{name}/outdated"] = float(1 - recent.float().mean())
            entry[f"memory/{name}/ever_used"] = float((seen >= 0).float().mean())
        return entry

    def on_train_end(self, args, state, control, **kwargs):
        for layer in self._layers.values():
            layer.record_selection = False
            layer.last_selection = None


def memory_param_groups(model: nn.Module, *, lr: float = 1e-3, constant: bool = True) -> list[dict[str, Any]]:
    """Optimizer groups for :func:`palimpsest.training.train`: memory values at their own
    learning rate (XLM: a constant 1e-3) and without weight decay; everything else default. Each
    group names the GPU implementation its memories' lazy row update takes (``gpu_kernels``, read by
    :class:`palimpsest.optim.LazyAdamW`)."""
    by_choice: dict[str, list[nn.Parameter]] = {}
    for layer in memories(model).values():
        by_choice.setdefault(layer.gpu_kernels, []).append(layer.values.weight)
    return [
        {
            "params": values, "lr": lr, "weight_decay": 0.0, "constant_lr": constant, "name": "memory-values",
            "gpu_kernels": choice,
        }
        for choice, values in (by_choice or {"auto": []}).items()
    ]  # fmt: skip


def validation_batches(
    tokenizer: Any, corpus: str, *, block_size: int, max_blocks: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Up to ``max_blocks`` blocks of a corpus's validation split (the split pretraining held
    out), batched as model inputs: the text memory usage and slot frequencies are read on."""
    from palimpsest.data import encode_blocks, load_corpus, split_corpus

    validation = split_corpus(load_corpus(corpus), 0.05, seed=0).validation
    blocks = encode_blocks(validation, tokenizer, block_size)
    rows = blocks.select(range(min(max_blocks, len(blocks))))["input_ids"]
    return [{"input_ids": torch.tensor(rows[i : i + batch_size])} for i in range(0, len(rows), batch_size)]
