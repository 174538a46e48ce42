"""Many edits at once and one after another: the MEMIT family of batch editors.

Read top to bottom, one edit of ``n`` requests is:

1. **Targets.** For each request, a vector ``delta`` added to the residual stream at the
   subject's last token after the last edited block, found by a few Adam steps on ``delta``
   alone so that the model says the new object — through the edit prompt as written and after
   a few short passages of unrelated text in front of it, since users ask both ways — while a
   KL term keeps what the model says of the subject in general ("{subject} is a") and, with
   ``keep_prompts="other-relations"``, through the other relations being edited ("In {subject},
   people pay with the" while its capital is edited), so the target changes one fact of the
   subject, not all of them. ``delta``
   is clamped to a share of the hidden state's norm, and the target ``z = h + delta`` to a
   multiple of the block's typical output norm (norm control: targets that grow past the
   layer's scale are what makes long sequences of edits collapse).
2. **Keys.** At each edited block, the input ``k`` of the FFN's output projection at the
   subject's last token, in each of the same contexts: one least-squares column per context, each
   asked to move its own state by the request's ``delta`` (MEMIT averages the keys over the
   contexts instead, ``key_contexts="mean"``; the prompt as written, whose key differs most from
   the others', then barely takes the edit).
3. **Spread.** Block by block, the part of ``z - h`` still missing is divided by the number of
   blocks left and written into the projection ``W`` by least squares:
   ``dW = R K^T (lam C0 + K_prev K_prev^T + K K^T)^-1`` (MEMIT; ``C0`` the keys' second moment on
   ordinary text, :mod:`palimpsest.editing.statistics`; ``K_prev`` the keys of earlier edits,
   kept so that a sequence of edits does not overwrite itself), or, with
   ``method="alphaedit"``, the same residual projected onto the null space ``P`` of ``C0``:
   ``dW = R K^T P (K K^T P + K_prev K_prev^T P + alpha I)^-1``, which leaves the outputs of
   ordinary text (and of earlier edits) where they were.

Only the output projections of the edited blocks are written; :meth:`BatchEditor.undo`
restores them bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact, Relation
from palimpsest.data.tokenization import leading_special_ids
from palimpsest.editing.editor import EditResult, check_fits_positions
from palimpsest.editing.metrics import edit_metrics
from palimpsest.editing.requests import EditRequest
from palimpsest.editing.selection import ffn_output_projection
from palimpsest.editing.statistics import (
    LayerStatistics,
    cached_statistics,
    nullspace_projector,
    read_cached_statistics,
    weights_fingerprint,
)
from palimpsest.editing.steering import SteeredPrompts
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.models import block_indices, objective_of, transformer_blocks
from palimpsest.recall import text_passages

logger = logging.getLogger(__name__)

Method = Literal["memit", "alphaedit"]


@dataclass
class BatchEditConfig:
    """How a batch edit is made (defaults: see the README, "Many edits")."""

    method: Method = "memit"
    #: Blocks whose FFN output projection is written (indices, relative depths, spans or names
    #: as for the constrained editor); the target is set after the last of them.
    layers: str | list[int | float] = "0.1:0.25"
    #: Adam steps and learning rate of each target vector.
    target_steps: int = 25
    target_lr: float = 0.5
    #: Stop a batch's target search once every request's answer loss is below this (nats per
    #: token; MEMIT stops at 0.05).
    stop_loss: float = 0.05
    #: Weight of the KL term keeping what the model says of the subject (mean over its prompts).
    kl_factor: float = 0.0625
    #: The KL term's prompts besides MEMIT's "{subject} is a": ``"other-relations"`` adds the
    #: subject through one template (the second, a paraphrase) of every other relation among the
    #: requests, so the target moves what the edited relation says of the subject and not what the
    #: others say (a target fitted without them changes the subject's other facts too: README,
    #: "Many edits"); ``"none"``, MEMIT's prompt alone.
    keep_prompts: Literal["other-relations", "none"] = "none"
    #: The templates each target is fitted through: ``"edit"``, the edit template alone (MEMIT);
    #: ``"all-but-held-out"``, also each other template of the relation as written, but one per
    #: subject (:meth:`~palimpsest.data.facts.Fact.held_out_template`), so that the edit reaches
    #: phrasings it was not fitted on (measure paraphrases on the held-out one: the
    #: ``paraphrase@held-out`` of :func:`~palimpsest.editing.benchmark.benchmark_metrics`).
    train_templates: Literal["edit", "all-but-held-out"] = "edit"
    #: Weight decay on the target vector (relative to the hidden state's squared norm).
    weight_decay: float = 1e-3
    #: ``|delta| <= clamp_norm_factor * |h|`` at the subject's last token.
    clamp_norm_factor: float = 0.75
    #: Norm control: ``|z| <= target_norm_limit *`` the block's mean output norm on ordinary text
    #: (None: no limit).
    target_norm_limit: float | None = 2.0
    #: Passages of unrelated text put in front of the prompts the targets and keys are read
    #: from (besides the prompt as written), and their length in words.
    context_passages: int = 4
    context_words: int = 10
    #: How the contexts enter the least squares: ``"each"``, one column (key, residual) per prompt
    #: context, so the edit is fitted where each context puts the subject's key (the prompt as
    #: written, whose key differs most, included); ``"mean"``, MEMIT's one column per request, the
    #: keys averaged over the contexts.
    key_contexts: Literal["each", "mean"] = "each"
    #: MEMIT's weight of the preserved statistics against the edits (``lam``); it depends on the
    #: model's key scale, so it is chosen by measuring (README, "Many edits").
    covariance_weight: float = 3_000.0
    #: AlphaEdit: the null space is the eigenvectors of ``C0`` whose eigenvalue is below this
    #: share of the largest one.
    nullspace_threshold: float = 1e-2
    #: AlphaEdit's ridge ``alpha``.
    ridge: float = 10.0
    #: Keep the keys of every edit, so that later edits (``apply`` called again) preserve them.
    accumulate_keys: bool = True
    statistics_corpus: str = "wiki-en"
    statistics_tokens: int = 100_000
    #: Requests whose targets are optimised together (one batch of forward passes).
    target_batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("memit", "alphaedit"):
            raise ConfigError(f"batch_edit.method: expected memit or alphaedit, got {self.method!r}")
        if not self.layers:
            raise ConfigError("batch_edit.layers: name at least one block")
        for name in ("target_steps", "statistics_tokens", "target_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"batch_edit.{name} must be positive, got {getattr(self, name)}")
        for name in ("target_lr", "clamp_norm_factor", "covariance_weight", "ridge", "nullspace_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"batch_edit.{name} must be a positive number, got {value}")
        for name in ("kl_factor", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"batch_edit.{name} must be a number >= 0, got {getattr(self, name)}")
        if self.target_norm_limit is not None and not self.target_norm_limit > 0:
            raise ConfigError(f"batch_edit.target_norm_limit must be positive, got {self.target_norm_limit}")
        if self.keep_prompts not in ("other-relations", "none"):
            raise ConfigError(
                f"batch_edit.keep_prompts: expected other-relations or none, got {self.keep_prompts!r}"
            )
        if self.train_templates not in ("edit", "all-but-held-out"):
            raise ConfigError(
                f"batch_edit.train_templates: expected edit or all-but-held-out, got {self.train_templates!r}"
            )
        if self.key_contexts not in ("each", "mean"):
            raise ConfigError(f"batch_edit.key_contexts: expected each or mean, got {self.key_contexts!r}")
        if self.context_passages < 0 or self.context_words <= 0:
            raise ConfigError("batch_edit.context_passages must be >= 0 and context_words > 0")


def _per_request_mean(columns: torch.Tensor, owners: Sequence[int], requests: int) -> torch.Tensor:
    """(width, requests): the mean of the columns each request owns."""
    index = torch.tensor(list(owners))
    totals = torch.zeros(columns.shape[0], requests, dtype=torch.float64)
    totals.index_add_(1, index, columns.double())
    return totals / torch.bincount(index, minlength=requests).double()


class _Captured(Exception):
    """Ends a forward pass once a hook has read what it needed."""


@dataclass
class _Prompt:
    """Token ids of one prompt, where the subject ends, and the answer tokens that follow."""

    ids: list[int]
    subject_last: int
    answer: list[int]  # empty for a prompt read without an answer (keys, KL)
    request: int


class BatchEditor:
    """MEMIT or AlphaEdit on a causal LM; ``apply`` again continues a sequence of edits.

    ``statistics`` may be given (a dict by block, :func:`~palimpsest.editing.statistics.cached_statistics`)
    or is read from the cache on first use: those of the weights named by ``statistics_fingerprint``
    (an earlier round's, :mod:`palimpsest.editing.history`) when cached, else computed from the
    model as it is then, and kept for later edits. ``previous_keys`` (per block, ``(inputs,
    requests)``) are keys of edits made before this editor existed: they are preserved like its own.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        config: BatchEditConfig | None = None,
        statistics: dict[int, LayerStatistics] | None = None,
        progress: Callable[[int, int], None] | None = None,
        previous_keys: dict[int, torch.Tensor] | None = None,
        statistics_fingerprint: str | None = None,
        **settings: Any,
    ):
        from palimpsest.config import from_dict, to_dict

        base = to_dict(config) if config is not None else {}
        self.config = (
            from_dict(BatchEditConfig, {**base, **settings}) if settings or config is None else config
        )
        if objective_of(model.config) != "clm":
            raise ModelError("the batch editors edit causal LMs (the target is read at the next token)")
        self.model = model
        self.tokenizer = tokenizer
        _prefix, blocks = transformer_blocks(model)
        self.blocks = block_indices(self.config.layers, len(blocks))
        self.projections = {b: ffn_output_projection(model, b) for b in self.blocks}
        self.original = {b: p.weight.detach().clone() for b, p in self.projections.items()}
        self.statistics = statistics
        self.progress = progress
        self.front = leading_special_ids(tokenizer)
        self.contexts = text_passages(
            self.config.context_passages, self.config.context_words, seed=self.config.seed
        )
        #: Keys of earlier edits, by block: ``K_prev K_prev^T`` (d_in x d_in).
        self.previous_keys: dict[int, torch.Tensor] = {}
        for block, keys in (previous_keys or {}).items():
            if block not in self.projections:
                continue  # a block this editor does not write: nothing of it to preserve here
            width = self.original[block].shape[1 if self._stores_out_in(block) else 0]
            if keys.dim() != 2 or keys.shape[0] != width:
                raise DataError(
                    f"stored keys of block {block} have shape {tuple(keys.shape)}; this model's projection "
                    f"takes {width} inputs (keys of another model?)"
                )
            self.previous_keys[block] = keys.double() @ keys.double().T
        self._initial_keys = dict(self.previous_keys)
        #: The keys this editor wrote, by block (d_in x requests), for the edit history.
        self.written_keys: dict[int, torch.Tensor] = {}
        self.statistics_fingerprint = statistics_fingerprint
        self._nullspace: dict[int, torch.Tensor] = {}
        #: Norms of the last edit's target vectors (norm control caps them).
        self.target_norms: list[float] = []

    # ------------------------------------------------------------------ public

    def apply(
        self,
        requests: Sequence[EditRequest],
        *,
        unmodified: Sequence[Fact] = (),
        measure: bool = True,
        edit_template: int = 0,
    ) -> EditResult:
        """Write every request into the model at once (call again for the next batch of a sequence)."""
        self.check(requests, unmodified, edit_template)
        before = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=edit_template)
            if measure
            else {}
        )
        started = time.perf_counter()
        statistics = self._statistics()
        start, owners = self._hidden(requests, edit_template)  # (d, columns) before any write
        shifts, norms = self._targets(requests, edit_template, statistics, start, owners)
        targets = start + shifts[:, owners]  # each column's own state, moved by its request's shift
        used: dict[int, torch.Tensor] = {}
        for position, block in enumerate(self.blocks):
            # (d_in, columns) and (d, columns) at the last block, with the blocks before written
            keys, current = self._keys_and_hidden(requests, edit_template, block)
            residual = (targets - current) / (len(self.blocks) - position)
            self._add(block, self._solve(block, keys, residual, statistics[block]))
            used[block] = keys.double()
        for block, keys in used.items():
            written = self.written_keys.get(block)
            self.written_keys[block] = keys if written is None else torch.cat([written, keys], dim=1)
            if self.config.accumulate_keys:  # what later edits must leave as this one wrote it
                outer = keys @ keys.T
                self.previous_keys[block] = self.previous_keys.get(block, torch.zeros_like(outer)) + outer
        seconds = time.perf_counter() - started
        after = (
            edit_metrics(self.model, self.tokenizer, requests, unmodified, edit_template=edit_template)
            if measure
            else {}
        )
        self.target_norms = norms
        return EditResult(
            before, after, len(self.blocks), seconds, float("nan"), self.changes(), self.edited_parameters
        )

    def check(
        self, requests: Sequence[EditRequest], unmodified: Sequence[Fact] = (), edit_template: int = 0
    ) -> None:
        """Refuse, in one line and before anything is computed, requests this editor cannot write:
        none at all, statements longer than the model's positions, or targets set after the model's
        last block where the subject does not end the prompt (no attention after that block carries
        the subject's state on to the answer, so the target search could move nothing)."""
        if not requests:
            raise DataError("no edit requests")
        trained = [r.fact.statement(edit_template, r.new_object) for r in requests]
        check_fits_positions(self.model, self.tokenizer, requests, unmodified, self.contexts, trained)
        _prefix, blocks = transformer_blocks(self.model)
        if self.blocks[-1] != len(blocks) - 1:
            return
        for index, request in enumerate(requests):
            prompt = self._prompts(request, index, edit_template, with_answer=False)[0]
            if prompt.subject_last != len(prompt.ids) - 1:
                raise ConfigError(
                    f"this edit can move nothing: its targets are set after block {len(blocks) - 1} "
                    "(the last), and no attention after it carries the subject's state on to the answer "
                    f"of '{request.fact.prompt(edit_template)}'; choose earlier blocks (layers: 0.1:0.25, "
                    "the default)"
                )

    def preserve(self, requests: Sequence[EditRequest], block: int, template: int = 0) -> torch.Tensor:
        """Keys at ``block`` of requests edited before this editor (by another method, or at other
        blocks), read from the model as it is now and preserved by every later edit; returned
        (inputs, requests) so that they can be stored."""
        keys = self._keys(requests, template, block)[0].double()
        outer = keys @ keys.T
        self.previous_keys[block] = self.previous_keys.get(block, torch.zeros_like(outer)) + outer
        self._initial_keys[block] = self.previous_keys[block]
        return keys

    def sequence_state(self) -> dict[str, torch.Tensor]:
        """What this editor's calls of :meth:`apply` have built, so that another process can go on
        with the sequence (:meth:`load_sequence_state`): the edited projections, the earlier
        edits' keys kept (``K K^T``) and the keys written, by block."""
        state = {f"weight.{b}": p.weight.detach().clone() for b, p in self.projections.items()}
        state |= {f"previous_keys.{b}": keys for b, keys in self.previous_keys.items()}
        state |= {f"written_keys.{b}": keys for b, keys in self.written_keys.items()}
        return state

    def load_sequence_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Go on with a sequence :meth:`sequence_state` saved, on the weights it started from:
        the projections take the saved values, the keys are restored, and :meth:`undo` still
        puts back the weights this editor found."""
        weights = {f"weight.{b}": p.weight for b, p in self.projections.items()}
        known = [name for name in state if name.split(".")[0] in ("weight", "previous_keys", "written_keys")]
        if set(weights) - set(state) or len(known) != len(state):
            raise DataError(
                f"a saved sequence state needs {', '.join(sorted(weights))} and keys of the same blocks; "
                f"it holds {', '.join(sorted(state))}"
            )
        for name, weight in weights.items():
            if state[name].shape != weight.shape:
                raise DataError(
                    f"saved {name} has shape {tuple(state[name].shape)}, not {tuple(weight.shape)}"
                )
        self._statistics()  # of the weights the sequence started from, as its first edit read them
        with torch.no_grad():
            for name, weight in weights.items():
                weight.copy_(state[name])
        self.previous_keys = {
            int(n.split(".")[1]): t.double() for n, t in state.items() if n.startswith("previous_keys.")
        }
        self.written_keys = {
            int(n.split(".")[1]): t.double() for n, t in state.items() if n.startswith("written_keys.")
        }

    def undo(self) -> None:
        """Put every edited projection back exactly as it was before the first edit."""
        with torch.no_grad():
            for block, projection in self.projections.items():
                projection.weight.copy_(self.original[block])
        self.previous_keys = dict(self._initial_keys)
        self.written_keys = {}

    def changes(self) -> dict[str, dict[str, float]]:
        out = {}
        with torch.no_grad():
            for block, projection in self.projections.items():
                change = (projection.weight - self.original[block]).float()
                out[f"block {block}"] = {"linf": float(change.abs().max()), "l2": float(change.norm())}
        return out

    @property
    def edited_parameters(self) -> int:
        return sum(p.weight.numel() for p in self.projections.values())

    # ------------------------------------------------------------------ the least squares

    def _solve(
        self, block: int, keys: torch.Tensor, residual: torch.Tensor, stats: LayerStatistics
    ) -> torch.Tensor:
        """``dW`` (d_out x d_in) of one block: see the module docstring."""
        keys, residual = keys.double(), residual.double()
        previous = self.previous_keys.get(block)
        if self.config.method == "memit":
            system = self.config.covariance_weight * stats.second_moment + keys @ keys.T
            if previous is not None:
                system = system + previous
            # dW system = R K^T  <=>  system dW^T = K R^T (system is symmetric)
            return torch.linalg.solve(system, keys @ residual.T).T
        projector = self._projector(block, stats)
        system = projector @ (keys @ keys.T + (previous if previous is not None else 0.0))
        system = system + self.config.ridge * torch.eye(system.shape[0], dtype=system.dtype)
        return torch.linalg.solve(system, projector @ keys @ residual.T).T

    def _projector(self, block: int, stats: LayerStatistics) -> torch.Tensor:
        """``P``: onto the eigenvectors of ``C0`` with (relatively) small eigenvalues."""
        if block not in self._nullspace:
            self._nullspace[block] = nullspace_projector(
                stats.second_moment, self.config.nullspace_threshold, where=f"block {block}: "
            )
        return self._nullspace[block]

    def _stores_out_in(self, block: int) -> bool:
        """nn.Linear stores its weight (out, in); GPT-2's Conv1D (in, out)."""
        return isinstance(self.projections[block], nn.Linear)

    def _add(self, block: int, update: torch.Tensor) -> None:
        weight = self.projections[block].weight
        with torch.no_grad():
            change = update.to(weight.dtype)
            weight.add_(change if self._stores_out_in(block) else change.T)

    def _statistics(self) -> dict[int, LayerStatistics]:
        if self.statistics is None or not all(b in self.statistics for b in self.blocks):
            corpus, tokens = self.config.statistics_corpus, self.config.statistics_tokens
            earlier = self.statistics_fingerprint
            stored = read_cached_statistics(earlier, corpus, tokens, self.blocks) if earlier else None
            if stored is None:  # none of the earlier weights here: measure the model as it is now
                self.statistics_fingerprint = weights_fingerprint(self.model, self.blocks)
                stored = cached_statistics(
                    self.model, self.tokenizer, self.blocks, corpus=corpus, tokens=tokens,
                    fingerprint=self.statistics_fingerprint, progress=self.progress,
                )  # fmt: skip
            self.statistics = stored
        return self.statistics

    # ------------------------------------------------------------------ prompts

    def _prompts(
        self, request: EditRequest, index: int, template: int, *, with_answer: bool
    ) -> list[_Prompt]:
        """The request's prompt as written and after each context passage; with
        ``train_templates="all-but-held-out"`` also through the relation's other templates as
        written, but the subject's held-out one."""
        fact = request.fact
        readings = [(template, context) for context in ["", *self.contexts]]
        if self.config.train_templates == "all-but-held-out":
            count = len(fact.relation.templates)
            held_out = fact.held_out_template(template)
            readings += [(other, "") for other in range(count) if other not in (template % count, held_out)]
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        prompts = []
        for reading, context in readings:
            joined = f"{context} " if context else ""
            read = self._subject_prompt(fact.relation, fact.subject, reading, joined)
            if read is None:
                continue  # the tokenizer merges the subject with what follows: no token ends it here
            prompt_ids, subject_last = read
            answer: list[int] = []
            if with_answer:
                before, _after = fact.relation.parts(fact.subject, reading)
                full = encode(joined + before + request.new_object)
                if full[: len(prompt_ids)] != prompt_ids:
                    continue
                answer = full[len(prompt_ids) :]
            prompts.append(_Prompt(self.front + prompt_ids, len(self.front) + subject_last, answer, index))
        if not prompts:
            raise DataError(
                f"cannot find where the subject ends in '{fact.prompt(template)}': the tokenizer merges it "
                "with the next word"
            )
        return prompts

    def _kept_prompts(self, requests: Sequence[EditRequest], index: int) -> list[_Prompt]:
        """The KL term's prompts of request ``index``: what the model says of its subject in general
        ("{subject} is a") and, with ``keep_prompts="other-relations"``, through one template of
        each other relation among ``requests`` (prompts without answers: the term keeps the model's
        own distribution there, whatever it is)."""
        request = requests[index]
        subject = request.fact.subject
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        ids = encode(subject)
        prompts = [_Prompt(self.front + encode(subject + " is a"), len(self.front) + len(ids) - 1, [], index)]
        if self.config.keep_prompts == "none":
            return prompts
        relations = {r.fact.relation.name: r.fact.relation for r in requests}
        for name, relation in relations.items():
            if name == request.fact.relation.name:
                continue
            read = self._subject_prompt(relation, subject, 1 % len(relation.templates))
            if read is not None:  # else no token ends the subject here: skip it
                prompts.append(_Prompt(self.front + read[0], len(self.front) + read[1], [], index))
        return prompts

    def _subject_prompt(
        self, relation: Relation, subject: str, template: int, joined: str = ""
    ) -> tuple[list[int], int] | None:
        """The ids of ``subject``'s prompt through ``template`` (after the text ``joined``) and the
        position of the subject's last token in them; None where the tokenizer merges the subject
        with the word after it, so that no token ends it."""
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        before, _after = relation.parts(subject, template)
        lead = relation.templates[template % len(relation.templates)].split("{subject}")[0]
        prompt_ids, through = encode(joined + before.rstrip()), encode(joined + lead + subject)
        if prompt_ids[: len(through)] != through:
            return None
        return prompt_ids, len(through) - 1

    def _batch(self, prompts: Sequence[_Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p.ids) + len(p.answer) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            sequence = p.ids + p.answer
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        return ids.to(device), mask.to(device)

    # ------------------------------------------------------------------ reading and steering the model

    def _at_subject(
        self,
        requests: Sequence[EditRequest],
        template: int,
        reads: Sequence[tuple[nn.Module, bool]],
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Modules' inputs (``(module, True)``) or outputs (``False``) at each request's subject's
        last token, read in one pass: one ``(width, columns)`` per read, and the request of each
        column; a column per prompt context (``key_contexts="each"``) or per request, averaged over
        its contexts (``"mean"``). Each prompt is cut after the subject (causal attention: nothing
        later reaches it) and the pass stops once every module has been read."""
        prompts = [
            _Prompt(p.ids[: p.subject_last + 1], p.subject_last, [], p.request)
            for i, r in enumerate(requests)
            for p in self._prompts(r, i, template, with_answer=False)
        ]
        captured: dict[int, torch.Tensor] = {}

        def keep(index: int, states: torch.Tensor) -> None:
            captured[index] = states.detach()
            if len(captured) == len(reads):
                raise _Captured  # the rest of the forward pass is not needed

        handles = []
        for index, (module, inputs) in enumerate(reads):
            if inputs:
                handles.append(module.register_forward_pre_hook(lambda _m, args, i=index: keep(i, args[0])))
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda _m, _args, out, i=index: keep(i, out[0] if isinstance(out, tuple) else out)
                    )
                )
        columns: list[list[torch.Tensor]] = [[] for _ in reads]
        try:
            with torch.no_grad():
                for start in range(0, len(prompts), 64):
                    chunk = prompts[start : start + 64]
                    ids, mask = self._batch(chunk)
                    captured.clear()
                    with contextlib.suppress(_Captured):
                        self.model.base_model(input_ids=ids, attention_mask=mask)
                    for index, read in enumerate(columns):
                        states = captured[index]
                        read += [states[row, p.subject_last].double().cpu() for row, p in enumerate(chunk)]
        finally:
            for handle in handles:
                handle.remove()
        stacked, owners = [torch.stack(c, dim=1) for c in columns], [p.request for p in prompts]
        if self.config.key_contexts == "each":
            return stacked, owners
        return [_per_request_mean(c, owners, len(requests)) for c in stacked], list(range(len(requests)))

    def _keys(
        self, requests: Sequence[EditRequest], template: int, block: int
    ) -> tuple[torch.Tensor, list[int]]:
        """The inputs of ``block``'s output projection at the subject's last token."""
        (keys,), owners = self._at_subject(requests, template, [(self.projections[block], True)])
        return keys, owners

    def _keys_and_hidden(
        self, requests: Sequence[EditRequest], template: int, block: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``block``'s keys and the state after the last edited block, in one pass."""
        _prefix, blocks = transformer_blocks(self.model)
        reads = [(self.projections[block], True), (blocks[self.blocks[-1]], False)]
        (keys, hidden), _owners = self._at_subject(requests, template, reads)
        return keys, hidden

    def _hidden(self, requests: Sequence[EditRequest], template: int) -> tuple[torch.Tensor, list[int]]:
        """The state after the last edited block at the subject's last token."""
        _prefix, blocks = transformer_blocks(self.model)
        (hidden,), owners = self._at_subject(requests, template, [(blocks[self.blocks[-1]], False)])
        return hidden, owners

    def _targets(
        self,
        requests: Sequence[EditRequest],
        template: int,
        statistics: dict[int, LayerStatistics],
        states: torch.Tensor | None = None,
        owners: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[float]]:
        """(d, n): how far each request's state at the last edited block must move, ``z - h`` (step 1
        of the module docstring; ``h`` the mean of the request's ``states`` columns, one per
        context, read here unless given; ``z`` under norm control), and the norms of the targets."""
        limit = None
        if self.config.target_norm_limit is not None:
            limit = self.config.target_norm_limit * statistics[self.blocks[-1]].hidden_norm
        if states is None:
            states, owners = self._hidden(requests, template)
        hidden = _per_request_mean(states, owners, len(requests))
        shifts = torch.zeros_like(hidden)
        norms: list[float] = []
        was_training = self.model.training
        self.model.eval()
        grad_flags = {id(p): p.requires_grad for p in self.model.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        started, reported = time.perf_counter(), 0
        try:
            for start in range(0, len(requests), self.config.target_batch):
                chunk = list(range(start, min(start + self.config.target_batch, len(requests))))
                found = self._optimise(requests, chunk, template, self.blocks[-1], hidden[:, chunk])
                done = chunk[-1] + 1
                if done == len(requests) or done - reported >= max(1, len(requests) // 10):
                    reported = done  # a long edit says how far it is, about every tenth
                    elapsed = time.perf_counter() - started
                    logger.info("targets found for %d of %d requests (%.0f s)", done, len(requests), elapsed)
                for column, index in enumerate(chunk):
                    z = hidden[:, index] + found[:, column]
                    if limit is not None and float(z.norm()) > limit:
                        z = z * (limit / float(z.norm()))  # norm control
                    shifts[:, index] = z - hidden[:, index]
                    norms.append(float(z.norm()))
        finally:
            for p in self.model.parameters():
                p.requires_grad_(grad_flags[id(p)])
            self.model.train(was_training)
        return shifts, norms

    def _optimise(
        self,
        requests: Sequence[EditRequest],
        chunk: list[int],
        template: int,
        last: int,
        hidden: torch.Tensor,
    ) -> torch.Tensor:
        """The ``delta`` of each request in ``chunk``, optimised together (their losses are
        separate sums, so this is the same as optimising each alone). A request whose answer
        loss is below ``stop_loss`` is done: its ``delta`` is kept and its prompts leave the
        batch, so the steps left cost only what the harder requests need. Each step runs only
        what ``delta`` can change: the tokens from the subject's last one on, through the blocks
        after ``last`` (:class:`~palimpsest.editing.steering.SteeredPrompts`)."""
        device = next(self.model.parameters()).device
        column = {index: c for c, index in enumerate(chunk)}
        edit_prompts = [p for i in chunk for p in self._prompts(requests[i], i, template, with_answer=True)]
        general = [p for i in chunk for p in self._kept_prompts(requests, i)]
        prompts = edit_prompts + general
        owner_all = torch.tensor([column[p.request] for p in prompts])
        answer_count = torch.tensor([float(len(p.answer)) for p in prompts])
        answers_per_request = torch.zeros(len(chunk)).index_add(0, owner_all, answer_count).clamp(min=1)
        kept_per_request = torch.bincount(owner_all[len(edit_prompts) :], minlength=len(chunk)).clamp(min=1)
        answers_per_request, kept_per_request = answers_per_request.to(device), kept_per_request.to(device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        steered = SteeredPrompts(
            self.model, [p.ids + p.answer for p in prompts], [p.subject_last for p in prompts], last, pad
        )
        starts = steered.prefix_length.tolist()  # a sequence's position t is t - start in the suffix
        head = self.model.get_output_embeddings()
        kept_rows = range(len(edit_prompts), len(prompts))
        with torch.no_grad():  # what the kept prompts read unedited: the KL term's reference
            ends = steered.unedited[list(kept_rows), [len(prompts[r].ids) - 1 - starts[r] for r in kept_rows]]
            reference = dict(zip(kept_rows, head(ends).float().log_softmax(-1), strict=True))
        delta = torch.zeros(
            hidden.shape[0], len(chunk), dtype=torch.float32, device=device, requires_grad=True
        )
        optimizer = torch.optim.Adam([delta], lr=self.config.target_lr)
        base_norm = hidden.float().norm(dim=0).to(device)  # |h| per request
        active = torch.ones(len(chunk), dtype=torch.bool)
        with steered.replaying():
            for _step in range(self.config.target_steps):
                optimizer.zero_grad()
                rows = [r for r in range(len(prompts)) if active[owner_all[r]]]
                owner = owner_all[rows].to(device)
                out = steered.states(rows, delta.T[owner])
                # the vocabulary projection only where a loss reads it: the full (batch, length,
                # vocabulary) logits would cost more than the blocks
                answer_rows = [i for i, r in enumerate(rows) for _ in prompts[r].answer]
                positions = [  # answer token k is read one position before it
                    len(prompts[r].ids) + k - 1 - starts[r]
                    for r in rows
                    for k, _ in enumerate(prompts[r].answer)
                ]
                tokens = torch.tensor([t for r in rows for t in prompts[r].answer], device=device)
                logits = head(out[answer_rows, positions]).float().log_softmax(-1)
                token_nll = -logits.gather(-1, tokens[:, None]).squeeze(-1)
                nll = torch.zeros(len(chunk), device=device).index_add(0, owner[answer_rows], token_nll)
                kept = [i for i, r in enumerate(rows) if r >= len(edit_prompts)]
                now = head(out[kept, [len(prompts[rows[i]].ids) - 1 - starts[rows[i]] for i in kept]])
                now = now.float().log_softmax(-1)
                before = torch.stack([reference[rows[i]] for i in kept])
                # KL(original || edited) of each kept prompt
                kl = torch.zeros(len(chunk), device=device).index_add(
                    0, owner[kept], (before.exp() * (before - now)).sum(-1)
                )
                nll, kl = nll / answers_per_request, kl / kept_per_request  # means per request
                logger.debug("target step %d: answer loss per request %s", _step, nll.detach().tolist())
                done = active & (nll.detach().cpu() < self.config.stop_loss)
                if bool(done.any()):
                    active &= ~done
                    if not bool(active.any()):
                        break  # every target already makes its new object near certain
                decay = self.config.weight_decay * delta.norm(dim=0) ** 2 / base_norm**2
                loss = ((nll + self.config.kl_factor * kl + decay) * active.to(device)).sum()
                finished = delta.detach()[:, ~active.to(device)].clone()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    delta[:, ~active.to(device)] = finished  # Adam's momentum would move a finished target on
                    bound = self.config.clamp_norm_factor * base_norm  # |delta| <= clamp * |h|
                    delta.mul_((bound / delta.norm(dim=0).clamp(min=1e-12)).clamp(max=1.0))
        return delta.detach().to(dtype=torch.float64, device="cpu")
