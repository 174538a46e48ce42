"""Synthetic "new languages" derived from a real corpus (K et al. 2020; Dufter & Schütze 2020).

They give a cheap, honest test of cross-lingual transfer: the new language has exactly
the content of the source, so any gap is due to the surface form alone.

Each transform is a seeded bijection or permutation of the text, documented below, and
composes with the others through a recipe string, e.g. ``"permute+scramble+script:georgian"``:

``permute``
    "Fake-English": every word type (letters only, case-folded) is renamed to another word
    type of the same corpus by a seeded permutation; capitalisation, digits and
    punctuation stay. Syntax and word frequencies are kept, no word keeps its meaning.
    Not as easy as it looks: a frequent word takes the spelling of a rare one, so its
    sub-words differ from English's. ``identity``
    The text unchanged: the source language relearned from scratch (a new vocabulary and
    new embeddings), the cleanest control of a relearning protocol.
``script:NAME`` alone (English in another alphabet:
    the same words and sub-words) is the cleanest transfer control.
``scramble``
    Words are shuffled within each sentence (split at . ! ?), seeded per document. The
    bag of words survives; word order, which the body relies on, does not.
``script:NAME``
    Latin letters are written in another alphabet (``cyrillic``, ``armenian``,
    ``georgian``; Georgian has no case, so case is lost there). Accented letters are
    decomposed first so their base letter changes script too.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence

from palimpsest.data.corpora import Corpus
from palimpsest.errors import DataError

_WORD = re.compile(r"[^\W\d_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

_SCRIPTS: dict[str, tuple[int, int | None]] = {
    # name: (first lowercase code point, first uppercase code point or None)
    "cyrillic": (0x0430, 0x0410),
    "armenian": (0x0561, 0x0531),
    "georgian": (0x10D0, None),
}


def _word_permutation(texts: Sequence[str], seed: int) -> dict[str, str]:
    types = sorted({match.group(0).lower() for text in texts for match in _WORD.finditer(text)})
    shuffled = list(types)
    random.Random(seed).shuffle(shuffled)
    return dict(zip(types, shuffled, strict=True))


def _match_case(source: str, target: str) -> str:
    if source.isupper() and len(source) > 1:
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def permute_vocabulary(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Rename every word type by a seeded permutation of the corpus's own word types."""
    mapping = _word_permutation(texts, seed)

    def rename(match: re.Match[str]) -> str:
        word = match.group(0)
        return _match_case(word, mapping[word.lower()])

    return [_WORD.sub(rename, text) for text in texts]


def scramble_word_order(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Shuffle the words of each sentence; document ``i`` uses the generator ``(seed, i)``."""
    scrambled = []
    for index, text in enumerate(texts):
        rng = random.Random(f"{seed}:{index}")
        sentences = []
        for sentence in _SENTENCE_END.split(text):
            words = sentence.split()
            rng.shuffle(words)
            sentences.append(" ".join(words))
        scrambled.append(" ".join(sentences))
    return scrambled


def change_script(texts: Sequence[str], script: str = "cyrillic") -> list[str]:
    """Write the 26 Latin letters in another alphabet (a bijection on letters)."""
    if script not in _SCRIPTS:
        raise DataError(f"unknown script '{script}' (known: {', '.join(_SCRIPTS)})")
    lower, upper = _SCRIPTS[script]
    table = {ord("a") + i: chr(lower + i) for i in range(26)}
    table.update({ord("A") + i: chr((upper if upper is not None else lower) + i) for i in range(26)})
    return [unicodedata.normalize("NFC", unicodedata.normalize("NFD", t).translate(table)) for t in texts]


def _parse_recipe(recipe: str, seed: int) -> list[Callable[[Sequence[str]], list[str]]]:
    steps: list[Callable[[Sequence[str]], list[str]]] = []
    for part in recipe.split("+"):
        name, _, argument = part.strip().partition(":")
        if name == "permute":
            steps.append(lambda texts: permute_vocabulary(texts, seed))
        elif name == "scramble":
            steps.append(lambda texts: scramble_word_order(texts, seed))
        elif name == "identity":
            steps.append(list)
        elif name == "script":
            chosen = argument or "cyrillic"
            if chosen not in _SCRIPTS:
                raise DataError(f"unknown script '{chosen}' (known: {', '.join(_SCRIPTS)})")
            steps.append(lambda texts, chosen=chosen: change_script(texts, chosen))
        else:
            known = "permute, scramble, script:NAME, identity"
            raise DataError(f"unknown synthetic-language step '{name}' in '{recipe}' (known: {known})")
    return steps


def synthetic_language(corpus: Corpus, recipe: str = "permute", *, seed: int = 0) -> Corpus:
    """Apply a recipe of transforms to every document of ``corpus`` (labels are kept)."""
    texts: Sequence[str] = corpus.texts
    for step in _parse_recipe(recipe, seed):
        texts = step(texts)
    return corpus.with_texts(
        texts, name=f"{corpus.name}~{recipe}@{seed}", language=f"{corpus.language}-synth"
    )
