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


class ConfigError(ValueError):
    """A config value of the wrong type, range or choice: one line naming the key or flag."""


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


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _nested(tp: Any) -> bool:
    return dataclasses.is_dataclass(_base_type(tp)) and isinstance(_base_type(tp), type)


def flag_prefix(f: dataclasses.Field) -> str:
    """Flags of a nested config are ``--<prefix><field>``: ``--dedup-threshold`` for ``dedup.threshold``.
    ``metadata={"flag_prefix": ""}`` keeps a group's flags unprefixed (``--max-seq-len``)."""
    return f.metadata.get("flag_prefix", f.name + "_")


def set_by_parent(f: dataclasses.Field, inherited: frozenset[str] = frozenset()) -> frozenset[str]:
    """Fields of a nested section that its parent config sets (``RunConfig`` hands its location,
    tokenizer and base model to every section): they get no flag and no YAML key inside the
    section. Dotted names reach further down (``gold.tokenizer`` of the prepare section)."""
    own = set(f.metadata.get("set_by_parent", ()))
    own |= {n.split(".", 1)[1] for n in inherited if n.startswith(f.name + ".")}
    return frozenset(own)


def _add_common_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    parser.add_argument("--config", help="YAML file with config values (CLI flags override it)")
    if getattr(cls, "PRESETS", None):
        parser.add_argument(
            "--preset",
            choices=sorted(cls.PRESETS),
            help="named defaults (below --config and flags): "
            + "; ".join(f"{k}: {v.get('_help', '')}" for k, v in cls.PRESETS.items()),
        )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the engine's own log lines and progress bars when piped",
    )


def _field_kwargs(f: dataclasses.Field, tp: Any, dest: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        # Repeatable: ``--source a=X --source b=Y`` and ``--source a=X b=Y`` both give two.
        kw.update(nargs="*", action="extend", type=inner if inner in (int, float) else str)
    else:
        kw["type"] = tp if tp in (int, float, str) else str
    if "choices" in f.metadata:
        kw["choices"] = f.metadata["choices"]
    return kw


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, _prefix: str = "", _dest: str = "", _skip: frozenset = frozenset()
) -> None:
    hints = typing.get_type_hints(cls)
    if not _dest:
        _add_common_flags(parser, cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False or f.name in _skip:
            continue
        if _nested(hints[f.name]):
            sub = _base_type(hints[f.name])
            add_config_arguments(parser, sub, _prefix + flag_prefix(f), _dest + f.name + ".", set_by_parent(f, _skip))
            continue
        kw = _field_kwargs(f, _base_type(hints[f.name]), _dest + f.name)
        if f.metadata.get("positional") and not _dest:  # ``dolly-spark sql "QUERY"``: optional, one value
            parser.add_argument(f.name, nargs="?", **{k: v for k, v in kw.items() if k != "dest"})
            continue
        aliases = f.metadata.get("aliases", ()) if not _dest else ()
        parser.add_argument(_flag(_prefix + f.name), *aliases, **kw)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """YAML and flag values checked against the field's type: ``"2048"`` is not an int and
    ``"false"`` is not a bool (a plain ``cls(**values)`` would accept both)."""
    if value is None:
        if _is_optional(tp):
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    base = _base_type(tp)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if _nested(base):
        # A list item that is a config of its own (``sources: [{uri: ...}, ...]``).
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(base, value, f"{where}.")
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(base) or (str, str)
        return {_coerce(k, key_tp, f"{where} key"): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(base) in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(base) or (str,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if typing.get_origin(base) is tuple else items
    return value


def _build_section(f: dataclasses.Field, tp: Any, v: Any, where: str, skip: frozenset[str]) -> Any:
    """A nested section from YAML/flags: a mapping (or a ready dataclass, or None where optional)."""
    if (v is None and _is_optional(tp)) or dataclasses.is_dataclass(v):
        return v
    if not isinstance(v, dict):
        raise ConfigError(f"{where}{f.name}: expected a mapping, got {v!r}")
    owned = set_by_parent(f, skip)
    given = sorted(k for k in v if k in owned)
    if given:
        raise ConfigError(f"{where}{f.name}.{given[0]}: set at the top level, not inside {f.name}")
    return _build(_base_type(tp), v, f"{where}{f.name}.", owned)


def _build(cls: type, values: dict[str, Any], where: str, skip: frozenset[str] = frozenset()) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, v in values.items():
        f, tp = fields[name], hints[name]
        if _nested(tp):
            kwargs[name] = _build_section(f, tp, v, where, skip)
            continue
        kwargs[name] = _coerce(v, tp, f"{where}{name}")
        if "choices" in f.metadata and kwargs[name] not in f.metadata["choices"]:
            raise ConfigError(f"{where}{name}: {kwargs[name]!r} is not one of {list(f.metadata['choices'])}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {err}") from err


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """A config from plain values (a job file's JSON, nested sections as mappings), checked as YAML is."""
    return _build(cls, values, "")


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from err
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"--config {path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping at the top level")
    return loaded


def resolve_config(cls: type[T], ns: argparse.Namespace) -> T:
    """Defaults < preset < YAML (``--config``, nested like the dataclasses) < flags, then checked whole.

    A config class may name the preset it gets when none is asked for (``default_preset(values)``,
    given the YAML and flag values)."""
    values: dict[str, Any] = {}
    cfg_file = getattr(ns, "config", None)
    if cfg_file:
        values = load_yaml(cfg_file)
    preset = getattr(ns, "preset", None) or values.pop("preset", None)
    for dest, v in vars(ns).items():
        if dest in ("config", "preset", "debug", "verbose"):
            continue
        *parents, leaf = dest.split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = list(v) if isinstance(v, tuple) else v
    if preset is None and hasattr(cls, "default_preset"):
        preset = cls.default_preset(values)
    if preset is not None:
        presets = getattr(cls, "PRESETS", None) or {}
        if preset not in presets:
            raise ConfigError(f"preset {preset!r} is not one of {sorted(presets)}")
        values = _merged({k: v for k, v in presets[preset].items() if k != "_help"}, values)
    return _build(cls, values, f"{cfg_file}: " if cfg_file else "")


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line (``--help`` shows the usage): ``run`` alone has over a hundred flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # ``--model`` must never quietly mean ``--model-dir``
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str = "") -> T:
    parser = OneLineParser(prog=prog, description=description)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    try:
        return resolve_config(cls, ns)
    except ConfigError as err:
        parser.error(str(err))  # one line and exit 2, like any other usage error


@dataclasses.dataclass(kw_only=True)
class LocalRoot:
    """A local output root: Delta tables, models and the MLflow store live under it."""

    output_root: str | None = dataclasses.field(
        default=None, metadata={"help": "local root: Delta tables, models and mlflow.db live under it"}
    )

    def table_names(self):
        from dolly_spark.ops.tables import table_names_for

        return table_names_for(self.output_root, getattr(self, "catalog", None), getattr(self, "schema", None))


@dataclasses.dataclass(kw_only=True)
class Location(LocalRoot):
    """Where a job's tables, models and MLflow store live: a local root, or a Unity Catalog schema.

    Every job config extends it, so ``--output-root`` / ``--catalog`` / ``--schema`` mean the same
    everywhere.
    """

    catalog: str | None = dataclasses.field(default=None, metadata={"help": "Unity Catalog catalog (Databricks)"})
    schema: str | None = dataclasses.field(default=None, metadata={"help": "Unity Catalog schema (Databricks)"})


@dataclasses.dataclass(kw_only=True)
class TrackedLocation(Location):
    """A location whose job records an MLflow run: ``--experiment`` is declared here, once."""

    experiment: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "MLflow experiment (default: $DOLLY_EXPERIMENT, else dolly_spark; /Shared/dolly_spark on Databricks)"
        },
    )


# The fields a parent config hands to each of its sections (``RunConfig``).
LOCATION_FIELDS = ("output_root", "catalog", "schema", "experiment")
