import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from palimpsest.data import causal_eval_set, encode_blocks, split_corpus
from palimpsest.errors import ConfigError
from palimpsest.models import build_model
from palimpsest.training import TrainingConfig, evaluate_lm, last_complete_checkpoint, train
from torchrun_helper import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "train_micro.py"


@pytest.fixture(scope="module")
def blocks(wiki_small, tokenizer):
    split = split_corpus(wiki_small, 0.1)
    return encode_blocks(split.train, tokenizer, 32), causal_eval_set(
        encode_blocks(split.validation, tokenizer, 32)
    )


def test_causal_training_lowers_validation_loss(blocks, tokenizer, tmp_path):
    train_blocks, eval_set = blocks
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    before = evaluate_lm(model, eval_set)["loss"]
    config = TrainingConfig(steps=30, batch_size=8, learning_rate=3e-3, eval_every=15, save_every=30)
    result = train(model, tokenizer, train_blocks, config, tmp_path, objective="clm", eval_dataset=eval_set)
    after = evaluate_lm(model, eval_set)["loss"]
    assert after < before - 0.5
    assert result.steps == 30
    assert [step for step, _ in result.curve("eval_loss")] == [15, 30]
    assert (tmp_path / "checkpoint-30" / "model.safetensors").is_file()


def test_evaluation_is_deterministic(blocks, tokenizer):
    _, eval_set = blocks
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    assert evaluate_lm(model, eval_set) == evaluate_lm(model, eval_set)


def test_param_groups_get_their_own_lr_and_constant_schedule(blocks, tokenizer, tmp_path):
    from transformers import TrainerCallback

    train_blocks, _ = blocks
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    seen = {}

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen[state.global_step] = [(g.get("name"), g["lr"]) for g in optimizer.param_groups]

    def groups(m):
        return [{"params": [m.transformer.wte.weight], "lr": 0.05, "constant_lr": True, "name": "embeddings"}]

    config = TrainingConfig(steps=6, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, save_every=100)
    train(
        model,
        tokenizer,
        train_blocks,
        config,
        tmp_path,
        objective="clm",
        param_groups=groups,
        callbacks=[Probe()],
    )
    first, last = seen[1], seen[6]
    assert first[0] == ("embeddings", 0.05) and last[0] == ("embeddings", 0.05)
    assert last[1][1] < first[1][1]  # the default groups decay on the linear schedule
    claimed = sum(p.numel() for g in groups(model) for p in g["params"])
    assert claimed == model.transformer.wte.weight.numel()


def test_sequence_classification_trains_and_evaluates(wiki_small, tokenizer, tmp_path):
    from palimpsest.data import encode_classification
    from palimpsest.training import evaluate_classification

    names = sorted(set(wiki_small.labels))
    dataset = encode_classification(wiki_small, tokenizer, names, max_length=32)
    model = build_model("bert", "micro", tokenizer, task="classification", num_labels=len(names), seed=0)
    config = TrainingConfig(steps=20, batch_size=8, learning_rate=2e-3, save_every=100)
    before = evaluate_classification(model, dataset, tokenizer)
    train(model, tokenizer, dataset, config, tmp_path, objective="classification")
    after = evaluate_classification(model, dataset, tokenizer)
    assert after["examples"] == len(dataset)
    assert after["loss"] < before["loss"]


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, straight_micro_run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = straight_micro_run, tmp_path / "killed"
    crash = subprocess.run(
        [sys.executable, str(SCRIPT), str(killed), "--kill-after-save", "8"], env=env, capture_output=True
    )
    assert crash.returncode != 0  # it really died (SIGKILL) ...
    assert (killed / "checkpoint-8").is_dir() and not (killed / "final-rank0.json").exists()
    subprocess.run([sys.executable, str(SCRIPT), str(killed)], check=True, env=env, capture_output=True)
    a = json.loads((straight / "final-rank0.json").read_text())
    b = json.loads((killed / "final-rank0.json").read_text())
    assert a["weights"] == b["weights"]  # ... and came back bit for bit
    assert a["eval_loss"] == b["eval_loss"]


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_one_before(tmp_path, straight_micro_run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = straight_micro_run, tmp_path / "killed"
    crash = subprocess.run(
        [sys.executable, str(SCRIPT), str(killed), "--kill-during-save", "8"], env=env, capture_output=True
    )
    assert crash.returncode != 0
    torn = killed / "checkpoint-8"
    assert (torn / "model.safetensors").is_file() and not (torn / "trainer_state.json").exists()
    assert last_complete_checkpoint(killed) == str(killed / "checkpoint-4")
    again = subprocess.run(
        [sys.executable, str(SCRIPT), str(killed)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    a = json.loads((straight / "final-rank0.json").read_text())
    b = json.loads((killed / "final-rank0.json").read_text())
    assert a["weights"] == b["weights"] and a["eval_loss"] == b["eval_loss"]


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    done = torchrun("train_micro.py", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = json.loads((tmp_path / "final-rank0.json").read_text())
    rank1 = json.loads((tmp_path / "final-rank1.json").read_text())
    assert rank0["weights"] == rank1["weights"]
    assert torch.isfinite(torch.tensor(rank0["eval_loss"]))


def test_never_save_is_none(blocks, tokenizer, tmp_path):
    from palimpsest.training import make_training_arguments

    config = TrainingConfig(steps=2, batch_size=4, save_every=None, eval_every=None)
    arguments = make_training_arguments(config, tmp_path, has_eval=True)
    assert arguments.save_strategy == "no" and arguments.eval_strategy == "no"
    with pytest.raises(ConfigError, match="save_every"):
        TrainingConfig(save_every=0)


def test_a_batch_of_padded_facts_loses_only_columns_no_row_reads(tokenizer):
    from palimpsest.data.facts import CAPITAL, Fact
    from palimpsest.memory.learning import fact_examples
    from palimpsest.recall import PLAIN, PromptContext
    from palimpsest.training import LMCollator

    facts = [Fact("France", CAPITAL, "Paris"), Fact("Peru", CAPITAL, "Lima")]
    long_context = PromptContext(
        "after text", "The river rises in the hills north of the town and flows south."
    )
    rows = list(fact_examples(tokenizer, facts, causal=True, contexts=[PLAIN, long_context]))
    short = [row for row in rows if sum(row["attention_mask"]) < len(row["attention_mask"]) - 5]
    assert len(short) == 2  # the plain prompts
    padded = {
        key: torch.tensor([row[key] for row in short]) for key in ("input_ids", "attention_mask", "labels")
    }
    trimmed = LMCollator()(short)
    width = max(sum(row["attention_mask"]) for row in short)
    assert trimmed["input_ids"].shape == (2, width) < padded["input_ids"].shape
    model = build_model("gpt2", "tiny", tokenizer, dropout=0.0).eval()
    with torch.no_grad():
        full, cut = model(**padded), model(**trimmed)
    assert torch.allclose(full.loss, cut.loss, atol=1e-6)
    assert torch.allclose(full.logits[:, :width], cut.logits, atol=1e-5)
    assert set(LMCollator()(rows)) == {"input_ids", "attention_mask", "labels"}
    assert LMCollator()(rows)["input_ids"].shape[1] == len(rows[0]["input_ids"])  # a long row keeps them all
