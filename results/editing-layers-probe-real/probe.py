"""Probe: which blocks MEMIT should write on SmolLM2-135M, and the target search's settings.

    python results/editing-layers-probe-real/probe.py BENCHMARK.jsonl 32   # file (built if absent), edits

One draw of the many-edits benchmark (its first N cases after a seed-0 shuffle, the study's own
draw), edited at once by MEMIT with each block range and target setting in turn, measured by
``benchmark_metrics`` and undone exactly before the next. Prints one JSON line per setting
(results.json holds those of the committed run).
"""

import json
import math
import random
import sys
import time
from pathlib import Path

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import benchmark_metrics, build_benchmark, read_benchmark, write_benchmark
from palimpsest.editing.memit import BatchEditor
from palimpsest.editing.statistics import cached_statistics
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.training import evaluate_lm

SETTINGS = [
    {"layers": [1, 2, 3, 4, 5]},
    {"layers": [3, 4, 5, 6, 7]},
    {"layers": [6, 7, 8, 9, 10]},
    {"layers": [9, 10, 11, 12, 13]},
    {"layers": [3, 4, 5, 6, 7], "context_passages": 4},
    {"layers": [3, 4, 5, 6, 7], "target_lr": 1.0},
]
TOKENS = 50_000


def say(**values: object) -> None:
    print(json.dumps(values), flush=True)


def main() -> None:
    path, edits = Path(sys.argv[1]), int(sys.argv[2])
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m")
    model.eval()
    if not path.is_file():
        write_benchmark(path, build_benchmark(model, tokenizer)[0])
    cases = read_benchmark(path)
    random.Random(0).shuffle(cases)
    draw = cases[:edits]
    perplexity_set = wiki_perplexity_set(tokenizer, 128, 16)

    def measure() -> dict:
        metrics = benchmark_metrics(model, tokenizer, draw)
        metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
        return {k: round(v, 3) for k, v in metrics.items()}

    say(edits=edits, kinds={k: sum(c.kind == k for c in draw) for k in ("counterfactual", "correction")})
    say(setting="before", **measure())
    started = time.time()
    blocks = sorted({b for s in SETTINGS for b in s["layers"]})
    statistics = cached_statistics(model, tokenizer, blocks, tokens=TOKENS)
    say(statistics_s=round(time.time() - started, 1), tokens=TOKENS, blocks=blocks)
    for setting in SETTINGS:
        editor = BatchEditor(model, tokenizer, statistics=statistics, statistics_tokens=TOKENS, **setting)
        started = time.time()
        editor.apply([c.request for c in draw], measure=False)
        seconds = round(time.time() - started, 1)
        say(setting=setting, seconds=seconds, target_norm_max=round(max(editor.target_norms), 1), **measure())
        editor.undo()


if __name__ == "__main__":
    main()
