"""Language-modelling datasets: tokenized, packed into fixed-length blocks, and cached.

Documents are encoded without special tokens, joined with ``</s>`` and cut into blocks of
``block_size - 1`` tokens, each prefixed with ``<s>``: no padding, so every position
trains. The evaluation set is fixed once: for masked LMs the masked positions are drawn
with a seeded generator, so two evaluations of the same model give the same perplexity.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from palimpsest.data.corpora import Corpus
from palimpsest.data.tokenization import boundary_ids
from palimpsest.errors import DataError
from palimpsest.seeds import EVAL_MASK_SEED
from palimpsest.storage import default_cache_dir  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # datasets (and pandas) load at first use: importing palimpsest stays quick
    from datasets import Dataset

logger = logging.getLogger(__name__)


def _tokenizer_key(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def encode_blocks(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int = 128,
    *,
    max_tokens: int | None = None,
    cache_dir: Path | None = None,
) -> Dataset:
    """Tokenize ``corpus`` and pack it into blocks of ``block_size`` token ids.

    ``max_tokens`` caps the number of tokens kept (the token budget of an adaptation run);
    at least one block is always returned or a :class:`DataError` raised.
    """
    if block_size < 4:
        raise DataError(f"block_size must be at least 4, got {block_size}")
    bos, eos = boundary_ids(tokenizer)
    if bos is None or eos is None:
        raise DataError("the tokenizer needs a bos/cls and an eos/sep token to pack blocks")
    key = hashlib.sha256(
        f"{corpus.fingerprint()}|{_tokenizer_key(tokenizer)}|{block_size}|{max_tokens}".encode()
    ).hexdigest()[:20]
    from datasets import Dataset, load_from_disk

    cached = cache_dir / "blocks" / key if cache_dir is not None else None
    if cached is not None and (cached / "dataset_info.json").is_file():
        return load_from_disk(str(cached))

    body = block_size - 1
    ids: list[int] = []
    budget = max_tokens if max_tokens is not None else math.inf
    batch = 256
    for start in range(0, len(corpus.texts), batch):
        encoded = tokenizer(list(corpus.texts[start : start + batch]), add_special_tokens=False)["input_ids"]
        for doc in encoded:
            if doc:
                ids.extend(doc)
                ids.append(eos)
        if len(ids) >= budget:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_blocks = len(ids) // body
    if n_blocks == 0:
        raise DataError(
            f"corpus '{corpus.name}' yields {len(ids)} tokens, fewer than one block of {block_size}"
        )
    array = np.asarray(ids[: n_blocks * body], dtype=np.int64).reshape(n_blocks, body)
    array = np.concatenate([np.full((n_blocks, 1), bos, dtype=np.int64), array], axis=1)
    dataset = Dataset.from_dict({"input_ids": array.tolist()})
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        dataset.save_to_disk(str(tmp))
        if cached.exists():  # another process cached the same blocks meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, cached)
    logger.info("encoded %s: %d blocks of %d tokens", corpus.name, n_blocks, block_size)
    return dataset


def mlm_mask(
    input_ids: torch.Tensor,
    *,
    special_ids: Sequence[int],
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    at_least_one: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick ``probability`` of the non-special positions as targets; of
    those, 80% become ``mask_token_id``, 10% a random token, 10% stay. Returns
    ``(inputs, labels)`` with ``labels`` -100 where nothing is predicted.

    Draws from ``generator`` if given, else from the global generator of the tensor's
    device (the one the Trainer checkpoints, so a resumed run draws the same masks).
    """
    device = input_ids.device
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in special_ids:
        special |= input_ids == token_id
    probabilities = torch.full(input_ids.shape, probability, device=device)
    probabilities[special] = 0.0
    masked = torch.bernoulli(probabilities, generator=generator).bool()
    if at_least_one:
        empty = ~masked.any(dim=1) & (~special).any(dim=1)
        if empty.any():
            first = (~special).float().argmax(dim=1)
            masked[empty, first[empty]] = True
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    inputs = input_ids.clone()
    draws = torch.rand(input_ids.shape, device=device, generator=generator)
    inputs[masked & (draws < 0.8)] = mask_token_id
    randomise = masked & (draws >= 0.8) & (draws < 0.9)
    random_tokens = torch.randint(vocab_size, input_ids.shape, device=device, generator=generator)
    inputs[randomise] = random_tokens[randomise]
    return inputs, labels


def fixed_mlm_eval_set(
    blocks: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    mlm_probability: float = 0.15,
    seed: int = EVAL_MASK_SEED,
) -> Dataset:
    """Mask an evaluation set once, with a seeded generator (see :func:`mlm_mask`).

    Every block gets at least one masked position so none contributes an empty loss.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = mlm_mask(
        torch.tensor(blocks["input_ids"], dtype=torch.long),
        special_ids=tokenizer.all_special_ids,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        probability=mlm_probability,
        generator=generator,
        at_least_one=True,
    )
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": inputs.tolist(), "labels": labels.tolist()})


def causal_eval_set(blocks: Dataset) -> Dataset:
    """Evaluation blocks for causal LMs: labels are the inputs (the model shifts them)."""
    return blocks.map(lambda batch: {"labels": batch["input_ids"]}, batched=True)


@dataclass(frozen=True)
class UnigramBaseline:
    """Cross-entropy of a unigram model (add-one smoothed train counts) on evaluation labels."""

    loss: float
    perplexity: float
    tokens: int


def unigram_baseline(train_blocks: Dataset, eval_set: Dataset, vocab_size: int) -> UnigramBaseline:
    """The perplexity a model reaches by predicting token frequencies alone.

    It is scored on exactly the positions the model is scored on (the ``labels`` that are
    not -100), so the two numbers compare directly. For causal sets the first token of a
    block is not predicted and is skipped, like the model's shift does.
    """
    counts: Counter[int] = Counter()
    for row in train_blocks["input_ids"]:
        counts.update(row)
    total = sum(counts.values()) + vocab_size
    log_probs = {token: math.log((count + 1) / total) for token, count in counts.items()}
    unseen = math.log(1 / total)
    nll, n = 0.0, 0
    causal = "labels" in eval_set.column_names and eval_set[0]["labels"] == eval_set[0]["input_ids"]
    for labels in eval_set["labels"]:
        for position, token in enumerate(labels):
            if token == -100 or (causal and position == 0):
                continue
            nll -= log_probs.get(token, unseen)
            n += 1
    if n == 0:
        raise DataError("the evaluation set has no labelled positions")
    loss = nll / n
    return UnigramBaseline(loss=loss, perplexity=math.exp(loss), tokens=n)


def lm_eval_set(
    blocks: Dataset, tokenizer: PreTrainedTokenizerBase, objective: str, *, mlm_probability: float = 0.15
) -> Dataset:
    """The evaluation set of a language model: masked once at the run's own masking rate for a
    masked LM (so validation scores the task training optimises), the blocks as they are for a
    causal one. The one place this choice is made."""
    if objective == "mlm":
        return fixed_mlm_eval_set(blocks, tokenizer, mlm_probability=mlm_probability)
    return causal_eval_set(blocks)
