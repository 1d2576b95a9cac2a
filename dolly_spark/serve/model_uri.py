"""Reading a registered model by alias: ``models:/NAME@ALIAS`` -> its version, or a clear error.

Read-only: registering and tagging versions is ``dolly_spark.tracking.registry``.
"""

from __future__ import annotations

import re

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^@/]+)@(?P<alias>[A-Za-z0-9_\-]+)$")


class AliasNotFoundError(LookupError):
    """``models:/NAME@ALIAS`` names an alias (or model) that does not exist."""


def parse_alias_uri(uri: str) -> tuple[str, str]:
    m = _ALIAS_URI.match(uri or "")
    if not m:
        raise ValueError(f"expected a model URI of the form models:/NAME@ALIAS, got {uri!r}")
    return m["name"], m["alias"]


def resolve_alias(uri: str):
    """The ModelVersion behind ``models:/NAME@ALIAS``, or AliasNotFoundError naming what exists."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = parse_alias_uri(uri)
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            raise AliasNotFoundError(
                f"{uri}: no registered model {name!r} in {mlflow.get_registry_uri()}; run dolly-spark register first"
            ) from err
        existing = ", ".join(f"@{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "none"
        raise AliasNotFoundError(f"{uri}: model {name!r} has no alias {alias!r}; existing aliases: {existing}") from err


def load_model_by_alias(uri: str, **kwargs):
    """``mlflow.pyfunc.load_model`` for ``models:/NAME@ALIAS`` with a clear error for a bad alias."""
    import mlflow.pyfunc

    resolve_alias(uri)
    return mlflow.pyfunc.load_model(uri, **kwargs)
