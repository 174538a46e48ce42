"""Constrained fine-tuning (Zhu et al. 2020): change some facts, keep the weights near where they were.

The editor fine-tunes a chosen subset of the weights on the modified facts and, after every
optimizer step, projects each edited tensor back into a ball around its original value
θ₀ (Zhu et al.'s stand-in for "the loss on the other facts rises at most δ"):

``norm="linf"``   clamp every weight to [θ₀ − δ, θ₀ + δ] (the box of ROME's FT-L baseline);
``norm="l2"``     rescale the change of each tensor to an L2 norm of at most δ;
``norm=None``     unconstrained fine-tuning (Zhu et al.'s baseline).

With Adam a weight moves by about ``lr`` per step, so ``delta / lr`` is roughly the number
of unconstrained steps a weight may take: choose δ relative to the learning rate. With
``delta_units="weight"`` δ is a fraction of each edited tensor's own scale (its RMS for
L-inf, its norm for L2), so one setting means the same on a 64-wide toy and a 576-wide
real model, whose weights are ten times larger.

Which weights: transformer blocks by index, by relative depth (``"0.15"``: the same place in
a 4-block and a 30-block model) or by ``"first"``, ``"last"``, ``"first+last"``, ``"all"``;
within them the FFN, its output projection alone (``"ffn-out"``: Llama's ``down_proj``,
GPT-2's ``c_proj``, BERT's ``output.dense``, found by shape), the attention, or the whole
block; and/or the token embeddings. Blocks are found by structure (the module list with one
entry per layer), their FFN and attention children by the conventional attribute names of HF models (``mlp``,
``intermediate`` + ``output``; ``attn``, ``attention``, ``self_attn``); anything else is
named with ``parameters=`` (glob patterns over parameter names), and a block whose parts
cannot be found is an error that lists its children.

Objectives: ``"mlm"`` (masked LMs: every object token masked, cross-entropy at the masks),
``"ft-m"`` (causal LMs: teacher-forced cross-entropy on the object tokens, prompt masked —
EasyEdit's FT-M) and ``"ft-l"`` (causal LMs: the loss at the last prompt token only, i.e.
on the object's first token — EasyEdit's FT-L). ``edit_positions="subject"`` lets the
edited weights learn only from the subject's tokens (the loss is still on the object): on a
real model, a change learnt from the answer position is shared by every prompt of the same
template, and an edit of one capital moves them all. ``stop_on_success`` stops at the first
step where the new object is the model's argmax. The model is edited in eval mode (no
dropout), so an edit is deterministic. :meth:`ConstrainedFinetune.undo` puts the original
tensors back bit for bit; parameters that were not selected are never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact
from palimpsest.editing.checkpoint import EditCheckpoint
from palimpsest.editing.config import EditConfig
from palimpsest.editing.metrics import edit_metrics, probe_or_fail
from palimpsest.editing.requests import EditRequest
from palimpsest.editing.selection import ffn_output_projection, select_parameters
from palimpsest.editing.statistics import (
    LayerStatistics,
    cached_statistics,
    excluding_keys,
    nullspace_projector,
)
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.models import block_indices, objective_of, transformer_blocks
from palimpsest.recall import PLAIN, Probe, PromptContext, after_text, text_passages

logger = logging.getLogger(__name__)


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


def check_fits_positions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    facts: Sequence[Fact],
    passages: Sequence[str],
    trained: Sequence[str],
) -> None:
    """Every statement an edit or a metric reads must fit the model's positions: one line if not,
    before anything is measured or trained (a longer input would index past the position table).
    ``trained`` are the statements an editor fits, each read after every one of ``passages``."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return
    pairs = [(r.fact, answer) for r in requests for answer in (r.new_object, r.fact.object)]
    pairs += [(fact, fact.object) for fact in facts]
    statements = [
        fact.statement(template, answer)
        for fact, answer in pairs
        for template in range(len(fact.relation.templates))
    ]
    for statement, ids in zip(statements, tokenizer(statements)["input_ids"], strict=True):
        length = len(ids) + 1  # and a boundary token
        if length > limit:
            shown = statement if len(statement) <= 60 else statement[:57] + "..."
            raise DataError(f"'{shown}' is {length} tokens, more than the model's {limit} positions")
    if passages and trained:
        longest = max(len(tokenizer(p + " ", add_special_tokens=False)["input_ids"]) for p in passages)
        tokens = max(len(ids) for ids in tokenizer(list(trained))["input_ids"]) + 1 + longest
        if tokens > limit:
            raise DataError(
                f"an edit after a passage of unrelated text is {tokens} tokens, more than the model's "
                f"{limit} positions; set context_passages: 0 (train on the prompt alone)"
            )


class ConstrainedFinetune:
    """Edit facts in ``model`` by constrained fine-tuning; :meth:`undo` restores it exactly.

    ``ConstrainedFinetune(model, tokenizer, layers="first+last", norm="linf", delta=1e-3)``;
    any :class:`EditConfig` field can be passed as a keyword, on top of ``config=`` when
    both are given (``ConstrainedFinetune(m, t, config=cfg, delta=0.1)`` is ``cfg`` with
    δ 0.1). The bound is always relative to the weights the editor first saw, so
    sequential edits share one budget δ.

    With ``preserve="text"``, ``statistics`` (by block, as the batch editors take them) may be given,
    else they are read from the cache or computed on the first edit; ``previous_keys`` (by block,
    ``(inputs, n)``) are keys of edits made before this editor existed, preserved like its own.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        config: EditConfig | None = None,
        statistics: dict[int, LayerStatistics] | None = None,
        previous_keys: dict[int, torch.Tensor] | None = None,
        **settings: Any,
    ):
        from palimpsest.config import from_dict, to_dict

        self.model = model
        self.tokenizer = tokenizer
        base = to_dict(config) if config is not None else {}
        self.config = from_dict(EditConfig, {**base, **settings}) if settings or config is None else config
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
        #: preserve="text": the edited output projections, by parameter name: (block, stored (out, in)).
        self._preserved_modules: dict[str, nn.Module] = {}
        self.preserved = self._preserved_weights() if self.config.preserve == "text" else {}
        self.statistics = statistics
        self._previous_keys = previous_keys or {}
        #: The projector each preserved weight's change is kept in (built on the first edit).
        self._projectors: dict[str, torch.Tensor] = {}
        self._initial_projectors: dict[str, torch.Tensor] = {}
        self.original = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.radius = {name: self._radius(weight) for name, weight in self.original.items()}
        self._last_block_only = self._selects_only_the_last_block()
        #: The contexts every edit is trained in: the prompt as written, and (causal LMs) after
        #: passages of unrelated text, so that the edit holds where users ask, not in one context.
        passages = text_passages(self.config.context_passages, seed=0) if self.causal else []
        self._contexts = [PLAIN, *(after_text(p) for p in passages)]

    # ----------------------------------------------------------------------------- public

    def apply(
        self,
        requests: Sequence[EditRequest],
        *,
        unmodified: Sequence[Fact] = (),
        support: Sequence[Fact] = (),
        sequential: bool = False,
        measure: bool = True,
        progress: str | Path | None = None,
        progress_every: float = 600.0,
    ) -> EditResult:
        """Edit every request (together, or one after another with ``sequential``).

        ``unmodified`` facts are measured (A_F\\S) but not trained on; ``support`` facts are
        trained on with their true objects, beside the edits (Zhu et al.'s support-set
        baseline). Returns the metrics before and after.

        ``progress`` names a safetensors file where a long edit saves itself every
        ``progress_every`` seconds (the edited tensors, the optimizer's moments, the step it
        reached): an edit of hundreds of facts, where every step sees every fact, can outlast the
        process running it. Called again with the same file, the same edit resumes where it was
        saved and ends exactly as an uninterrupted one; a file left by a different edit (other
        requests, settings or starting weights) is an error. The file is removed once the edit is
        done.
        """
        if not requests:
            raise DataError("no edit requests")
        self._check_lengths(requests, [*unmodified, *support])
        self._check_can_move(requests)
        template = self.config.edit_template
        before = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=template)
            if measure
            else {}
        )
        saver = None
        if progress is not None:
            saver = EditCheckpoint(
                Path(progress), self._fingerprint(requests, support, sequential), progress_every
            )
            saver.resume(self.parameters)
        started = time.perf_counter()
        support_probes = [self._probe(fact, fact.object) for fact in support]
        groups = [[request] for request in requests] if sequential else [list(requests)]
        steps, loss = (saver.steps, saver.loss) if saver else (0, float("nan"))
        self._prepare_projectors()
        for index, group in enumerate(groups):
            if saver is not None:
                if index < saver.group:  # edited before the resumed run began
                    if sequential:
                        self.preserve(group)
                    continue
                saver.enter(index, steps, started)
            edit_probes = [
                self._probe(r.fact, r.new_object, template, context)
                for r in group
                for template in self._templates(r.fact)
                for context in self._contexts
            ]
            used, loss = self._finetune(edit_probes + support_probes, edits=len(edit_probes), saver=saver)
            steps += used
            self.preserve(group)  # what later edits must leave as this one wrote it
        seconds = time.perf_counter() - started + (saver.seconds if saver else 0.0)
        after = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=template)
            if measure
            else {}
        )
        if saver is not None:
            saver.path.unlink(missing_ok=True)
        return EditResult(before, after, steps, seconds, loss, self.changes(), self.edited_parameters)

    def undo(self) -> None:
        """Put every edited tensor back exactly as it was."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.original[name])
        self._projectors = dict(self._initial_projectors)

    def preserve(self, requests: Sequence[EditRequest]) -> None:
        """With ``preserve="text"``: keep, from now on, the outputs of the preserved weights at the
        subject tokens of ``requests`` (edited before) where they are. Without it, nothing."""
        if not self.preserved or not requests:
            return
        self._prepare_projectors()
        probes = [
            self._probe(r.fact, r.new_object, template, context)
            for r in requests
            for template in self._templates(r.fact)
            for context in self._contexts
        ]
        keys = self._subject_keys(probes)
        for name, projector in self._projectors.items():
            self._projectors[name] = excluding_keys(projector, keys[name])

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

    def _check_lengths(self, requests: Sequence[EditRequest], facts: Sequence[Fact]) -> None:
        passages = [context.text for context in self._contexts if context.text]
        trained = [r.fact.statement(t, r.new_object) for r in requests for t in self._templates(r.fact)]
        check_fits_positions(self.model, self.tokenizer, requests, facts, passages, trained)

    def _selects_only_the_last_block(self) -> bool:
        """Whether every edited weight sits in the model's last block."""
        try:
            prefix, blocks = transformer_blocks(self.model)
        except ModelError:
            return False
        last = f"{prefix}.{len(blocks) - 1}."
        return all(name.startswith(last) for name in self.parameters)

    def _check_can_move(self, requests: Sequence[EditRequest]) -> None:
        """Refuse an edit whose gradient cannot reach its weights: with ``edit_positions="subject"``
        the weights learn only from the subject's tokens, and in the last block nothing carries
        those tokens' state on to the position that predicts the answer (no attention follows).
        Such an edit would change no weight and report its failure as a normal result."""
        if self.config.edit_positions != "subject" or not self._last_block_only:
            return
        shift = 1 if self.causal else 0
        for request in requests:
            for template in self._templates(request.fact):
                probe = self._probe(request.fact, request.new_object, template)
                predicting = {position - shift for position in probe.answer_positions}
                if predicting & set(probe.subject_positions):
                    return  # the subject itself predicts the answer here: the gradient reaches it
        _prefix, blocks = transformer_blocks(self.model)
        raise ConfigError(
            f"this edit can move nothing: it changes only block {len(blocks) - 1} (the last) and learns only "
            "at the subject's tokens, and no attention after that block carries them to the answer; choose "
            "an earlier block (layers: 0.15, the default) or edit_positions: all"
        )

    def _probe(
        self, fact: Fact, answer: str, template: int | None = None, context: PromptContext = PLAIN
    ) -> Probe:
        chosen = self.config.edit_template if template is None else template
        probe = probe_or_fail(self.tokenizer, fact, chosen, answer, self.causal, context)
        if self.config.edit_positions == "subject" and not probe.subject_positions:
            raise DataError(
                f"cannot edit at the subject of '{fact.statement(chosen, answer)}': the tokenizer merges "
                "the subject with the words around it; use edit_positions='all'"
            )
        return probe

    def _templates(self, fact: Fact) -> list[int]:
        """The templates an edit of ``fact`` is trained through (see ``train_templates``)."""
        edit = self.config.edit_template % len(fact.relation.templates)
        if self.config.train_templates == "edit":
            return [edit]
        held_out = fact.held_out_template(self.config.edit_template)
        return [edit] + [t for t in range(len(fact.relation.templates)) if t not in (edit, held_out)]

    def _batches(self, probes: Sequence[Probe], edits: int) -> list[tuple[torch.Tensor, ...]]:
        """Padded inputs, the (row, position, target) of every trained token and whether it
        belongs to an edit (the first ``edits`` probes), per batch."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        shift = 1 if self.causal else 0  # a causal LM predicts token i at position i - 1
        batches = []
        for start in range(0, len(probes), self.config.batch_size):
            chunk = probes[start : start + self.config.batch_size]
            width = max(len(p.input_ids) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            subject = torch.zeros((len(chunk), width), dtype=torch.bool)
            rows, positions, targets, is_edit = [], [], [], []
            for row, probe in enumerate(chunk):
                ids[row, : len(probe.input_ids)] = torch.tensor(probe.input_ids)
                mask[row, : len(probe.input_ids)] = 1
                subject[row, list(probe.subject_positions)] = True
                keep = 1 if self.objective == "ft-l" else len(probe.answer_ids)
                rows += [row] * keep
                positions += [p - shift for p in probe.answer_positions[:keep]]
                targets += probe.answer_ids[:keep]
                is_edit += [start + row < edits] * keep
            tensors = (
                ids, mask, torch.tensor(rows), torch.tensor(positions), torch.tensor(targets),
                torch.tensor(is_edit, dtype=torch.bool), subject,
            )  # fmt: skip
            batches.append(tuple(t.to(device) for t in tensors))
        return batches

    def _fingerprint(self, requests: Sequence[EditRequest], support: Sequence[Fact], sequential: bool) -> str:
        """What identifies one edit: its requests, support facts, settings and starting weights."""
        from palimpsest.config import to_dict

        digest = hashlib.sha256()
        described = {
            "config": to_dict(self.config),
            "objective": self.objective,
            "sequential": sequential,
            "requests": [[str(r.fact), r.fact.object, r.new_object] for r in requests],
            "support": [[str(fact), fact.object] for fact in support],
            "tensors": {name: list(t.shape) for name, t in self.original.items()},
        }
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
        for name in sorted(self.original):
            digest.update(self.original[name].detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _finetune(
        self, probes: Sequence[Probe], edits: int | None = None, saver: EditCheckpoint | None = None
    ) -> tuple[int, float]:
        """Projected gradient descent on ``probes``; returns (steps taken, last loss).

        The first ``edits`` probes are edits (the rest support facts); only they decide
        ``stop_on_success``. With a ``saver`` the run resumes from, and saves, its progress.
        """
        batches = self._batches(probes, len(probes) if edits is None else edits)
        tokens = sum(len(batch[4]) for batch in batches)
        was_training = self.model.training
        flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        selected = {id(p) for p in self.parameters.values()}
        for parameter in self.model.parameters():
            parameter.requires_grad_(id(parameter) in selected)
        chosen = list(self.parameters.values())
        if self.config.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(chosen, lr=self.config.learning_rate)
        else:
            optimizer = torch.optim.Adam(chosen, lr=self.config.learning_rate)
        self.model.eval()
        loss_value, taken = float("nan"), 0
        if saver is not None:
            taken, loss_value = saver.restore_optimizer(optimizer)
        gate: dict[str, torch.Tensor | None] = {"positions": None}
        hooks = self._position_hooks(gate) if self.config.edit_positions == "subject" else []
        # where this group's change is measured from: earlier groups' changes are not projected again
        anchor = {name: self.parameters[name].detach().clone() for name in self._projectors}
        try:
            while taken < self.config.steps:
                taken += 1
                optimizer.zero_grad(set_to_none=True)
                total, taken_all = 0.0, True
                for ids, mask, rows, positions, targets, edit_tokens, subject in batches:
                    gate["positions"] = subject
                    logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, positions].float()
                    loss = nn.functional.cross_entropy(logits, targets, reduction="sum") / tokens
                    loss.backward()
                    total += loss.detach().item()
                    hits = logits.detach().argmax(-1) == targets
                    taken_all = taken_all and bool(hits[edit_tokens].all())
                if self.config.stop_on_success and taken_all:
                    # the edit had taken before this step: no further change is needed
                    optimizer.zero_grad(set_to_none=True)
                    taken -= 1
                    loss_value = total
                    break
                optimizer.step()
                self._keep_preserved(anchor)
                self._project()
                loss_value = total
                if self.config.stop_loss is not None and total < self.config.stop_loss:
                    break
                if saver is not None:
                    saver.save_if_due(self.parameters, optimizer, taken, loss_value)
        finally:
            for hook in hooks:
                hook.remove()
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(flags[name])
            self.model.train(was_training)
        logger.info("edited %d facts in %d steps (loss %.4f)", len(probes), taken, loss_value)
        return taken, loss_value

    def _position_hooks(self, gate: dict[str, torch.Tensor | None]) -> list[Any]:
        """Forward hooks that pass gradient to the edited weights only at ``gate["positions"]``.

        Each module owning an edited tensor keeps its output as it is, but detached at every
        other position, so the weights learn only from the subject's tokens. The output
        embeddings (a tied LM head) are left alone: their gradient is the answer itself.
        """
        selected = {id(p) for p in self.parameters.values()}
        head = self.model.get_output_embeddings()
        owners = [
            module for module in self.model.modules()
            if module is not head and any(id(p) in selected for p in module.parameters(recurse=False))
        ]  # fmt: skip

        def only_at_positions(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            positions = gate["positions"]
            first = output[0] if isinstance(output, tuple) else output
            if positions is None or not isinstance(first, torch.Tensor) or first.shape[:2] != positions.shape:
                return output
            gated = torch.where(positions.unsqueeze(-1), first, first.detach())
            return (gated, *output[1:]) if isinstance(output, tuple) else gated

        return [module.register_forward_hook(only_at_positions) for module in owners]

    def _radius(self, weight: torch.Tensor) -> float:
        """δ for one tensor: as given, or scaled by the tensor's own size (``delta_units="weight"``)."""
        if self.config.delta_units == "absolute":
            return self.config.delta
        scale = weight.float().norm() if self.config.norm == "l2" else weight.float().pow(2).mean().sqrt()
        return self.config.delta * float(scale)

    @torch.no_grad()
    def _project(self) -> None:
        """Back into the ball of radius δ around the original weights, tensor by tensor."""
        for name, parameter in self.parameters.items():
            origin = self.original[name]
            delta = self.radius[name]
            if self.config.norm == "linf":
                torch.minimum(parameter, origin + delta, out=parameter)
                torch.maximum(parameter, origin - delta, out=parameter)
            elif self.config.norm == "l2":
                change = parameter - origin
                norm = float(change.norm())
                if norm > delta:
                    parameter.copy_(origin + change * (delta / norm))

    # ------------------------------------------------------------ preserved knowledge

    def _preserved_weights(self) -> dict[str, tuple[int, bool]]:
        """The selected weights ``preserve`` applies to: FFN output projections, whose inputs the
        statistics describe. Their biases are left out (a bias moves every output, whatever the key);
        any other selected tensor is refused."""
        _prefix, blocks = transformer_blocks(self.model)
        weights, biases, owners = {}, set(), {}
        for block in block_indices(self.config.layers, len(blocks)):
            try:
                projection = ffn_output_projection(self.model, block)
            except ModelError:
                continue
            weights[id(projection.weight)] = (block, isinstance(projection, nn.Linear))
            owners[id(projection.weight)] = projection
            if getattr(projection, "bias", None) is not None:
                biases.add(id(projection.bias))
        preserved = {}
        for name, parameter in list(self.parameters.items()):
            if id(parameter) in biases:
                del self.parameters[name]
                logger.info("preserve: %s left unedited (a bias moves every output)", name)
            elif id(parameter) in weights:
                preserved[name] = weights[id(parameter)]
                self._preserved_modules[name] = owners[id(parameter)]
            else:
                raise ConfigError(
                    f"edit.preserve: text keeps the outputs of FFN output projections (modules: [ffn-out]); "
                    f"{name} is not one"
                )
        return preserved

    def _prepare_projectors(self) -> None:
        """Build each preserved weight's projector once: the null space of its ``C0``, minus the
        span of the keys of edits made before this editor."""
        if not self.preserved or self._projectors:
            return
        blocks = sorted({block for block, _ in self.preserved.values()})
        if self.statistics is None or not all(b in self.statistics for b in blocks):
            self.statistics = cached_statistics(
                self.model, self.tokenizer, blocks,
                corpus=self.config.statistics_corpus, tokens=self.config.statistics_tokens,
            )  # fmt: skip
        for name, (block, _out_in) in self.preserved.items():
            second_moment = self.statistics[block].second_moment
            projector = nullspace_projector(
                second_moment, self.config.nullspace_threshold, where=f"block {block}: "
            )
            earlier = self._previous_keys.get(block)
            if earlier is not None:
                if earlier.dim() != 2 or earlier.shape[0] != projector.shape[0]:
                    raise DataError(
                        f"stored keys of block {block} have shape {tuple(earlier.shape)}; this model's "
                        f"projection takes {projector.shape[0]} inputs (keys of another model?)"
                    )
                projector = excluding_keys(projector, earlier)
            self._projectors[name] = projector
        self._initial_projectors = dict(self._projectors)

    @torch.no_grad()
    def _subject_keys(self, probes: Sequence[Probe]) -> dict[str, torch.Tensor]:
        """Each preserved weight's inputs at the subject tokens of ``probes``: ``(inputs, tokens)``."""
        modules = {name: self._preserved_modules[name] for name in self.preserved}
        found: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        gate: dict[str, torch.Tensor | None] = {"positions": None}

        def reader(name: str):
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                found[name].append(args[0][gate["positions"]].detach().double().cpu())

            return hook

        handles = [module.register_forward_pre_hook(reader(name)) for name, module in modules.items()]
        was_training = self.model.training
        self.model.eval()
        try:
            for ids, mask, *_rest, subject in self._batches(probes, len(probes)):
                gate["positions"] = subject
                self.model(input_ids=ids, attention_mask=mask)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        return {name: torch.cat(rows).T for name, rows in found.items()}

    @torch.no_grad()
    def _keep_preserved(self, anchor: dict[str, torch.Tensor]) -> None:
        """Each preserved weight's change from ``anchor`` (where this group began), projected back
        into the null space of ordinary text and of the edits before it."""
        for name, projector in self._projectors.items():
            parameter, origin = self.parameters[name], anchor[name]
            change = (parameter - origin).double()
            kept = change @ projector if self.preserved[name][1] else projector @ change
            parameter.copy_(origin + kept.to(parameter.dtype))
