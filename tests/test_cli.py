"""End-to-end runs of the command line: two in a real process, the rest in-process (typer's runner)."""

import json
import shutil

import pytest

from cli_helpers import one_error_line, palimpsest, palimpsest_process

SMOKE = ["--steps", "4", "--batch-size", "4", "--vocab-size", "300", "--block-size", "32"]


def test_help_lists_the_commands():
    done = palimpsest_process("--help")
    assert done.returncode == 0
    for command in ("pretrain", "evaluate", "demo", "report"):
        assert command in done.stdout


def test_missing_config_is_one_line(tmp_path):
    line = one_error_line(  # in a real process: one line on stderr, exit 2, no traceback
        palimpsest_process("pretrain", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path))
    )
    assert "missing.yaml" in line


def test_unknown_config_key_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  learning_rte: 0.001\n")
    line = one_error_line(palimpsest("pretrain", "--config", str(config), "--out", str(tmp_path / "o")))
    assert "training.learning_rte" in line


def test_wrong_type_in_config_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  steps: many\n")
    assert "training.steps" in one_error_line(
        palimpsest("pretrain", "--config", str(config), "--out", str(tmp_path / "o"))
    )


def test_unknown_corpus_is_one_line(tmp_path):
    line = one_error_line(palimpsest("pretrain", "--corpus", "wiki-klingon", "--out", str(tmp_path), *SMOKE))
    assert "wiki-klingon" in line


def test_empty_corpus_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in one_error_line(
        palimpsest("pretrain", "--corpus", str(empty), "--out", str(tmp_path / "o"))
    )


def test_pretrain_then_evaluate_then_report(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 150\n  max_eval_blocks: 8\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    done = palimpsest("pretrain", "--config", str(config), "--out", str(out), "--tensorboard", *SMOKE)
    assert done.returncode == 0, done.stderr
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["objective"] == "clm" and results["metrics"]["steps"] == 4
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "report.md").is_file() and "data:image/png;base64" in (out / "report.html").read_text()
    assert "unigram" in done.stdout

    done = palimpsest("evaluate", "--model", str(out / "model"), "--block-size", "32", "--max-blocks", "8")
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout
    (tmp_path / "e.yaml").write_text("block_size: 32\nmax_blocks: 8\n")
    from_file = palimpsest("evaluate", "--model", out / "model", "--config", tmp_path / "e.yaml")
    assert from_file.stdout == done.stdout
    (tmp_path / "e.yaml").write_text("max_blocks: 0\n")
    assert "max_blocks" in one_error_line(
        palimpsest("evaluate", "--model", out / "model", "--config", tmp_path / "e.yaml")
    )

    done = palimpsest("report", str(out / "results.json"), "--out", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "Pretraining" in (tmp_path / "rep" / "report.md").read_text()


def test_evaluate_missing_model_is_one_line(tmp_path):
    assert "no saved model" in one_error_line(palimpsest("evaluate", "--model", str(tmp_path / "nothing")))


def test_report_of_missing_file_is_one_line(tmp_path):
    assert "not found" in one_error_line(palimpsest("report", str(tmp_path / "none.json")))


def test_demo_smoke_writes_report_and_results(demo_smoke, tmp_path):
    copied = tmp_path
    done, tmp_path = demo_smoke["demo"], demo_smoke["out"]
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "results.json").read_text())
    pretrained = [r for r in summary["results"] if r["kind"] == "pretrain"]
    assert [r["model"]["objective"] for r in pretrained] == ["clm", "clm"]  # the forgetting part's bodies
    assert {r["kind"] for r in summary["results"]} >= {"plasticity", "memory-study", "many-edits"}
    edited = next(r for r in summary["results"] if r["kind"] == "many-edits")
    assert {(row["mode"], row["edits"]) for row in edited["rows"]} == {
        ("at once", 1), ("at once", 4), ("in sequence", 4)
    }  # one edit, a batch at once and the batch in a sequence  # fmt: skip
    assert {row["edits"] for row in edited["rows"] if row["method"] == "constrained"} == {1}
    assert set(summary["timings"]) == {
        line.split("] ", 1)[1].split(": done in")[0]
        for line in done.stdout.splitlines()
        if ": done in" in line
    }  # output to a pipe: one line per stage with its time, where no progress bar is drawn
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Verdicts") < report.index("## Pretraining")  # the report opens with the table
    assert "What this run shows" in done.stdout
    assert (tmp_path / "report.html").is_file()
    copy = shutil.copytree(tmp_path, copied / "demo")  # the shared run stays as made
    again = palimpsest("demo", "--scale", "smoke", "--out", str(copy))  # finished runs are reused
    assert again.returncode == 0
    assert json.loads((copy / "results.json").read_text())["results"] == summary["results"]


@pytest.mark.slow
def test_demo_at_demo_scale_beats_the_unigram_baseline(tmp_path):
    done = palimpsest("demo", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for run in json.loads((tmp_path / "results.json").read_text())["results"]:
        if run["kind"] == "pretrain":
            assert run["metrics"]["validation_perplexity"] < 0.8 * run["metrics"]["unigram_perplexity"]


def test_relearning_pipeline_from_the_command_line(tmp_path):
    """pretrain (forgetting) -> adapt language -> adapt task -> assemble -> evaluate, as a user would."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 300\n  max_eval_blocks: 8\nmodel:\n  family: roberta\n  size: micro\n"
    )
    pre = tmp_path / "pre"
    done = palimpsest("pretrain", "--config", str(config), "--out", str(pre), "--forget-every", "2", *SMOKE)
    assert done.returncode == 0, done.stderr
    done = palimpsest(
        "adapt", "language", "--model", str(pre / "model"), "--corpus", "wiki-fr", "--tokens", "4k",
        "--vocab-size", "300", "--steps", "3", "--block-size", "32", "--batch-size", "4", "--eval-every", "3",
        "--out", str(tmp_path / "fr"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = palimpsest(
        "adapt", "task", "--model", str(pre / "model"), "--steps", "3", "--max-length", "32",
        "--batch-size", "4", "--out", str(tmp_path / "task"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assembled = tmp_path / "assembled"
    done = palimpsest(
        "assemble", "--task", str(tmp_path / "task" / "model"), "--language", str(tmp_path / "fr" / "model"),
        "--out", str(assembled),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = palimpsest("evaluate", "--model", str(assembled), "--corpus", "wiki-fr", "--block-size", "32")
    assert done.returncode == 0, done.stderr
    assert "topic accuracy" in done.stdout

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(assembled)
    tokenizer = AutoTokenizer.from_pretrained(assembled)
    logits = model(**tokenizer("Paris est la capitale de la France.", return_tensors="pt")).logits
    assert logits.shape == (1, 7)
    assert model.config.id2label[int(logits.argmax())] in {
        "People", "Geography", "History", "Arts", "Technology", "Philosophy and religion", "Mathematics",
    }  # fmt: skip


def test_bad_token_budget_is_one_line(tmp_path):
    arguments = ["adapt", "language", "--model", str(tmp_path), "--corpus", "wiki-fr", "--out", str(tmp_path)]
    line = one_error_line(palimpsest(*arguments, "--tokens", "lots"))
    assert "--tokens" in line


def test_unknown_scale_is_one_line(tmp_path):
    line = one_error_line(
        palimpsest("experiment", "plasticity", "--scale", "galactic", "--out", str(tmp_path))
    )
    assert "galactic" in line


def test_the_plasticity_study_of_a_decoder(tmp_path, demo_smoke):
    """``--family gpt2``: pretrained with next-token loss, relearned and classified as a decoder
    (the same run as the demo's forgetting part: the command reuses its units)."""
    line = one_error_line(
        palimpsest(
            "experiment", "plasticity", "--scale", "smoke", "--family", "bart", "--out", tmp_path / "x"
        )
    )
    assert "bart" in line and "gpt2" in line and not (tmp_path / "x").exists()
    done, out = demo_smoke["plasticity"], demo_smoke["out"] / "plasticity"
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["pretrain"]["model"]["family"] == "gpt2"
    config = json.loads((out / "pretrain-forgetting" / "model" / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    report = (out / "report.md").read_text()
    assert "next-token loss" in report and "Scale 'smoke, gpt2'" in report


@pytest.mark.parametrize("study", ["plasticity", "memory", "editing"])
def test_a_study_config_changes_fields_of_its_scale_and_names_bad_keys(tmp_path, study):
    config = tmp_path / "s.yaml"
    config.write_text("seedz: [0, 1]\n")
    line = one_error_line(
        palimpsest("experiment", study, "--scale", "smoke", "--config", config, "--out", tmp_path / "o")
    )
    assert "seedz" in line and not (tmp_path / "o").exists()


def test_a_scale_loads_from_yaml_on_top_of_a_named_one(tmp_path):
    from palimpsest.config import load_config
    from palimpsest.experiments.memory import SCALES

    config = tmp_path / "s.yaml"
    config.write_text("seeds: [3]\ntraining:\n  steps: 50\nmemory:\n  n_keys: 32\n")
    demo = SCALES["demo"]
    loaded = load_config(type(demo), config, base=demo)  # the library's sections merge key by key
    assert loaded.seeds == (3,) and loaded.training.steps == 50 and loaded.memory.n_keys == 32
    assert (
        loaded.training.batch_size == demo.training.batch_size and loaded.memory.layers == demo.memory.layers
    )
    assert loaded.data == demo.data


def test_memory_add_and_stats(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 150\n  max_eval_blocks: 8\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    done = palimpsest("pretrain", "--config", str(config), "--out", str(tmp_path / "pre"), *SMOKE)
    assert done.returncode == 0, done.stderr
    arguments = ["--layer", "1", "--n-keys", "16", "--heads", "2", "--k", "4", "--k-dim", "16"]
    pretrained = str(tmp_path / "pre" / "model")
    (tmp_path / "memory.yaml").write_text("layers: [0]\nn_keys: 8\nheads: 2\nk: 4\nk_dim: 16\n")
    done = palimpsest(  # the file's settings, the flag's layer
        "memory", "add", "--model", pretrained, "--out", tmp_path / "m", "--config", tmp_path / "memory.yaml",
        "--layer", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["palimpsest_memory"]
    assert saved["layers"] == [1] and saved["n_keys"] == 8 and saved["seed"] == 0
    done = palimpsest("memory", "add", "--model", pretrained, "--out", str(tmp_path / "m"), *arguments)
    assert done.returncode == 0, done.stderr
    assert "palimpsest_memory" in json.loads((tmp_path / "m" / "config.json").read_text())
    done = palimpsest(
        "memory", "stats", "--model", str(tmp_path / "m"), "--block-size", "32", "--max-blocks", "8",
        "--out", str(tmp_path / "stats"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "kl_counts" in done.stdout
    results = json.loads((tmp_path / "stats" / "results.json").read_text())
    assert set(results["layers"]) == {"transformer.h.1.mlp.memory"}
    assert (tmp_path / "stats" / "plots" / "memory-usage.png").is_file()
    adapter = palimpsest(
        "memory", "add", "--model", pretrained, "--out", str(tmp_path / "a"), "--no-merged", *arguments
    )
    assert adapter.returncode == 0 and (tmp_path / "a" / "memory.safetensors").is_file()
    line = one_error_line(palimpsest("memory", "stats", "--model", str(tmp_path / "pre" / "model")))
    assert "no product-key memory" in line


def test_memory_study_from_the_command_line(tmp_path, demo_smoke):
    done, out = demo_smoke["memory"], demo_smoke["out"] / "memory"
    assert done.returncode == 0, done.stderr
    assert "Kim & Jung" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "memory-study" and results["summary"]["arms"]
    report = (out / "report.md").read_text()
    assert "Grow: product-key memory" in report and "memory-study-recall.png" in report
    line = one_error_line(palimpsest("experiment", "memory", "--scale", "huge", "--out", str(tmp_path)))
    assert "huge" in line


def test_pretrain_with_memory_then_stats(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 150\n  max_eval_blocks: 8\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    out = tmp_path / "pre"
    arguments = ["pretrain", "--config", str(config), "--out", str(out), "--memory-layer", "1", *SMOKE]
    line = one_error_line(palimpsest(*arguments, "--memory-keys", "16"))  # 32 slots read of 16 keys
    assert "memory.k" in line
    done = palimpsest(*arguments, "--memory-keys", "32")
    assert done.returncode == 0, done.stderr
    done = palimpsest(
        "memory", "stats", "--model", str(out / "model"), "--block-size", "32", "--max-blocks", "4"
    )
    assert done.returncode == 0, done.stderr
    assert "kl_counts" in done.stdout


def test_edit_from_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 150\n  max_eval_blocks: 8\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    assert (
        palimpsest("pretrain", "--config", str(config), "--out", str(tmp_path / "pre"), *SMOKE).returncode
        == 0
    )
    facts = tmp_path / "edits.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Lyon"}\n'
        '{"subject": "Italy", "relation": "capital", "object": "Rome"}\n'
    )
    model = str(tmp_path / "pre" / "model")
    out = tmp_path / "edited"
    arguments = ["--facts", str(facts), "--out", str(out), "--steps", "3"]
    done = palimpsest("edit", "--model", model, "--method", "constrained", *arguments)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert 0 < results["steps"] <= 3 and results["max_abs_change"] > 0
    assert results["config"]["delta_units"] == "weight"  # the real-model defaults (bound: test_real_models)
    assert {"A_M", "A_F\\S", "efficacy"} <= set(results["after"])
    assert (out / "model" / "model.safetensors").is_file() and (out / "report.md").is_file()

    for name, text, expected in (
        ("broken.jsonl", '{"subject": "France", "relation": "capital"\n', "broken.jsonl:1: not valid JSON"),
        (
            "unknown.jsonl",
            '{"subject": "X", "relation": "anthem", "object": "a", "new_object": "b"}\n',
            "anthem",
        ),
        ("empty.jsonl", "\n", "holds no facts"),
    ):
        bad = tmp_path / name
        bad.write_text(text)
        target = tmp_path / f"out-{name}"
        line = one_error_line(palimpsest("edit", "--model", model, "--facts", str(bad), "--out", str(target)))
        assert expected in line
        assert not target.exists()  # nothing written, no partial model
    line = one_error_line(palimpsest("edit", "--model", model, "--facts", str(facts), "--norm", "l7"))
    assert "norm" in line


def test_editing_study_from_the_command_line(tmp_path, editing_smoke):
    done = editing_smoke["done"]
    assert done.returncode == 0, done.stderr
    assert "recalls" in done.stdout
    assert json.loads((editing_smoke["out"] / "results.json").read_text())["kind"] == "editing-study"
    line = one_error_line(palimpsest("experiment", "editing", "--scale", "vast", "--out", str(tmp_path)))
    assert "vast" in line
