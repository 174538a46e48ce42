"""Probe: the batch editor's settings on SmolLM2-135M at 100 edits at once, keys per context.

    python results/many-edits-settings-probe-real/probe.py OUT.jsonl [EDITS]

The many-edits study's own seed-0 draw (the committed ``many-edits-real-quick/benchmark.jsonl``
shuffled with seed 0, its first EDITS cases, 100 by default), edited at once by MEMIT with one
setting changed at a time from the defaults (block range, the KL term's weight and prompts,
norm control of the targets, tokens of ordinary text behind the statistics), measured by
``benchmark_metrics`` and undone exactly before the next. Each setting's line is appended to
OUT.jsonl as it finishes; a re-run skips those there. The defaults' own row is the study's
(``many-edits-real-quick``, 100 at once, memit).
"""

import json
import math
import random
import sys
import time
from pathlib import Path

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import benchmark_metrics, read_benchmark
from palimpsest.editing.memit import BatchEditor
from palimpsest.editing.statistics import cached_statistics
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.training import evaluate_lm

BENCHMARK = Path(__file__).parent.parent / "many-edits-real-quick" / "benchmark.jsonl"
DEFAULT_BLOCKS = [3, 4, 5, 6, 7]
SETTINGS = {
    "blocks 6-10": {"layers": [6, 7, 8, 9, 10]},
    "blocks 9-13": {"layers": [9, 10, 11, 12, 13]},
    "KL over the other relations, weight 4": {"keep_prompts": "other-relations", "kl_factor": 4.0},
    "targets through the other templates": {"train_templates": "all-but-held-out"},
    "defaults, measured again (paraphrase@held-out)": {},
    "KL weight 4": {"kl_factor": 4.0},
    "no norm control": {"target_norm_limit": None},
    "statistics 20k tokens": {"statistics_tokens": 20_000},
    "statistics 300k tokens": {"statistics_tokens": 300_000},
    "blocks 5-9": {"layers": [5, 6, 7, 8, 9]},
}


def main() -> None:
    out, edits = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 100
    done = {json.loads(line)["setting"] for line in out.read_text().splitlines()} if out.is_file() else set()
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m")
    model.eval()
    cases = read_benchmark(BENCHMARK)
    random.Random(0).shuffle(cases)
    draw = cases[:edits]
    perplexity_set = wiki_perplexity_set(tokenizer, 128, 16)

    def record(**values: object) -> None:
        with out.open("a") as handle:
            handle.write(json.dumps(values) + "\n")

    for name, setting in SETTINGS.items():
        if name in done:
            continue
        blocks = setting.get("layers", DEFAULT_BLOCKS)
        tokens = setting.get("statistics_tokens", 100_000)
        started = time.time()
        statistics = cached_statistics(model, tokenizer, blocks, tokens=tokens)
        statistics_seconds = time.time() - started
        editor = BatchEditor(model, tokenizer, statistics=statistics, **setting)
        started = time.time()
        editor.apply([c.request for c in draw], measure=False)
        seconds = time.time() - started
        metrics = benchmark_metrics(model, tokenizer, draw)
        metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
        record(**{
            **{k: round(v, 4) for k, v in metrics.items()},
            "setting": name, "changed": setting, "edits": edits, "seconds": round(seconds, 1),
            "statistics_seconds": round(statistics_seconds, 1),
            "target_norm_max": round(max(editor.target_norms), 1),
        })  # fmt: skip
        editor.undo()


if __name__ == "__main__":
    main()
