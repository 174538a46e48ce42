"""Shared fixtures: a private cache folder and small, fast tokenizers/corpora."""

from __future__ import annotations

import os

import pytest

# Threads per test process: the cores shared among pytest-xdist's workers (more threads than
# cores only make them wait for each other). A worker inherits the controller's environment, so
# it sets its own share rather than keeping a value the controller set for itself.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = str(max(1, min(2, (os.cpu_count() or 1) // _workers)))
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = _threads
else:
    os.environ.setdefault("OMP_NUM_THREADS", _threads)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's tokenized-data cache out of the user's home; built-in models converted
    once (SmolLM2-135M: ~25 s) stay in the shared model cache, as a user's would."""
    from palimpsest.models import model_cache_dir

    monkeypatch.setenv("PALIMPSEST_MODEL_CACHE", str(model_cache_dir()))
    monkeypatch.setenv("PALIMPSEST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def wiki_small():
    from palimpsest.data import load_corpus

    return load_corpus("wiki-en", max_documents=200)


@pytest.fixture(scope="session")
def tokenizer(wiki_small):
    from palimpsest.data import train_tokenizer

    return train_tokenizer(wiki_small.texts, 512)
