"""The front door (``import palimpsest as ps``): each common job in one call, lazily imported."""

import subprocess
import sys

import pytest
import torch

import palimpsest as ps
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditor
from palimpsest.errors import ConfigError, DataError, ModelError, StorageError
from palimpsest.models import build_model, build_smollm2_like

SMALL_MEMORY = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16}
FAST_MEMIT = {"layers": [1, 2], "statistics_tokens": 2000, "target_steps": 3, "context_passages": 1}
IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def test_import_palimpsest_reads_no_pillar_until_a_job_is_asked_for():
    code = (
        "import sys, palimpsest\n"
        "print(sorted(m for m in ('palimpsest.api', 'palimpsest.memory', 'palimpsest.editing',"
        " 'palimpsest.forgetting') if m in sys.modules))\n"
        "palimpsest.request\n"
        "print('palimpsest.api' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True"]


def test_a_name_the_front_door_lacks_is_an_attribute_error():
    with pytest.raises(AttributeError):
        _ = ps.no_such_job


def test_load_save_add_and_remove_a_memory(tmp_path, tokenizer):
    base = build_smollm2_like(tokenizer, hidden=24, layers=3, seed=0).eval()
    ps.save(base, tokenizer, tmp_path / "base")
    model, loaded_tokenizer = ps.load(tmp_path / "base")
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    model.eval()
    with torch.no_grad():
        before = model(IDS).logits
        ps.add_memory(model, layers=[1], seed=0, **SMALL_MEMORY)
        for name, parameter in model.named_parameters():  # non-zero values: the memory changes outputs
            if name.endswith("values.weight"):
                parameter.normal_(0, 1)
        with_memory = model(IDS).logits
    assert not torch.equal(before, with_memory)
    ps.save(model, tokenizer, tmp_path / "with-memory")
    again, _ = ps.load(tmp_path / "with-memory")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(IDS).logits, with_memory)
        ps.remove_memory(model)
        assert torch.equal(model(IDS).logits, before)
    with pytest.raises(ModelError):
        ps.remove_memory(model)
    with pytest.raises(ConfigError):
        ps.add_memory(model, ps.PKMConfig(layers=[1]), seed=0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own file")
    with pytest.raises(StorageError, match="holds no saved model"):
        ps.save(model, tokenizer, mine)
    assert (mine / "notes.txt").read_text() == "a user's own file"  # nothing of it replaced


def test_edit_auto_runs_memit_on_a_causal_lm_and_undoes_exactly(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0).eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    requests = [
        ps.request("France", "capital", "Paris", "Rome"),
        ps.request("Peru", "capital", "Lima", "Oslo"),
    ]
    editor = ps.edit(model, tokenizer, requests, **FAST_MEMIT)
    assert isinstance(editor, BatchEditor) and editor.config.method == "memit"
    assert any(not torch.equal(p, original[n]) for n, p in model.named_parameters())
    editor.undo()
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_edit_auto_runs_the_constrained_editor_on_a_masked_lm(tokenizer):
    model = build_model("bert", "micro", tokenizer, dropout=0.0, seed=0).eval()
    editor = ps.edit(model, tokenizer, [ps.request("France", "capital", "Paris", "Rome")], steps=2)
    assert isinstance(editor, ConstrainedFinetune)
    editor.undo()


def test_the_front_door_refuses_what_cannot_run(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    with pytest.raises(ConfigError, match="unknown method"):
        ps.edit(model, tokenizer, [ps.request("France", "capital", "Paris", "Rome")], method="rome")
    with pytest.raises(DataError, match="no requests"):
        ps.edit(model, tokenizer, [])
    with pytest.raises(DataError, match="unknown relation 'capitol'"):
        ps.request("France", "capitol", "Paris", "Rome")
