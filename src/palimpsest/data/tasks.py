"""Labelled text tasks (sequence classification), e.g. the topic of a wiki article."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from palimpsest.data.corpora import Corpus
from palimpsest.errors import DataError

if TYPE_CHECKING:  # datasets (and pandas) load at first use: importing palimpsest stays quick
    from datasets import Dataset


def encode_classification(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    label_names: Sequence[str],
    *,
    max_length: int = 128,
) -> Dataset:
    """Encode a labelled corpus for sequence classification (truncated, unpadded); sentence
    pairs (``corpus.pairs``) are encoded as pairs.

    Documents whose label is not in ``label_names`` are dropped, which is how a task keeps
    only the classes it shares across languages.
    """
    if corpus.labels is None:
        raise DataError(f"corpus '{corpus.name}' has no labels")
    index = {name: i for i, name in enumerate(label_names)}
    keep = [i for i, label in enumerate(corpus.labels) if label in index]
    if not keep:
        raise DataError(f"no document of '{corpus.name}' has one of the labels {list(label_names)}")
    texts = [corpus.texts[i] for i in keep]
    pairs = [corpus.pairs[i] for i in keep] if corpus.pairs is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": [index[corpus.labels[i]] for i in keep],
        }
    )
