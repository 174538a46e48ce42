"""Data: corpora shipped in packages, synthetic languages, tokenizers, LM and task datasets."""

from palimpsest.data.corpora import BUILTIN_CORPORA, Corpus, CorpusSplit, load_corpus, split_corpus
from palimpsest.data.lm import (
    UnigramBaseline,
    causal_eval_set,
    default_cache_dir,
    encode_blocks,
    fixed_mlm_eval_set,
    lm_eval_set,
    unigram_baseline,
)
from palimpsest.data.synthetic import (
    change_script,
    permute_vocabulary,
    scramble_word_order,
    synthetic_language,
)
from palimpsest.data.tasks import encode_classification
from palimpsest.data.tokenization import (
    MAX_VOCABULARY,
    SPECIAL_TOKENS,
    boundary_ids,
    load_tokenizer,
    train_tokenizer,
)
from palimpsest.data.topics import SHARED_TOPICS, TOPIC_MAP, shared_topic_corpus

__all__ = [
    "BUILTIN_CORPORA",
    "MAX_VOCABULARY",
    "SHARED_TOPICS",
    "SPECIAL_TOKENS",
    "TOPIC_MAP",
    "Corpus",
    "CorpusSplit",
    "UnigramBaseline",
    "boundary_ids",
    "causal_eval_set",
    "change_script",
    "default_cache_dir",
    "encode_blocks",
    "encode_classification",
    "fixed_mlm_eval_set",
    "lm_eval_set",
    "load_corpus",
    "load_tokenizer",
    "permute_vocabulary",
    "scramble_word_order",
    "shared_topic_corpus",
    "split_corpus",
    "synthetic_language",
    "train_tokenizer",
    "unigram_baseline",
]
