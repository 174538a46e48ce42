"""Cost of active forgetting: one reset, and the callback's share of training time.

Side by side in one run, on the same model, data and batch:
* ``reset``: wall time of one ``forget_embeddings`` call (embeddings + Adam state) for the
  tiny and small models and a RoBERTa-base-sized embedding matrix (50k x 768);
* ``overhead``: training throughput through palimpsest's Trainer path without and with
  ``ActiveForgettingCallback`` (K=1000 as in the paper, and K=50 to make resets frequent),
  alternating the arms over repeats; reported as ratios.

usage: python benchmarks/forgetting_overhead.py [--repeats 3] [--steps 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch import nn
from transformers import RobertaConfig, RobertaForMaskedLM, TrainerCallback

from palimpsest.data import encode_blocks, load_corpus, train_tokenizer
from palimpsest.forgetting import ActiveForgettingCallback, forget_embeddings
from palimpsest.models import build_model
from palimpsest.training import TrainingConfig, train

BLOCK, BATCH, WARMUP = 128, 16, 10


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.started = self.stopped = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == WARMUP:
            self.started = time.perf_counter()
        if state.global_step == state.max_steps:
            self.stopped = time.perf_counter()


def time_reset(model: nn.Module, repeats: int = 20) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, model.config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        forget_embeddings(model, optimizer, seed=index)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(tokenizer, blocks, steps: int, reset_every: int | None) -> tuple[float, int]:
    """Tokens/s over the timed steps, and how many resets happened in the run."""
    model = build_model("roberta", "tiny", tokenizer, max_positions=BLOCK, seed=0)
    config = TrainingConfig(steps=steps, batch_size=BATCH, save_every=None, eval_every=None, log_every=10)
    clock = StepClock()
    callbacks: list[TrainerCallback] = [clock]
    groups = None
    forgetting = None
    if reset_every is not None:
        forgetting = ActiveForgettingCallback(reset_every=reset_every, save_at_episode_end=False)
        callbacks.insert(0, forgetting)
        groups = forgetting.param_groups
    with tempfile.TemporaryDirectory() as out:
        options = {"callbacks": callbacks, "param_groups": groups, "resume": False}
        train(model, tokenizer, blocks, config, out, objective="mlm", **options)
    resets = len(forgetting.resets) if forgetting else 0
    return (steps - WARMUP) * BATCH * BLOCK / (clock.stopped - clock.started), resets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    corpus = load_corpus("wiki-en", max_documents=3000)
    tokenizer = train_tokenizer(corpus.texts, 4096)
    blocks = encode_blocks(corpus, tokenizer, BLOCK)

    resets = {}
    for size in ("tiny", "small"):
        resets[f"roberta-{size} (vocab {len(tokenizer)})"] = time_reset(
            build_model("roberta", size, tokenizer)
        )
    # RoBERTa-base's embedding matrix (50,265 x 768, tied head) on a one-layer body.
    base = RobertaForMaskedLM(
        RobertaConfig(vocab_size=50_265, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                      intermediate_size=768, pad_token_id=1)
    )  # fmt: skip
    resets["embedding 50,265 x 768 (RoBERTa-base size)"] = time_reset(base, repeats=10)
    for name, seconds in resets.items():
        print(f"one reset, {name}: {1000 * seconds:.2f} ms", flush=True)

    arms: dict[str, list[float]] = {"no forgetting": [], "K=1000": [], "K=50": []}
    counts: dict[str, int] = {}
    for _ in range(args.repeats):
        for arm, every in (("no forgetting", None), ("K=1000", 1000), ("K=50", 50)):
            rate, count = throughput(tokenizer, blocks, args.steps, every)
            arms[arm].append(rate)
            counts[arm] = count
    baseline = statistics.median(arms["no forgetting"])
    rows = []
    for arm, rates in arms.items():
        rate = statistics.median(rates)
        rows.append({"arm": arm, "tokens_per_s": rate, "ratio_to_no_forgetting": rate / baseline,
                     "resets_in_run": counts[arm]})  # fmt: skip
        print(
            f"{arm:>14}: {rate:8,.0f} tok/s  ratio {rate / baseline:.4f}  ({counts[arm]} resets)", flush=True
        )
    document = {
        "benchmark": "forgetting_overhead",
        "steps": args.steps,
        "batch": BATCH,
        "block": BLOCK,
        "threads": torch.get_num_threads(),
        "reset_seconds": resets,
        "throughput": rows,
    }
    print(json.dumps(document, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
