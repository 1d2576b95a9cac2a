"""The bundle's files checked against the official bundle JSON schema (``databricks bundle schema``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tools.bundle_model import Bundle, Problem, _rewrite_patterns, default_schema_path


@functools.lru_cache(maxsize=4)
def _validator(schema_path: str):
    import jsonschema

    with open(schema_path) as fh:
        schema = _rewrite_patterns(json.load(fh))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _json_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _leaves(error) -> list:
    """The specific errors under a oneOf/anyOf: follow the branch that fits the value's type.

    Every schema node is ``oneOf[object, "${var...}" string]``, so the raw error is "is not valid
    under any of the given schemas"; the useful one sits inside the branch for the value's type.
    """
    if not error.context:
        return [error]
    branches: dict = {}
    for e in error.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)

    def misfit(errors) -> bool:  # the branch rejects the value's type itself
        return any(e.validator == "type" and not e.relative_path for e in errors)

    fitting = [errs for errs in branches.values() if not misfit(errs)] or list(branches.values())
    return [leaf for e in fitting[0] for leaf in _leaves(e)]


def schema_problems(bundle: Bundle, schema_path: str | Path | None = None) -> list[Problem]:
    schema_path = Path(schema_path or default_schema_path())
    if not schema_path.exists():
        return [
            Problem(
                str(schema_path),
                "(schema)",
                "bundle JSON schema not found; set DOLLY_SHARED_DATA or pass --schema",
                "schema",
            )
        ]
    validator = _validator(str(schema_path))
    problems = []
    known_top = set(validator.schema.get("properties", {}))
    for f in bundle.files:
        # The schema allows any top-level key; the CLI does not, so a typo like "includes" is caught here.
        for key in sorted(set(f.data) - known_top):
            problems.append(
                Problem(
                    bundle.rel(f.path), key, f"unknown top-level key {key!r} (known: {sorted(known_top)})", "schema"
                )
            )
        for error in sorted(validator.iter_errors(f.data), key=lambda e: list(map(str, e.absolute_path))):
            for leaf in _leaves(error):
                problems.append(Problem(bundle.rel(f.path), _json_path(leaf.absolute_path), leaf.message, "schema"))
    return problems
