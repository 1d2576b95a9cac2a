"""Point a Databricks Model Serving endpoint at the version an alias names, through the SDK.

``move_to_alias`` resolves ``NAME@ALIAS`` in Unity Catalog, reads the endpoint's config and, only
when the served entity of that model serves another version, sends one config update that
changes that entity's version and keeps everything else (workload type and size, scale to zero,
environment, the other entities and the traffic split). Rerunning it is a no-op; an update that is
already rolling out to the version is waited for, not repeated. While the new config deploys the
endpoint keeps serving the old one, and a failed rollout leaves the old one serving.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import timedelta

log = logging.getLogger(__name__)

_IN_PROGRESS = "IN_PROGRESS"


@dataclass
class EndpointConfig:
    name: str = field(default="", metadata={"help": "serving endpoint to update"})
    model_name: str = field(default="", metadata={"help": "registered Unity Catalog model, catalog.schema.model"})
    alias: str = field(default="champion", metadata={"help": "alias whose version the endpoint should serve"})
    served_entity: str | None = field(
        default=None, metadata={"help": "served entity to move (default: the one entity serving --model-name)"}
    )
    wait_minutes: float = field(
        default=0.0, metadata={"help": "wait this long for the new config to be ready, failing if it fails (0: no)"}
    )
    dry_run: bool = field(default=False, metadata={"help": "say what would change, change nothing"})

    def __post_init__(self):
        if not self.name or not self.model_name:
            raise ValueError("give --name (the serving endpoint) and --model-name (catalog.schema.model)")
        if self.model_name.count(".") != 2:
            raise ValueError(f"--model-name {self.model_name!r}: expected a Unity Catalog name catalog.schema.model")
        if self.wait_minutes < 0:
            raise ValueError("--wait-minutes must be >= 0")


@dataclass
class EndpointResult:
    endpoint: str
    model_name: str
    alias: str
    version: str  # what the alias names
    previous_version: str | None  # what the entity served before
    served_entity: str
    updated: bool  # a config update was sent by this call
    state: str  # the endpoint's config_update state at the end


class EndpointError(RuntimeError):
    """The endpoint cannot be pointed at the alias's version (missing, ambiguous, failed)."""


def alias_version(client, model_name: str, alias: str) -> str:
    """The version ``model_name@alias`` names in Unity Catalog."""
    from databricks.sdk.errors import NotFound

    try:
        mv = client.model_versions.get_by_alias(full_name=model_name, alias=alias)
    except NotFound as err:
        raise EndpointError(f"{model_name}@{alias}: no such model or alias in Unity Catalog ({err})") from err
    return str(mv.version)


def get_endpoint(client, name: str):
    from databricks.sdk.errors import NotFound

    try:
        return client.serving_endpoints.get(name=name)
    except NotFound as err:
        raise EndpointError(
            f"serving endpoint {name!r} does not exist; `databricks bundle deploy` creates it ({err})"
        ) from err


def _state(endpoint) -> str:
    update = endpoint.state.config_update if endpoint.state else None
    return getattr(update, "value", str(update)) if update is not None else "UNKNOWN"


def pick_entity(entities, model_name: str, wanted: str | None):
    """The served entity to move: ``wanted`` by name, else the one entity serving ``model_name``."""
    names = [e.name for e in entities]
    if wanted:
        found = [e for e in entities if e.name == wanted]
        if not found:
            raise EndpointError(f"no served entity {wanted!r} on the endpoint (it has {names})")
        if found[0].entity_name != model_name:
            raise EndpointError(f"served entity {wanted!r} serves {found[0].entity_name}, not {model_name}")
        return found[0]
    ours = [e for e in entities if e.entity_name == model_name]
    if len(ours) != 1:
        what = "no served entity serves" if not ours else f"{len(ours)} served entities serve"
        raise EndpointError(f"{what} {model_name} (entities: {names}); pass --served-entity NAME")
    return ours[0]


def entity_input(entity, version: str | None = None):
    """A ServedEntityInput with ``entity``'s settings (the fields the input type has), at ``version``."""
    from databricks.sdk.service.serving import ServedEntityInput

    accepted = {f.name for f in dataclasses.fields(ServedEntityInput)}
    spec = {k: v for k, v in entity.as_dict().items() if k in accepted}
    if version is not None:
        spec["entity_version"] = version
    return ServedEntityInput.from_dict(spec)


def _route_name(route) -> str | None:
    # Routes name a served entity as served_entity_name; SDKs before it know served_model_name.
    return getattr(route, "served_entity_name", None) or getattr(route, "served_model_name", None)


def traffic_config(config, entities):
    """The endpoint's traffic split, rebuilt for the installed SDK's Route (same entity names)."""
    from databricks.sdk.service.serving import Route, TrafficConfig

    routes = list((config.traffic_config.routes or []) if config is not None and config.traffic_config else [])
    if not routes:
        return None
    named = [(_route_name(r), r.traffic_percentage) for r in routes]
    if any(name is None for name, _ in named):
        if len(entities) != 1:
            raise EndpointError("this databricks-sdk cannot read the endpoint's traffic routes; upgrade it")
        named = [(entities[0].name, 100)]
    key = "served_entity_name" if "served_entity_name" in {f.name for f in dataclasses.fields(Route)} else None
    key = key or "served_model_name"
    return TrafficConfig(routes=[Route(**{key: name, "traffic_percentage": pct}) for name, pct in named])


def _serves(config, entity_name: str, version: str) -> bool:
    entities = (config.served_entities or []) if config is not None else []
    return any(e.name == entity_name and str(e.entity_version) == version for e in entities)


def _wait(client, name: str, minutes: float):
    from databricks.sdk.errors import OperationFailed

    try:
        return client.serving_endpoints.wait_get_serving_endpoint_not_updating(
            name=name, timeout=timedelta(minutes=minutes)
        )
    except OperationFailed as err:
        raise EndpointError(f"serving endpoint {name!r}: the config update failed ({err}); see its events") from err
    except TimeoutError as err:
        raise EndpointError(f"serving endpoint {name!r} still updating after {minutes:g} min ({err})") from err


def move_to_alias(cfg: EndpointConfig, client) -> EndpointResult:
    """Point the endpoint's served entity at ``model_name@alias``'s version (only if it differs)."""
    version = alias_version(client, cfg.model_name, cfg.alias)
    endpoint = get_endpoint(client, cfg.name)
    entities = (endpoint.config.served_entities or []) if endpoint.config else []
    entity = pick_entity(entities, cfg.model_name, cfg.served_entity)
    previous = str(entity.entity_version) if entity.entity_version is not None else None
    result = EndpointResult(
        cfg.name, cfg.model_name, cfg.alias, version, previous, entity.name, False, _state(endpoint)
    )
    rolling_out = result.state == _IN_PROGRESS and _serves(endpoint.pending_config, entity.name, version)
    if previous == version or rolling_out or cfg.dry_run:
        if rolling_out and cfg.wait_minutes and not cfg.dry_run:
            result.state = _state(_wait(client, cfg.name, cfg.wait_minutes))
        return result
    if result.state == _IN_PROGRESS:  # another update is rolling out: the API refuses a second one
        if not cfg.wait_minutes:
            raise EndpointError(f"serving endpoint {cfg.name!r} is updating; rerun with --wait-minutes N")
        _wait(client, cfg.name, cfg.wait_minutes)
    served = [entity_input(e, version if e.name == entity.name else None) for e in entities]
    traffic = traffic_config(endpoint.config, entities)
    log.info("moving %s/%s from %s v%s to v%s", cfg.name, entity.name, cfg.model_name, previous, version)
    client.serving_endpoints.update_config(name=cfg.name, served_entities=served, traffic_config=traffic)
    result.updated = True
    result.state = _IN_PROGRESS
    if cfg.wait_minutes:
        result.state = _state(_wait(client, cfg.name, cfg.wait_minutes))
    return result
