"""A causal LM read many times over with a vector added to one token's state: the batch editors'
target search, made cheap.

The search adds ``delta`` to the residual stream at the subject's last token after one block and
reads the next-token distributions after it, for 25 steps or so. Nothing before that token, and
nothing below that block, depends on ``delta``. So :class:`SteeredPrompts` runs the unedited
model once: the tokens before the steered one (the *prefix*: a passage of text in front, the
start of the template) into a key/value cache, and the rest (the *suffix*) through the blocks up
to the steered one, whose states it stores. Each step then runs the suffix alone — a few tokens
a prompt — through the blocks above, attending to the cached prefix: the same numbers as the
whole model with ``delta`` added (tested), for a fraction of the work.

Prefixes are left-padded and suffixes right-padded, with explicit positions, as batched
generation does; a model whose forward takes no positions or cache gets an empty prefix (the
whole prompt is the suffix) and still skips the lower blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from palimpsest.models import cache_argument, returned_cache, transformer_blocks


class _PassThrough(nn.Module):
    """Stands in for a block below the stored one: returns its input, in the block's format."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> Any:
        return (hidden_states,) if self.as_tuple else hidden_states


class _Stored(nn.Module):
    """Stands in for a block whose output is known: returns :attr:`states`, set before each pass."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple
        self.states: torch.Tensor | None = None

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        return (self.states,) if self.as_tuple else self.states


@contextlib.contextmanager
def _blocks_replayed(blocks: nn.ModuleList, last: int, as_tuple: bool) -> Iterator[_Stored]:
    """Within it, blocks ``0..last`` are replaced: the lower ones pass their input through and
    block ``last`` returns the states given to the yielded module, so that a forward pass runs
    only the blocks above ``last`` (the embeddings, masks and positions are still made by the
    model's own forward, whatever its architecture). The real blocks are put back on exit."""
    originals = [blocks[i] for i in range(last + 1)]
    stored = _Stored(as_tuple)
    try:
        for i in range(last):
            blocks[i] = _PassThrough(as_tuple)
        blocks[last] = stored
        yield stored
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


class SteeredPrompts:
    """Token sequences prepared for many forward passes with a shift at one token each.

    ``sequences[i]`` is read with ``shift[i]`` added to its state at position ``steer_at[i]``
    after block ``block``; :meth:`states` returns the final hidden states (after the model's last
    norm) of each sequence's suffix, which starts at that position (or at 0, for a model whose
    prompts cannot be split: :attr:`steer_offset`). :meth:`states` keeps the graph to the shift,
    and runs within :meth:`replaying`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        sequences: Sequence[Sequence[int]],
        steer_at: Sequence[int],
        block: int,
        pad_id: int = 0,
    ):
        self.model, self.block, self.pad_id = model, block, pad_id
        self.body = model.base_model
        _prefix, self.blocks = transformer_blocks(model)
        self.device = next(model.parameters()).device
        self.cache_argument = cache_argument(self.body)
        split = list(steer_at) if self.cache_argument is not None else [0] * len(sequences)
        self.prefix_length = torch.tensor(split)
        #: where the steered token sits in each suffix (0 wherever the prompt is split at it)
        self.steer_offset = torch.tensor(list(steer_at)) - self.prefix_length
        self.suffixes = [list(s[p:]) for s, p in zip(sequences, split, strict=True)]
        self.width = max(map(len, self.suffixes))
        longest = max(split)
        # the prefixes, left-padded to one width
        prefix_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        self.prefix_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, (sequence, length) in enumerate(zip(sequences, split, strict=True)):
            if length:
                prefix_ids[row, longest - length :] = torch.tensor(list(sequence[:length]))
                self.prefix_mask[row, longest - length :] = 1
        self.cached: list[tuple[torch.Tensor, ...]] | None = None
        with torch.no_grad():
            self._prepare(prefix_ids, longest, len(sequences))

    def _prepare(self, prefix_ids: torch.Tensor, longest: int, count: int) -> None:
        """The unedited passes: the prefixes into the cache, the suffixes up to the block."""
        if longest:
            positions = (self.prefix_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.body(
                input_ids=prefix_ids.to(self.device), attention_mask=self.prefix_mask.to(self.device),
                position_ids=positions.to(self.device), use_cache=True,
            )  # fmt: skip
            cache = returned_cache(out, self.cache_argument)
            # keys and values, per layer (a sliding-window layer also holds its window's size)
            self.cached = [tuple(t for t in layer if t is not None) for layer in cache]
        # the suffixes through the blocks up to ``block``, unedited: what each pass starts from
        captured: list[Any] = []

        def read(_m: nn.Module, _args: tuple, output: Any) -> None:
            captured.append(output)

        handle = self.blocks[self.block].register_forward_hook(read)
        try:
            self.unedited = self._forward(range(count), None)
        finally:
            handle.remove()
        self.as_tuple = isinstance(captured[0], tuple)
        self.lower = (captured[0][0] if self.as_tuple else captured[0]).detach()

    def _forward(
        self, rows: Sequence[int], stored: _Stored | None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = list(rows)
        width = max(len(self.suffixes[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(self.suffixes[r])] = torch.tensor(self.suffixes[r])
            mask[i, : len(self.suffixes[r])] = 1
        index = torch.tensor(rows)
        positions = self.prefix_length[index, None] + torch.arange(width)
        arguments: dict[str, Any] = {}
        if self.cached is not None:
            mask = torch.cat([self.prefix_mask[index], mask], dim=1)
            layers = [(k[index.to(k.device)], v[index.to(v.device)], *rest) for k, v, *rest in self.cached]
            arguments[self.cache_argument] = DynamicCache(ddp_cache_data=layers, config=self.model.config)
            arguments["use_cache"] = True
        if self.cache_argument is not None:
            arguments["position_ids"] = positions.to(self.device)
        if stored is not None:
            states = self.lower[index.to(self.device), :width]
            if shift is not None:
                at = (torch.arange(len(rows), device=self.device), self.steer_offset[index].to(self.device))
                states = states.index_put(at, states[at] + shift.to(states.dtype))
            stored.states = states
        out = self.body(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **arguments)
        return out[0]

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """The model with its blocks up to ``block`` replaced by the stored states (see the module
        docstring); :meth:`states` runs only within it."""
        with _blocks_replayed(self.blocks, self.block, self.as_tuple) as stored:
            self._stored = stored
            try:
                yield
            finally:
                self._stored = None

    def states(self, rows: Sequence[int], shift: torch.Tensor) -> torch.Tensor:
        """``(len(rows), width, d)``: the final hidden states of ``rows``' suffixes with ``shift``
        (``(len(rows), d)``) added at the steered token; a token at position ``t`` of sequence
        ``r`` is at ``t - prefix_length[r]`` here."""
        if getattr(self, "_stored", None) is None:
            raise RuntimeError("SteeredPrompts.states runs within SteeredPrompts.replaying()")
        return self._forward(rows, self._stored, shift)
