"""Injecting product-key memory into HF models of every family; saving what was added."""

import pytest
import torch
from torch import nn

from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory import (
    PKMConfig,
    add_product_key_memory,
    load_memory,
    load_merged,
    memories,
    memory_handle,
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
    with pytest.raises(ConfigError, match=r"not all block indices in 0\.\.1"):
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


@pytest.mark.parametrize("family", list(FAMILY_OBJECTIVE))
@pytest.mark.parametrize("mode", ["residual", "replace"])
def test_remove_gives_back_the_exact_model(family, mode, tokenizer):
    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    ids = _ids(tokenizer)
    before = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    names = [name for name, _ in model.named_parameters()]
    add_product_key_memory(model, PKMConfig(layers=[0, 1], mode=mode, query_norm="batchnorm", **SMALL))
    assert not torch.equal(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, before)
    model.palimpsest_memory.remove()
    assert torch.equal(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, before)
    assert [name for name, _ in model.named_parameters()] == names
    assert not memories(model) and memory_handle(model) is None
    assert not hasattr(model.config, "palimpsest_memory")
    assert not model._forward_pre_hooks
    add_product_key_memory(model, PKMConfig(layers=[1], mode=mode, **SMALL))  # can be added again


@pytest.mark.parametrize("family", list(FAMILY_OBJECTIVE))
def test_a_residual_memory_keeps_every_base_name(family, tokenizer, tmp_path):
    """Merged = the base checkpoint's tensors under their own names, plus the memory's."""
    from palimpsest.storage import read_safetensors

    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    base = set(model.state_dict())
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    save_merged(model, tokenizer, tmp_path)
    stored = set(read_safetensors(tmp_path))
    added = stored - base
    assert base - stored <= {name for name in base if "lm_head" in name or "cls.predictions.decoder" in name}
    assert added and all(".memory." in name for name in added)


def test_the_memory_is_seeded_and_leaves_the_global_generator_alone(tokenizer):
    def drawn(generator, **kwargs):
        model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)  # seeds torch globally
        state = torch.get_rng_state()
        add_product_key_memory(model, PKMConfig(layers=[1], **SMALL, **kwargs), generator=generator)
        assert torch.equal(torch.get_rng_state(), state)
        return {name.rsplit(".", 1)[-1]: value for name, value in memory_state_dict(model).items()}

    a = drawn(torch.Generator().manual_seed(1))
    b = drawn(None, seed=1)  # the config's seed is the same stream
    c = drawn(torch.Generator().manual_seed(2))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["keys"], c["keys"])


def test_copies_of_a_memory_model_are_independent(tokenizer):
    import copy

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    twin = copy.deepcopy(model)
    ids = _ids(tokenizer)
    with torch.no_grad():
        next(iter(memories(twin).values())).values.weight.zero_()
    assert not torch.equal(model(input_ids=ids).logits, twin(input_ids=ids).logits)
    twin.palimpsest_memory.remove()
    assert memories(model) and not memories(twin)


def test_sharded_checkpoints_reload_exactly(tokenizer, tmp_path):
    from palimpsest.models import load_pretrained

    model = build_model("llama", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = _ids(tokenizer)
    loaded = load_pretrained(str(tmp_path)).eval()
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_an_adapter_for_another_model_is_refused(tokenizer, tmp_path):
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    save_memory(model, tmp_path)
    with pytest.raises(ModelError, match="saved for a gpt2 model, not a llama"):
        load_memory(build_model("llama", "micro", tokenizer, seed=0), tmp_path)
    wider = build_model("gpt2", "tiny", tokenizer, max_positions=32, seed=0)
    with pytest.raises(ModelError, match="does not fit this model"):
        load_memory(wider, tmp_path)


def test_only_the_main_process_writes(tokenizer, tmp_path, monkeypatch):
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    monkeypatch.setenv("RANK", "1")
    save_memory(model, tmp_path / "adapter")
    save_merged(model, tokenizer, tmp_path / "merged")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()
