"""What the fact studies share: wiki text mixed with fact statements, tokenized once per study."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from palimpsest.data import (
    Corpus,
    default_cache_dir,
    encode_blocks,
    lm_eval_set,
    load_corpus,
    load_tokenizer,
    split_corpus,
    train_tokenizer,
)
from palimpsest.data.facts import Fact, fact_corpus
from palimpsest.errors import ConfigError
from palimpsest.storage import save_model

S = TypeVar("S")


def resolve_scale(scale: str | S, scales: Mapping[str, S], study: str) -> tuple[str, S]:
    """``(name, settings)`` of a named scale, or ``("custom", settings)`` for a settings object."""
    if not isinstance(scale, str):
        return "custom", scale
    if scale not in scales:
        raise ConfigError(f"unknown scale '{scale}' for the {study} study (known: {', '.join(scales)})")
    return scale, scales[scale]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the values that are numbers (NaN, NaN if none)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


@dataclass
class FactMixture:
    """A tokenizer, training blocks of wiki text + fact statements, and a wiki validation set."""

    tokenizer: Any
    train_blocks: Any
    eval_set: Any
    info: dict[str, Any]


def fact_mixture(
    facts: list[Fact],
    out: Path,
    *,
    objective: str,
    corpus: str = "wiki-en",
    max_documents: int | None = None,
    fact_repeats: int = 1,
    hold_out: bool = False,
    vocab_size: int = 4096,
    block_size: int = 128,
    max_eval_blocks: int = 128,
    mlm_probability: float = 0.15,
) -> FactMixture:
    """Every fact stated ``fact_repeats`` times (differently shuffled) beside the corpus's training split.

    The tokenizer is trained once and saved under ``out/tokenizer`` (a resumed study reuses
    it); validation is on the corpus's held-out documents only, so it measures language
    modelling, not fact recall (masked at the run's ``mlm_probability`` for a masked LM).
    ``hold_out`` leaves each fact's held-out paraphrase out.
    """
    wiki = split_corpus(load_corpus(corpus, max_documents=max_documents), 0.05, seed=0)
    statements = [fact_corpus(facts, hold_out=hold_out, seed=repeat) for repeat in range(fact_repeats)]
    fact_texts = tuple(text for statement in statements for text in statement.texts)
    mixed = Corpus(name=f"{wiki.train.name}+facts", language="en", texts=wiki.train.texts + fact_texts)
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(mixed.texts, vocab_size)
        save_model(None, tokenizer, tokenizer_dir)
    cache = default_cache_dir()
    train_blocks = encode_blocks(mixed, tokenizer, block_size, cache_dir=cache)
    eval_blocks = encode_blocks(wiki.validation, tokenizer, block_size, cache_dir=cache)
    eval_blocks = eval_blocks.select(range(min(max_eval_blocks, len(eval_blocks))))
    eval_set = lm_eval_set(eval_blocks, tokenizer, objective, mlm_probability=mlm_probability)
    info = {
        "wiki_train_documents": len(wiki.train),
        "facts": len(facts),
        "fact_repeats": fact_repeats,
        "train_blocks": len(train_blocks),
        "train_tokens": len(train_blocks) * block_size,
        "fact_tokens": sum(len(ids) for ids in tokenizer(list(fact_texts))["input_ids"]),
        "validation_blocks": len(eval_set),
        "vocab_size": len(tokenizer),
    }
    return FactMixture(tokenizer, train_blocks, eval_set, info)
