"""Nothing silently wrong: a run knows what it is, checks come before writes, one writer per folder."""

import contextlib
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import one_error_line, palimpsest
from palimpsest.config import from_dict
from palimpsest.editing.config import EditConfig
from palimpsest.editing.datasets import read_edit_file
from palimpsest.errors import ConfigError, DataError
from palimpsest.evaluation import EvaluateConfig
from palimpsest.experiments.memory import MemoryScale
from palimpsest.memory import PKMConfig
from palimpsest.pretraining import PretrainConfig
from palimpsest.storage import OutputLock, check_output_folder

TINY = ["--steps", "2", "--batch-size", "4", "--vocab-size", "300", "--block-size", "32"]


@pytest.fixture
def tiny_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 120\n  max_eval_blocks: 4\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    return config


def test_a_rerun_with_other_settings_is_refused_then_replaced_on_request(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert palimpsest("pretrain", "--config", tiny_config, "--out", out, *TINY).returncode == 0
    first = (out / "results.json").read_text()
    other = [*TINY[:4], "--vocab-size", "280", *TINY[6:]]
    line = one_error_line(palimpsest("pretrain", "--config", tiny_config, "--out", out, *other))
    assert "other settings (data.vocab_size)" in line and "--overwrite" in line
    assert (out / "results.json").read_text() == first  # nothing was touched
    done = palimpsest("pretrain", "--config", tiny_config, "--out", out, *other, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "results.json").read_text())["config"]["data"]["vocab_size"] == 280
    assert json.loads((out / "tokenizer" / "tokenizer.json").read_text())  # a new tokenizer, not the old one
    again = palimpsest("pretrain", "--config", tiny_config, "--out", out, *other)  # the same run: resumed
    assert again.returncode == 0, again.stderr


def test_a_bad_corpus_fails_before_anything_is_written(tmp_path, tiny_config):
    out = tmp_path / "run"
    line = one_error_line(
        palimpsest("pretrain", "--config", tiny_config, "--out", out, "--corpus", "nope", *TINY)
    )
    assert "nope" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain", *TINY],
        ["evaluate", "--model", "smollm2-135m"],
        ["adapt", "language", "--model", "smollm2-135m", "--corpus", "wiki-fr"],
        ["adapt", "task", "--model", "smollm2-135m", "--corpus", "wiki-en"],
        ["assemble", "--task", "smollm2-135m", "--language", "smollm2-135m"],
        ["memory", "add", "--model", "smollm2-135m", "--layer", "1"],
        ["memory", "stats", "--model", "smollm2-135m"],
        ["edit", "--model", "smollm2-135m", "--facts", "RESULTS"],
        ["experiment", "plasticity", "--scale", "smoke"],
        ["experiment", "memory", "--scale", "smoke"],
        ["experiment", "editing", "--scale", "smoke"],
        ["demo", "--scale", "smoke"],
        ["report", "RESULTS"],
    ],
)
def test_an_out_that_is_a_file_is_one_line(tmp_path, command):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    results = tmp_path / "r.json"
    metrics = {"loss": 1.0, "perplexity": 2.7, "tokens": 3, "unigram_loss": 2.0, "unigram_perplexity": 7.4}
    results.write_text(
        json.dumps({"kind": "evaluate", "model": "m", "corpus": "c", "objective": "clm", "metrics": metrics})
    )
    command = [str(results) if part == "RESULTS" else part for part in command]
    line = one_error_line(palimpsest(*command, "--out", taken))
    assert "is a file, not a folder" in line
    assert taken.read_text() == "not a folder"


def test_one_writer_per_folder(tmp_path):
    folder = tmp_path / "out"
    with OutputLock(folder):
        assert json.loads((folder / OutputLock.NAME).read_text())["pid"] == os.getpid()
        (folder / OutputLock.NAME).write_text(str(os.getppid()))  # as if the parent process held it
        with pytest.raises(DataError, match=f"pid {os.getppid()}"):
            OutputLock(folder).__enter__()
        (folder / OutputLock.NAME).write_text(str(os.getpid()))
    assert not (folder / OutputLock.NAME).exists()
    (folder / OutputLock.NAME).write_text("999999999")  # left by a process that is gone
    with OutputLock(folder) as lock:
        assert lock.held


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    import socket

    folder = tmp_path / "out"
    folder.mkdir()
    parent = os.getppid()  # alive, but not the process that wrote the lock: another start time
    (folder / OutputLock.NAME).write_text(
        json.dumps({"pid": parent, "started": 1, "host": socket.gethostname()})
    )
    with OutputLock(folder) as lock:
        assert lock.held
    (folder / OutputLock.NAME).write_text(json.dumps({"pid": parent, "started": None, "host": "elsewhere"}))
    with pytest.raises(DataError, match="another palimpsest process"):  # a young lock of another host
        OutputLock(folder).__enter__()


def test_output_folder_checks_create_nothing(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        check_output_folder(tmp_path / "f" / "sub")


def test_files_that_are_not_utf8_are_one_line_naming_the_file(tmp_path):
    bad = b'{"kind": "evaluate"}\n\xff\xfe\n'
    for name, command in (
        ("c.yaml", ["pretrain", "--config", "FILE", *TINY]),
        ("facts.jsonl", ["edit", "--model", "smollm2-135m", "--facts", "FILE"]),
        ("r.json", ["report", "FILE"]),
    ):
        path = tmp_path / name
        path.write_bytes(bad)
        args = [str(path) if part == "FILE" else part for part in command]
        line = one_error_line(palimpsest(*args, "--out", tmp_path / f"out-{name}"))
        assert str(path) in line and ("UTF-8" in line or "JSON" in line), line
        assert not (tmp_path / f"out-{name}").exists()


def test_a_results_file_of_another_shape_is_one_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "evaluate", "model": "m"}))
    line = one_error_line(palimpsest("report", path, "--out", tmp_path / "rep"))
    assert str(path) in line and "missing key" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lr", "nan"], "finite"),
        (["--lr", "inf"], "finite"),
        (["--lr", "-1"], "learning_rate must be a positive number"),
        (["--block-size", "2"], "block_size must be at least 4"),
        (["--vocab-size", "0"], "vocab_size must be at least 32"),
        (["--steps", "0"], "steps must be positive"),
    ],
)
def test_values_out_of_range_are_refused_before_anything_is_written(tmp_path, tiny_config, flags, expected):
    out = tmp_path / "run"
    line = one_error_line(palimpsest("pretrain", "--config", tiny_config, "--out", out, *TINY, *flags))
    assert expected in line
    assert not out.exists()


def test_a_config_float_must_be_finite(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  learning_rate: .inf\n")
    line = one_error_line(palimpsest("pretrain", "--config", config, "--out", tmp_path / "o", *TINY))
    assert "training.learning_rate: expected a finite number" in line


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["edit", "--model", "smollm2-135m", "--facts", "FACTS", "--delta", "nan"], "finite"),
        (
            ["adapt", "task", "--model", "smollm2-135m", "--corpus", "wiki-en", "--max-length", "0"],
            "max_length",
        ),
    ],
)
def test_other_commands_check_values_first(tmp_path, command, expected):
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    )
    args = [str(facts) if part == "FACTS" else part for part in command]
    line = one_error_line(palimpsest(*args, "--out", tmp_path / "o"))
    assert expected in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["edit", "--model", "MODEL", "--facts", "FACTS"],
        ["memory", "add", "--model", "MODEL", "--layer", "1"],
        ["adapt", "language", "--model", "MODEL", "--corpus", "wiki-fr"],
        ["adapt", "task", "--model", "MODEL", "--corpus", "wiki-en"],
        ["assemble", "--task", "MODEL", "--language", "MODEL"],
        ["evaluate", "--model", "MODEL"],
    ],
)
@pytest.mark.parametrize("model", ["nope/model", "./nope", "no/such/folder"])
def test_a_missing_model_is_one_line_at_once_never_a_long_hub_wait(tmp_path, monkeypatch, command, model):
    from palimpsest import model_sources

    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: False)  # as on this machine
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    )
    args = [model if part == "MODEL" else str(facts) if part == "FACTS" else part for part in command]
    line = one_error_line(palimpsest(*args, "--out", tmp_path / "o"))
    assert "model at '" in line and model.removeprefix("./") in line, line
    assert not (tmp_path / "o").exists()


def test_an_owner_slash_name_is_a_hub_id_where_the_hub_answers(monkeypatch):
    from palimpsest import model_sources

    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: True)
    assert model_sources.locate_model("openai-community/gpt2") == "openai-community/gpt2"


# ----------------------------------------------------------------- properties of the parsers


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["data", "model", "training", "memory", "forgetting", "name", "steps", "vocab_size", "x"]
)


@pytest.mark.parametrize("cls", [PretrainConfig, EditConfig, PKMConfig, MemoryScale, EvaluateConfig])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=st.dictionaries(
        _keys, _values | st.dictionaries(st.text(max_size=12), _values, max_size=4), max_size=4
    )
)
def test_any_config_mapping_loads_or_is_a_config_error(cls, document):
    with contextlib.suppress(ConfigError):  # anything else (a TypeError, a KeyError) is a bug
        from_dict(cls, document)


_fields = st.sampled_from(["subject", "relation", "object", "new_object", "extra"])
_records = st.dictionaries(
    _fields,
    st.one_of(st.text(max_size=10), st.integers(), st.none(), st.sampled_from(["capital", "currency"])),
    max_size=5,
)
_lines = st.one_of(
    _records.map(json.dumps), st.text(max_size=20), st.binary(max_size=12).map(lambda b: b.decode("latin-1"))
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_lines, max_size=6))
def test_any_fact_file_reads_or_is_a_data_error_naming_it(tmp_path, lines):
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        read_edit_file(path)
    except DataError as error:
        assert str(path) in str(error) or "no fact file" in str(error)


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "run"
    done = palimpsest(
        "pretrain", "--corpus", "wiki-en", "--family", "gpt2", "--size", "micro", "--out", out, *TINY
    )
    assert done.returncode == 0, done.stderr
    return out / "model"


def test_corrupt_model_files_are_one_line(tmp_path, micro_model):
    import shutil

    for name, content in (
        ("model.safetensors", b""),
        ("model.safetensors", b"\x00" * 100),
        ("config.json", b"{bad"),
    ):
        model = tmp_path / "m"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(micro_model, model)
        (model / name).write_bytes(content)
        line = one_error_line(
            palimpsest("evaluate", "--model", model, "--block-size", "32", "--max-blocks", "2")
        )
        assert str(model) in line


def test_assemble_needs_a_classifier_and_a_language_model(tmp_path, micro_model):
    line = one_error_line(
        palimpsest("assemble", "--task", micro_model, "--language", micro_model, "--out", tmp_path / "a")
    )
    assert "is not a sequence classifier" in line
    assert not (tmp_path / "a").exists()


def test_a_fact_longer_than_the_model_is_one_line(tmp_path, micro_model):
    facts = tmp_path / "f.jsonl"
    subject = " ".join(["Very"] * 60) + " Land"
    facts.write_text(
        json.dumps({"subject": subject, "relation": "capital", "object": "Paris", "new_object": "Rome"})
    )
    line = one_error_line(
        palimpsest("edit", "--model", micro_model, "--facts", facts, "--out", tmp_path / "e")
    )
    assert "more than the model's 32 positions" in line
    assert not (tmp_path / "e").exists()


def test_memory_stats_needs_blocks(tmp_path, micro_model):
    line = one_error_line(palimpsest("memory", "stats", "--model", micro_model, "--max-blocks", "0"))
    assert "max_blocks must be positive" in line


@pytest.mark.parametrize(
    "args",
    [
        ["pretrain", "--steps", "x"],
        ["pretrain", "--bogus", "1"],
        ["nope"],
        ["memory"],
        ["edit", "--lr", "fast"],
    ],
)
def test_usage_errors_are_one_line_too(args):
    line = one_error_line(palimpsest(*args))
    assert line.startswith("error:") and "(see --help)" in line


def test_help_still_exits_zero():
    done = palimpsest("--help")
    assert done.returncode == 0 and "pretrain" in done.stdout


def test_a_command_refuses_a_folder_another_process_writes_to(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / OutputLock.NAME).write_text(str(os.getppid()))  # a live process (our parent) holds it
    line = one_error_line(palimpsest("experiment", "memory", "--scale", "smoke", "--out", out))
    assert f"pid {os.getppid()}" in line
    assert sorted(p.name for p in out.iterdir()) == [OutputLock.NAME]
