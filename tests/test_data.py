import json
from collections import Counter

import pytest
import torch

from palimpsest.data import (
    BUILTIN_CORPORA,
    Corpus,
    causal_eval_set,
    change_script,
    encode_blocks,
    encode_classification,
    fixed_mlm_eval_set,
    load_corpus,
    permute_vocabulary,
    scramble_word_order,
    split_corpus,
    synthetic_language,
    train_tokenizer,
    unigram_baseline,
)
from palimpsest.data.lm import mlm_mask
from palimpsest.errors import DataError


@pytest.mark.parametrize("name", list(BUILTIN_CORPORA))
def test_builtin_corpora_load_offline(name):
    corpus = load_corpus(name)
    assert len(corpus) > 5000
    assert corpus.num_words > 70_000
    assert all(text.strip() for text in corpus.texts)
    if name.startswith("wiki-"):
        assert corpus.labels is not None and len(set(corpus.labels)) >= 8


def test_builtin_scripts_are_what_they_claim():
    assert any("\u0600" <= ch <= "\u06ff" for ch in load_corpus("quran-ar", max_documents=1).texts[0])
    assert any(
        "\u0370" <= ch <= "\u03ff" or "\u1f00" <= ch <= "\u1fff" for ch in load_corpus("sblgnt-grc").texts[0]
    )


def test_unknown_and_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match="unknown corpus 'wiki-xx'"):
        load_corpus("wiki-xx")
    with pytest.raises(DataError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(empty))


def test_text_and_jsonl_files(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("first doc\n\nsecond   doc\n")
    assert load_corpus(str(text)).texts == ("first doc", "second doc")
    assert load_corpus(str(text), paragraphs=True).texts == ("first doc", "second doc")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        json.dumps({"text": "x y", "label": "A"}) + "\n" + json.dumps({"text": "z", "label": "B"}) + "\n"
    )
    corpus = load_corpus(str(jsonl))
    assert corpus.texts == ("x y", "z") and corpus.labels == ("A", "B")
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DataError, match=":2:"):
        load_corpus(str(broken))


def test_split_is_deterministic_disjoint_and_complete():
    corpus = load_corpus("wiki-en", max_documents=500)
    a, b = split_corpus(corpus, 0.1, seed=0), split_corpus(corpus, 0.1, seed=0)
    assert a.validation.texts == b.validation.texts
    assert set(a.train.texts).isdisjoint(a.validation.texts)
    assert len(a.train) + len(a.validation) == len(corpus)
    assert 20 <= len(a.validation) <= 80
    assert split_corpus(corpus, 0.1, seed=1).validation.texts != a.validation.texts


def test_split_of_grown_corpus_keeps_earlier_documents_on_their_side():
    small = load_corpus("wiki-en", max_documents=300)
    large = load_corpus("wiki-en", max_documents=600)
    small_validation = set(split_corpus(small, 0.1).validation.texts)
    assert small_validation <= set(split_corpus(large, 0.1).validation.texts)


def test_permutation_is_a_bijection_on_word_types():
    texts = ["The cat sat on the mat.", "A dog and the cat!"]
    permuted = permute_vocabulary(texts, seed=3)
    assert permuted == permute_vocabulary(texts, seed=3)
    words = [w.lower().strip(".!") for t in texts for w in t.split()]
    new = [w.lower().strip(".!") for t in permuted for w in t.split()]
    mapping = {}
    for old, renamed in zip(words, new, strict=True):
        assert mapping.setdefault(old, renamed) == renamed  # a function on types
    assert len(set(mapping.values())) == len(mapping)  # injective
    assert sorted(mapping.values()) == sorted(mapping)  # onto the same set of types
    assert permuted[0][0].isupper() and permuted[0].endswith(".")


def test_scramble_keeps_the_words_of_each_sentence():
    texts = ["one two three four five. six seven eight nine ten eleven."]
    scrambled = scramble_word_order(texts, seed=0)[0]
    assert Counter(scrambled.split()) == Counter(texts[0].split())
    assert scrambled != texts[0]
    assert scrambled == scramble_word_order(texts, seed=0)[0]


@pytest.mark.parametrize("script", ["cyrillic", "armenian", "georgian"])
def test_script_change_leaves_no_latin_letter(script):
    out = change_script(["Hello, World: crème brûlée 42"], script)[0]
    assert not any("a" <= ch.lower() <= "z" for ch in out)
    assert "42" in out and "," in out


def test_recipe_errors_and_labels_kept():
    corpus = load_corpus("wiki-en", max_documents=20)
    synthetic = synthetic_language(corpus, "permute+scramble+script:armenian", seed=1)
    assert synthetic.labels == corpus.labels and len(synthetic) == len(corpus)
    assert synthetic_language(corpus, "identity").texts == corpus.texts  # the relearning control
    with pytest.raises(DataError, match="unknown synthetic-language step 'reverse'"):
        synthetic_language(corpus, "reverse")
    with pytest.raises(DataError, match="unknown script"):
        synthetic_language(corpus, "script:klingon")


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_tokenizer_round_trip_and_specials(model, wiki_small, tmp_path):
    tokenizer = train_tokenizer(wiki_small.texts, 600, model=model)
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token is not None
    text = "The history of science is long."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).strip() == text
    tokenizer.save_pretrained(tmp_path)
    from palimpsest.data import load_tokenizer

    assert load_tokenizer(tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_tokenizer_rejects_empty_corpus():
    with pytest.raises(DataError):
        train_tokenizer(["", " "], 100)


def test_blocks_are_full_and_start_with_bos(wiki_small, tokenizer, tmp_path):
    blocks = encode_blocks(wiki_small, tokenizer, 32, cache_dir=tmp_path)
    assert len(blocks) > 10
    assert all(len(row) == 32 and row[0] == tokenizer.bos_token_id for row in blocks["input_ids"][:20])
    cached = encode_blocks(wiki_small, tokenizer, 32, cache_dir=tmp_path)
    assert cached["input_ids"] == blocks["input_ids"]
    budget = encode_blocks(wiki_small, tokenizer, 32, max_tokens=31 * 3)
    assert len(budget) == 3


def test_too_small_corpus_is_a_clear_error(tokenizer):
    with pytest.raises(DataError, match="fewer than one block"):
        encode_blocks(Corpus("t", "en", ("hi",)), tokenizer, 64)


def test_fixed_mlm_eval_set_is_deterministic_and_never_masks_specials(wiki_small, tokenizer):
    blocks = encode_blocks(wiki_small, tokenizer, 32)
    a, b = fixed_mlm_eval_set(blocks, tokenizer), fixed_mlm_eval_set(blocks, tokenizer)
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    labels = torch.tensor(a["labels"])
    originals = torch.tensor(blocks["input_ids"])
    assert (labels != -100).any(dim=1).all()
    assert not torch.isin(originals[labels != -100], torch.tensor(tokenizer.all_special_ids)).any()
    share = (labels != -100).float().mean().item()
    assert 0.10 < share < 0.20


def test_mlm_mask_proportions():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 100), generator=generator)
    inputs, labels = mlm_mask(
        ids, special_ids=[0, 1, 2], mask_token_id=4, vocab_size=1000, probability=0.3, generator=generator
    )
    target = labels != -100
    assert abs(target.float().mean().item() - 0.3) < 0.01
    assert torch.equal(labels[target], ids[target])
    assert abs((inputs[target] == 4).float().mean().item() - 0.8) < 0.02
    assert torch.equal(inputs[~target], ids[~target])


def test_unigram_baseline_of_uniform_data_is_vocab_size():
    from datasets import Dataset

    vocab = 50
    rows = [[(i + j) % vocab for j in range(vocab)] for i in range(200)]
    train = Dataset.from_dict({"input_ids": rows})
    baseline = unigram_baseline(train, causal_eval_set(train), vocab)
    assert baseline.perplexity == pytest.approx(vocab, rel=1e-3)


def test_classification_encoding_keeps_only_known_labels(wiki_small, tokenizer):
    names = ["People", "Geography"]
    dataset = encode_classification(wiki_small, tokenizer, names, max_length=16)
    assert set(dataset["labels"]) <= {0, 1}
    assert len(dataset) == sum(label in names for label in wiki_small.labels)
    assert max(len(row) for row in dataset["input_ids"]) <= 16


def test_hf_dataset_names_go_through_datasets(tmp_path):
    """``hf:`` names use ``datasets.load_dataset``; a local dataset folder needs no network."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"text": f"document number {i}", "label": "odd" if i % 2 else "even"} for i in range(6)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    corpus = load_corpus(f"hf:{folder}", hf_label_field="label")
    assert corpus.texts[0] == "document number 0" and corpus.labels[1] == "odd"
    with pytest.raises(DataError, match="no column 'body'"):
        load_corpus(f"hf:{folder}", hf_text_field="body")


def test_a_masked_eval_set_is_masked_at_the_runs_rate(tokenizer, wiki_small):
    from palimpsest.data import encode_blocks, lm_eval_set

    blocks = encode_blocks(wiki_small, tokenizer, 64)
    rates = {}
    for probability in (0.15, 0.3):
        eval_set = lm_eval_set(blocks, tokenizer, "mlm", mlm_probability=probability)
        labels = [label for row in eval_set["labels"] for label in row]
        rates[probability] = sum(label != -100 for label in labels) / len(labels)
    assert abs(rates[0.15] - 0.15) < 0.03 and abs(rates[0.3] - 0.3) < 0.03
    causal = lm_eval_set(blocks, tokenizer, "clm", mlm_probability=0.3)
    assert causal[0]["labels"] == causal[0]["input_ids"]
