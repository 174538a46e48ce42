"""Cost of one batch of 32 fact edits: constrained vs unconstrained fine-tuning, in one run.

Arms (same model, same 32 counterfactual capital edits, a fixed number of steps so every
arm does the same optimisation work; early stopping off):

* ``ft``: unconstrained fine-tuning of every weight (blocks and embeddings);
* ``ft-ffn``: unconstrained fine-tuning of the first and last blocks' FFNs only;
* ``linf``: the same FFNs, projected into an L-inf box (δ=5e-3) after every step;
* ``l2``: the same FFNs, each tensor's change projected onto an L2 ball (δ=0.5).

Each arm runs in its own process (peak resident memory above the process's size before the
editor was built is its own); models are the tiny and small GPT-2 and RoBERTa built from a
config (the speed does not depend on what the weights know). Reported: seconds per batch of
32 edits (the fine-tuning alone, and with the metrics before and after), seconds per step,
peak MiB, and the ratios to ``ft``.

With ``--real N``: the editors a user picks between on the built-in SmolLM2-135M, N counterfactual
capital edits at once, each arm in its own process — FT-M (EasyEdit's recipe), the constrained
editor (``EditConfig()``), MEMIT and AlphaEdit (``BatchEditConfig()``); the batch editors' text
statistics timed apart, computed in a fresh cache (``statistics_s``) and read from it
(``cached_statistics_s``). Reported: seconds of the edit (without the metrics), peak MiB, and
ratios to FT-M.

usage: python benchmarks/editing_speed.py [--models gpt2-tiny,roberta-tiny] [--steps 50] [--json F]
       python benchmarks/editing_speed.py --real 10 [--json F]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

ARMS = {
    "ft": {"layers": "all", "modules": ["block", "embeddings"], "norm": None},
    "ft-ffn": {"layers": "first+last", "modules": ["ffn"], "norm": None},
    "linf": {"layers": "first+last", "modules": ["ffn"], "norm": "linf", "delta": 5e-3},
    "l2": {"layers": "first+last", "modules": ["ffn"], "norm": "l2", "delta": 0.5},
}
#: Every arm as plain (Zhu-style) fine-tuning: every position, δ in absolute units.
PLAIN = {"delta_units": "absolute", "edit_positions": "all", "stop_on_success": False}
EDITS = 32


def worker(model_name: str, arm: str, steps: int) -> dict:
    from palimpsest.data import load_corpus, train_tokenizer
    from palimpsest.data.facts import builtin_facts, fact_corpus
    from palimpsest.editing import ConstrainedFinetune, counterfactual_requests
    from palimpsest.models import build_model

    family, size = model_name.split("-")
    facts = builtin_facts("country-capital")
    texts = fact_corpus(facts).texts + load_corpus("wiki-en", max_documents=300).texts
    tokenizer = train_tokenizer(texts, 2048)
    model = build_model(family, size, tokenizer, max_positions=128, dropout=0.0, seed=0)
    requests = counterfactual_requests(facts, EDITS, seed=0)
    chosen = {r.fact.subject for r in requests}
    keep = [f for f in facts if f.subject not in chosen][:64]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    editor = ConstrainedFinetune(
        model, tokenizer, steps=steps, stop_loss=None, learning_rate=1e-3, **PLAIN, **ARMS[arm]
    )
    editor.apply(requests[:2], measure=False)  # warm-up
    editor.undo()
    started = time.perf_counter()
    result = editor.apply(requests, measure=False)
    finetune = time.perf_counter() - started
    editor.undo()
    started = time.perf_counter()
    editor.apply(requests, unmodified=keep)
    measured = time.perf_counter() - started
    return {
        "model": model_name,
        "arm": arm,
        "steps": result.steps,
        "edited_parameters": result.edited_parameters,
        "seconds_per_batch": finetune,
        "seconds_per_step": finetune / result.steps,
        "seconds_with_metrics": measured,
        "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024,
    }


REAL_ARMS = ("ft-m", "constrained", "memit", "alphaedit")


def real_worker(arm: str, edits: int) -> dict:
    import os
    import tempfile

    from palimpsest.data import load_tokenizer
    from palimpsest.data.facts import builtin_facts
    from palimpsest.editing import ConstrainedFinetune, EditConfig, counterfactual_requests
    from palimpsest.editing.memit import BatchEditConfig, BatchEditor
    from palimpsest.experiments.many_edits import FT_M
    from palimpsest.models import load_pretrained, resolve_pretrained

    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m")
    requests = counterfactual_requests(builtin_facts("country-capital"), edits, seed=0)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row: dict = {"arm": arm, "edits": edits}
    if arm in ("ft-m", "constrained"):
        config = EditConfig(**FT_M) if arm == "ft-m" else EditConfig()
        editor = ConstrainedFinetune(model, tokenizer, config=config)
    else:
        os.environ["PALIMPSEST_MODEL_CACHE"] = tempfile.mkdtemp()  # a cold statistics cache
        editor = BatchEditor(model, tokenizer, config=BatchEditConfig(method=arm))
        started = time.perf_counter()
        editor._statistics()
        row["statistics_s"] = time.perf_counter() - started
        editor.statistics = None
        started = time.perf_counter()
        editor._statistics()
        row["cached_statistics_s"] = time.perf_counter() - started
    started = time.perf_counter()
    result = editor.apply(requests, measure=False)
    row["seconds"] = time.perf_counter() - started
    row["steps"] = result.steps
    row["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return row


def real(edits: int, json_path: str | None) -> None:
    rows = []
    for arm in REAL_ARMS:
        command = [sys.executable, __file__, "--real-worker", arm, str(edits)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{arm}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    reference = next((r for r in rows if r["arm"] == "ft-m"), None)
    print(f"{'arm':>12} {'edits':>6} {'seconds':>9} {'s/edit':>7} {'statistics s':>12} {'cached s':>8} "
          f"{'peak MiB':>8} {'time vs FT-M':>12} {'memory vs FT-M':>14}")  # fmt: skip
    for row in rows:
        row["time_vs_ft_m"] = row["seconds"] / reference["seconds"] if reference else None
        row["memory_vs_ft_m"] = (
            row["peak_mib"] / reference["peak_mib"] if reference and reference["peak_mib"] > 0 else None
        )
        print(
            f"{row['arm']:>12} {row['edits']:>6} {row['seconds']:9.1f} {row['seconds'] / row['edits']:7.2f} "
            f"{row.get('statistics_s', 0):12.1f} {row.get('cached_statistics_s', 0):8.2f} "
            f"{row['peak_mib']:8.0f} "
            f"{row['time_vs_ft_m'] or 0:12.2f} {row['memory_vs_ft_m'] or 0:14.2f}"
        )
    if json_path:
        document = {"benchmark": "editing_speed --real", "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "rows": rows}  # fmt: skip
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2-tiny,roberta-tiny,gpt2-small")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "ARM"), help=argparse.SUPPRESS)
    parser.add_argument("--real", type=int, metavar="N", help="N edits of SmolLM2-135M by each editor")
    parser.add_argument("--real-worker", nargs=2, metavar=("ARM", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.real_worker:
        print(json.dumps(real_worker(args.real_worker[0], int(args.real_worker[1]))))
        return
    if args.real:
        real(args.real, args.json)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps)))
        return
    rows = []
    for model in args.models.split(","):
        for arm in ARMS:
            command = [sys.executable, __file__, "--worker", model, arm, "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{model} {arm}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    by_key = {(r["model"], r["arm"]): r for r in rows}
    print(f"{'model':>14} {'arm':>7} {'params':>10} {'s/32 edits':>10} {'s/step':>8} {'with metrics':>12} "
          f"{'peak MiB':>8} {'time vs ft':>10} {'memory vs ft':>12}")  # fmt: skip
    for row in rows:
        ft = by_key.get((row["model"], "ft"))
        row["time_vs_ft"] = row["seconds_per_batch"] / ft["seconds_per_batch"] if ft else None
        row["memory_vs_ft"] = row["peak_mib"] / ft["peak_mib"] if ft and ft["peak_mib"] > 0 else None
        print(
            f"{row['model']:>14} {row['arm']:>7} {row['edited_parameters']:>10,} "
            f"{row['seconds_per_batch']:10.2f} {row['seconds_per_step']:8.4f} "
            f"{row['seconds_with_metrics']:12.2f} {row['peak_mib']:8.0f} "
            f"{row['time_vs_ft'] or 0:10.2f} {row['memory_vs_ft'] or 0:12.2f}"
        )
    document = {
        "benchmark": "editing_speed", "edits": EDITS, "steps": args.steps, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "rows": rows,
    }  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
