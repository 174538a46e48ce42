from dataclasses import dataclass, field
from pathlib import Path

import pytest

from palimpsest.config import from_dict, load_config, to_dict
from palimpsest.errors import ConfigError
from palimpsest.pretraining import PretrainConfig


@dataclass
class Inner:
    rate: float = 1.0
    name: str = "x"
    layers: list[int] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False
    note: str | None = None


def test_nested_values_are_typed():
    config = from_dict(Outer, {"inner": {"rate": 2, "layers": [1, 2]}, "steps": 5.0, "note": None})
    assert config.inner.rate == 2.0 and isinstance(config.inner.rate, float)
    assert config.inner.layers == [1, 2]
    assert config.steps == 5 and isinstance(config.steps, int)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"stepz": 3}, "stepz"),
        ({"inner": {"rte": 1.0}}, "inner.rte"),
        ({"steps": "ten"}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"flag": "yes"}, "flag"),
        ({"inner": {"layers": [1, "a"]}}, "inner.layers[1]"),
        ({"inner": 3}, "inner"),
    ],
)
def test_errors_name_the_key(data, named):
    with pytest.raises(ConfigError, match=r"\b" + named.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


def test_yaml_scientific_notation_string_is_a_float(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1e-3\n")
    assert load_config(PretrainConfig, path).training.learning_rate == pytest.approx(1e-3)


def test_flags_override_file_and_none_keeps_file_value(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  steps: 7\n  seed: 3\nmodel:\n  family: gpt2\n")
    config = load_config(PretrainConfig, path, {"training.steps": 9, "training.seed": None})
    assert config.training.steps == 9
    assert config.training.seed == 3
    assert config.model.family == "gpt2"


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, listing)


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match=r"training\.steps"):
        from_dict(PretrainConfig, {"training": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"model\.family"):
        from_dict(PretrainConfig, {"model": {"family": "t5"}})


def test_round_trip():
    config = from_dict(PretrainConfig, {"training": {"steps": 3}, "data": {"corpus": "wiki-fr"}})
    assert from_dict(PretrainConfig, to_dict(config)) == config


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(path):
    from palimpsest.pretraining import PretrainConfig, build_extensions

    config = load_config(PretrainConfig, path)
    assert [extension.section for extension in build_extensions(config)] == sorted(config.extensions)


def test_a_union_with_literal_values_names_the_values():
    from palimpsest.memory import PKMConfig

    with pytest.raises(ConfigError, match=r"memory.sparse_updates: expected bool or 'auto', got 'sometimes'"):
        from_dict(PKMConfig, {"sparse_updates": "sometimes"}, prefix="memory.")
