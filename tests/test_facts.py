"""Facts, templates, the city table, and exact-match recall for causal and masked LMs."""

import pytest
import torch

from palimpsest.data.facts import CITY_COUNTRY, Fact, Relation, city_facts, fact_corpus
from palimpsest.errors import DataError
from palimpsest.models import build_model
from palimpsest.recall import build_probe, fact_recall, score_probes

CAPITAL = Relation("capital", ["The capital of {subject} is {object}.", "{subject}'s capital: {object}."])


def test_relation_templates_are_checked():
    with pytest.raises(DataError, match="one \\{subject\\}"):
        Relation("broken", ["{subject} is nice."])
    with pytest.raises(DataError, match="before the object"):
        Relation("backwards", ["{object} is the capital of {subject}."])


def test_fact_statement_and_prompt():
    fact = Fact("France", CAPITAL, "Paris")
    assert fact.statement() == "The capital of France is Paris."
    assert fact.statement(1, object_="Lyon") == "France's capital: Lyon."
    assert fact.prompt() == "The capital of France is"


def test_city_facts_are_unambiguous_and_ordered():
    facts = city_facts(300)
    assert len(facts) == 300
    names = [f.subject for f in facts]
    assert len(set(names)) == len(names)
    assert all(f.relation is CITY_COUNTRY and f.object for f in facts)
    every = city_facts()
    assert len(every) > 20_000
    countries = {f.subject: f.object for f in every}
    assert countries["Tokyo"] == "Japan" and countries["Berlin"] == "Germany"
    assert "Paris" not in countries  # Paris, France and Paris, Texas: ambiguous, left out


def test_fact_corpus_states_every_fact_in_every_template():
    facts = city_facts(10)
    corpus = fact_corpus(facts, per_document=4)
    text = " ".join(corpus.texts)
    for fact in facts:
        for template in range(3):
            assert fact.statement(template) in text
    assert len(corpus) == 8  # 30 sentences, 4 per document


def _teach(model, tokenizer, sentences, steps=60):
    """Overfit a tiny model on a few sentences, so recall has something to find."""
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    width = max(len(x) for x in ids) + 1
    batch = torch.full((len(ids), width), tokenizer.pad_token_id)
    for row, x in enumerate(ids):
        batch[row, : len(x) + 1] = torch.tensor([eos, *x])
    mask = (batch != tokenizer.pad_token_id).long()
    labels = batch.masked_fill(mask == 0, -100)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=batch, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()


def test_causal_recall_finds_taught_facts_and_not_others(tokenizer):
    torch.manual_seed(0)
    facts = [Fact("France", CAPITAL, "Paris"), Fact("Spain", CAPITAL, "Madrid")]
    model = build_model("gpt2", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    before = fact_recall(model, tokenizer, facts)
    assert before.accuracy == 0.0 and before.unprobeable == 0
    _teach(model, tokenizer, [f.statement() for f in facts], steps=80)
    after = fact_recall(model, tokenizer, facts)
    assert after.accuracy == 1.0
    wrong = fact_recall(model, tokenizer, [Fact("France", CAPITAL, "Madrid")])
    assert wrong.accuracy == 0.0 and wrong.logprob[0] < after.logprob[0]


def test_probes_cover_every_answer_token(tokenizer):
    fact = Fact("France", CAPITAL, "Ouagadougou Extraordinaire")
    causal = build_probe(tokenizer, fact, causal=True)
    assert len(causal.answer_ids) > 1  # several tokens
    assert [causal.input_ids[p] for p in causal.answer_positions] == causal.answer_ids
    masked = build_probe(tokenizer, fact, causal=False)
    assert all(masked.input_ids[p] == tokenizer.mask_token_id for p in masked.answer_positions)
    assert masked.answer_ids == causal.answer_ids


def test_masked_recall_scores_masked_positions(tokenizer):
    model = build_model("bert", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    fact = Fact("France", CAPITAL, "Paris")
    probe = build_probe(tokenizer, fact, causal=False)
    recalled, logprob = score_probes(model, [probe], pad_id=tokenizer.pad_token_id)
    assert recalled == [False] and logprob[0] < 0
