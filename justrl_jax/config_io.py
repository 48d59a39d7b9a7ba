"""Typed configs from YAML and dotted command-line overrides.

Each module owns a frozen dataclass that validates itself in ``__post_init__``; this module only
turns plain data into those dataclasses (and back) and reports any unknown key or badly typed
value by its dotted name.

Example::

    data = load_yaml("configs/justrl_deepseek_1p5b.yaml")
    data = apply_overrides(data, ["rollout.max_new_tokens=2048", "model.dtype=float32"])
    cfg = from_dict(RunConfig, data)
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory; name a YAML file (e.g. configs/demo.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Applies ``key.sub=value`` overrides (values parsed as YAML scalars) to a nested dict copy."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set(out, key.strip(), yaml.safe_load(raw) if raw.strip() else "", item)
    return out


def _set(data: dict, key: str, value, item: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    cls: type,
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    shortcuts: Mapping[str, Any] | None = None,
):
    """A command's config: ``cls``'s defaults < ``base`` (the command's own) < the YAML file at ``path``
    < ``shortcuts`` (dotted key -> value, from the command's flags) < ``key=value`` overrides (``--set``).

    Example::

        cfg = load_config(EvalConfig, "eval.yaml", ["n_samples=8"], shortcuts={"temperature": 0.6})
    """
    data = _deep_copy(dict(base or {}))
    if path is not None:
        data = _merge(data, load_yaml(path))
    for key, value in (shortcuts or {}).items():
        _set(data, key, value, f"{key}={value}")
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from e


def add_override_flag(p: argparse.ArgumentParser, example: str) -> None:
    """The repeatable ``--set KEY=VALUE`` flag every command takes, into ``args.overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted override, e.g. --set {example} (repeatable)",
    )


def add_shortcut_flags(p: argparse.ArgumentParser, shortcuts) -> None:
    """Adds ``shortcuts``, (flag or flags, dotted config key, type, help) rows: each flag stands for
    ``--set KEY=VALUE``, and a flag that is not given leaves the file's (or the default) value."""
    for flag, key, tp, help_text in shortcuts:
        flags = (flag,) if isinstance(flag, str) else tuple(flag)
        if tp is bool:
            p.add_argument(*flags, dest=key, action="store_const", const=True, default=None, help=help_text)
        else:
            p.add_argument(*flags, dest=key, type=tp, default=None, help=f"{help_text} (--set {key}=...)")


def given_shortcuts(args: argparse.Namespace, shortcuts) -> dict:
    """The shortcut flags given on the command line, as ``load_config``'s ``shortcuts``."""
    return {key: getattr(args, key) for _, key, _, _ in shortcuts if getattr(args, key) is not None}


def _merge(base: dict, top: Mapping) -> dict:
    """``top`` over ``base``, section by section."""
    out = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Builds dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError naming them."""
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {_join(where, unknown[0])!r}; {cls.__name__} accepts: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(where, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a section (mapping), got {value!r}")
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or (isinstance(value, str) and value.upper() == member.name):
                return member
        raise ConfigError(f"{where} must be one of {[m.value for m in tp]}, got {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value] if isinstance(value, (int, float, str)) and origin is tuple else value
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-6' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def to_dict(obj) -> Any:
    """Plain-data form of a config (enums by value), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
