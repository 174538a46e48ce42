"""Train a micro masked LM through palimpsest.training.train; used by the resume and DDP tests.

usage: train_micro.py OUT [--kill-after-save STEP | --kill-during-save STEP] [--forget-every K]

Writes OUT/final-rank{R}.json with a hash of the final weights and the final eval loss.
With --kill-after-save the process SIGKILLs itself right after the checkpoint of STEP is
written, like a machine that dies mid-run; with --kill-during-save it dies while that
checkpoint is being written (after the weights, before the optimizer and trainer state).
With --forget-every, active forgetting runs
and the embeddings' hash right after each reset is recorded too.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from palimpsest.data import encode_blocks, fixed_mlm_eval_set, load_corpus, split_corpus, train_tokenizer
from palimpsest.forgetting import ActiveForgettingCallback, find_token_embeddings
from palimpsest.models import build_model
from palimpsest.training import TrainingConfig, evaluate_lm, train


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class HashAfterReset(TrainerCallback):
    """Runs after the forgetting callback in the same on_step_begin: sees fresh embeddings."""

    def __init__(self, every: int):
        self.every = every
        self.hashes: dict[int, str] = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step and state.global_step % self.every == 0:
            self.hashes[state.global_step] = weights_hash(find_token_embeddings(model))


def kill_during_save(step: int) -> None:
    """SIGKILL this process once the weights of checkpoint ``step`` are on disk, mid-checkpoint."""
    from transformers import Trainer

    save = Trainer._save_optimizer_and_scheduler

    def dying(self, output_dir):
        if Path(output_dir).name == f"checkpoint-{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, output_dir)

    Trainer._save_optimizer_and_scheduler = dying


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    out = Path(sys.argv[1])
    kill = int(sys.argv[sys.argv.index("--kill-after-save") + 1]) if "--kill-after-save" in sys.argv else None
    torch.set_num_threads(1)
    split = split_corpus(load_corpus("wiki-en", max_documents=120), 0.1)
    tokenizer = train_tokenizer(split.train.texts, 400)
    train_blocks = encode_blocks(split.train, tokenizer, 32)
    eval_set = fixed_mlm_eval_set(encode_blocks(split.validation, tokenizer, 32), tokenizer)
    model = build_model("roberta", "micro", tokenizer, max_positions=32, dropout=0.1, seed=0)
    config = TrainingConfig(
        steps=12, batch_size=4, learning_rate=1e-3, eval_every=6, save_every=4, log_every=2
    )
    callbacks: list[TrainerCallback] = [KillAfterSave(kill)] if kill is not None else []
    if "--kill-during-save" in sys.argv:
        kill_during_save(int(sys.argv[sys.argv.index("--kill-during-save") + 1]))
    groups, probe = None, None
    if "--forget-every" in sys.argv:
        every = int(sys.argv[sys.argv.index("--forget-every") + 1])
        forgetting = ActiveForgettingCallback(reset_every=every, seed=0)
        probe = HashAfterReset(every)
        callbacks += [forgetting, probe]
        groups = forgetting.param_groups
    train(
        model, tokenizer, train_blocks, config, out, objective="mlm", eval_dataset=eval_set,
        callbacks=callbacks, param_groups=groups,
    )  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))
    result = {"weights": weights_hash(model), "eval_loss": evaluate_lm(model, eval_set)["loss"]}
    if probe is not None:
        result["after_reset"] = probe.hashes
    (out / f"final-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
