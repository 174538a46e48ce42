"""Shared fixtures: a private cache folder and small, fast tokenizers/corpora."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

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


# Triton's kernels (palimpsest.gpu_kernels) run without a GPU only under Triton's interpreter,
# which must be on before Triton is first imported (its own jit'd library functions are made then,
# and importing the trainer imports Triton); where CUDA is present they run on the card. Torch is
# imported only now, after the thread count above is set (it reads it once).
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


def _made_once(tmp_path_factory, name: str, make) -> dict:
    """``make(folder)`` once for the whole test session, by whichever pytest-xdist worker asks
    first; the others wait for it and read what it returned (a JSON-able dict). The folder must
    stay as made: tests that change a run work on a copy."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the session's folder, shared by every worker
    record = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            record.write_text(json.dumps(make(root / name)))
    return json.loads(record.read_text())


def _commands(cache: Path, *commands: tuple[str, ...]) -> list[list]:
    """``palimpsest`` commands in this process with a private data cache (a session fixture
    cannot take the function-scoped ``private_cache``): each one's exit code, stdout, stderr."""
    from cli_helpers import palimpsest
    from palimpsest.models import model_cache_dir

    done = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PALIMPSEST_MODEL_CACHE", str(model_cache_dir()))
        patch.setenv("PALIMPSEST_CACHE", str(cache))
        for command in commands:
            result = palimpsest(*command)
            done.append([result.returncode, result.stdout, result.stderr])
    return done


def _completed(record: list) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess("palimpsest", *record)


@pytest.fixture(scope="session")
def demo_smoke(tmp_path_factory):
    """One smoke run of the demo, then the plasticity (decoder) and memory studies it ran, asked
    for again from the command line into its folders: they reuse every unit, so the demo's, the
    CLI's and the libraries' tests of those studies share one run instead of making four."""

    def make(out: Path) -> dict:
        demo, plasticity, memory = _commands(
            out.parent / "demo-smoke-cache",
            ("demo", "--scale", "smoke", "--out", str(out)),
            ("experiment", "plasticity", "--scale", "smoke", "--family", "gpt2",
             "--out", str(out / "plasticity")),
            ("experiment", "memory", "--scale", "smoke", "--out", str(out / "memory")),
        )  # fmt: skip
        return {"out": str(out), "demo": demo, "plasticity": plasticity, "memory": memory}

    made = _made_once(tmp_path_factory, "demo-smoke", make)
    return {"out": Path(made["out"]), **{k: _completed(made[k]) for k in ("demo", "plasticity", "memory")}}


@pytest.fixture(scope="session")
def editing_smoke(tmp_path_factory):
    """The editing study's smoke run from the command line, shared by its CLI and library tests."""

    def make(out: Path) -> dict:
        (done,) = _commands(
            out.parent / "editing-smoke-cache",
            ("experiment", "editing", "--scale", "smoke", "--out", str(out)),
        )
        return {"out": str(out), "done": done}

    made = _made_once(tmp_path_factory, "editing-smoke", make)
    return {"out": Path(made["out"]), "done": _completed(made["done"])}


@pytest.fixture(scope="session")
def made_once(tmp_path_factory):
    """``made_once(name, make)``: ``make(folder)`` run once per test session (see :func:`_made_once`)."""
    return lambda name, make: _made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def straight_micro_run(made_once):
    """``tests/scripts/train_micro.py`` run uninterrupted, which the kill-and-resume tests compare
    against (made once)."""

    def make(out: Path) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        script = Path(__file__).parent / "scripts" / "train_micro.py"
        subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, capture_output=True)
        return {"out": str(out)}

    return Path(made_once("train-micro-straight", make)["out"])


#: What each pytest-xdist worker makes first, so that no worker waits for a shared run another is
#: still making (two workers on two cores: the demo's run on one, the rest on the other).
_MADE_FIRST_BY = {"gw0": ("demo_smoke",), "gw1": ("editing_smoke", "straight_micro_run")}


@pytest.fixture(scope="session", autouse=True)
def _shared_runs_made_first(request):
    for name in _MADE_FIRST_BY.get(os.environ.get("PYTEST_XDIST_WORKER", ""), ()):
        request.getfixturevalue(name)
