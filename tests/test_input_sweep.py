"""Every input is one line and exit 2, or works: a sweep generated from the commands' own options,
and the cases a new user hit (each once a traceback, a silent acceptance or lost work)."""

from __future__ import annotations

import inspect
import json
import typing

import pytest
import typer.main

from cli_helpers import one_error_line, palimpsest
from palimpsest.cli import app
from palimpsest.models import build_model, build_smollm2_like
from palimpsest.storage import save_model

FACTS = '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'

#: Values no numeric option accepts (out of range, non-finite, or not a number at all).
BAD_INTEGERS = ["-1", "99999999999999999999999", "nan", "1.5", "abc"]
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "1e400", "abc"]
#: Numeric options where a negative number or zero has a meaning (none today).
SIGNED: set[tuple[str, str]] = set()
#: Flags whose config key has another name.
CONFIG_NAMES = {"--lr": "learning_rate", "--forget-every": "reset_every", "--memory-keys": "n_keys"}


def _commands():
    """(command words, {option: bare type}) for every command, read from the app itself."""

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, child in command.commands.items():
                yield from walk(child, [*path, name])
        else:
            yield path, command

    for path, command in walk(typer.main.get_command(app), []):
        signature = inspect.signature(command.callback, eval_str=True)
        numeric = {}
        for name, parameter in signature.parameters.items():
            base = typing.get_args(parameter.annotation)[0]
            kinds = [t for t in typing.get_args(base) or (base,) if t is not type(None)]
            if kinds and kinds[0] in (int, float):
                numeric["--" + name.replace("_", "-")] = kinds[0]
        yield path, numeric


COMMANDS = list(_commands())
#: How each command is pointed at inputs; MODEL / FACTS / OUT are filled in per test.
INPUTS = {
    "pretrain": ["--corpus", "CORPUS", "--out", "OUT", "--family", "gpt2", "--size", "micro"],
    "evaluate": ["--model", "MODEL"],
    "assemble": ["--task", "MODEL", "--language", "MODEL", "--out", "OUT"],
    "edit": ["--model", "MODEL", "--facts", "FACTS", "--out", "OUT"],
    "demo": ["--scale", "smoke", "--out", "OUT"],
    "report": ["RESULTS", "--out", "OUT"],
    "adapt language": ["--model", "MODEL", "--corpus", "CORPUS", "--out", "OUT"],
    "adapt task": ["--model", "MODEL", "--corpus", "CORPUS", "--out", "OUT"],
    "memory add": ["--model", "MODEL", "--out", "OUT"],
    "memory learn": ["--model", "MODEL", "--facts", "FACTS", "--out", "OUT"],
    "memory stats": ["--model", "MODEL"],
    "memory forget": ["--model", "MODEL", "--facts", "FACTS", "--out", "OUT"],
    "memory list": ["--model", "MODEL"],
    "experiment plasticity": ["--scale", "smoke", "--out", "OUT"],
    "experiment memory": ["--scale", "smoke", "--out", "OUT"],
    "experiment editing": ["--scale", "smoke", "--out", "OUT"],
    "experiment knowledge": ["--scale", "smoke", "--out", "OUT"],
    "experiment many-edits": ["--scale", "smoke", "--out", "OUT"],
}
CASES = [
    (" ".join(path), option, value)
    for path, numeric in COMMANDS
    for option, kind in numeric.items()
    for value in (BAD_INTEGERS if kind is int else BAD_FLOATS)
    if (" ".join(path), option) not in SIGNED
]


def test_the_sweep_covers_every_command():
    assert {" ".join(path) for path, _ in COMMANDS} == set(INPUTS)
    assert len(CASES) > 150


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("inputs")
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=3, seed=0), tokenizer, root / "model")
    (root / "facts.jsonl").write_text(FACTS)
    (root / "corpus.txt").write_text("A small corpus of words.\nAnother line of text here.\n" * 20)
    (root / "results.json").write_text('{"kind": "evaluate"}')
    return root


@pytest.mark.parametrize(("command", "option", "value"), CASES)
def test_a_bad_number_in_any_option_is_one_line_before_any_work(tmp_path, inputs, command, option, value):
    files = {"MODEL": "model", "FACTS": "facts.jsonl", "CORPUS": "corpus.txt", "RESULTS": "results.json"}
    fill = {"OUT": str(tmp_path / "out"), **{key: str(inputs / name) for key, name in files.items()}}
    arguments = [fill.get(part, part) for part in INPUTS[command]]
    line = one_error_line(palimpsest(*command.split(), *arguments, f"{option}={value}"))
    names = {option, option.lstrip("-").replace("-", "_"), CONFIG_NAMES.get(option, option)}
    assert any(name in line for name in names), line  # the refusal is about this option
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ----------------------------------------------------------------- the cases users hit


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tokenizer):
    """A micro GPT-2 with 32 learned positions (the default blocks of 128 do not fit it)."""
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    save_model(build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0), tokenizer, folder)
    return folder


def test_default_block_sizes_fit_a_model_with_fewer_positions(tmp_path, gpt2):
    done = palimpsest("evaluate", "--model", gpt2, "--max-blocks", "2", "--out", tmp_path / "e")
    assert done.returncode == 0, done.stderr
    assert "more than the model's 32 positions: using 32" in " ".join(done.stderr.split())
    added = palimpsest("memory", "add", "--model", gpt2, "--out", tmp_path / "m", "--n-keys", "8", "--k", "4")
    assert added.returncode == 0, added.stderr
    stats = palimpsest("memory", "stats", "--model", tmp_path / "m", "--max-blocks", "2")
    assert stats.returncode == 0, stats.stderr
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    learn = ["memory", "learn", "--model", tmp_path / "m", "--facts", facts, "--out", tmp_path / "l"]
    done = palimpsest(*learn, "--sparse-top-t", "4", "--steps", "1")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("document", "expected"),
    [("3", "not a palimpsest results file"), ("null", "not a palimpsest results file"),
     ('{"results": null}', "must be a list"), ('{"results": [3]}', "unknown results kind"),
     ('{"kind": "evaluate", "model": "m", "metrics": null}', "missing key")],
)  # fmt: skip
def test_a_malformed_results_file_is_one_line(tmp_path, document, expected):
    path = tmp_path / "r.json"
    path.write_text(document)
    assert expected in one_error_line(palimpsest("report", path, "--out", tmp_path / "rep"))


def test_a_huge_vocabulary_is_one_line_from_flags_and_yaml(tmp_path):
    line = one_error_line(palimpsest("pretrain", "--vocab-size", "10000000000", "--out", tmp_path / "a"))
    assert "vocab_size must be at most" in line
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  vocab_size: 1000000000000000000000000000000\n")
    assert "out of range" in one_error_line(
        palimpsest("pretrain", "--config", config, "--out", tmp_path / "b")
    )


@pytest.mark.parametrize("tokens", ["inf", "nan", "-5", "1e30"])
def test_a_token_budget_must_be_a_finite_count(tmp_path, gpt2, tokens):
    line = one_error_line(
        palimpsest("adapt", "language", "--model", gpt2, "--corpus", "wiki-fr", "--out", tmp_path / "a",
                   "--tokens", tokens)
    )  # fmt: skip
    assert "--tokens" in line


def test_a_key_given_twice_in_yaml_is_refused_naming_both_lines(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  steps: 5\n  learning_rate: 0.001\n  steps: 50\n")
    line = one_error_line(palimpsest("pretrain", "--config", config, "--out", tmp_path / "o"))
    assert "'steps' is given twice (lines 2 and 4)" in line


@pytest.mark.parametrize(
    ("lines", "expected"),
    [([FACTS, FACTS], "repeats line 1"),
     (['{"subject": "X", "relation": {"name": "r", "templates": [3]}, "object": "Y", "new_object": "Z"}\n'],
      "must be strings")],
)  # fmt: skip
def test_fact_files_that_would_count_wrongly_are_one_line(tmp_path, lines, expected):
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(lines))
    line = one_error_line(
        palimpsest("edit", "--model", "smollm2-135m", "--facts", facts, "--out", tmp_path / "o")
    )
    assert expected in line


def test_a_binary_file_is_no_corpus(tmp_path, gpt2):
    image = tmp_path / "picture.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    line = one_error_line(palimpsest("evaluate", "--model", gpt2, "--corpus", image))
    assert "binary file" in line


def test_an_hf_corpus_offline_is_one_line(tmp_path, monkeypatch):
    from palimpsest import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: False)
    done = palimpsest("pretrain", "--corpus", "hf:someone/corpus", "--out", tmp_path / "o")
    assert "cannot be reached" in one_error_line(done)


def test_norm_none_is_unconstrained_fine_tuning_as_the_help_says(tmp_path, inputs):
    out = tmp_path / "e"
    done = palimpsest("edit", "--model", inputs / "model", "--facts", inputs / "facts.jsonl", "--out", out,
                      "--norm", "none", "--steps", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "results.json").read_text())["config"]["norm"] is None


def test_an_edit_of_the_last_block_at_the_subject_moves_nothing_and_is_refused(tmp_path, inputs):
    arguments = ["edit", "--model", inputs / "model", "--facts", inputs / "facts.jsonl", "--steps", "2"]
    line = one_error_line(palimpsest(*arguments, "--layers", "last", "--out", tmp_path / "a"))
    assert "can move nothing" in line and "block 2 (the last)" in line
    assert not (tmp_path / "a").exists()
    done = palimpsest(*arguments, "--layers", "1", "--out", tmp_path / "b")  # an earlier block: it moves
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "b" / "results.json").read_text())["max_abs_change"] > 0
