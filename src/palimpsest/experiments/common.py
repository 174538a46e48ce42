"""What the studies share: the scale lookup, the rule for a difference across seeds, wiki text mixed
with fact statements (tokenized once per study), the real or a random model, the peak memory of a
block of work."""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from palimpsest.config import to_dict
from palimpsest.data import load_tokenizer
from palimpsest.data.facts import Fact, fact_corpus
from palimpsest.errors import ConfigError
from palimpsest.pretraining import DataConfig, prepare_data
from palimpsest.storage import UNIT_KEY, as_stored, save_model, write_json

S = TypeVar("S")


def resolve_scale(scale: str | S | tuple[str, S], scales: Mapping[str, S], study: str) -> tuple[str, S]:
    """``(name, settings)`` of a named scale, ``("custom", settings)`` for a settings object, or
    a ``(name, settings)`` pair as given (a named scale changed by a config, under its own name)."""
    if isinstance(scale, tuple):
        return scale
    if not isinstance(scale, str):
        return "custom", scale
    if scale not in scales:
        raise ConfigError(f"unknown scale '{scale}' for the {study} study (known: {', '.join(scales)})")
    return scale, scales[scale]


def consistent_across_seeds(mean: float, spread: float, agreeing: int, seeds: int, expected: int = 1) -> bool:
    """Whether a difference between two arms counts, by the rule every study uses: each of the
    ``seeds`` paired differences goes the ``expected`` way (+1 higher, -1 lower; ``agreeing`` of
    them do) *and* their mean lies beyond their spread over seeds, so that one seed's large
    effect beside another's negligible one is not read as an effect."""
    return seeds > 0 and agreeing == seeds and expected * mean > max(spread, 0.0)


def paired_direction(mine: Sequence[float], other: Sequence[float]) -> int:
    """-1 / 0 / +1: ``mine`` lower / not distinguishable / higher than ``other``, by
    :func:`consistent_across_seeds` over their paired differences (the two sequences hold one
    value per seed, in the same seed order)."""
    differences = [a - b for a, b in zip(mine, other, strict=True)]
    if not differences:
        return 0
    mean, spread = mean_std(differences)
    for expected in (1, -1):
        agreeing = sum(1 for difference in differences if expected * difference > 0)
        if consistent_across_seeds(mean, spread, agreeing, len(differences), expected):
            return expected
    return 0


SizeSeeds = tuple[tuple[int, tuple[int, ...]], ...]


def check_size_seeds(size_seeds: SizeSeeds, sizes: Iterable[int], seeds: Sequence[int], what: str) -> None:
    """Refuse a ``(size, seeds)`` limit that names no draw of the run: a size it does not draw, a seed
    it does not run, or no seed at all (the size would silently vanish from the results). ``what``
    names the size's unit in the message ("facts", "edits")."""
    drawn = sorted(set(sizes))
    for size, chosen in size_seeds:
        if size not in drawn or not chosen or not set(chosen) <= set(seeds):
            raise ConfigError(
                f"size_seeds: {size} {what} on seeds {list(chosen)} is no draw of this run "
                f"(sizes {drawn}, seeds {list(seeds)})"
            )


def seeds_of(size_seeds: SizeSeeds, size: int, seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds a draw of ``size`` runs on: those ``size_seeds`` names for it, else every seed."""
    return tuple(dict(size_seeds).get(size, seeds))


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
    info: FactDataInfo


@dataclass
class FactDataInfo:
    """What a fact study trained on: wiki text plus fact statements."""

    wiki_train_documents: int
    facts: int
    fact_repeats: int
    train_blocks: int
    train_tokens: int
    fact_tokens: int
    validation_blocks: int
    vocab_size: int


def fact_mixture(
    facts: list[Fact],
    out: Path,
    data: DataConfig,
    *,
    objective: str,
    fact_repeats: int = 1,
    hold_out: bool = False,
    mlm_probability: float = 0.15,
) -> FactMixture:
    """Every fact stated ``fact_repeats`` times (differently shuffled) beside the corpus's training split.

    The data come from :func:`palimpsest.pretraining.prepare_data` (``data`` says which corpus,
    how it is split and tokenized) with the statements as extra training texts; the
    tokenizer is trained once and saved under ``out/tokenizer`` (a resumed study reuses it).
    ``hold_out`` leaves each fact's held-out paraphrase out.
    """
    statements = [fact_corpus(facts, hold_out=hold_out, seed=repeat) for repeat in range(fact_repeats)]
    fact_texts = tuple(text for statement in statements for text in statement.texts)
    tokenizer_dir = out / "tokenizer"
    # what decides the tokenizer: a folder of a study run with other data trains its own again
    key = as_stored({"data": to_dict(data), "objective": objective, "texts": _digest(fact_texts)})
    marker = tokenizer_dir / UNIT_KEY
    reusable = (
        (tokenizer_dir / "tokenizer.json").is_file()
        and marker.is_file()
        and (json.loads(marker.read_text(encoding="utf-8")) == key)
    )
    saved = load_tokenizer(tokenizer_dir) if reusable else None
    prepared = prepare_data(
        data,
        objective=objective,
        tokenizer=saved,
        mlm_probability=mlm_probability,
        extra_train_texts=fact_texts,
    )
    if saved is None:
        save_model(None, prepared.tokenizer, tokenizer_dir)
        write_json(marker, key)
    info = FactDataInfo(
        wiki_train_documents=prepared.info.train_documents,
        facts=len(facts),
        fact_repeats=fact_repeats,
        train_blocks=prepared.info.train_blocks,
        train_tokens=prepared.info.train_tokens,
        fact_tokens=prepared.info.extra_tokens or 0,
        validation_blocks=prepared.info.validation_blocks,
        vocab_size=prepared.info.vocab_size,
    )
    return FactMixture(prepared.tokenizer, prepared.train_blocks, prepared.eval_set, info)


def _digest(texts: Sequence[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def real_or_random_model(model: str | None, out: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a built-in name, folder or hub id; or, for ``None``, a random model of
    the built-in SmolLM2-135M's structure with a small tokenizer trained on wiki-en, saved under
    ``out/random-model`` so a resumed study measures the same one (smoke scales)."""
    from palimpsest.data import load_corpus, train_tokenizer
    from palimpsest.models import build_smollm2_like, load_pretrained, resolve_pretrained

    if model is not None:
        return load_pretrained(model), load_tokenizer(resolve_pretrained(model))
    folder = out / "random-model"
    if (folder / "config.json").is_file():
        return load_pretrained(str(folder)), load_tokenizer(folder)
    tokenizer = train_tokenizer(load_corpus("wiki-en", max_documents=200).texts, 600)
    built = build_smollm2_like(tokenizer, seed=0)
    save_model(built, tokenizer, folder)
    return built, tokenizer


def wiki_perplexity_set(tokenizer: Any, block_size: int, blocks: int) -> Any:
    """The first ``blocks`` blocks of wiki-en's held-out documents in the model's own tokenizer
    (a fixed slice, so every method of a study is scored on the same text)."""
    from palimpsest.data import causal_eval_set, encode_blocks, load_corpus, split_corpus

    wiki = split_corpus(load_corpus("wiki-en"), 0.05, seed=0).validation
    encoded = encode_blocks(wiki, tokenizer, block_size)
    return causal_eval_set(encoded.select(range(min(blocks, len(encoded)))))


class PeakMemory:
    """Peak memory of a block of work above its level when the block began, in MiB.

    On a CUDA ``device`` the allocator's own peak on that device; elsewhere the process's
    resident set, sampled every ``interval`` seconds from ``/proc`` (``peak_mib`` stays ``None``
    where there is no ``/proc``, e.g. macOS: nothing measured is not zero).
    """

    def __init__(self, device: torch.device | str | None = None, interval: float = 0.02):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._highest = 0

    @staticmethod
    def _resident() -> int | None:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._highest = max(self._highest, self._resident() or 0)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        resident = self._resident()
        if resident is not None:
            self._start = self._highest = resident
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._highest = max(self._highest, self._resident() or 0)
            self.peak_mib = (self._highest - self._start) / 2**20
