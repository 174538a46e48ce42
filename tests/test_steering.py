"""The cheap forward passes give what the whole model gives: the target search's
(:mod:`palimpsest.editing.steering`, the same shift added by a hook) and the probes' with a
shared passage in front (:func:`palimpsest.recall.score_probes`)."""

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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_probes_after_text_score_as_each_alone_through_the_whole_model(tokenizer, family):
    """score_probes runs a shared passage once from the cache and reads only the answers' logits:
    the same recall and log-probabilities as each probe alone, every logit computed."""
    from palimpsest.data.facts import CAPITAL, Fact
    from palimpsest.recall import _shared_start, after_text, build_probe, score_probes

    if family == "llama":
        model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    else:
        model = build_model("gpt2", "micro", tokenizer, dropout=0.0, seed=0)
    model.eval()
    context = after_text("The river runs past the old mill and on into the hills beyond the town.")
    facts = [Fact(s, CAPITAL, o) for s, o in [("France", "Paris"), ("Peru", "Lima"), ("Chile", "Santiago")]]
    probes = [build_probe(tokenizer, f, causal=True, context=context) for f in facts]
    assert _shared_start(probes, min(p.answer_positions[0] - 1 for p in probes)) > 0  # the cached path
    recalled, logprobs = score_probes(model, probes)
    for probe, hit, logprob in zip(probes, recalled, logprobs, strict=True):
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([probe.input_ids])).logits[0].float().log_softmax(-1)
        rows = log_probs[torch.tensor(probe.answer_positions) - 1]
        answer = torch.tensor(probe.answer_ids)
        assert hit == bool((rows.argmax(-1) == answer).all())
        assert logprob == pytest.approx(float(rows.gather(-1, answer[:, None]).sum()), abs=1e-4)
