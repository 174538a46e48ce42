"""Probe: MEMIT and AlphaEdit, N counterfactual edits at once on SmolLM2-135M (one draw).

    python results/editing-batch-probe-real/probe.py 32 100000   # edits, statistics tokens

Prints one JSON line per measurement (results.json holds those of the committed run). The
targets are searched once and spread with each setting in turn (the search does not depend
on the least-squares settings), so every setting edits the same targets.
"""

import json
import random
import sys
import time

from palimpsest.data import load_tokenizer
from palimpsest.editing import builtin_facts, counterfactual_requests
from palimpsest.editing.memit import BatchEditor
from palimpsest.editing.metrics import edit_metrics
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import build_probe, fact_recall


def say(**values: object) -> None:
    print(json.dumps(values), flush=True)


def floats(metrics: dict) -> dict:
    return {key: round(value, 3) for key, value in metrics.items() if isinstance(value, float)}


def main() -> None:
    edits_wanted, tokens = int(sys.argv[1]), int(sys.argv[2])
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m")
    facts = builtin_facts("country-capital") + builtin_facts("country-language")
    probeable = [f for f in facts if build_probe(tokenizer, f, causal=True) is not None]
    recalled = fact_recall(model, tokenizer, probeable).recalled
    known = [fact for fact, ok in zip(probeable, recalled, strict=True) if ok]
    random.Random(0).shuffle(known)
    edits = counterfactual_requests(known[:edits_wanted], edits_wanted, seed=0)
    kept = known[edits_wanted : edits_wanted + 100]
    say(known_plain=len(known), edits=edits_wanted, kept=len(kept), statistics_tokens=tokens)

    started = time.time()
    editor = BatchEditor(model, tokenizer, statistics_tokens=tokens)
    statistics = editor._statistics()
    say(statistics_s=round(time.time() - started, 1))
    say(before=floats(edit_metrics(model, tokenizer, edits, kept)))
    started = time.time()
    targets, norms = editor._targets(edits, 0, statistics)
    say(targets_s=round(time.time() - started, 1), norm_max=max(norms))

    def spread(method: str, **settings: float) -> None:
        editor.undo()
        editor._nullspace = {}
        for name, value in settings.items():
            setattr(editor.config, name, value)
        editor.config.method = method
        started = time.time()
        for position, block in enumerate(editor.blocks):
            keys = editor._keys(edits, 0, block)
            residual = (targets - editor._hidden(edits, 0)) / (len(editor.blocks) - position)
            editor._add(block, editor._solve(block, keys, residual, statistics[block]))
        seconds = round(time.time() - started, 1)
        say(
            method=method, **settings, spread_s=seconds, **floats(edit_metrics(model, tokenizer, edits, kept))
        )

    for weight in (10_000, 3_000, 1_000):
        spread("memit", covariance_weight=weight)
    for threshold in (1e-2, 3e-2):
        spread("alphaedit", nullspace_threshold=threshold, ridge=10.0)


if __name__ == "__main__":
    main()
