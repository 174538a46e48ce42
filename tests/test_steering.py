"""The target search's cheap forward pass (:mod:`palimpsest.editing.steering`) gives what the
whole model gives with the same shift added by a hook."""

import pytest
import torch

from palimpsest.editing.steering import SteeredPrompts
from palimpsest.models import build_model, build_smollm2_like, transformer_blocks

# lengths and steered positions chosen so that prefixes need left padding (one is empty) and
# suffixes right padding
SEQUENCES = [[5, 9, 14, 30, 41, 7], [12, 3, 8], [40, 41, 42, 43, 44, 45, 46, 47], [33, 2]]
STEER_AT = [2, 0, 5, 1]


def _whole_model(model, block, shift):
    """Final hidden states of each sequence alone, with ``shift[i]`` added after ``block``."""
    _prefix, blocks = transformer_blocks(model)
    outputs = []
    for row, sequence in enumerate(SEQUENCES):

        def steer(_m, _args, output, row=row):
            states = output[0] if isinstance(output, tuple) else output
            states = states.clone()
            states[0, STEER_AT[row]] += shift[row]
            return (states, *output[1:]) if isinstance(output, tuple) else states

        handle = blocks[block].register_forward_hook(steer)
        try:
            with torch.no_grad():
                outputs.append(model.base_model(input_ids=torch.tensor([sequence]))[0][0])
        finally:
            handle.remove()
    return outputs


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("block", [0, 1])
def test_steered_prompts_match_the_whole_model_with_the_shift(tokenizer, family, block):
    if family == "llama":
        model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    else:
        model = build_model("gpt2", "micro", tokenizer, dropout=0.0, seed=0)
    model.eval()
    width = model.config.hidden_size
    shift = torch.randn(len(SEQUENCES), width, generator=torch.Generator().manual_seed(1))
    expected = _whole_model(model, block, shift)
    steered = SteeredPrompts(model, SEQUENCES, STEER_AT, block)
    assert steered.cached is not None  # the prompts were split: the prefixes came from the cache
    with steered.replaying(), torch.no_grad():
        states = steered.states(range(len(SEQUENCES)), shift)
    for row, sequence in enumerate(SEQUENCES):
        start = int(steered.prefix_length[row])
        got = states[row, : len(sequence) - start]
        torch.testing.assert_close(got, expected[row][start:], atol=1e-5, rtol=1e-4)


def test_the_shift_gets_its_gradient_and_the_real_blocks_come_back(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    model.eval()
    _prefix, blocks = transformer_blocks(model)
    originals = list(blocks)
    steered = SteeredPrompts(model, SEQUENCES, STEER_AT, 1)
    shift = torch.zeros(2, model.config.hidden_size, requires_grad=True)
    with steered.replaying():
        steered.states([0, 2], shift)[:, -1].sum().backward()
    assert shift.grad is not None and bool(shift.grad.abs().sum() > 0)
    assert list(blocks) == originals
    with pytest.raises(RuntimeError):
        steered.states([0], shift)  # outside replaying(): the real blocks would run
