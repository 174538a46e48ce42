"""Nothing lost: a command writes only into folders it owns, and knows its own run there."""

import errno
import json

import pytest

from cli_helpers import one_error_line, palimpsest
from palimpsest.errors import DataError, StorageError
from palimpsest.models import build_model, build_smollm2_like
from palimpsest.outputs import MANIFEST, OutputKind, claim_output
from palimpsest.storage import save_model

FACTS = (
    '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    '{"subject": "Peru", "relation": "capital", "object": "Lima"}\n'
)
OTHER_FACTS = '{"subject": "Spain", "relation": "capital", "object": "Madrid", "new_object": "Rome"}\n'
SMALL_MEMORY = ["--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """A tiny Llama (rotary positions) and a micro GPT-2 (32 learned positions), saved."""
    root = tmp_path_factory.mktemp("models")
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, root / "llama")
    gpt2 = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    save_model(gpt2, tokenizer, root / "gpt2")
    return root


def _with_foreign_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "old-run").mkdir(exist_ok=True)
    (folder / "old-run" / "weights.bin").write_bytes(b"precious")


def _foreign_intact(folder):
    return (folder / "notes.txt").read_text() == "my notes" and (
        folder / "old-run" / "weights.bin"
    ).read_bytes() == b"precious"


COMMANDS_WITH_OUT = [
    ["pretrain", "--corpus", "wiki-en"],
    ["evaluate", "--model", "MODEL"],
    ["adapt", "language", "--model", "MODEL", "--corpus", "wiki-fr"],
    ["adapt", "task", "--model", "MODEL"],
    ["assemble", "--task", "MODEL", "--language", "MODEL"],
    ["memory", "add", "--model", "MODEL"],
    ["memory", "learn", "--model", "MODEL", "--facts", "FACTS"],
    ["memory", "stats", "--model", "MODEL"],
    ["edit", "--model", "MODEL", "--facts", "FACTS"],
    ["experiment", "plasticity", "--scale", "smoke"],
    ["experiment", "memory", "--scale", "smoke"],
    ["experiment", "editing", "--scale", "smoke"],
    ["experiment", "knowledge", "--scale", "smoke"],
    ["demo", "--scale", "smoke"],
    ["report", "RESULTS"],
]


@pytest.mark.parametrize("command", COMMANDS_WITH_OUT, ids=lambda c: " ".join(c[:2]))
def test_a_folder_with_files_of_the_user_survives_every_command(tmp_path, models, command):
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    results = tmp_path / "r.json"
    document = {"kind": "adapt-task", "accuracy": 0.5, "loss": 1.0, "examples": 2}
    results.write_text(
        json.dumps({**document, "majority_baseline": 0.5, "train_seconds": 1.0, "model_path": "m"})
    )
    substitutes = {"MODEL": str(models / "llama"), "FACTS": str(facts), "RESULTS": str(results)}
    out = tmp_path / "mine"
    _with_foreign_files(out)
    line = one_error_line(palimpsest(*[substitutes.get(part, part) for part in command], "--out", out))
    assert "did not write" in line and "notes.txt" in line and "old-run/" in line
    assert _foreign_intact(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "old-run"]  # no lock, no manifest left


@pytest.mark.parametrize(
    ("owner", "command"),
    [
        ("pretrain", ["edit", "--model", "MODEL", "--facts", "FACTS"]),
        ("edit", ["pretrain", "--corpus", "wiki-en"]),
        ("memory add", ["memory", "add", "--model", "MODEL"]),  # another command's folder: model files
        ("memory learn", ["assemble", "--task", "MODEL", "--language", "MODEL"]),
    ],
)
def test_another_commands_output_is_refused_naming_it(tmp_path, models, owner, command):
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "results.json").write_text('{"kind": "something"}')
    (out / MANIFEST).write_text(json.dumps({"command": owner}))
    if owner == "memory add":
        (out / MANIFEST).write_text(json.dumps({"command": "assemble"}))
        owner = "assemble"
    substitutes = {"MODEL": str(models / "llama"), "FACTS": str(facts)}
    line = one_error_line(palimpsest(*[substitutes.get(part, part) for part in command], "--out", out))
    assert f"output of `palimpsest {owner}`" in line
    assert (out / "results.json").read_text() == '{"kind": "something"}'


def test_a_folder_written_before_manifests_is_recognised_by_its_results(tmp_path, models):
    out = tmp_path / "old-pretrain"
    out.mkdir()
    (out / "results.json").write_text('{"kind": "pretrain"}')
    (out / "model").mkdir()
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    line = one_error_line(palimpsest("edit", "--model", models / "llama", "--facts", facts, "--out", out))
    assert "output of `palimpsest pretrain`" in line


def test_rerunning_a_command_replaces_only_its_own_outputs(tmp_path, models):
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    out = tmp_path / "edit"
    arguments = ["edit", "--model", models / "llama", "--facts", facts, "--out", out, "--steps", "2"]
    assert palimpsest(*arguments).returncode == 0
    assert json.loads((out / MANIFEST).read_text())["command"] == "edit"
    done = palimpsest(*arguments)  # the same command again: its own outputs, replaced
    assert done.returncode == 0, done.stderr
    (out / "notes.txt").write_text("mine")
    line = one_error_line(palimpsest(*arguments))
    assert "notes.txt" in line and (out / "notes.txt").read_text() == "mine"


def test_memory_learn_with_other_facts_does_not_resume_another_run(tmp_path, models):
    with_memory = tmp_path / "with-memory"
    added = palimpsest("memory", "add", "--model", models / "llama", "--out", with_memory, *SMALL_MEMORY)
    assert added.returncode == 0, added.stderr
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(FACTS)
    second.write_text(OTHER_FACTS)
    out = tmp_path / "learned"
    learn = ["memory", "learn", "--model", with_memory, "--out", out, "--steps", "2"]
    assert palimpsest(*learn, "--facts", first).returncode == 0
    saved = (out / "model" / "model.safetensors").read_bytes()
    line = one_error_line(palimpsest(*learn, "--facts", second))
    assert "another `palimpsest memory learn` run" in line and "facts" in line and "--overwrite" in line
    assert (out / "model" / "model.safetensors").read_bytes() == saved
    done = palimpsest(*learn, "--facts", second, "--overwrite")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["facts"] == 1 and results["kept_facts"] == 0 and results["learned"]["steps"] == 2


def test_adapting_to_another_language_in_the_same_folder_is_refused(tmp_path, models):
    out = tmp_path / "adapted"
    adapt = ["adapt", "language", "--model", models / "gpt2", "--out", out, "--steps", "2", "--tokens", "5k"]
    adapt += ["--vocab-size", "300", "--block-size", "32", "--eval-every", "1"]
    done = palimpsest(*adapt, "--corpus", "wiki-fr")
    assert done.returncode == 0, done.stderr
    line = one_error_line(palimpsest(*adapt, "--corpus", "wiki-es"))
    assert "another `palimpsest adapt language` run" in line and "corpus" in line
    report = palimpsest("report", out / "results.json", "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr  # palimpsest report reads what adapt writes


def test_claims_are_checked_before_anything_is_written(tmp_path):
    kind = OutputKind("edit", ("model", "results.json"))
    assert claim_output(tmp_path / "new", kind).existing is False
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model").mkdir()
    (tmp_path / "mine" / MANIFEST).write_text('{"command": "edit", "identity": {"a": 1}}')
    claim = claim_output(tmp_path / "mine", kind)
    assert claim.existing and claim.previous_identity == {"a": 1}
    with pytest.raises(DataError, match=r"other a"):
        claim.same_run({"a": 2}, overwrite=False)
    assert claim.same_run({"a": 2}, overwrite=True) is False
    assert json.loads((tmp_path / "mine" / MANIFEST).read_text())["identity"] == {"a": 2}


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_model(tmp_path, models, monkeypatch):
    from transformers import PreTrainedModel

    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    out = tmp_path / "edit"
    arguments = ["edit", "--model", models / "llama", "--facts", facts, "--out", out, "--steps", "2"]
    assert palimpsest(*arguments).returncode == 0
    saved = (out / "model" / "model.safetensors").read_bytes()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    line = one_error_line(palimpsest(*arguments))
    assert "No space left on device" in line and "previous model is intact" in line
    assert (out / "model" / "model.safetensors").read_bytes() == saved
    assert not any(p.name.endswith((".partial", ".previous")) for p in out.iterdir())


def test_a_serializer_reporting_a_full_disk_is_a_storage_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    class Model:
        def save_pretrained(self, path):
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, message: "No space left" })'
            )

    with pytest.raises(StorageError, match="no model was written"):
        save_model(Model(), None, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("command", "target", "says"),
    [
        (
            ["edit", "--model", "MODEL", "--facts", "FACTS"],
            "palimpsest.editing.run.edit_saved_model",
            "unchanged",
        ),
        (
            ["memory", "learn", "--model", "MODEL", "--facts", "FACTS"],
            "palimpsest.memory.learning.learn_saved_model",
            "resume",
        ),
    ],
)
def test_an_interruption_says_what_is_true_for_the_command(
    tmp_path, models, monkeypatch, command, target, says
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    facts = tmp_path / "f.jsonl"
    facts.write_text(FACTS)
    substitutes = {"MODEL": str(models / "llama"), "FACTS": str(facts)}
    done = palimpsest(*[substitutes.get(part, part) for part in command], "--out", tmp_path / "o")
    assert done.returncode == 130
    assert says in done.stderr


def test_a_model_saved_and_replaced_keeps_the_folders_manifest(tmp_path, tokenizer):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MANIFEST).write_text('{"command": "memory add"}')
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=2, seed=0), tokenizer, folder)
    assert json.loads((folder / MANIFEST).read_text()) == {"command": "memory add"}
    assert (folder / "model.safetensors").is_file()


def test_a_unit_of_other_settings_never_continues_anothers_checkpoint(tmp_path):
    from palimpsest.storage import resumable

    work = tmp_path / "unit" / "trainer"

    def interrupted():
        (work / "checkpoint-5").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resumable(tmp_path / "unit" / "result.json", {"steps": 10}, interrupted, workdir=work)
    seen = []

    def compute():
        seen.append(sorted(p.name for p in work.iterdir() if not p.name.startswith(".")))
        return 1

    resumable(tmp_path / "unit" / "result.json", {"steps": 10}, compute, workdir=work)
    assert seen[-1] == ["checkpoint-5"]  # the same unit resumes its own checkpoint
    resumable(tmp_path / "unit" / "result.json", {"steps": 20}, compute, workdir=work)
    assert seen[-1] == []  # another unit starts over


def test_a_study_folder_trains_its_tokenizer_again_for_other_data(tmp_path):
    from dataclasses import replace

    from palimpsest.data.facts import CAPITAL, Fact
    from palimpsest.experiments.common import fact_mixture
    from palimpsest.pretraining import DataConfig

    facts = [Fact("France", CAPITAL, "Paris")]
    data = DataConfig(max_documents=40, vocab_size=300, block_size=32, max_eval_blocks=2)
    first = fact_mixture(facts, tmp_path, data, objective="clm")
    again = fact_mixture(facts, tmp_path, data, objective="clm")
    assert len(first.tokenizer) == len(again.tokenizer) == 300
    other = fact_mixture(facts, tmp_path, replace(data, vocab_size=280), objective="clm")
    assert len(other.tokenizer) == 280


def test_a_full_disk_while_training_is_one_line(tmp_path, monkeypatch):
    from safetensors import SafetensorError
    from transformers import Trainer

    def full_disk(self, *args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left" })')

    monkeypatch.setattr(Trainer, "train", full_disk)
    tiny = ["--family", "gpt2", "--size", "micro", "--steps", "2", "--batch-size", "4", "--vocab-size", "300"]
    line = one_error_line(palimpsest("pretrain", "--corpus", "wiki-en", *tiny, "--block-size", "32",
                                     "--out", tmp_path / "run"))  # fmt: skip
    assert "cannot write a checkpoint" in line and "run the same command again" in line
