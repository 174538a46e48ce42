"""The product-key memory's two autograd functions and the buffers they reuse.

* :class:`ValueRead`: the weighted read of the value rows the selection picked (the
  ``EmbeddingBag`` sum), whose backward writes the values' gradient dense into a reused buffer
  (:class:`ValueGradientBuffers`) or sparse over the rows read (``sparse_updates``);
* :class:`ProductKeyScores`: the scores of the k best product keys, whose backward reads only
  the k selected scores per head (:class:`ScoreWorkspace` holds the half-key score table).

Each takes the compiled CPU loops (:mod:`palimpsest.kernels`) where they apply and torch ops
elsewhere, with the same results (tested against each other). The layer that uses them is
:class:`palimpsest.memory.layer.ProductKeyMemory`.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from palimpsest.gpu_kernels import GpuKernels, use_triton, value_read, value_read_backward
from palimpsest.kernels import cpu_kernels


class ValueGradientBuffers:
    """Storage the value read's backward reuses from step to step instead of allocating it.

    A fresh gradient as large as the whole value table (268 MB at 262k slots of width 256) is
    zero-filled page by page on every step and unmapped again by ``zero_grad``; on a CPU that
    is most of a step. Here the dense gradient lives in one buffer that is zeroed in place
    and handed to autograd as a new view each step (autograd keeps that view as ``.grad``
    without copying), and the gathered rows of the backward go through one small reused
    workspace; a sparse gradient's rows (compiled path) live in one reused buffer too. The price:
    a step's value gradient is overwritten by the next backward, as with
    ``zero_grad(set_to_none=False)``; clone it to keep it.
    """

    def __init__(self) -> None:
        self.dense: dict[torch.dtype, torch.Tensor] = {}
        self.sparse: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None

    def dense_gradient(self, values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """An all-zero tensor shaped like ``values`` (in ``dtype``, default theirs), in a reused buffer."""
        dtype = dtype or values.dtype
        buffer = self.dense.get(dtype)
        if buffer is None or buffer.shape != values.shape or buffer.device != values.device:
            self.dense[dtype] = torch.zeros(values.shape, dtype=dtype, device=values.device)
            return self.dense[dtype].view(values.shape)
        buffer.zero_()
        return buffer.view(values.shape)

    def sparse_rows(self, shape: tuple[int, int], reads: int, values: torch.Tensor) -> torch.Tensor:
        """Room for the gradient rows of a sparse value gradient (the rows one batch read). Sized
        for the most rows ``reads`` reads can touch, so a batch reading a few more rows than the
        last does not map (and page-fault) a new buffer."""
        space = self.sparse
        if space is None or space.numel() < shape[0] * shape[1] or space.dtype != values.dtype:
            most = min(reads, values.shape[0])
            self.sparse = space = values.new_empty(max(most, shape[0]) * shape[1])
        return space[: shape[0] * shape[1]].view(shape)

    def row_workspace(self, rows: int, values: torch.Tensor) -> torch.Tensor:
        """Room for ``rows`` value rows (the gathered rows of one chunk)."""
        space = self.rows
        if (
            space is None
            or space.shape[0] < rows
            or space.dtype != values.dtype
            or space.device != values.device
        ):
            self.rows = space = values.new_empty((rows, values.shape[1]))
        return space[:rows]


#: Tokens per chunk of the value read's backward on a CPU: the rows they gather (tokens x heads x
#: k rows of the value width) stay in cache and in the reused workspace (chosen by measuring:
#: README, "Benchmarks").
TOKENS_PER_CHUNK = 16
#: The same on a GPU, where caches do not decide but each chunk costs kernel launches: few, large
#: chunks (512 tokens of 128 reads of width 256 gather 64 MiB in fp32). Not yet measured on a card
#: (``benchmarks/gpu.sh`` times this torch-op path beside the Triton kernels).
GPU_TOKENS_PER_CHUNK = 512


class ValueRead(torch.autograd.Function):
    """``embedding_bag(indices, values, weights)`` with a backward that allocates no full table.

    Forward is the ``EmbeddingBag`` sum. Backward, by chunks:

    * the weights' gradient: each slot read's value row against its token's output gradient
      (the rows gathered into the reused workspace, a dot product per read);
    * the values' gradient: each read adds its weight times its token's output gradient to its
      row of the reused dense buffer; or (``sparse=True``) the reads sorted by slot, each
      distinct row's sum is an ``embedding_bag`` over the output gradients, returned as a
      coalesced sparse tensor over the rows read.

    When the values already hold a gradient (accumulation over micro-batches), or ``buffers``
    is None (no reuse), a fresh dense gradient is returned for autograd to add, so a gradient
    held is never overwritten.
    """

    @staticmethod
    def forward(
        ctx,
        values,
        indices,
        weights,
        buffers: ValueGradientBuffers | None,
        sparse: bool,
        gpu_kernels: GpuKernels = "auto",
    ):
        ctx.save_for_backward(values, indices, weights)
        ctx.buffers, ctx.sparse = buffers, sparse
        ctx.triton = use_triton(values, gpu_kernels)
        if ctx.triton:
            return value_read(values, indices, weights)
        return functional.embedding_bag(indices, values, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        values, indices, weights = ctx.saved_tensors
        reuse = ctx.buffers is not None
        buffers: ValueGradientBuffers = ctx.buffers if reuse else ValueGradientBuffers()
        # Sums over many reads run in fp32 even when the values are bf16 or fp16.
        exact = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
        grad_output = grad_output.contiguous().to(exact)
        tokens, reads = indices.shape
        want_values, want_weights = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_weights = torch.empty_like(weights) if want_weights else None
        grad_values = sums = None
        dense = want_values and not ctx.sparse
        if dense:
            fresh = values.grad is not None or not reuse  # accumulating: autograd adds ours to the one held
            grad_values = torch.zeros_like(values) if fresh else buffers.dense_gradient(values)
            sums = grad_values if exact == values.dtype else buffers.dense_gradient(values, exact)
        compiled = _compiled_loops(values, indices, weights)
        if ctx.triton:  # the same sums in one pass over the rows read (palimpsest.gpu_kernels)
            value_read_backward(
                values.detach(), indices, weights.detach(), grad_output, grad_weights, sums if dense else None
            )
            want_weights = dense = False
        elif compiled is not None:  # the same sums as the loop below, without its temporaries
            indices = indices.contiguous()
            if want_weights:
                compiled.weight_gradient(indices, values.detach().contiguous(), grad_output, grad_weights)
            if dense:
                compiled.value_gradient(indices, weights.detach().contiguous(), grad_output, sums)
            want_weights = dense = False
        per_chunk = TOKENS_PER_CHUNK if values.device.type == "cpu" else GPU_TOKENS_PER_CHUNK
        chunk = max(1, min(per_chunk, tokens))
        space = buffers.row_workspace(chunk * reads, values) if want_weights else None
        for start in range(0, tokens, chunk) if want_weights or dense else ():
            end = min(start + chunk, tokens)
            read = indices[start:end].reshape(-1)
            output = grad_output[start:end].unsqueeze(1)  # (chunk, 1, width)
            if want_weights:
                rows = torch.index_select(values, 0, read, out=space[: read.numel()])
                products = rows.view(end - start, reads, -1).to(exact) * output
                grad_weights[start:end] = products.sum(dim=-1).to(weights.dtype)
            if dense:  # each read adds its weight times its token's output gradient to its row
                scaled = weights[start:end].unsqueeze(-1).to(exact) * output
                sums.index_add_(0, read, scaled.view(-1, values.shape[1]))
        if sums is not None and sums is not grad_values:
            grad_values.copy_(sums)
        if want_values and ctx.sparse:
            # The reads sorted by slot: each distinct row's gradient is the weighted sum of the output
            # gradients of the tokens that read it (compiled: a loop per row; torch ops: an embedding
            # bag over the output gradients, faster than adding).
            slots, order = indices.reshape(-1).sort()
            rows_read, counts = torch.unique_consecutive(slots, return_counts=True)
            starts = counts.cumsum(0) - counts
            if compiled is not None:
                fresh = values.grad is not None or not reuse  # accumulating: never overwrite a held one
                shape = (rows_read.numel(), values.shape[1])
                block = (
                    values.new_empty(shape) if fresh else buffers.sparse_rows(shape, indices.numel(), values)
                )
                flat_weights = weights.detach().reshape(-1).contiguous()
                compiled.segment_value_gradient(order, starts, reads, flat_weights, grad_output, block)
            else:
                readers = torch.div(order, reads, rounding_mode="floor")  # the token of each read
                block = functional.embedding_bag(
                    readers,
                    grad_output,
                    starts,
                    mode="sum",
                    per_sample_weights=weights.reshape(-1)[order].to(exact),
                )
            grad_values = torch.sparse_coo_tensor(
                rows_read.unsqueeze(0), block.to(values.dtype), values.shape, is_coalesced=True,
                check_invariants=False,
            )  # fmt: skip
        return grad_values, None, grad_weights, None, None, None


def _compiled_loops(values: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor):
    """The compiled backward loops (:mod:`palimpsest.kernels`) where they apply: CPU, fp32,
    int64 indices, and built on this machine; else None (the torch-op path)."""
    if values.device.type != "cpu" or values.dtype != torch.float32 or weights.dtype != torch.float32:
        return None
    if indices.dtype != torch.int64 or not values.is_contiguous():
        return None
    return cpu_kernels()


class ScoreWorkspace:
    """The half-key score table of one forward pass (heads x 2 x tokens x n_keys: 34 MB for 2,048
    tokens at 262k slots), kept from call to call: a fresh one is mapped and page-faulted on every
    forward, which on a CPU costs more than the matmul that fills it. It only lives inside the
    forward (the selection copies out what it needs), so reusing it is safe — except for forward
    passes of one layer run at once from several threads, which would share it."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffer
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.dtype != like.dtype
            or buffer.device != like.device
            # one made under torch.inference_mode() cannot be written outside it, nor kept inside it
            or buffer.is_inference() != torch.is_inference_mode_enabled()
        ):
            self.buffer = buffer = like.new_empty(size)
        return buffer[:size].view(shape)


class ProductKeyScores(torch.autograd.Function):
    """The product-key selection with compiled loops: ``(scores, slots)``, each ``(tokens, heads, k)``.

    Forward: every half-key's score by one batched matmul, then per token and head the k best of
    each half and the k best of their sums (a heap over the two sorted lists) in one pass
    (torch's path: two top-k calls, a candidate table and a third top-k). Backward: only the k
    selected scores per head carry a gradient, so the queries' gradient reads k keys per half
    and the keys' gradient is added to the rows selected (torch's path: a mostly-zero score
    gradient through two dense matmuls).
    """

    @staticmethod
    def forward(ctx, queries, keys, k: int, kernels, workspace: ScoreWorkspace):
        tokens = queries.shape[0]
        heads, _, n_keys, half = keys.shape
        halves = queries.reshape(tokens, heads * 2, half).transpose(0, 1)  # (heads * 2, tokens, half)
        scores = workspace.get((heads * 2, tokens, n_keys), queries)
        torch.bmm(halves, keys.reshape(heads * 2, n_keys, half).transpose(1, 2), out=scores)
        best = queries.new_empty((tokens, heads, k))
        slots, rows, columns = (torch.empty((tokens, heads, k), dtype=torch.int64) for _ in range(3))
        kernels.product_key_select(scores.view(heads, 2, tokens, n_keys), k, best, slots, rows, columns)
        ctx.save_for_backward(queries, keys, rows, columns)
        ctx.mark_non_differentiable(slots)
        return best, slots

    @staticmethod
    def backward(ctx, grad_scores, _grad_slots):
        queries, keys, rows, columns = ctx.saved_tensors
        kernels = cpu_kernels()
        grad_queries = torch.empty_like(queries, memory_format=torch.contiguous_format)
        grad_keys = torch.zeros_like(keys, memory_format=torch.contiguous_format)
        kernels.key_score_backward(
            queries.contiguous(), keys.contiguous(), rows, columns, grad_scores.contiguous(), grad_queries,
            grad_keys,
        )  # fmt: skip
        return (
            grad_queries if ctx.needs_input_grad[0] else None,
            grad_keys if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )


def compiled_selection(queries: torch.Tensor, keys: torch.Tensor):
    """The compiled selection's loops where they apply (CPU, fp32, built here); else None."""
    if queries.device.type != "cpu" or queries.dtype != torch.float32 or keys.dtype != torch.float32:
        return None
    return cpu_kernels()
