"""Train a tokenizer for a language with `tokenizers` and wrap it as a HF fast tokenizer.

One set of special tokens serves both model families: ``<pad>`` (id 0), ``<s>``,
``</s>``, ``<unk>``, ``<mask>``. Byte-level BPE covers any script without unknown
tokens; unigram (SentencePiece-style, Metaspace) is the alternative the active-forgetting
paper used for its new languages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from palimpsest.errors import DataError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
TokenizerModel = Literal["bpe", "unigram"]


#: The largest vocabulary a tokenizer is trained to (the trainer's counts are 32-bit).
MAX_VOCABULARY = 1 << 20


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 4096,
    *,
    model: TokenizerModel = "bpe",
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast`` ready to save.

    Encoding a single text adds ``<s> ... </s>``, like RoBERTa; the LM datasets of
    :mod:`palimpsest.data.lm` encode without special tokens and add their own.
    """
    if not any(t.strip() for t in texts):
        raise DataError("cannot train a tokenizer on an empty corpus")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise DataError(f"vocab_size must be larger than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    if vocab_size > MAX_VOCABULARY:
        raise DataError(f"vocab_size must be at most {MAX_VOCABULARY:,}, got {vocab_size:,}")
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif model == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token="<unk>", show_progress=False
        )
    else:
        raise DataError(f"unknown tokenizer model '{model}' (known: bpe, unigram)")
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    logger.info("trained %s tokenizer: %d tokens", model, len(wrapped))
    return wrapped


def boundary_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int | None, int | None]:
    """The ids that open and close a sequence: bos/eos, or BERT's cls/sep when a tokenizer has
    no bos/eos. The one rule for packing blocks, framing probes and a model's config."""
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    last = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return first, last


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """What the tokenizer itself puts in front of a text (``<s>``, ``<|begin_of_text|>``), or
    nothing (SmolLM2): a prompt as a user's ``tokenizer(text)`` reads it."""
    plain = tokenizer("fact", add_special_tokens=False)["input_ids"]
    full = tokenizer("fact")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a saved folder, a built-in model name (``smollm2-135m``) or a hub id."""
    from transformers import AutoTokenizer

    from palimpsest.errors import ModelError
    from palimpsest.model_sources import locate_model

    try:
        path = locate_model(str(path), needs=("tokenizer.json", "tokenizer_config.json"))
    except ModelError as error:
        raise DataError(f"cannot load a tokenizer: {error}") from None

    tokenizer_config = Path(path) / "tokenizer_config.json"
    if tokenizer_config.is_file() and '"auto_map"' in tokenizer_config.read_text(encoding="utf-8"):
        raise DataError(
            f"{tokenizer_config} asks to run custom code (auto_map); "
            "palimpsest never runs code from a model folder"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot load a tokenizer from '{path}': {str(error).splitlines()[0]}") from None
