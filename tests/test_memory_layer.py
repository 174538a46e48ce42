"""The product-key memory layer: exact top-k, shapes, gradients, padding-aware BatchNorm."""

import pytest
import torch

from palimpsest.memory import ProductKeyMemory


def brute_force(memory: ProductKeyMemory, queries: torch.Tensor):
    """Score every one of the n_keys**2 keys and take the top k, per head."""
    tokens = queries.shape[0]
    halves = queries.view(tokens, memory.heads, 2, memory.k_dim // 2)
    first = torch.einsum("thd,hnd->thn", halves[:, :, 0], memory.keys[:, 0])
    second = torch.einsum("thd,hnd->thn", halves[:, :, 1], memory.keys[:, 1])
    every = (first.unsqueeze(-1) + second.unsqueeze(-2)).flatten(-2)  # slot i*n + j
    return every.topk(memory.k, dim=-1)


@pytest.mark.parametrize(("n_keys", "k", "heads"), [(8, 4, 1), (16, 8, 2), (32, 32, 3)])
def test_top_k_is_exact(n_keys, k, heads):
    torch.manual_seed(n_keys)
    memory = ProductKeyMemory(16, n_keys=n_keys, heads=heads, k=k, k_dim=12)
    queries = torch.randn(50, heads * 12)
    scores, indices = memory.select(queries)
    true_scores, true_indices = brute_force(memory, queries)
    assert torch.allclose(scores, true_scores, atol=1e-5)
    assert torch.equal(indices.sort(dim=-1).values, true_indices.sort(dim=-1).values)


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
