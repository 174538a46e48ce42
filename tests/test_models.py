import pytest
import torch

from palimpsest.errors import ModelError
from palimpsest.models import (
    FAMILY_OBJECTIVE,
    SIZES,
    build_model,
    count_parameters,
    load_pretrained,
    objective_of,
)


@pytest.mark.parametrize("family", list(FAMILY_OBJECTIVE))
def test_every_family_builds_and_runs(family, tokenizer):
    model = build_model(family, "micro", tokenizer, max_positions=32, seed=0)
    assert objective_of(model.config) == FAMILY_OBJECTIVE[family]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    ids = torch.randint(5, len(tokenizer), (2, 16))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 16, len(tokenizer))


def test_named_sizes_have_the_documented_scale(tokenizer):
    tiny = count_parameters(build_model("gpt2", "tiny", tokenizer))
    small = count_parameters(build_model("gpt2", "small", tokenizer))
    assert 0.5e6 < tiny < 2e6
    assert 5e6 < small < 12e6
    assert set(SIZES) >= {"micro", "tiny", "small", "base"}


def test_same_seed_same_weights(tokenizer):
    a = build_model("roberta", "micro", tokenizer, seed=1)
    b = build_model("roberta", "micro", tokenizer, seed=1)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_classification_head(tokenizer):
    model = build_model("bert", "micro", tokenizer, task="classification", num_labels=5)
    assert model(input_ids=torch.tensor([[1, 7, 8, 2]])).logits.shape == (1, 5)


def test_unknown_family_size_and_paths(tokenizer, tmp_path):
    with pytest.raises(ModelError, match="unknown model family 't5'"):
        build_model("t5", "tiny", tokenizer)
    with pytest.raises(ModelError, match="unknown model size 'huge'"):
        build_model("gpt2", "huge", tokenizer)
    with pytest.raises(ModelError, match="no model at"):
        load_pretrained(str(tmp_path / "missing"))


def test_shipped_minilm_loads_as_a_pretrained_encoder():
    model = load_pretrained("minilm-l6")
    assert objective_of(model.config) == "mlm"
    assert model.config.num_hidden_layers == 6
    assert 20e6 < count_parameters(model) < 25e6


def test_saved_model_round_trip(tokenizer, tmp_path):
    model = build_model("gpt2", "micro", tokenizer, seed=0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_pretrained(str(tmp_path))
    ids = torch.tensor([[1, 9, 10, 11]])
    assert torch.allclose(model.eval()(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)


def test_blocks_as_typed_become_indices_depths_or_text_for_the_one_parser():
    from palimpsest.models import block_indices, typed_blocks

    assert typed_blocks("2,-1,0.5") == [2, -1, 0.5]
    assert typed_blocks("first+last") == "first+last"
    assert typed_blocks("0.1:0.25") == "0.1:0.25"
    assert block_indices(typed_blocks("2,-1,0.5"), 30) == [2, 14, 29]
    assert block_indices(typed_blocks("0.1:0.25"), 30) == [3, 4, 5, 6, 7]
