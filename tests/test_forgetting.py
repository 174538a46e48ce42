"""Invariants of one reset and of the forgetting schedule."""

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from palimpsest.errors import ModelError
from palimpsest.forgetting import (
    ActiveForgettingCallback,
    EpisodeSchedule,
    embedding_parameters,
    find_token_embeddings,
    forget_embeddings,
    output_head,
)
from palimpsest.models import build_model


def trained_with_adam(model, steps=3):
    """A model whose parameters and Adam state are all non-trivial."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(5, model.config.vocab_size, (4, 16), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def snapshot(model, optimizer):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
        for p in model.parameters()
    }
    return params, state


@pytest.mark.parametrize("family", ["roberta", "bert", "gpt2", "llama"])
def test_reset_touches_exactly_the_embeddings_and_their_state(family, tokenizer):
    model = build_model(family, "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    optimizer = trained_with_adam(model)
    before, state_before = snapshot(model, optimizer)
    embedding = find_token_embeddings(model)
    head, tied = output_head(model)
    reset = {id(p) for p in embedding_parameters(model)}

    forget_embeddings(model, optimizer, seed=7)

    pad = model.config.pad_token_id
    names = {id(p): n for n, p in model.named_parameters()}
    emb_name = names[id(embedding.weight)]
    weight = embedding.weight.detach()
    assert torch.all(weight[pad] == 0)
    rows = torch.arange(weight.shape[0]) != pad
    assert (weight[rows] != before[emb_name][rows]).all(dim=1).all()
    assert abs(weight[rows].std().item() - model.config.initializer_range) < 0.003
    for name, parameter in model.named_parameters():
        if id(parameter) in reset:
            continue
        assert torch.equal(parameter, before[name]), f"{name} changed"
        for key, value in optimizer.state[parameter].items():
            old = state_before[id(parameter)][key]
            assert torch.equal(value, old) if torch.is_tensor(value) else value == old, f"state of {name}"
    for parameter in embedding_parameters(model):
        state = optimizer.state[parameter]
        assert torch.count_nonzero(state["exp_avg"]) == 0 and torch.count_nonzero(state["exp_avg_sq"]) == 0
        assert float(state["step"]) == 0
    if tied:
        assert head.weight is embedding.weight
    assert reset == {id(embedding.weight)}  # by default nothing but the token embeddings


def test_head_bias_and_its_state_are_left_alone_by_default(tokenizer):
    """The official code resets only embed_tokens: RoBERTa's tied head bias keeps training."""
    model = build_model("roberta", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    head, tied = output_head(model)
    assert tied and isinstance(head.bias, nn.Parameter)
    optimizer = trained_with_adam(model)
    bias, bias_state = (
        head.bias.detach().clone(),
        {k: v.clone() for k, v in optimizer.state[head.bias].items()},
    )
    assert torch.count_nonzero(bias) > 0
    report = forget_embeddings(model, optimizer, seed=1)
    assert torch.equal(head.bias, bias)
    assert all(torch.equal(optimizer.state[head.bias][k], v) for k, v in bias_state.items())
    assert report.optimizer_states_reset == 1 and len(report.reset) == 1

    report = forget_embeddings(model, optimizer, seed=2, reset_output_bias=True)
    assert torch.count_nonzero(head.bias) == 0
    assert torch.count_nonzero(optimizer.state[head.bias]["exp_avg"]) == 0
    assert report.optimizer_states_reset == 2 and any("bias" in name for name in report.reset)


def test_forgetting_group_holds_the_bias_only_on_request(tokenizer):
    model = build_model("roberta", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    head, _ = output_head(model)
    default = ActiveForgettingCallback(reset_every=10).param_groups(model)[0]["params"]
    assert [id(p) for p in default] == [id(find_token_embeddings(model).weight)]
    with_bias = ActiveForgettingCallback(reset_every=10, reset_output_bias=True).param_groups(model)[0]
    assert any(p is head.bias for p in with_bias["params"])


def test_untied_head_is_left_alone_unless_asked(tokenizer):
    model = build_model("llama", "micro", tokenizer, seed=0)
    head, tied = output_head(model)
    assert not tied
    before = head.weight.detach().clone()
    forget_embeddings(model, seed=1)
    assert torch.equal(head.weight, before)
    optimizer = trained_with_adam(model, steps=1)
    report = forget_embeddings(model, optimizer, seed=1, reset_output_head=True)
    assert not torch.equal(head.weight, before)
    assert report.optimizer_states_reset == 2
    assert torch.count_nonzero(optimizer.state[head.weight]["exp_avg"]) == 0


def test_same_seed_same_draw_and_match_init(tokenizer):
    a = build_model("roberta", "micro", tokenizer, seed=0)
    b = build_model("roberta", "micro", tokenizer, seed=5)
    forget_embeddings(a, seed=3)
    forget_embeddings(b, seed=3)
    assert torch.equal(find_token_embeddings(a).weight, find_token_embeddings(b).weight)
    with torch.no_grad():
        find_token_embeddings(a).weight.mul_(10).add_(1)
    report = forget_embeddings(a, seed=4, init="match")
    weight = find_token_embeddings(a).weight
    rows = torch.arange(weight.shape[0]) != a.config.pad_token_id
    assert weight[rows].mean().item() == pytest.approx(report.mean, abs=0.05)
    assert weight[rows].std().item() == pytest.approx(report.std, rel=0.05)


def test_resized_vocabulary(tokenizer):
    model = build_model("gpt2", "micro", tokenizer, seed=0)
    model.resize_token_embeddings(len(tokenizer) + 37)
    forget_embeddings(model, seed=0)
    assert find_token_embeddings(model).weight.shape[0] == len(tokenizer) + 37


def test_missing_embeddings_is_a_clear_error():
    class NoEmbeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return None

    with pytest.raises(ModelError, match=r"table \(10, 4\)"):
        forget_embeddings(NoEmbeddings())


def test_episode_schedule_warms_up_then_decays_within_each_episode():
    schedule = EpisodeSchedule(100, warmup_fraction=0.1)
    factors = [schedule(s) for s in range(300)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[99] == pytest.approx(1 / 90)
    assert factors[100:200] == factors[:100] == factors[200:300]
    decay = factors[10:100]
    assert decay == sorted(decay, reverse=True)


def test_callback_resets_after_every_k_updates_but_not_after_the_last(tokenizer, tmp_path, wiki_small):
    from palimpsest.data import encode_blocks
    from palimpsest.training import TrainingConfig, train

    blocks = encode_blocks(wiki_small, tokenizer, 32)
    model = build_model("roberta", "micro", tokenizer, max_positions=32, seed=0)
    forgetting = ActiveForgettingCallback(reset_every=4, seed=0)
    snapshots = {}

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            snapshots[state.global_step] = (
                [g.get("name") for g in optimizer.param_groups],
                [g["lr"] for g in optimizer.param_groups],
            )

    config = TrainingConfig(
        steps=12, batch_size=4, learning_rate=1e-3, save_every=100, save_total_limit=5, warmup_ratio=0.0
    )
    train(
        model, tokenizer, blocks, config, tmp_path, objective="mlm",
        callbacks=[forgetting, Watch()], param_groups=forgetting.param_groups,
    )  # fmt: skip
    assert forgetting.resets == [4, 8]  # not 12: the run ends there
    names, _ = snapshots[1]
    assert names[0] == "forgotten-embeddings"
    # embeddings follow the episode schedule (restarting at each reset), the body the run's
    episode = [snapshots[s][1][0] for s in range(1, 13)]
    assert episode[0:4] == episode[4:8] == episode[8:12]
    body = [snapshots[s][1][1] for s in range(1, 13)]
    assert body == sorted(body, reverse=True) and body[0] > body[-1]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-12",
        "checkpoint-4",
        "checkpoint-8",
    ]


def test_ddp_ranks_draw_identical_embeddings_at_each_reset(tmp_path):
    import json

    from torchrun_helper import torchrun

    done = torchrun("train_micro.py", str(tmp_path), "--forget-every", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"final-rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]["after_reset"]) == {"4", "8"}
    assert ranks[0]["after_reset"] == ranks[1]["after_reset"]
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_checkpoint_choice_prefers_best_and_episode_ends(tmp_path):
    import json

    from palimpsest.forgetting import best_checkpoint, episode_end_checkpoints

    history = [
        {"step": 100, "eval_loss": 5.0},
        {"step": 200, "eval_loss": 4.2},
        {"step": 250, "eval_loss": 4.9},
    ]
    for step in (100, 200, 250):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert best_checkpoint(tmp_path).name == "checkpoint-200"
    assert [p.name for p in episode_end_checkpoints(tmp_path, 100)] == ["checkpoint-100", "checkpoint-200"]
    assert best_checkpoint(tmp_path / "nothing-here") is None
