"""``palimpsest demo``: the main job, every study at demo scale and one report.

Scales size the same pipeline for a purpose: ``smoke`` runs in seconds (tests),
``demo`` in minutes on 2 CPU cores. Parts:

* pretraining: a tiny causal LM (GPT-2) here, and the two tiny masked LMs (RoBERTa,
  standard and with active forgetting) that the plasticity study pretrains;
* forget: the plasticity study (:mod:`palimpsest.experiments.plasticity`);
* grow: the memory study (:mod:`palimpsest.experiments.memory`);
* rewrite: the editing study (:mod:`palimpsest.experiments.editing`), and a few edits of the
  built-in real model SmolLM2-135M with its continuations before and after
  (:mod:`palimpsest.experiments.editing_real`; a random model of its shape at smoke scale).

Each run writes its own results as soon as it finishes; a re-run with the same ``--out``
reuses finished runs and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from palimpsest.config import from_dict, to_dict
from palimpsest.errors import ConfigError, DataError
from palimpsest.experiments import editing_real
from palimpsest.experiments.editing import run_editing_study
from palimpsest.experiments.memory import run_memory_study
from palimpsest.experiments.plasticity import VARIANTS, run_plasticity
from palimpsest.pretraining import PretrainConfig, PretrainResults, run_pretrain
from palimpsest.report import write_report
from palimpsest.results import Results
from palimpsest.storage import write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoScale:
    """How big each part of the demo is (the studies have their own scale of that name)."""

    max_documents: int | None
    vocab_size: int
    block_size: int
    batch_size: int
    clm_steps: int
    eval_every: int
    max_eval_blocks: int


DEMO_SCALES: dict[str, DemoScale] = {
    "smoke": DemoScale(
        max_documents=300,
        vocab_size=512,
        block_size=64,
        batch_size=8,
        clm_steps=12,
        eval_every=6,
        max_eval_blocks=16,
    ),
    "demo": DemoScale(
        max_documents=None,
        vocab_size=2048,
        block_size=128,
        batch_size=16,
        clm_steps=300,
        eval_every=100,
        max_eval_blocks=256,
    ),
}


def causal_config(scale: DemoScale, *, seed: int = 0) -> PretrainConfig:
    """The spine's causal LM: a tiny GPT-2 on wiki-en."""
    return from_dict(
        PretrainConfig,
        {
            "name": "gpt2-tiny-wiki-en",
            "data": {
                "corpus": "wiki-en",
                "max_documents": scale.max_documents,
                "vocab_size": scale.vocab_size,
                "block_size": scale.block_size,
                "max_eval_blocks": scale.max_eval_blocks,
            },
            "model": {"family": "gpt2", "size": "tiny", "dropout": 0.0},
            "training": {
                "steps": scale.clm_steps,
                "batch_size": scale.batch_size,
                "learning_rate": 3e-3,
                "eval_every": scale.eval_every,
                "save_every": max(scale.eval_every, scale.clm_steps // 4),
                "seed": seed,
            },
        },
    )


def _finished(run_dir: Path, config: PretrainConfig) -> PretrainResults | None:
    """The saved results of a run with exactly this config, if it finished before."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = PretrainResults.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, DataError):
        return None
    return results if to_dict(results.config) == to_dict(config) else None


@dataclass
class DemoRun:
    """Every study's typed results, labelled by the pillar it shows, and the time each took."""

    scale: str
    seconds: float
    timings: dict[str, float]
    results: list[tuple[str, Results]]

    def to_json(self) -> dict[str, Any]:
        """The bundle ``palimpsest report`` reads: ``{"kind": "demo", ..., "results": [...]}``."""
        return {
            "kind": "demo",
            "scale": self.scale,
            "seconds": self.seconds,
            "timings": self.timings,
            "results": [result.to_json() for _pillar, result in self.results],
        }


def run_demo(
    out: str | Path,
    scale: str = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
    seed: int = 0,
) -> DemoRun:
    """Run every demo study into ``out`` and write ``results.json`` and the report."""
    if scale not in DEMO_SCALES:
        raise ConfigError(f"unknown scale '{scale}' (known: {', '.join(DEMO_SCALES)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    config = causal_config(DEMO_SCALES[scale], seed=seed)
    run_dir = out / f"pretrain-{config.name}"
    causal = _finished(run_dir, config)
    if causal is None:
        causal = run_pretrain(
            config, run_dir, callbacks=callbacks_for(config.name or "pretrain"), overwrite=True
        )
    timings["pretrain causal LM"] = time.perf_counter() - started

    mark = time.perf_counter()
    plasticity = run_plasticity(out / "plasticity", scale, callbacks_for=callbacks_for)
    timings["forget: plasticity study"] = time.perf_counter() - mark
    masked = [
        PretrainResults.from_json(
            json.loads(
                (out / "plasticity" / f"pretrain-{variant}" / "results.json").read_text(encoding="utf-8")
            )
        )
        for variant in VARIANTS
    ]

    mark = time.perf_counter()
    memory = run_memory_study(out / "memory", scale, callbacks_for=callbacks_for)
    timings["grow: memory study"] = time.perf_counter() - mark

    mark = time.perf_counter()
    editing = run_editing_study(out / "editing", scale, callbacks_for=callbacks_for)
    timings["rewrite: editing study"] = time.perf_counter() - mark

    mark = time.perf_counter()
    real_scale = editing_real.SCALES["demo" if scale == "demo" else "demo-smoke"]
    real = editing_real.run_real_editing_study(out / "editing-real", real_scale, scale)
    timings["rewrite: real model (SmolLM2-135M)"] = time.perf_counter() - mark

    results: list[tuple[str, Results]] = [
        *(("pretrain", run) for run in masked),
        ("pretrain", causal),
        ("forget", plasticity),
        ("grow", memory),
        ("rewrite", editing),
        ("rewrite", real),
    ]
    summary = DemoRun(scale=scale, seconds=time.perf_counter() - started, timings=timings, results=results)
    write_json(out / "results.json", summary.to_json())
    write_report(
        [result for _pillar, result in results],
        out,
        title="palimpsest demo report",
        preface=(
            f"Scale '{scale}', {summary.seconds:.0f} s in all. Every number below was measured in this "
            "run; results.json holds them all."
        ),
    )
    return summary
