"""``palimpsest demo``: the main job, every study at demo scale and one report.

Scales size the same pipeline for a purpose: ``smoke`` runs in seconds (tests),
``demo`` in minutes on 2 CPU cores. Each run writes its own ``results.json`` as soon as
it finishes; a re-run with the same ``--out`` reuses finished runs and resumes an
interrupted one from its last checkpoint.
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
from palimpsest.errors import ConfigError
from palimpsest.pretraining import PretrainConfig, run_pretrain, write_json
from palimpsest.report import write_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoScale:
    """How big each part of the demo is."""

    max_documents: int | None
    vocab_size: int
    block_size: int
    batch_size: int
    mlm_steps: int
    clm_steps: int
    eval_every: int
    max_eval_blocks: int


DEMO_SCALES: dict[str, DemoScale] = {
    "smoke": DemoScale(
        max_documents=300,
        vocab_size=512,
        block_size=64,
        batch_size=8,
        mlm_steps=12,
        clm_steps=12,
        eval_every=6,
        max_eval_blocks=16,
    ),
    "demo": DemoScale(
        max_documents=None,
        vocab_size=2048,
        block_size=128,
        batch_size=16,
        mlm_steps=800,
        clm_steps=400,
        eval_every=100,
        max_eval_blocks=256,
    ),
}


def pretrain_configs(scale: DemoScale, *, seed: int = 0) -> list[PretrainConfig]:
    """The spine's part of the demo: a tiny masked LM and a tiny causal LM on wiki-en."""
    configs = []
    for family, steps, lr in (("roberta", scale.mlm_steps, 2e-3), ("gpt2", scale.clm_steps, 3e-3)):
        configs.append(
            from_dict(
                PretrainConfig,
                {
                    "name": f"{family}-tiny-wiki-en",
                    "data": {
                        "corpus": "wiki-en",
                        "max_documents": scale.max_documents,
                        "vocab_size": scale.vocab_size,
                        "block_size": scale.block_size,
                        "max_eval_blocks": scale.max_eval_blocks,
                    },
                    "model": {"family": family, "size": "tiny", "dropout": 0.0},
                    "training": {
                        "steps": steps,
                        "batch_size": scale.batch_size,
                        "learning_rate": lr,
                        "eval_every": scale.eval_every,
                        "save_every": max(scale.eval_every, steps // 4),
                        "mlm_probability": 0.3,
                        "seed": seed,
                    },
                },
            )
        )
    return configs


def _finished(run_dir: Path, config: PretrainConfig) -> dict[str, Any] | None:
    """The saved results of a run with exactly this config, if it finished before."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return results if results.get("config") == to_dict(config) else None


def run_demo(
    out: str | Path,
    scale: str = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
    seed: int = 0,
) -> dict[str, Any]:
    """Run every demo study into ``out`` and write ``results.json`` and the report."""
    if scale not in DEMO_SCALES:
        raise ConfigError(f"unknown scale '{scale}' (known: {', '.join(DEMO_SCALES)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for config in pretrain_configs(DEMO_SCALES[scale], seed=seed):
        run_dir = out / f"pretrain-{config.name}"
        previous = _finished(run_dir, config)
        if previous is not None:
            logger.info("reusing finished run %s", run_dir)
            results.append(previous)
            continue
        results.append(run_pretrain(config, run_dir, callbacks=callbacks_for(config.name or "")))
    summary = {
        "kind": "demo",
        "scale": scale,
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    write_json(out / "results.json", summary)
    write_report(
        results,
        out,
        title="palimpsest demo report",
        preface=f"Scale '{scale}'. Every number below was measured in this run; see results.json.",
    )
    return summary
