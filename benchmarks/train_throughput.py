"""Training throughput: palimpsest's Trainer path vs a plain PyTorch loop, in one run.

Same model (same initial weights), same blocks, same batch size, same optimizer
(AdamW, linear schedule, gradient clipping), same number of timed steps. Both sides time
only steps after a warm-up, with a clock started at the same point of a step. Repeats
alternate the two sides so drift in machine load hits both.

usage: python benchmarks/train_throughput.py [--repeats 3] [--json out.json]
Prints a table and a JSON document with tokens/s and the overhead ratio per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback, get_linear_schedule_with_warmup

from palimpsest.data import encode_blocks, load_corpus, train_tokenizer
from palimpsest.data.lm import mlm_mask
from palimpsest.models import build_model, count_parameters
from palimpsest.training import TrainingConfig, make_training_arguments, train

BLOCK, BATCH = 128, 16


class StepClock(TrainerCallback):
    """Start the clock when warm-up steps are done; stop it at the end of training."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.started = None
        self.stopped = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        if state.global_step == state.max_steps:
            self.stopped = time.perf_counter()


def plain_loop(model, blocks, tokenizer, objective, steps, warmup, config):
    # The same optimizer class and options the Trainer picks (fused AdamW on recent torch).
    with tempfile.TemporaryDirectory() as scratch:
        arguments = make_training_arguments(config, scratch, has_eval=False)
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(arguments)
    optimizer = optimizer_cls(model.parameters(), **{**kwargs, "weight_decay": config.weight_decay})
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    generator = torch.Generator().manual_seed(0)
    data = torch.tensor(blocks["input_ids"])
    model.train()
    started = None
    for step in range(1, steps + 1):
        index = torch.randint(len(data), (BATCH,), generator=generator)
        input_ids = data[index]
        if objective == "mlm":
            input_ids, labels = mlm_mask(
                input_ids,
                special_ids=tokenizer.all_special_ids,
                mask_token_id=tokenizer.mask_token_id,
                vocab_size=len(tokenizer),
                probability=config.mlm_probability,
            )
        else:
            labels = input_ids
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step == warmup:
            started = time.perf_counter()
    return (steps - warmup) * BATCH * BLOCK / (time.perf_counter() - started)


def trainer_path(model, blocks, tokenizer, objective, steps, warmup, config):
    clock = StepClock(warmup)
    with tempfile.TemporaryDirectory() as out:
        train(model, tokenizer, blocks, config, out, objective=objective, callbacks=[clock], resume=False)
    return (steps - warmup) * BATCH * BLOCK / (clock.stopped - clock.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--models", nargs="*", default=None, help="Only these, e.g. gpt2-small roberta-tiny.")
    args = parser.parse_args()

    corpus = load_corpus("wiki-en", max_documents=3000)
    tokenizer = train_tokenizer(corpus.texts, 4096)
    blocks = encode_blocks(corpus, tokenizer, BLOCK)
    cases = [
        ("gpt2", "tiny", 60, 10),
        ("roberta", "tiny", 60, 10),
        ("gpt2", "small", 24, 4),
        ("roberta", "small", 24, 4),
    ]
    rows = []
    for family, size, steps, warmup in cases:
        if args.models and f"{family}-{size}" not in args.models:
            continue
        objective = "mlm" if family == "roberta" else "clm"
        config = TrainingConfig(steps=steps, batch_size=BATCH, save_every=None, eval_every=None, log_every=10)
        plain, ours = [], []
        for _ in range(args.repeats):
            model = build_model(family, size, tokenizer, max_positions=BLOCK, seed=0)
            plain.append(plain_loop(model, blocks, tokenizer, objective, steps, warmup, config))
            model = build_model(family, size, tokenizer, max_positions=BLOCK, seed=0)
            ours.append(trainer_path(model, blocks, tokenizer, objective, steps, warmup, config))
        row = {
            "model": f"{family}-{size}",
            "parameters": count_parameters(model),
            "plain_tokens_per_s": statistics.median(plain),
            "trainer_tokens_per_s": statistics.median(ours),
        }
        row["trainer_over_plain"] = row["trainer_tokens_per_s"] / row["plain_tokens_per_s"]
        row["overhead_percent"] = 100 * (1 - row["trainer_over_plain"])
        rows.append(row)
        name, size = row["model"], row["parameters"]
        plain_rate, ours_rate = row["plain_tokens_per_s"], row["trainer_tokens_per_s"]
        line = (
            f"{name:>14} {size:>10,} params  plain {plain_rate:8,.0f} tok/s  trainer {ours_rate:8,.0f} tok/s"
        )
        line += f"  ratio {row['trainer_over_plain']:.3f}"
        print(line, flush=True)
    document = {
        "benchmark": "train_throughput",
        "batch": BATCH,
        "block": BLOCK,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "results": rows,
    }
    print(json.dumps(document, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
