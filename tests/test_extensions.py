"""One run, its extensions and its saved config: memory and forgetting recorded, re-run exactly."""

import json

import pytest
import torch
import yaml

from cli_helpers import one_error_line, palimpsest
from palimpsest.config import load_config, to_dict
from palimpsest.errors import ConfigError
from palimpsest.extensions import extension_classes
from palimpsest.forgetting.callback import ForgettingConfig
from palimpsest.forgetting.extension import ForgettingExtension
from palimpsest.memory import PKMConfig
from palimpsest.memory.extension import MemoryExtension
from palimpsest.pretraining import PretrainConfig, build_extensions, run_pretrain

SMALL_MEMORY = {"layers": [1], "n_keys": 16, "heads": 2, "k": 4, "k_dim": 16}
TINY_RUN = {
    "data": {"max_documents": 150, "max_eval_blocks": 8, "vocab_size": 300, "block_size": 32},
    "model": {"family": "gpt2", "size": "micro"},
    "training": {"steps": 6, "batch_size": 4, "eval_every": 3, "save_every": 3},
}


def test_the_spine_finds_both_pillars_by_entry_point():
    classes = extension_classes()
    assert classes["memory"] is MemoryExtension and classes["forgetting"] is ForgettingExtension


def test_sections_are_typed_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**TINY_RUN, "memory": SMALL_MEMORY, "forgetting": {"reset_every": 3}}))
    config = load_config(PretrainConfig, path)
    assert isinstance(config.extensions["memory"], PKMConfig) and config.extensions["memory"].n_keys == 16
    assert config.extensions["forgetting"] == ForgettingConfig(reset_every=3)
    written = to_dict(config)
    assert "extensions" not in written and written["memory"]["layers"] == [1]
    path.write_text(yaml.safe_dump(written))
    assert load_config(PretrainConfig, path) == config


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"memory": {"n_kees": 3}}, "memory.n_kees"),
        ({"forgetting": {"reset_every": "often"}}, "forgetting.reset_every"),
        ({"forgetting": {"reset_every": 0}}, "forgetting.reset_every"),
        ({"memroy": {}}, "memory (extension)"),
    ],
)
def test_bad_sections_name_the_key(tmp_path, section, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(PretrainConfig, path)


def test_seeds_are_resolved_and_a_passed_extension_must_agree():
    config = load_config(PretrainConfig, None, {"training.seed": 3, "forgetting.reset_every": 5})
    build_extensions(config, [MemoryExtension(PKMConfig(**SMALL_MEMORY), run_seed=3)])
    assert config.extensions["forgetting"].seed == 3 + 1000
    assert config.extensions["memory"].seed == 3 + 7
    again = load_config(PretrainConfig, None, {"memory.layers": [0]})
    with pytest.raises(ConfigError, match=r"differs from the config's 'memory' section.*layers"):
        build_extensions(again, [MemoryExtension(PKMConfig(**SMALL_MEMORY))])


def test_library_run_records_its_extensions_and_its_config_reruns_it(tmp_path):
    """A library call with extension objects writes a config.yaml that repeats the run exactly."""
    config = load_config(PretrainConfig, None, {})
    config = PretrainConfig(**{**vars(load_config(PretrainConfig, None, {})), **vars(_tiny())})
    first = run_pretrain(
        config,
        tmp_path / "a",
        extensions=[
            MemoryExtension(PKMConfig(**SMALL_MEMORY)),
            ForgettingExtension(ForgettingConfig(reset_every=3)),
        ],
    )
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["memory"]["layers"] == [1] and saved["memory"]["seed"] == 7
    assert saved["forgetting"] == {**to_dict(ForgettingConfig(reset_every=3)), "seed": 1000}
    assert first.config.extensions["forgetting"].reset_every == 3
    assert first.extensions["forgetting"]["resets_this_run"] == [3]
    assert any(key.endswith("/outdated") for key in first.extensions["memory"])

    second = run_pretrain(load_config(PretrainConfig, tmp_path / "a" / "config.yaml"), tmp_path / "b")
    assert second.metrics.validation_loss == first.metrics.validation_loss
    a = json.loads((tmp_path / "a" / "model" / "config.json").read_text())["palimpsest_memory"]
    b = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["palimpsest_memory"]
    assert a == b


def _tiny() -> PretrainConfig:
    from palimpsest.config import from_dict

    return from_dict(PretrainConfig, TINY_RUN)


def test_cli_pretrain_with_memory_and_forgetting_reruns_from_its_config(tmp_path):
    """The issue's case: the saved config records both; re-running it gives the same perplexity,
    and ``evaluate`` of the saved model gives the perplexity the run reported."""
    config = tmp_path / "c.yaml"
    small = {key: value for key, value in SMALL_MEMORY.items() if key != "layers"}
    config.write_text(yaml.safe_dump({"data": TINY_RUN["data"], "model": TINY_RUN["model"], "memory": small}))
    out = tmp_path / "run"
    flags = ["--steps", "40", "--batch-size", "4", "--memory-keys", "16"]
    done = palimpsest(
        "pretrain", "--config", config, "--out", out, "--memory-layer", "1", "--forget-every", "20", *flags
    )
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["memory"]["layers"] == [1] and saved["memory"]["n_keys"] == 16
    assert saved["forgetting"]["reset_every"] == 20 and saved["forgetting"]["seed"] == 1000
    reported = json.loads((out / "results.json").read_text())["metrics"]["validation_perplexity"]

    done = palimpsest("pretrain", "--config", out / "config.yaml", "--out", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    again = json.loads((tmp_path / "again" / "results.json").read_text())["metrics"]["validation_perplexity"]
    assert again == reported

    done = palimpsest("evaluate", "--model", out / "model", "--block-size", "32", "--max-blocks", "8")
    assert done.returncode == 0, done.stderr
    assert f"perplexity {reported:.2f}" in done.stdout


def test_refinement_flags_need_their_section(tmp_path):
    line = one_error_line(palimpsest("pretrain", "--out", tmp_path / "o", "--memory-mode", "replace"))
    assert "--memory-mode needs --memory-layer" in line
    line = one_error_line(palimpsest("pretrain", "--out", tmp_path / "o", "--no-episode-schedule"))
    assert "--episode-schedule needs --forget-every" in line
    assert not (tmp_path / "o").exists()


def test_training_with_an_extension_uses_its_groups_and_callbacks(tokenizer):
    from palimpsest.models import build_model

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    extension = MemoryExtension(PKMConfig(**SMALL_MEMORY, value_lr=5e-3))
    model = extension.prepare_model(model)
    (group,) = extension.param_groups(model)
    assert (
        group["lr"] == 5e-3
        and group["params"][0] is next(iter(model.palimpsest_memory.layers.values())).values.weight
    )
    assert extension.callbacks()[-1] is extension.usage  # after the FSDP check
    assert torch.equal(
        next(iter(model.palimpsest_memory.layers.values())).keys,
        next(iter(MemoryExtension(PKMConfig(**SMALL_MEMORY)).prepare_model(
            build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=5)
        ).palimpsest_memory.layers.values())).keys,
    )  # fmt: skip


def test_both_extensions_on_fsdp2_sharded_parameters(tmp_path):
    """Two gloo processes, parameters sharded by FSDP2: a reset draws the same embeddings as
    an unsharded one and restarts their (sharded) Adam moments; a memory's training step
    equals the unsharded step; sparse value updates are refused in one line."""
    from torchrun_helper import torchrun

    done = torchrun("fsdp_extensions.py", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["embeddings_sharded"] and result["memory_values_sharded"]
        assert result["local_rows"] < 300  # each rank holds a shard, not the whole table
        assert result["reset"] == ["roberta.embeddings.word_embeddings.weight"]
        assert result["embeddings_equal_unsharded_reset"] and result["embedding_moments_zero"]
        assert result["optimizer_states_reset"] == 1
        assert result["forgetting_largest_difference"] == 0.0
        assert result["memory_largest_difference"] < 1e-6
        assert "sparse_updates is not supported under FSDP" in result["sparse_refused"]
        assert result["gradient_buffer_reuse"] is False
