"""Configuration: dataclasses, with CLI flags and YAML files on top.

Every command's options are a dataclass. :func:`add_dataclass_arguments` turns its fields into
``--kebab-case`` flags (help text from the ``Attributes:`` section of the docstring), and
:func:`build_config` fills the dataclass from, in increasing priority, its defaults, a YAML file
(``--config FILE``; keys are field names, with nested dataclasses as nested mappings) and the flags
given on the command line. Unknown YAML keys and ill-typed values are errors naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from biasunlearn.errors import ConfigError

T = TypeVar("T")

_UNSET = object()


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute descriptions from a Google-style ``Attributes:`` docstring section."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    if "Attributes:" not in doc:
        return out
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        m = re.match(r"^\s{4,8}(\w+):\s*(.*)$", line)
        if m and not line.startswith(" " * 12):
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
        elif not line.strip() and current:
            continue
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one flag per field of ``cls`` (recursing into nested dataclass fields, flattened)."""
    docs = _field_docs(cls)
    for f, tp in _fields(cls):
        tp = _base_type(tp)
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(parser, tp, prefix)
            continue
        dest = prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_text = docs.get(f.name, "")
        if help_text:
            help_text += " "
        help_text += f"(default: {default!r})"
        if tp is bool:
            parser.add_argument(
                _flag(dest), dest=dest, action=argparse.BooleanOptionalAction, default=_UNSET, help=help_text
            )
        elif tp in (int, float, str):
            parser.add_argument(_flag(dest), dest=dest, type=tp, default=_UNSET, help=help_text,
                                metavar=f.name.upper())
        else:
            raise TypeError(f"unsupported field type {tp!r} for {cls.__name__}.{f.name}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp = _base_type(tp)
    if value is None:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_mapping(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a mapping (e.g. parsed YAML); unknown keys and bad types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of option names to values, got {type(data).__name__}")
    known = {f.name: tp for f, tp in _fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        tp = _base_type(known[name])
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_mapping(tp, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, tp, f"{where}.{name}")
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file {p} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {p} must hold a mapping of option names to values")
    return data


def _overlay(cls: type, base: dict[str, Any], ns: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for f, tp in _fields(cls):
        tp = _base_type(tp)
        if dataclasses.is_dataclass(tp):
            nested = out.get(f.name) or {}
            sub = _overlay(tp, nested if isinstance(nested, dict) else {}, ns, prefix)
            if sub:  # else the field's own default (factory) applies
                out[f.name] = sub
            continue
        value = getattr(ns, prefix + f.name, _UNSET)
        if value is not _UNSET:
            out[f.name] = value
    return out


def build_config(
    cls: type[T], ns: argparse.Namespace, yaml_path: str | None = None,
    transform: typing.Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> T:
    """Defaults < YAML file < command-line flags; ``transform`` may add defaults (e.g. a preset's)."""
    base = load_yaml(yaml_path) if yaml_path else {}
    where = f"--config {yaml_path}" if yaml_path else "config"
    values = _overlay(cls, base, ns)
    if transform is not None:
        values = transform(values)
    return from_mapping(cls, values, where)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
