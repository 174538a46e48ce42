"""The product-key memory layer (Lample et al. 2019), readable top to bottom.

A memory of ``n_keys**2`` value vectors addressed by content. Each head maps the input to
a query and splits it in two halves; each half is scored against its own ``n_keys``
sub-keys. The full keys are all pairs of sub-keys (their score is the sum of the two
half-scores), so the exact top-k over ``n_keys**2`` keys is found among the pairs of the
per-half top-k: any pair outside them is beaten by at least k pairs inside. Fewer pairs
even suffice: with both halves sorted, the pair of ranks ``(a, b)`` (from 0) is beaten by
every pair ``(a' <= a, b' <= b)``, so it can be in the top k only if ``(a+1)(b+1) <= k``
— about ``k ln k`` candidates (129 for k=32) instead of ``k * k`` (1,024).
The selected values are averaged with softmax weights (computed in fp32) and summed over
heads, with an ``EmbeddingBag`` so only the k selected rows per head are read.

Value gradients come in two forms. The default is dense: a full ``n_keys**2 x value_dim``
tensor, mostly zeros, that any optimizer and any distributed wrapper understands; it lives
in a buffer the layer reuses from step to step
(:class:`~palimpsest.memory.autograd.ValueGradientBuffers`: allocating and zero-filling a
fresh one was most of a CPU step), unless ``reuse_gradient_buffer`` is
off (FSDP turns it off: a sharded run must not keep a whole table's gradient).
``sparse_updates=True`` instead hands autograd a sparse (coalesced) gradient over the rows
that were read, so that an optimizer that understands it (:class:`palimpsest.optim.LazyAdamW`)
reads and writes only those rows. It pays for sorting the reads; with the compiled CPU loops
(:mod:`palimpsest.kernels`) it was faster at every share of rows read measured, with torch
ops only below about half (README, "Library": sparse value updates). ``sparse_updates="auto"``
takes it accordingly (:func:`auto_prefers_sparse`), and only once palimpsest's trainer (which updates with
``LazyAdamW``) has said sparse gradients are welcome (``allow_sparse_gradients``, the spine's
:class:`palimpsest.optim.SparseGradientModule` interface); anywhere else "auto"
is dense, which every optimizer accepts. The lazy update leaves rows a batch did not read as
they were, moments included (dense AdamW keeps decaying and moving them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from palimpsest.gpu_kernels import GPU_KERNEL_CHOICES, GpuKernels, use_triton, value_read
from palimpsest.kernels import cpu_kernels
from palimpsest.memory.autograd import (
    ProductKeyScores,
    ScoreWorkspace,
    ValueGradientBuffers,
    ValueRead,
    compiled_selection,
)
from palimpsest.memory.gate import KeyInput, MemoryGate

QueryNorm = Literal["layernorm", "batchnorm", "none"]
SparseUpdates = bool | Literal["auto"]
#: Every value ``sparse_updates`` may take.
SPARSE_UPDATES_CHOICES = (True, False, "auto")

#: "auto" on the torch-op path (a GPU, bf16, or no C++ compiler) takes the sparse value path below
#: this share of the table's rows read by a batch: where the sparse step stopped beating the dense
#: one on the built-in SmolLM2-135M (``benchmarks/memory_speed.py``; figures in the README,
#: "Library" and "Benchmarks"). With the compiled loops sparse wins at every share.
AUTO_SPARSE_SHARE = 0.5


def auto_prefers_sparse(reads: int, slots: int, compiled: bool) -> bool:
    """Whether ``sparse_updates="auto"`` takes the sparse path for a batch of ``reads`` reads of
    ``slots`` rows (an optimizer that accepts sparse gradients assumed): always with the
    compiled CPU loops, below :data:`AUTO_SPARSE_SHARE` of the rows read without them."""
    return compiled or expected_share_read(reads, slots) < AUTO_SPARSE_SHARE


def expected_share_read(reads: int, slots: int) -> float:
    """Share of ``slots`` rows that ``reads`` uniform draws touch at least once: 1 - e^(-reads/slots)
    (a memory's real addressing is skewed, so it reads a little fewer)."""
    return -math.expm1(-reads / slots)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over query vectors whose statistics ignore padding positions."""

    def forward(self, queries: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if keep is None or keep.all():
            return super().forward(queries)
        normed = torch.zeros_like(queries)
        normed[keep] = super().forward(queries[keep])
        return normed


@dataclass
class Selection:
    """What one forward pass selected: slot indices and weights, ``(tokens, heads, k)``, and which
    tokens read them (``read``: a gated memory's open tokens; ``None``: every token)."""

    indices: torch.Tensor
    weights: torch.Tensor
    read: torch.Tensor | None = None

    def rows(self, keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """The tokens to count: those that read the memory and that ``keep`` (an attention mask,
        any shape with one entry per token) keeps; ``None`` where every token counts."""
        if keep is None:
            return self.read
        kept = keep.reshape(-1).bool().to(self.indices.device)
        return kept if self.read is None else kept & self.read


class ProductKeyMemory(nn.Module):
    """A product-key memory: ``(batch, seq, dim) -> (batch, seq, value_dim)``.

    Defaults follow the XLM implementation (4 heads, k=32, 512 sub-keys per half, i.e.
    262,144 slots). ``query_norm="layernorm"`` is the safe choice for causal models (no
    statistics across positions); ``"batchnorm"`` ignores padded positions when a mask
    is passed. ``zero_values=True`` starts with an all-zero memory, so adding it to a
    pretrained model leaves that model's outputs unchanged at first. ``sparse_updates=True``
    makes the value gradient sparse over the rows read (pair it with
    :class:`palimpsest.optim.LazyAdamW`; a plain optimizer or gradient clipping may not accept
    sparse gradients); ``"auto"`` makes it sparse only for batches that read few of the rows,
    once the optimizer accepts them (palimpsest's trainer says so through ``allow_sparse_gradients``).
    """

    def __init__(
        self,
        dim: int,
        *,
        n_keys: int = 512,
        heads: int = 4,
        k: int = 32,
        k_dim: int = 256,
        value_dim: int | None = None,
        query_norm: QueryNorm = "layernorm",
        input_dropout: float = 0.0,
        query_dropout: float = 0.0,
        value_dropout: float = 0.0,
        zero_values: bool = False,
        sparse_updates: SparseUpdates = False,
        generator: torch.Generator | None = None,
        gate_hidden: int | None = None,
        gate_keys: int = 0,
        gate_separate_keys: bool = False,
        gpu_kernels: GpuKernels = "auto",
    ):
        super().__init__()
        if sparse_updates not in SPARSE_UPDATES_CHOICES:
            raise ValueError(f"sparse_updates must be True, False or 'auto', got {sparse_updates!r}")
        if gpu_kernels not in GPU_KERNEL_CHOICES:
            raise ValueError(f"gpu_kernels must be one of {GPU_KERNEL_CHOICES}, got {gpu_kernels!r}")
        if k_dim % 2:
            raise ValueError(f"k_dim must be even (two half-keys), got {k_dim}")
        if not 0 < k <= n_keys:
            raise ValueError(f"k must be in 1..n_keys ({n_keys}), got {k}")
        self.dim, self.n_keys, self.heads, self.k, self.k_dim = dim, n_keys, heads, k, k_dim
        self.value_dim = value_dim or dim
        self.size = n_keys**2
        half = k_dim // 2

        self.input_dropout = nn.Dropout(input_dropout)
        self.query_dropout = nn.Dropout(query_dropout)
        if query_norm not in ("layernorm", "batchnorm", "none"):
            raise ValueError(f"query_norm must be layernorm, batchnorm or none, got {query_norm!r}")
        self.zero_values = zero_values
        # Without a generator, the draws come from torch's global generator in the order of
        # earlier versions (the same weights per seed); with one, every draw comes from it and
        # the global generator is left as it was.
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self.query = nn.Linear(dim, heads * k_dim)
            self.query_norm: nn.Module | None = {
                "layernorm": lambda: nn.LayerNorm(heads * k_dim),
                "batchnorm": lambda: MaskedBatchNorm(heads * k_dim),
                "none": lambda: None,
            }[query_norm]()
            bound = 1 / math.sqrt(half)
            self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, half).uniform_(-bound, bound))
            self.values = nn.EmbeddingBag(self.size, self.value_dim, mode="sum")
            self._init_values(None)
        if generator is not None:
            self.reset_parameters(generator)
        self.value_dropout = nn.Dropout(value_dropout)
        #: Opens the memory only for inputs like those it was taught (:mod:`palimpsest.memory.gate`);
        #: ``None``: every token reads the memory.
        self.gate = None
        if gate_hidden:
            self.gate = MemoryGate(dim, gate_hidden, keys=gate_keys, separate_keys=gate_separate_keys)
        #: Where a gate whose codebook reads another block's input finds it (set when the memory is
        #: put into a model: :func:`palimpsest.memory.inject.add_product_key_memory`).
        self.key_input: KeyInput | None = None
        self.sparse_updates = sparse_updates
        #: The value read's implementation on a GPU (:mod:`palimpsest.gpu_kernels`).
        self.gpu_kernels: GpuKernels = gpu_kernels
        #: Whether the optimizer accepts sparse value gradients; "auto" stays dense until it is set.
        self.sparse_gradients_allowed = False
        self.gradient_buffers = ValueGradientBuffers()
        self.score_workspace = ScoreWorkspace()
        self.reuse_gradient_buffer = True
        ranks = [(a, b) for a in range(k) for b in range(k) if (a + 1) * (b + 1) <= k]
        self.register_buffer("candidate_rows", torch.tensor([a for a, _ in ranks]), persistent=False)
        self.register_buffer("candidate_columns", torch.tensor([b for _, b in ranks]), persistent=False)
        self.last_selection: Selection | None = None
        self.record_selection = False

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every weight again: query as ``nn.Linear`` does, sub-keys U(+-1/sqrt(k_dim/2)),
        values N(0, 1/value_dim) (or zeros), all from ``generator`` when given."""
        nn.init.kaiming_uniform_(self.query.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(self.query.in_features)
        nn.init.uniform_(self.query.bias, -bound, bound, generator=generator)
        half = self.k_dim // 2
        nn.init.uniform_(self.keys, -1 / math.sqrt(half), 1 / math.sqrt(half), generator=generator)
        self._init_values(generator)
        if self.query_norm is not None:
            self.query_norm.reset_parameters()

    def _init_values(self, generator: torch.Generator | None) -> None:
        if self.zero_values:
            nn.init.zeros_(self.values.weight)
        else:
            nn.init.normal_(self.values.weight, mean=0.0, std=self.value_dim**-0.5, generator=generator)

    def select(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k slots per head: ``(scores, indices)``, each ``(tokens, heads, k)``.

        On a CPU in fp32 the compiled selection (:class:`ProductKeyScores`) does it; elsewhere, and
        where it cannot be built, torch ops do the same.
        """
        kernels = compiled_selection(queries, self.keys)
        if kernels is not None:
            return ProductKeyScores.apply(queries, self.keys, self.k, kernels, self.score_workspace)
        tokens = queries.shape[0]
        halves = queries.view(tokens, self.heads, 2, self.k_dim // 2)
        # (tokens, heads, n_keys) scores of each half against its sub-keys
        scores_1 = torch.einsum("thd,hnd->thn", halves[:, :, 0], self.keys[:, 0])
        scores_2 = torch.einsum("thd,hnd->thn", halves[:, :, 1], self.keys[:, 1])
        top_1, index_1 = scores_1.topk(self.k, dim=-1)  # sorted, best first
        top_2, index_2 = scores_2.topk(self.k, dim=-1)
        # the candidate pairs of ranks (a, b) with (a+1)(b+1) <= k: (tokens, heads, candidates)
        pairs = top_1[..., self.candidate_rows] + top_2[..., self.candidate_columns]
        scores, best = pairs.topk(self.k, dim=-1)
        row = index_1.gather(-1, self.candidate_rows[best])
        column = index_2.gather(-1, self.candidate_columns[best])
        return scores, row * self.n_keys + column

    @torch.no_grad()
    def selected_slots(self, hidden: torch.Tensor) -> torch.Tensor:
        """The slots each input row selects, ``(rows, heads, k)``, as an evaluation forward pass does
        (BatchNorm statistics used, not updated)."""
        was_training = self.training
        self.eval()
        try:
            queries = self.query(hidden.reshape(-1, hidden.shape[-1]))
            if self.query_norm is not None:
                queries = self.query_norm(queries)
            return self.select(queries)[1]
        finally:
            self.train(was_training)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        shape = hidden.shape
        flat = self.input_dropout(hidden.reshape(-1, shape[-1]))
        queries = self.query(flat)
        keep = attention_mask.reshape(-1).bool() if attention_mask is not None else None
        if isinstance(self.query_norm, MaskedBatchNorm):
            queries = self.query_norm(queries, keep)
        elif self.query_norm is not None:
            queries = self.query_norm(queries)
        queries = self.query_dropout(queries)
        scores, indices = self.select(queries)
        # in the values' dtype, which the read needs (under autocast the input may be bf16 and the
        # values fp32)
        weights = functional.softmax(scores.float(), dim=-1).to(self.values.weight.dtype)
        read = self.gate_opens(hidden.reshape(-1, shape[-1])) if self.gate is not None else None
        if self.record_selection:
            self.last_selection = Selection(indices.detach(), weights.detach(), read)
        bags = indices.reshape(flat.shape[0], -1)  # one bag of heads * k slots per token
        bag_weights = weights.reshape(flat.shape[0], -1)
        if torch.is_grad_enabled():
            buffers = self.gradient_buffers if self.reuse_gradient_buffer else None
            sparse = self.sparse_gradient(bags.numel())
            output = ValueRead.apply(self.values.weight, bags, bag_weights, buffers, sparse, self.gpu_kernels)
        elif use_triton(self.values.weight, self.gpu_kernels):
            output = value_read(self.values.weight, bags, bag_weights)
        else:
            output = self.values(bags, per_sample_weights=bag_weights)
        output = self.value_dropout(output)
        if read is not None:  # exact zeros where the gate stays closed: no change, no gradient there
            output = torch.where(read[:, None], output, 0.0)
        return output.view(*shape[:-1], self.value_dim)

    def gate_opens(self, hidden: torch.Tensor, key_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Where the gate opens for rows of this memory's (raw) input; a codebook that reads another
        block takes ``key_hidden`` (the same rows of that block's input), else what the last forward
        pass left in :attr:`key_input`."""
        if self.gate is None:
            raise ValueError("this memory has no gate")
        fed = self.key_input.hidden if self.key_input is not None else None
        if self.gate.separate_keys and key_hidden is None and fed is not None:
            key_hidden = fed.reshape(-1, hidden.shape[-1])
        return self.gate(hidden, key_hidden)

    def allow_sparse_gradients(self, allowed: bool) -> None:
        """Whether the optimizer accepts sparse value gradients, so that ``sparse_updates="auto"``
        may take them (``True`` and ``False`` settings do not depend on it)."""
        self.sparse_gradients_allowed = allowed

    def sparse_gradient(self, reads: int) -> bool:
        """Whether a batch of ``reads`` slot reads gets a sparse value gradient."""
        if self.sparse_updates == "auto":
            values = self.values.weight
            compiled = (
                values.device.type == "cpu" and values.dtype == torch.float32 and values.is_contiguous()
            )
            return self.sparse_gradients_allowed and auto_prefers_sparse(
                reads, self.size, compiled and cpu_kernels() is not None
            )
        return bool(self.sparse_updates)

    def multiply_adds_per_token(self) -> int:
        """Multiply-adds one token costs in the forward pass: its query, every half-key's score and the
        weighted sum of the k values per head (the top-k selections are comparisons, not counted)."""
        query = self.dim * self.heads * self.k_dim
        scoring = self.heads * self.n_keys * self.k_dim  # two halves of k_dim / 2 against n_keys each
        return query + scoring + self.heads * self.k * self.value_dim

    def extra_repr(self) -> str:
        slots = f"{self.size:,} ({self.n_keys}^2)"
        sparse = f", sparse_updates={self.sparse_updates!r}" if self.sparse_updates else ""
        return f"dim={self.dim}, slots={slots}, heads={self.heads}, k={self.k}, k_dim={self.k_dim}{sparse}"
