"""Constrained fine-tuning (Zhu et al. 2020): change some facts, keep the weights near where they were.

The editor fine-tunes a chosen subset of the weights on the modified facts and, after every
optimizer step, projects each edited tensor back into a ball around its original value
θ₀ (Zhu et al.'s stand-in for "the loss on the other facts rises at most δ"):

``norm="linf"``   clamp every weight to [θ₀ − δ, θ₀ + δ] (the box of ROME's FT-L baseline);
``norm="l2"``     rescale the change of each tensor to an L2 norm of at most δ;
``norm=None``     unconstrained fine-tuning (Zhu et al.'s baseline).

With Adam a weight moves by about ``lr`` per step, so ``delta / lr`` is roughly the number
of unconstrained steps a weight may take: choose δ relative to the learning rate.

Which weights: transformer blocks by index or by ``"first"``, ``"last"``, ``"first+last"``,
``"all"``; within them the FFN, the attention, or the whole block; and/or the token
embeddings. Blocks are found by structure (the module list with one entry per layer), their
FFN and attention children by the conventional attribute names of HF models (``mlp``,
``intermediate`` + ``output``; ``attn``, ``attention``, ``self_attn``); anything else is
named with ``parameters=`` (glob patterns over parameter names), and a block whose parts
cannot be found is an error that lists its children.

Objectives: ``"mlm"`` (masked LMs: every object token masked, cross-entropy at the masks),
``"ft-m"`` (causal LMs: teacher-forced cross-entropy on the object tokens, prompt masked —
EasyEdit's FT-M) and ``"ft-l"`` (causal LMs: the loss at the last prompt token only, i.e.
on the object's first token — EasyEdit's FT-L). The model is edited in eval mode (no
dropout), so an edit is deterministic. :meth:`ConstrainedFinetune.undo` puts the original
tensors back bit for bit; parameters that were not selected are never written.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact
from palimpsest.editing.metrics import edit_metrics, probe_or_fail
from palimpsest.editing.requests import EditRequest
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.models import objective_of, transformer_blocks
from palimpsest.recall import Probe

logger = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
Objective = Literal["auto", "mlm", "ft-m", "ft-l"]
FFN_CHILDREN = ("mlp", "intermediate", "output", "feed_forward", "ffn")
ATTENTION_CHILDREN = ("attn", "attention", "self_attn", "self_attention")
MODULE_KINDS = ("ffn", "attention", "block", "embeddings")


def block_indices(layers: str | Sequence[int], count: int) -> list[int]:
    """Block indices from ``"first"``, ``"last"``, ``"first+last"``, ``"all"`` or a list."""
    if isinstance(layers, str):
        named = {"first": [0], "last": [count - 1], "all": list(range(count))}
        indices: list[int] = []
        for part in layers.split("+"):
            if part not in named:
                raise ConfigError(
                    f"layers: unknown choice '{part}' (first, last, first+last, all, or indices)"
                )
            indices += named[part]
        return sorted(set(indices))
    bad = [i for i in layers if not -count <= i < count]
    if bad or not layers:
        raise ConfigError(f"layers {list(layers)} are not all block indices in 0..{count - 1}")
    return sorted({i % count for i in layers})


def select_parameters(
    model: nn.Module,
    layers: str | Sequence[int] = "first+last",
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
                wanted = {"ffn": FFN_CHILDREN, "attention": ATTENTION_CHILDREN}.get(kind)
                parts = [m for n, m in block.named_children() if wanted is None or n in wanted]
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


@dataclass
class EditConfig:
    """How an edit is made (defaults follow the FT-L settings of ROME's code, scaled to tiny models)."""

    layers: str | list[int] = "first+last"
    modules: list[str] = field(default_factory=lambda: ["ffn"])
    parameters: list[str] = field(default_factory=list)
    norm: Norm | None = "linf"
    delta: float = 5e-3
    objective: Objective = "auto"
    learning_rate: float = 1e-3
    steps: int = 100
    #: Stop when the training loss falls below this (None: always run every step).
    stop_loss: float | None = 1e-2
    batch_size: int = 64
    edit_template: int = 0

    def __post_init__(self) -> None:
        if self.norm is not None and self.norm not in ("linf", "l2"):
            raise ConfigError(f"edit.norm: expected linf, l2 or none, got {self.norm!r}")
        if self.norm is not None and self.delta <= 0:
            raise ConfigError(f"edit.delta must be positive, got {self.delta}")
        if self.objective not in ("auto", "mlm", "ft-m", "ft-l"):
            raise ConfigError(f"edit.objective: expected auto, mlm, ft-m or ft-l, got {self.objective!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"edit.{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"edit.learning_rate must be positive, got {self.learning_rate}")


@dataclass
class EditResult:
    """What an edit did: metrics before and after, effort, and how far each tensor moved."""

    before: dict[str, Any]
    after: dict[str, Any]
    steps: int
    seconds: float
    final_loss: float
    changes: dict[str, dict[str, float]]
    edited_parameters: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before, "after": self.after, "steps": self.steps, "seconds": self.seconds,
            "final_loss": self.final_loss, "edited_parameters": self.edited_parameters,
            "max_abs_change": max((c["linf"] for c in self.changes.values()), default=0.0),
            "max_l2_change": max((c["l2"] for c in self.changes.values()), default=0.0),
        }  # fmt: skip


class ConstrainedFinetune:
    """Edit facts in ``model`` by constrained fine-tuning; :meth:`undo` restores it exactly.

    ``ConstrainedFinetune(model, tokenizer, layers="first+last", norm="linf", delta=1e-3)``;
    any :class:`EditConfig` field can be passed as a keyword. The bound is always relative
    to the weights the editor first saw, so sequential edits share one budget δ.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **settings: Any):
        from palimpsest.config import from_dict

        self.model = model
        self.tokenizer = tokenizer
        self.config = settings.pop("config", None) or from_dict(EditConfig, settings)
        self.causal = objective_of(model.config) == "clm"
        objective = self.config.objective
        if objective == "auto":
            objective = "ft-m" if self.causal else "mlm"
        if (objective == "mlm") == self.causal:
            kind = "causal" if self.causal else "masked"
            raise ConfigError(f"objective '{objective}' does not fit a {kind} LM")
        self.objective = objective
        self.parameters = select_parameters(
            model, self.config.layers, self.config.modules, self.config.parameters
        )
        self.original = {name: p.detach().clone() for name, p in self.parameters.items()}

    # ----------------------------------------------------------------------------- public

    def apply(
        self,
        requests: Sequence[EditRequest],
        *,
        unmodified: Sequence[Fact] = (),
        support: Sequence[Fact] = (),
        sequential: bool = False,
        measure: bool = True,
    ) -> EditResult:
        """Edit every request (together, or one after another with ``sequential``).

        ``unmodified`` facts are measured (A_F\\S) but not trained on; ``support`` facts are
        trained on with their true objects, beside the edits (Zhu et al.'s support-set
        baseline). Returns the metrics before and after.
        """
        if not requests:
            raise DataError("no edit requests")
        template = self.config.edit_template
        before = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=template)
            if measure
            else {}
        )
        started = time.perf_counter()
        support_probes = [self._probe(fact, fact.object) for fact in support]
        groups = [[request] for request in requests] if sequential else [list(requests)]
        steps, loss = 0, float("nan")
        for group in groups:
            probes = [self._probe(r.fact, r.new_object) for r in group] + support_probes
            used, loss = self._finetune(probes)
            steps += used
        seconds = time.perf_counter() - started
        after = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=template)
            if measure
            else {}
        )
        return EditResult(before, after, steps, seconds, loss, self.changes(), self.edited_parameters)

    def undo(self) -> None:
        """Put every edited tensor back exactly as it was."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.original[name])

    def changes(self) -> dict[str, dict[str, float]]:
        """Per edited tensor, the L-inf and L2 norms of its change from the original."""
        out = {}
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                change = (parameter - self.original[name]).float()
                out[name] = {"linf": float(change.abs().max()), "l2": float(change.norm())}
        return out

    @property
    def edited_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters.values())

    # ---------------------------------------------------------------------------- helpers

    def _probe(self, fact: Fact, answer: str) -> Probe:
        return probe_or_fail(self.tokenizer, fact, self.config.edit_template, answer, self.causal)

    def _batches(self, probes: Sequence[Probe]) -> list[tuple[torch.Tensor, ...]]:
        """Padded inputs and the (row, position, target) of every trained token, per batch."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        shift = 1 if self.causal else 0  # a causal LM predicts token i at position i - 1
        batches = []
        for start in range(0, len(probes), self.config.batch_size):
            chunk = probes[start : start + self.config.batch_size]
            width = max(len(p.input_ids) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            rows, positions, targets = [], [], []
            for row, probe in enumerate(chunk):
                ids[row, : len(probe.input_ids)] = torch.tensor(probe.input_ids)
                mask[row, : len(probe.input_ids)] = 1
                keep = 1 if self.objective == "ft-l" else len(probe.answer_ids)
                rows += [row] * keep
                positions += [p - shift for p in probe.answer_positions[:keep]]
                targets += probe.answer_ids[:keep]
            tensors = (ids, mask, torch.tensor(rows), torch.tensor(positions), torch.tensor(targets))
            batches.append(tuple(t.to(device) for t in tensors))
        return batches

    def _finetune(self, probes: Sequence[Probe]) -> tuple[int, float]:
        """Projected gradient descent on ``probes``; returns (steps taken, last loss)."""
        batches = self._batches(probes)
        tokens = sum(len(batch[4]) for batch in batches)
        was_training = self.model.training
        flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        selected = {id(p) for p in self.parameters.values()}
        for parameter in self.model.parameters():
            parameter.requires_grad_(id(parameter) in selected)
        optimizer = torch.optim.Adam(list(self.parameters.values()), lr=self.config.learning_rate)
        self.model.eval()
        loss_value, taken = float("nan"), 0
        try:
            while taken < self.config.steps:
                taken += 1
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for ids, mask, rows, positions, targets in batches:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
                    loss = (
                        nn.functional.cross_entropy(logits[rows, positions].float(), targets, reduction="sum")
                        / tokens
                    )
                    loss.backward()
                    total += loss.detach().item()
                optimizer.step()
                self._project()
                loss_value = total
                if self.config.stop_loss is not None and total < self.config.stop_loss:
                    break
        finally:
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(flags[name])
            self.model.train(was_training)
        logger.info("edited %d facts in %d steps (loss %.4f)", len(probes), taken, loss_value)
        return taken, loss_value

    @torch.no_grad()
    def _project(self) -> None:
        """Back into the ball of radius δ around the original weights, tensor by tensor."""
        delta = self.config.delta
        for name, parameter in self.parameters.items():
            origin = self.original[name]
            if self.config.norm == "linf":
                torch.minimum(parameter, origin + delta, out=parameter)
                torch.maximum(parameter, origin - delta, out=parameter)
            elif self.config.norm == "l2":
                change = parameter - origin
                norm = float(change.norm())
                if norm > delta:
                    parameter.copy_(origin + change * (delta / norm))
