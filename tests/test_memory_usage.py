"""Usage metrics of a memory: the formulas on known distributions, and on a real model."""

import math

import pytest
import torch

from palimpsest.memory import (
    MemoryUsageCallback,
    PKMConfig,
    add_product_key_memory,
    distribution_metrics,
    memory_param_groups,
    memory_usage,
)
from palimpsest.models import build_model


def test_uniform_and_single_slot_extremes():
    even = distribution_metrics(torch.ones(100), torch.ones(100))
    assert even["used"] == 1.0 and even["kl_counts"] == pytest.approx(0.0, abs=1e-6)
    assert even["gini"] == pytest.approx(0.0, abs=1e-6) and even["slots_90"] == pytest.approx(0.9, abs=0.011)
    one = torch.zeros(100)
    one[7] = 5.0
    single = distribution_metrics(one, one)
    assert single["used"] == 0.01 and single["kl_weights"] == pytest.approx(math.log(100))
    assert single["slots_99"] == 0.01 and single["gini"] == pytest.approx(0.99)


def test_memory_usage_on_a_model(tokenizer):
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[0, 1], n_keys=8, heads=2, k=4, k_dim=16))
    batches = [{"input_ids": torch.randint(5, len(tokenizer), (4, 16))} for _ in range(3)]
    usage = memory_usage(model, batches)
    assert len(usage) == 2
    for metrics in usage.values():
        assert 0 < metrics["used"] <= 1 and metrics["kl_counts"] >= 0 and 0 < metrics["slots_90"] <= 1
    assert all(not layer.record_selection for layer in model.modules() if hasattr(layer, "record_selection"))


def test_outdated_slots_and_value_group_in_training(tokenizer, wiki_small, tmp_path):
    from palimpsest.data import encode_blocks
    from palimpsest.training import TrainingConfig, train

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], n_keys=16, heads=2, k=4, k_dim=16))
    usage = MemoryUsageCallback(window=2, log_every=2)
    config = TrainingConfig(steps=6, batch_size=4, save_every=100)
    train(
        model, tokenizer, encode_blocks(wiki_small, tokenizer, 32), config, tmp_path, objective="clm",
        callbacks=[usage], param_groups=lambda m: memory_param_groups(m, lr=1e-2),
    )  # fmt: skip
    assert [entry["step"] for entry in usage.history] == [2, 4, 6]
    key = next(k for k in usage.history[-1] if k.endswith("/outdated"))
    assert all(0.0 <= entry[key] < 1.0 for entry in usage.history)
    ever = usage.history[-1][key.replace("outdated", "ever_used")]
    assert 1 - usage.history[-1][key] <= ever
