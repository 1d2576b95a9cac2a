"""``dolly-spark endpoint --name E --model-name C.S.M [--alias champion]``: point a Databricks Model
Serving endpoint at the version the alias names.

Resolves the alias in Unity Catalog and updates the endpoint's served entity only if it serves
another version (a rerun is a no-op), keeping its workload, scale-to-zero and traffic settings.
Authenticates the Databricks SDK's usual way: the cluster's own credentials in a job, else
``DATABRICKS_HOST``/``DATABRICKS_TOKEN`` or a ``~/.databrickscfg`` profile. The pipeline job runs it
after ``register``, so it runs only when the gate let the alias move.
"""

from __future__ import annotations

import logging

from dolly_spark.commands.common import cli_errors, parse_job
from dolly_spark.serve.endpoint import EndpointConfig, EndpointError, EndpointResult, move_to_alias

CONFIG = EndpointConfig


def run(cfg: EndpointConfig, client=None) -> EndpointResult:
    from databricks.sdk.errors import DatabricksError

    if client is None:
        from databricks.sdk import WorkspaceClient

        try:
            client = WorkspaceClient()
        except ValueError as err:  # the SDK's "cannot configure default credentials"
            raise EndpointError(f"no Databricks credentials: {err}") from err
    try:
        return move_to_alias(cfg, client)
    except DatabricksError as err:
        raise EndpointError(f"Databricks API ({type(err).__name__}): {err}") from err


def format_summary(r: EndpointResult, dry_run: bool = False) -> str:
    target = f"{r.model_name} v{r.version} (@{r.alias})"
    if r.updated:
        return f"endpoint {r.endpoint}: {r.served_entity} moved from v{r.previous_version} to {target}; state {r.state}"
    if r.previous_version != r.version:
        verb = "would move" if dry_run else "already rolling out"
        return (
            f"endpoint {r.endpoint}: {r.served_entity} {verb} from v{r.previous_version} to {target}; state {r.state}"
        )
    return f"endpoint {r.endpoint}: {r.served_entity} already serves {target}; nothing to do"


@cli_errors("endpoint")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(EndpointConfig, argv, "endpoint", __doc__, level=logging.WARNING)
    print(format_summary(run(cfg), cfg.dry_run))
    return 0
