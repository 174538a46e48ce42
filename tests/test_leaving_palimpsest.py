"""Nothing silently wrong outside palimpsest: what it saves loads whole or is refused loudly,
and a model folder is untrusted input (no code run from it, no pickle read)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from cli_helpers import one_error_line, palimpsest, palimpsest_process
from palimpsest.errors import ModelError
from palimpsest.memory import PKMConfig, add_product_key_memory, save_merged
from palimpsest.models import build_model, build_smollm2_like, load_pretrained
from palimpsest.storage import save_model

SMALL = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16}


def _plain_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that never imports palimpsest (as lm-eval or vLLM would)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def memory_model(tmp_path_factory, tokenizer):
    """A Llama with a residual memory (non-zero values, so the memory changes every output)."""
    folder = tmp_path_factory.mktemp("memory") / "model"
    model = build_smollm2_like(tokenizer, hidden=24, layers=3, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], seed=0, **SMALL))
    model.eval()
    save_merged(model, tokenizer, folder)
    return folder, model


IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def test_plain_transformers_refuses_a_memory_model_without_palimpsest(memory_model):
    folder, _ = memory_model
    done = _plain_python(
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
    )
    assert done.returncode != 0
    assert "model type `palimpsest`" in done.stderr
    assert json.loads((folder / "config.json").read_text())["base_model_type"] == "llama"


def test_after_import_palimpsest_auto_classes_load_the_memory_exactly(memory_model):
    folder, model = memory_model
    done = _plain_python(
        "import palimpsest, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"print(sorted(n for n, _ in model.named_parameters() if '.memory.' in n)[0])\n"
        f"torch.save(model(torch.tensor({IDS.tolist()})).logits, {str(folder.parent / 'logits.pt')!r})\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlp.memory." in done.stdout
    with torch.no_grad():
        expected = model(IDS).logits
    assert torch.equal(torch.load(folder.parent / "logits.pt"), expected)  # identical, not close


def test_pipeline_generates_with_the_memory(memory_model, tokenizer):
    from transformers import pipeline

    folder, model = memory_model
    generator = pipeline("text-generation", model=str(folder))
    assert any(".memory." in name for name, _ in generator.model.named_parameters())
    text = "The capital of France is"
    produced = generator(text, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert produced.strip() == tokenizer.decode(expected[0], skip_special_tokens=True).strip()


def test_from_pretrained_settings_palimpsest_cannot_apply_are_refused(memory_model):
    from transformers import AutoModelForCausalLM

    folder, _ = memory_model
    with pytest.raises(ValueError, match="quantization_config"):
        AutoModelForCausalLM.from_pretrained(str(folder), quantization_config={"load_in_8bit": True})
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_a_memory_taken_out_saves_a_plain_model_again(tmp_path, tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=2, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[0], **SMALL)).palimpsest_memory.remove()
    save_model(model, tokenizer, tmp_path / "plain")
    document = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert document["model_type"] == "llama" and "palimpsest_memory" not in document


def test_an_edited_model_keeps_loading_everywhere(tmp_path, tokenizer):
    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    )
    done = palimpsest("edit", "--model", base, "--facts", facts, "--out", tmp_path / "e", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e" / "model" / "config.json").read_text())["model_type"] == "llama"


def _untrusted_copy(source, target):
    shutil.copytree(source, target)
    (target / "evil.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('code from the folder ran')\n"
        "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (target / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("command", [["evaluate", "--model"], ["memory", "stats", "--model"]])
def test_a_folder_asking_to_run_its_code_runs_nothing_even_with_yes_on_stdin(tmp_path, tokenizer, command):
    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=2, seed=0), tokenizer, base)
    folder = tmp_path / "untrusted"
    _untrusted_copy(base, folder)
    done = subprocess.run(
        [sys.executable, "-m", "palimpsest.cli", *command, str(folder)],
        input="y\n" * 20, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "auto_map" in done.stderr and "never runs code" in done.stderr
    assert "Traceback" not in done.stderr and "[y/N]" not in done.stdout + done.stderr
    assert not (folder / "RAN").exists()
    with pytest.raises(ModelError, match="auto_map"):
        load_pretrained(str(folder))
    assert not (folder / "RAN").exists()


def test_a_pickle_only_folder_is_refused_naming_the_file(tmp_path, tokenizer):
    folder = tmp_path / "pickled"
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    save_model(model, tokenizer, folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    line = one_error_line(palimpsest("evaluate", "--model", folder))
    assert "pytorch_model.bin" in line and "pickle" in line and "save_pretrained" in line


def test_a_config_of_the_wrong_shape_is_one_line(tmp_path, tokenizer):
    base = tmp_path / "base"
    save_model(build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0), tokenizer, base)
    for change, expected in (
        ({"architectures": 3}, "architectures"),
        ({"n_embd": 32}, "cannot load model"),  # a shape its weights do not have
        ({"model_type": None}, "model_type"),
    ):
        folder = tmp_path / f"bad-{next(iter(change))}"
        shutil.copytree(base, folder)
        config = {**json.loads((folder / "config.json").read_text()), **change}
        (folder / "config.json").write_text(json.dumps(config))
        line = one_error_line(palimpsest("evaluate", "--model", folder, "--max-blocks", "2"))
        assert expected in line, line


def test_the_command_line_loads_a_memory_model_it_saved(memory_model):
    folder, _ = memory_model
    done = palimpsest_process("memory", "stats", "--model", str(folder), "--max-blocks", "2")
    assert done.returncode == 0, done.stderr
