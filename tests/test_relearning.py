"""The relearning pipeline: what each step trains, keeps and assembles."""

import pytest
import torch

from palimpsest.data import Corpus, CorpusSplit, load_corpus, split_corpus
from palimpsest.errors import ConfigError
from palimpsest.forgetting import find_token_embeddings
from palimpsest.forgetting.relearning import (
    LanguageAdaptation,
    TaskAdaptation,
    adapt_language,
    adapt_task,
    assemble,
    budget_texts,
    evaluate_topics,
    swap_vocabulary,
    topic_task,
)
from palimpsest.models import build_model, load_pretrained
from palimpsest.training import TrainingConfig


def test_budget_texts_holds_the_budget():
    corpus = Corpus("c", "x", tuple(f"w{i} " * 10 for i in range(50)))
    assert len(budget_texts(corpus, 95)) == 10
    assert len(budget_texts(corpus, 10**9)) == 50


def _pretrained(tmp_path, tokenizer):
    model = build_model("roberta", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    model.save_pretrained(tmp_path / "pre")
    tokenizer.save_pretrained(tmp_path / "pre")
    return tmp_path / "pre"


def test_language_adaptation_trains_only_the_embeddings(tmp_path, tokenizer):
    pretrained = _pretrained(tmp_path, tokenizer)
    french = split_corpus(load_corpus("wiki-fr", max_documents=300), 0.2)
    settings = LanguageAdaptation(
        tokens=4000, vocab_size=300, block_size=32, max_eval_blocks=8,
        training=TrainingConfig(steps=6, batch_size=4, learning_rate=5e-3, eval_every=3, save_every=None),
    )  # fmt: skip
    result = adapt_language(pretrained, french, settings, tmp_path / "fr")
    before = load_pretrained(str(pretrained))
    after = load_pretrained(result["model_path"])
    assert [step for step, _ in result["curve"]] == [0, 3, 6]
    assert result["curve"][-1][1] < result["curve"][0][1]
    best_step, best_loss = min(result["curve"], key=lambda point: point[1])
    assert result["best_step"] == best_step
    assert abs(result["final_loss"] - best_loss) < 1e-4  # the saved embeddings are the best evaluation's
    # the paper: embeddings (and the tied head weight, the same tensor) train; the head's bias is frozen
    assert result["trainable"] == ["roberta.embeddings.word_embeddings.weight"]
    assert find_token_embeddings(after).weight.shape[0] == result["vocab_size"] != len(tokenizer)
    assert torch.equal(after.lm_head.bias, before.lm_head.bias[: result["vocab_size"]])
    new_embeddings = {id(p) for p in [find_token_embeddings(after).weight, after.lm_head.bias]}
    old = dict(before.named_parameters())
    for name, parameter in after.named_parameters():
        if id(parameter) not in new_embeddings:
            assert torch.equal(parameter, old[name]), f"{name} moved during language adaptation"


def test_keep_best_restores_the_weights_of_the_lowest_validation_loss():
    from types import SimpleNamespace

    from palimpsest.forgetting.relearning import KeepBestWeights

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)  # only trained tensors are kept
    keep = KeepBestWeights(model, start_loss=5.0)
    for step, (loss, value) in enumerate([(4.0, 1.0), (3.0, 2.0), (3.5, 3.0)], start=1):
        model.weight.data.fill_(value)
        model.bias.data.fill_(value)
        keep.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_loss": loss})
    keep.restore()
    assert keep.best_step == 2 and torch.all(model.weight == 2.0)
    assert torch.all(model.bias == 3.0)  # frozen: left as it is


def test_an_untied_decoder_head_follows_the_new_vocabulary(tmp_path, tokenizer):
    """A decoder whose head is its own matrix: the head is re-drawn and trained with the embeddings
    (its old rows belong to the old vocabulary); the body stays bit for bit."""
    model = build_model("llama", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    model.save_pretrained(tmp_path / "pre")
    tokenizer.save_pretrained(tmp_path / "pre")
    french = split_corpus(load_corpus("wiki-fr", max_documents=300), 0.2)
    settings = LanguageAdaptation(
        tokens=4000, vocab_size=300, block_size=32, max_eval_blocks=8,
        training=TrainingConfig(steps=4, batch_size=4, learning_rate=5e-3, eval_every=2, save_every=None),
    )  # fmt: skip
    result = adapt_language(tmp_path / "pre", french, settings, tmp_path / "fr")
    assert result["trainable"] == ["model.embed_tokens.weight", "lm_head.weight"]
    before, after = load_pretrained(str(tmp_path / "pre")), load_pretrained(result["model_path"])
    assert after.lm_head.weight is not after.get_input_embeddings().weight
    assert after.lm_head.weight.shape[0] == result["vocab_size"]
    kept = before.lm_head.weight[: result["vocab_size"]]
    assert not torch.allclose(after.lm_head.weight, kept), "the head kept the old vocabulary's rows"
    old = dict(before.named_parameters())
    for name, parameter in after.named_parameters():
        if name not in result["trainable"]:
            assert torch.equal(parameter, old[name]), f"{name} moved during language adaptation"


def test_fresh_embeddings_take_the_spread_asked_for_else_the_initializer_range(tokenizer):
    """A trained checkpoint's body reads embeddings of its trained scale, which its
    ``initializer_range`` does not tell: ``init_std`` sets the draw's spread."""
    model = build_model("llama", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    swap_vocabulary(model, tokenizer, seed=0)
    default = model.get_input_embeddings().weight.detach().std().item()
    assert abs(default - model.config.initializer_range) < 0.1 * model.config.initializer_range
    swap_vocabulary(model, tokenizer, seed=0, std=0.5)
    assert abs(model.get_input_embeddings().weight.detach().std().item() - 0.5) < 0.05
    with pytest.raises(ConfigError, match="init_std"):
        LanguageAdaptation(init_std=0.0)


def test_task_adaptation_freezes_embeddings_and_assembly_combines(tmp_path, tokenizer, wiki_small):
    pretrained = _pretrained(tmp_path, tokenizer)
    settings = TaskAdaptation(
        max_length=32, training=TrainingConfig(steps=5, batch_size=4, learning_rate=1e-3, save_every=None)
    )
    task = adapt_task(
        pretrained, topic_task(load_corpus("wiki-en", max_documents=400)), settings, tmp_path / "t"
    )
    task_model = load_pretrained(task["model_path"], task="classification")
    base = load_pretrained(str(pretrained))
    assert torch.equal(find_token_embeddings(task_model).weight, find_token_embeddings(base).weight)
    base_parameters = dict(base.named_parameters())
    body_moved = [
        name
        for name, parameter in task_model.named_parameters()
        if name in base_parameters
        and "embeddings" not in name
        and not torch.equal(parameter, base_parameters[name])
    ]
    assert body_moved

    language = split_corpus(load_corpus("wiki-es", max_documents=200), 0.2)
    adapted = adapt_language(
        pretrained, language,
        LanguageAdaptation(tokens=3000, vocab_size=300, block_size=32, max_eval_blocks=4,
                           training=TrainingConfig(steps=2, batch_size=4, save_every=None)),
        tmp_path / "es",
    )  # fmt: skip
    out = assemble(task["model_path"], adapted["model_path"], tmp_path / "assembled")
    assembled = load_pretrained(str(out), task="classification")
    language_model = load_pretrained(adapted["model_path"])
    assert torch.equal(find_token_embeddings(assembled).weight, find_token_embeddings(language_model).weight)
    for name, parameter in assembled.named_parameters():
        if "word_embeddings" not in name:
            assert torch.equal(parameter, dict(task_model.named_parameters())[name]), name
    scores = evaluate_topics(out, language.validation, max_length=32)
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["examples"] > 0


def test_topic_task_uses_the_shared_labels():
    split = topic_task(load_corpus("wiki-es"))
    assert isinstance(split, CorpusSplit)
    assert set(split.train.labels) == {
        "People", "Geography", "History", "Arts", "Technology", "Philosophy and religion", "Mathematics",
    }  # fmt: skip
