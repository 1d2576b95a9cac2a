"""Typed job configs: dataclass defaults < YAML file (``--config``) < CLI flags.

Every dataclass field becomes a ``--field-name`` flag, so bundle task parameters and the
argument parser cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", help="YAML file with config values (CLI flags override it)")
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        helptext = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            (inner, *_) = typing.get_args(tp) or (str,)
            kw.update(nargs="*", type=inner if inner in (int, float) else str)
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(_flag(f.name), *f.metadata.get("aliases", ()), **kw)


def resolve_config(cls: type[T], ns: argparse.Namespace) -> T:
    values: dict[str, Any] = {}
    cfg_file = getattr(ns, "config", None)
    if cfg_file:
        loaded = yaml.safe_load(Path(cfg_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg_file}: expected a mapping at the top level")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(loaded) - known
        if unknown:
            raise ValueError(f"{cfg_file}: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        if hasattr(ns, f.name):
            values[f.name] = getattr(ns, f.name)
    hints = typing.get_type_hints(cls)
    for name, v in list(values.items()):
        if isinstance(v, list) and typing.get_origin(_base_type(hints[name])) is tuple:
            values[name] = tuple(v)
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str = "") -> T:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, cls)
    return resolve_config(cls, parser.parse_args(argv))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
