"""Typed, strict configuration: dataclasses loaded from YAML and overridden by flags.

A config file is a YAML mapping whose keys mirror the fields of a (possibly nested)
dataclass. Unknown keys and values of the wrong type are errors that name the key,
because a silently ignored typo ("learning_rte: 1e-3") costs a user a whole run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from palimpsest.errors import ConfigError

T = TypeVar("T")

#: The largest integer a setting may hold (a signed 64-bit integer, as torch and numpy take it).
LARGEST_INTEGER = 2**63 - 1


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:  # the values themselves, not the word "Literal"
        return " or ".join(repr(value) for value in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: expected {' or '.join(_describe(o) for o in options)}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp) or (Any,)
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:  # fixed shape: (mean, std)
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {value!r}")
            return tuple(
                _coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True))
            )
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        (_key_type, value_type) = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > LARGEST_INTEGER:  # past it torch, numpy and tokenizers overflow
                raise ConfigError(f"{key}: {value} is out of range (at most {LARGEST_INTEGER:,} in size)")
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # no setting of ours means anything at inf or nan
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


#: A dataclass naming one of its ``dict`` fields in this class attribute keeps that mapping's
#: entries beside its own keys in a file (a results row: ``{"label": ..., "A_M": ..., ...}``):
#: keys that are not fields are read into it, and written back flat.
FLAT_MAPPING = "FLAT_MAPPING"

#: A config dataclass with this class attribute set holds the sections of training
#: extensions (``memory:``, ``forgetting:``) in its ``extensions`` field; in YAML they are
#: top-level keys, each checked against its extension's own config class.
EXTENSION_SECTIONS = "EXTENSION_SECTIONS"


def _extension_sections(
    cls: type, data: dict[str, Any], prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``data`` into the class's own keys and typed extension sections."""
    if not getattr(cls, EXTENSION_SECTIONS, False):
        return data, {}
    from palimpsest.extensions import extension_classes

    installed = extension_classes()
    own = {key: value for key, value in data.items() if key not in installed}
    sections = {
        name: from_dict(installed[name].config_class, value, prefix=f"{prefix}{name}.")
        for name, value in data.items()
        if name in installed and value is not None
    }
    if "extensions" in own:
        raise ConfigError(
            f"{prefix}extensions: write each extension as its own section ({', '.join(installed)})"
        )
    return own, sections


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data, sections = _extension_sections(cls, data, prefix)
    flat = getattr(cls, FLAT_MAPPING, None)
    if flat is not None:
        data = {
            **{k: v for k, v in data.items() if k in fields},
            flat: {k: v for k, v in data.items() if k not in fields},
        }
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = sorted(set(fields) - ({"extensions"} if getattr(cls, EXTENSION_SECTIONS, False) else set()))
        if getattr(cls, EXTENSION_SECTIONS, False):
            from palimpsest.extensions import extension_classes

            known += [f"{name} (extension)" for name in extension_classes()]
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys: {', '.join(known)})")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key '{prefix}{missing[0]}'")
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    if sections:
        values["extensions"] = sections
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from None


#: Field metadata of a setting added after studies stored units keyed by their configs: at its default
#: :func:`to_dict` leaves it out, so those keys (and configs written before it) stay as they were.
OMITTED_AT_DEFAULT = "omitted_at_default"


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable mapping of a config (or results) dataclass (a field marked
    :data:`OMITTED_AT_DEFAULT` only where it differs from its default)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data = {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.metadata.get(OMITTED_AT_DEFAULT) and getattr(value, f.name) == f.default)
            }
            if getattr(value, EXTENSION_SECTIONS, False):
                data.update(data.pop("extensions", {}))
            flat = getattr(value, FLAT_MAPPING, None)
            if flat is not None:
                data.update(data.pop(flat))
            return data
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` on top of ``base``, section by section."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping: YAML keeps the last one,
    so a pasted or mistyped line would change a run unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(f"key '{key}' is given twice (lines {seen[key]} and {line})")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    base: T | None = None,
) -> T:
    """Read ``path`` (YAML) into ``cls``, then apply ``overrides`` (dotted keys; flags win).

    Overrides whose value is ``None`` are skipped, so unset CLI flags keep the file's value.
    ``base`` (a ``cls`` object, e.g. a study's named scale) supplies the values the file
    does not set; without it the dataclass defaults do.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except DuplicateKeyError as error:
            raise ConfigError(f"config file {path}: {error}") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        data = loaded
    if base is not None:
        data = _merge(to_dict(base), data)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return from_dict(cls, data)
