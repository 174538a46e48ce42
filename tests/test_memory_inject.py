"""Injecting product-key memory into HF models of every family; saving what was added."""

import pytest
import torch
from torch import nn

from palimpsest.errors import ModelError
from palimpsest.memory import (
    PKMConfig,
    add_product_key_memory,
    load_memory,
    load_merged,
    memories,
    memory_state_dict,
    save_memory,
    save_merged,
)
from palimpsest.models import FAMILY_OBJECTIVE, build_model

SMALL = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16}


def _ids(tokenizer):
    return torch.randint(5, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", list(FAMILY_OBJECTIVE))
@pytest.mark.parametrize("mode", ["residual", "replace"])
def test_every_family_runs_with_gradients(family, mode, tokenizer):
    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], mode=mode, **SMALL))
    assert len(memories(model)) == 1
    ids = _ids(tokenizer)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.logits.shape == (2, 12, len(tokenizer))
    out.loss.backward()
    memory = next(iter(memories(model).values()))
    assert memory.query.weight.grad.abs().sum() > 0 and memory.values.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not [n for n in unused if "memory" in n]


@pytest.mark.parametrize("family", list(FAMILY_OBJECTIVE))
def test_residual_memory_with_zero_values_leaves_outputs_unchanged(family, tokenizer):
    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    ids = _ids(tokenizer)
    before = model(input_ids=ids).logits
    add_product_key_memory(model, PKMConfig(layers=[0, 1], zero_values=True, **SMALL))
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)


def test_save_and_load_only_the_memory(tokenizer, tmp_path):
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[1], query_norm="batchnorm", **SMALL))
    ids = _ids(tokenizer)
    expected = model(input_ids=ids).logits
    save_memory(model, tmp_path / "memory")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "memory" / "memory.safetensors"))
    assert set(saved) == set(memory_state_dict(model)) and all("memory" in key for key in saved)
    fresh = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    load_memory(fresh, tmp_path / "memory")
    assert torch.allclose(fresh.eval()(input_ids=ids).logits, expected, atol=1e-6)


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_merged_save_round_trip(family, tokenizer, tmp_path):
    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[0], mode="replace", **SMALL))
    ids = _ids(tokenizer)
    expected = model(input_ids=ids).logits
    save_merged(model, tokenizer, tmp_path)
    loaded = load_merged(tmp_path).eval()
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)


def test_clear_errors(tokenizer):
    model = build_model("gpt2", "micro", tokenizer)
    with pytest.raises(ModelError, match=r"not all in 0\.\.1"):
        add_product_key_memory(model, PKMConfig(layers=[5], **SMALL))
    with pytest.raises(ModelError, match=r"children: ln_1, attn, ln_2, mlp"):
        add_product_key_memory(model, PKMConfig(layers=[0], ffn_module="feed_forward", **SMALL))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 1, "hidden_size": 4, "model_type": "odd"})()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])

    with pytest.raises(ModelError, match=r"cannot find the FFN of block 0.*0 \(Linear\)"):
        add_product_key_memory(Odd(), PKMConfig(layers=[0], **SMALL))


def test_pretrained_minilm_takes_a_residual_memory_without_changing():
    from palimpsest.models import load_pretrained

    model = load_pretrained("minilm-l6").eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    before = model(input_ids=ids).logits
    add_product_key_memory(model, PKMConfig(layers=[3], zero_values=True, **SMALL))
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)
