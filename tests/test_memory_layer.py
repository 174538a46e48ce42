"""The product-key memory layer: exact top-k, shapes, gradients, padding-aware BatchNorm."""

import copy

import pytest
import torch
from torch.nn import functional

from palimpsest.kernels import cpu_kernels
from palimpsest.memory import ProductKeyMemory
from palimpsest.memory import autograd as autograd_module
from palimpsest.memory import layer as layer_module


def brute_force(memory: ProductKeyMemory, queries: torch.Tensor):
    """Score every one of the n_keys**2 keys and take the top k, per head."""
    tokens = queries.shape[0]
    halves = queries.view(tokens, memory.heads, 2, memory.k_dim // 2)
    first = torch.einsum("thd,hnd->thn", halves[:, :, 0], memory.keys[:, 0])
    second = torch.einsum("thd,hnd->thn", halves[:, :, 1], memory.keys[:, 1])
    every = (first.unsqueeze(-1) + second.unsqueeze(-2)).flatten(-2)  # slot i*n + j
    return every.topk(memory.k, dim=-1)


def _selection_path(monkeypatch, path):
    if path == "compiled" and cpu_kernels() is None:
        pytest.skip("the compiled memory kernels cannot be built on this machine")
    if path != "compiled":
        monkeypatch.setattr(layer_module, "cpu_kernels", lambda: None)
        monkeypatch.setattr(autograd_module, "cpu_kernels", lambda: None)


@pytest.mark.parametrize("path", ["compiled", "torch ops"])
@pytest.mark.parametrize(("n_keys", "k", "heads"), [(8, 4, 1), (16, 8, 2), (32, 32, 3), (64, 5, 2)])
def test_top_k_is_exact(monkeypatch, path, n_keys, k, heads):
    _selection_path(monkeypatch, path)
    torch.manual_seed(n_keys)
    memory = ProductKeyMemory(16, n_keys=n_keys, heads=heads, k=k, k_dim=12)
    queries = torch.randn(50, heads * 12)
    scores, indices = memory.select(queries)
    true_scores, true_indices = brute_force(memory, queries)
    assert torch.allclose(scores, true_scores, atol=1e-5)
    assert torch.equal(indices.sort(dim=-1).values, true_indices.sort(dim=-1).values)


def test_compiled_selection_gradients_match_torch_ops(monkeypatch):
    """The compiled backward reads only the selected keys; the gradients are torch's dense ones."""
    if cpu_kernels() is None:
        pytest.skip("the compiled memory kernels cannot be built on this machine")
    torch.manual_seed(3)
    memory = ProductKeyMemory(16, n_keys=24, heads=3, k=6, k_dim=10)
    queries = torch.randn(40, 30)
    grad = torch.randn(40, 3, 6)
    results = []
    for path in ("compiled", "torch ops"):
        if path == "torch ops":
            monkeypatch.setattr(layer_module, "cpu_kernels", lambda: None)
            monkeypatch.setattr(autograd_module, "cpu_kernels", lambda: None)
        leaf = queries.clone().requires_grad_()
        memory.keys.grad = None
        scores, indices = memory.select(leaf)
        order = indices.argsort(dim=-1)  # the same slots, whatever order ties were broken in
        (scores.gather(-1, order) * grad).sum().backward()
        results.append((scores.gather(-1, order), indices.gather(-1, order), leaf.grad, memory.keys.grad))
    (scores, indices, grad_queries, grad_keys), reference = results
    assert torch.equal(indices, reference[1])
    assert torch.allclose(scores, reference[0], atol=1e-5)
    assert torch.allclose(grad_queries, reference[2], atol=1e-5)
    assert torch.allclose(grad_keys, reference[3], atol=1e-5)
    assert grad_keys.abs().sum() > 0


@pytest.mark.parametrize("path", ["compiled", "torch ops"])
def test_nan_queries_still_select_slots_of_the_memory(monkeypatch, path):
    """A diverged model's NaN queries give NaN outputs, never a read outside the table."""
    _selection_path(monkeypatch, path)
    memory = ProductKeyMemory(16, n_keys=16, heads=2, k=4, k_dim=8)
    queries = torch.randn(6, 16)
    queries[0] = float("nan")
    queries[1, :4] = float("nan")  # one half of one head
    _scores, indices = memory.select(queries)
    assert indices.min() >= 0 and indices.max() < memory.size


def test_inference_mode_then_training():
    """The reused score table made under inference mode is not written outside it (torch forbids it)."""
    torch.manual_seed(0)
    memory = ProductKeyMemory(16, n_keys=16, heads=2, k=4, k_dim=8)
    hidden = torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = memory(hidden)
    output = memory(hidden)
    output.sum().backward()
    assert torch.allclose(output, expected) and memory.keys.grad is not None
    with torch.inference_mode():
        assert torch.allclose(memory(hidden), expected)


def test_output_matches_a_naive_reference():
    torch.manual_seed(0)
    memory = ProductKeyMemory(24, n_keys=10, heads=2, k=5, k_dim=8, value_dim=6, query_norm="none")
    hidden = torch.randn(3, 7, 24)
    output = memory(hidden)
    queries = memory.query(hidden.reshape(-1, 24))
    scores, indices = brute_force(memory, queries)
    weights = torch.softmax(scores, dim=-1)
    reference = (weights.unsqueeze(-1) * memory.values.weight[indices]).sum(dim=(1, 2))
    assert output.shape == (3, 7, 6)
    assert torch.allclose(output.reshape(-1, 6), reference, atol=1e-5)


def test_gradients_reach_queries_keys_and_only_the_selected_values():
    torch.manual_seed(1)
    memory = ProductKeyMemory(16, n_keys=16, heads=2, k=4, k_dim=8)
    memory.record_selection = True
    memory(torch.randn(2, 5, 16)).sum().backward()
    assert memory.query.weight.grad.abs().sum() > 0 and memory.keys.grad.abs().sum() > 0
    touched = memory.values.weight.grad.abs().sum(dim=1).nonzero().flatten()
    assert set(touched.tolist()) <= set(memory.last_selection.indices.flatten().tolist())


def test_zero_values_give_zero_output():
    memory = ProductKeyMemory(16, n_keys=8, heads=2, k=4, k_dim=8, zero_values=True)
    assert torch.count_nonzero(memory(torch.randn(2, 3, 16))) == 0


def test_batchnorm_statistics_ignore_padding():
    torch.manual_seed(2)
    memory = ProductKeyMemory(8, n_keys=8, heads=1, k=2, k_dim=4, query_norm="batchnorm")
    hidden = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    padded = hidden.clone()
    padded[1, 3:] = 1000.0  # garbage in padding must not move the statistics
    a = memory(hidden, attention_mask=mask)
    b = memory(padded, attention_mask=mask)
    keep = mask.bool()
    assert torch.allclose(a[keep], b[keep], atol=1e-5)


def test_invalid_settings():
    with pytest.raises(ValueError, match="k_dim"):
        ProductKeyMemory(8, k_dim=7)
    with pytest.raises(ValueError, match="query_norm"):
        ProductKeyMemory(8, n_keys=4, k=2, k_dim=4, query_norm="groupnorm")


def _embedding_bag_gradients(values, indices, weights, grad_output):
    """Gradients of ``values`` and ``weights`` through torch's own EmbeddingBag (the reference)."""
    values = values.detach().requires_grad_()
    weights = weights.detach().requires_grad_()
    functional.embedding_bag(indices, values, per_sample_weights=weights, mode="sum").backward(grad_output)
    return values.grad, weights.grad


def _draw_reads(generator, tokens=9, reads=6, slots=40, width=8):
    values = torch.randn(slots, width, generator=generator)
    indices = torch.randint(0, slots, (tokens, reads), generator=generator)
    weights = torch.rand(tokens, reads, generator=generator)
    return values, indices, weights, torch.randn(tokens, width, generator=generator)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("path", ["compiled", "torch ops", "torch ops, chunked"])
def test_value_read_backward_matches_embedding_bag(monkeypatch, path, sparse):
    """Each backward path with reused buffers gives torch's EmbeddingBag gradients, step after step."""
    if path == "compiled" and cpu_kernels() is None:
        pytest.skip("the compiled memory kernels cannot be built on this machine")
    if path != "compiled":
        monkeypatch.setattr(layer_module, "cpu_kernels", lambda: None)
        monkeypatch.setattr(autograd_module, "cpu_kernels", lambda: None)
    if path == "torch ops, chunked":  # many chunks of tokens
        monkeypatch.setattr(autograd_module, "TOKENS_PER_CHUNK", 2)
    generator = torch.Generator().manual_seed(0)
    buffers = autograd_module.ValueGradientBuffers()
    values = torch.nn.Parameter(torch.zeros(40, 8))
    pointers = []
    for step in range(3):
        drawn, indices, weights, grad_output = _draw_reads(generator)
        with torch.no_grad():
            values.copy_(drawn)
        values.grad = None  # zero_grad(set_to_none=True)
        expected = _embedding_bag_gradients(drawn, indices, weights, grad_output)
        leaf = weights.detach().requires_grad_()
        autograd_module.ValueRead.apply(values, indices, leaf, buffers, sparse).backward(grad_output)
        got = values.grad.to_dense() if sparse else values.grad
        assert torch.allclose(got, expected[0], atol=1e-6), step
        assert torch.allclose(leaf.grad, expected[1], atol=1e-6), step
        if sparse:
            assert values.grad.is_sparse and values.grad._nnz() == indices.unique().numel()
        else:
            pointers.append(values.grad.data_ptr())
    if not sparse:
        assert len(set(pointers)) == 1  # one buffer, reused: no full-table allocation per step


@pytest.mark.parametrize("sparse", [False, True])
def test_value_gradients_accumulate_over_micro_batches(sparse):
    """Without zero_grad between backward passes the value gradient is the sum, never overwritten."""
    torch.manual_seed(0)
    memory = ProductKeyMemory(16, n_keys=12, heads=2, k=4, k_dim=8)
    reference = copy.deepcopy(memory)
    memory.sparse_updates = sparse
    batches = [(torch.randn(2, 5, 16), torch.randn(2, 5, 16)) for _ in range(3)]
    for hidden, target in batches:
        ((memory(hidden) - target) ** 2).sum().backward()
        with torch.no_grad():  # torch's own EmbeddingBag backward, the same selection
            queries = reference.query_norm(reference.query(hidden.reshape(-1, 16)))
            scores, indices = reference.select(queries)
            weights = torch.softmax(scores, dim=-1).reshape(indices.shape[0], -1)
        output = reference.values(indices.reshape(indices.shape[0], -1), per_sample_weights=weights)
        ((output.view(hidden.shape) - target) ** 2).sum().backward()
    grad = memory.values.weight.grad
    assert torch.allclose(grad.to_dense() if sparse else grad, reference.values.weight.grad, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_bf16_value_gradients_are_summed_in_fp32(sparse):
    """Each row's gradient sums many reads: in fp32, then rounded once to the values' bf16."""
    generator = torch.Generator().manual_seed(0)
    values, indices, weights, grad_output = _draw_reads(generator, tokens=400, reads=8, slots=20, width=16)
    values, weights, grad_output = (x.to(torch.bfloat16) for x in (values, weights, grad_output))
    expected = _embedding_bag_gradients(values.float(), indices, weights.float(), grad_output.float())
    parameter = torch.nn.Parameter(values)
    leaf = weights.detach().requires_grad_()
    buffers = autograd_module.ValueGradientBuffers()
    autograd_module.ValueRead.apply(parameter, indices, leaf, buffers, sparse).backward(grad_output)
    got = parameter.grad.to_dense() if sparse else parameter.grad
    assert got.dtype == torch.bfloat16
    # the fp32 sum of the same bf16 inputs, rounded once: at most one bf16 step (2^-8 relative) away
    for ours, reference in ((got, expected[0]), (leaf.grad, expected[1])):
        assert torch.allclose(ours.float(), reference.to(torch.bfloat16).float(), rtol=2**-8, atol=1e-6)


def test_multiply_adds_per_token_match_the_matmuls_torch_counts():
    """The query and scoring matmuls torch's FLOP counter sees, plus k value rows of each head."""
    from torch.utils.flop_counter import FlopCounterMode

    memory = ProductKeyMemory(16, n_keys=12, heads=2, k=4, k_dim=8, query_norm="none")
    tokens = 10
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        memory(torch.randn(1, tokens, 16))
    values = memory.heads * memory.k * memory.value_dim  # the embedding bag's sum, not a matmul
    assert counter.get_total_flops() == 2 * tokens * (memory.multiply_adds_per_token() - values)


def test_without_buffer_reuse_each_step_has_its_own_gradient():
    """``reuse_gradient_buffer=False`` (what FSDP sets): a kept gradient is never overwritten."""
    torch.manual_seed(0)
    memory = ProductKeyMemory(16, n_keys=12, heads=2, k=4, k_dim=8)
    memory.reuse_gradient_buffer = False
    kept = []
    for _ in range(2):
        memory.zero_grad(set_to_none=True)
        memory(torch.randn(2, 5, 16)).pow(2).sum().backward()
        kept.append((memory.values.weight.grad, memory.values.weight.grad.clone()))
    assert kept[0][0].data_ptr() != kept[1][0].data_ptr()
    assert torch.equal(kept[0][0], kept[0][1])  # the first step's gradient is as it was
