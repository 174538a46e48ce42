"""Probe: does a real pretrained body read embeddings relearned under it?

The plasticity study's control language, en-relearn (held-out English wiki text under a new
tokenizer and freshly drawn embeddings, the body frozen), on SmolLM2-135M instead of the study's
1M-parameter body. It answers "is the tiny body the reason nothing transfers at cpu scale?":
if a real body turned new embeddings into a useful model, and they landed near the original ones,
body scale would be the missing lever.

    python results/plasticity-real-control-probe/probe.py --steps 150 --learning-rate 2e-3
    python results/plasticity-real-control-probe/probe.py --steps 120 --learning-rate 5e-3 --init-std 0.136

Each run writes ``<out>/probe.json``: the relearning curve, the final validation loss beside the
new tokenizer's unigram loss on the same text, and the embedding alignment with the original
table (matched cosine, unrelated-pair cosine, linear-map retrieval).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from palimpsest.data import encode_blocks, lm_eval_set, load_tokenizer, unigram_baseline
from palimpsest.experiments.plasticity import SCALES, embedding_alignment, language_split
from palimpsest.forgetting.relearning import LanguageAdaptation, adapt_language, budget_texts
from palimpsest.models import resolve_pretrained
from palimpsest.training import TrainingConfig


def unigram_loss(split, adaptation: LanguageAdaptation, tokenizer) -> float:
    """What token frequencies alone score on the very blocks the relearned model was scored on
    (those :func:`adapt_language` builds): the floor a body that reads the new embeddings beats."""
    train_blocks = encode_blocks(
        budget_texts(split.train, adaptation.tokens), tokenizer, adaptation.block_size,
        max_tokens=adaptation.tokens,
    )  # fmt: skip
    eval_blocks = encode_blocks(split.validation, tokenizer, adaptation.block_size)
    eval_blocks = eval_blocks.select(range(min(adaptation.max_eval_blocks, len(eval_blocks))))
    return unigram_baseline(train_blocks, lm_eval_set(eval_blocks, tokenizer, "clm"), len(tokenizer)).loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--init-std", type=float, default=None)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/plasticity-real-control-probe"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = language_split("en-relearn", SCALES["cpu"])
    source = Path(resolve_pretrained("smollm2-135m"))
    adaptation = LanguageAdaptation(
        tokens=args.tokens, vocab_size=args.vocab_size, block_size=128, max_eval_blocks=32,
        init_std=args.init_std,
        training=TrainingConfig(
            steps=args.steps, learning_rate=args.learning_rate, batch_size=16,
            eval_every=max(args.steps // 8, 10), save_every=None, warmup_ratio=0.06,
        ),
    )  # fmt: skip
    out = args.out / f"lr{args.learning_rate}-std{args.init_std}-steps{args.steps}"
    start = time.time()
    result = adapt_language(str(source), split, adaptation, out)
    result["seconds"] = time.time() - start
    result["alignment"] = embedding_alignment(source, result["model_path"], lambda text: text)
    tokenizer = load_tokenizer(result["model_path"])
    result["unigram_loss"] = unigram_loss(split, adaptation, tokenizer)
    result["settings"] = vars(args) | {"out": str(args.out)}
    (out / "probe.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(
        json.dumps({k: result[k] for k in ("final_loss", "unigram_loss", "alignment", "seconds")}, indent=1)
    )


if __name__ == "__main__":
    main()
