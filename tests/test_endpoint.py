"""``dolly-spark endpoint``: the Databricks SDK pointed at a local HTTP server that plays the
workspace (Unity Catalog aliases and the serving-endpoints API) and records every REST call."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dolly_spark.commands import endpoint as command
from dolly_spark.serve.endpoint import EndpointConfig, EndpointError, move_to_alias

MODEL = "main.dolly.dolly"
NAME = "dolly-dev"


def _entity(version: str, name: str = "dolly", model: str = MODEL) -> dict:
    return {
        "name": name,
        "entity_name": model,
        "entity_version": version,
        "workload_type": "GPU_MEDIUM",
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
        "environment_vars": {"DOLLY_DEVICE": "cuda"},
        # Output-only fields: never sent back in an update.
        "state": {"deployment": "DEPLOYMENT_READY"},
        "creator": "someone@example.com",
        "creation_timestamp": 1700000000000,
    }


def _route(name: str, pct: int) -> dict:
    """A route as the API reports it: both names (served_model_name is the one older SDKs read)."""
    return {"served_entity_name": name, "served_model_name": name, "traffic_percentage": pct}


def _routed(body: dict) -> list[tuple[str, int]]:
    """(entity, percentage) of an update's routes, under whichever name the installed SDK sends."""
    routes = body["traffic_config"]["routes"]
    return [(r.get("served_entity_name") or r["served_model_name"], r["traffic_percentage"]) for r in routes]


class Workspace:
    """The workspace's state and the calls made to it."""

    def __init__(self, served: str = "1", champion: str = "2", entities: list[dict] | None = None):
        self.aliases = {(MODEL, "champion"): champion}
        self.endpoint = {
            "name": NAME,
            "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "config": {
                "served_entities": entities or [_entity(served)],
                "traffic_config": {"routes": [_route("dolly", 100)]},
            },
        }
        self.calls: list[tuple[str, str, dict | None]] = []
        self.rollout = "NOT_UPDATING"  # config_update after a PUT (UPDATE_FAILED: the rollout fails)
        self.polls_until_done = 0  # GETs answered IN_PROGRESS after a PUT

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        self.calls.append((method, path.split("?")[0], body))
        alias_prefix = "/api/2.1/unity-catalog/models/"
        if method == "GET" and path.startswith(alias_prefix) and "/aliases/" in path:
            model, alias = path[len(alias_prefix) :].split("?")[0].split("/aliases/")
            if (model, alias) not in self.aliases:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{model}@{alias} not found"}
            return 200, {"model_name": model, "version": int(self.aliases[(model, alias)]), "aliases": []}
        if path.split("?")[0] == f"/api/2.0/serving-endpoints/{NAME}" and method == "GET":
            if self.endpoint["state"]["config_update"] == "IN_PROGRESS":
                if self.polls_until_done <= 0:
                    self._finish_rollout()
                self.polls_until_done -= 1
            return 200, copy.deepcopy(self.endpoint)
        if path == f"/api/2.0/serving-endpoints/{NAME}/config" and method == "PUT":
            self.endpoint["pending_config"] = {**body, "config_version": 2}
            self.endpoint["state"]["config_update"] = "IN_PROGRESS"
            return 200, copy.deepcopy(self.endpoint)
        if path.startswith("/api/2.0/serving-endpoints/"):
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "endpoint not found"}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no API {method} {path}"}

    def _finish_rollout(self):
        pending = self.endpoint.pop("pending_config")
        self.endpoint["state"]["config_update"] = self.rollout
        if self.rollout == "NOT_UPDATING":
            served = [{**e, "state": {"deployment": "DEPLOYMENT_READY"}} for e in pending["served_entities"]]
            routes = [_route(n, p) for n, p in _routed(pending)]
            self.endpoint["config"] = {**pending, "served_entities": served, "traffic_config": {"routes": routes}}

    def api_calls(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.calls if p.startswith("/api/")]

    def puts(self) -> list[dict]:
        return [b for m, _, b in self.calls if m == "PUT"]


@pytest.fixture
def workspace():
    ws = Workspace()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, out = ws.answer(self.command, self.path, body)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ws.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield ws
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(workspace):
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=workspace.host, token="dapi-test")


def _cfg(**kw) -> EndpointConfig:
    return EndpointConfig(name=NAME, model_name=MODEL, **kw)


def test_moves_the_served_entity_to_the_alias_version_keeping_its_settings(workspace, client):
    result = move_to_alias(_cfg(), client)
    assert (result.previous_version, result.version, result.updated) == ("1", "2", True)
    assert workspace.api_calls() == [
        ("GET", f"/api/2.1/unity-catalog/models/{MODEL}/aliases/champion"),
        ("GET", f"/api/2.0/serving-endpoints/{NAME}"),
        ("PUT", f"/api/2.0/serving-endpoints/{NAME}/config"),
    ]
    (body,) = workspace.puts()
    assert body["served_entities"] == [
        {
            "name": "dolly",
            "entity_name": MODEL,
            "entity_version": "2",
            "workload_type": "GPU_MEDIUM",
            "workload_size": "Small",
            "scale_to_zero_enabled": True,
            "environment_vars": {"DOLLY_DEVICE": "cuda"},
        }
    ]
    assert _routed(body) == [("dolly", 100)]


def test_a_rerun_is_a_no_op(workspace, client):
    move_to_alias(_cfg(wait_minutes=1), client)
    assert workspace.endpoint["config"]["served_entities"][0]["entity_version"] == "2"
    workspace.calls.clear()
    again = move_to_alias(_cfg(), client)
    assert (again.updated, again.previous_version, again.version) == (False, "2", "2")
    assert [m for m, _ in workspace.api_calls()] == ["GET", "GET"]


def test_an_update_already_rolling_out_to_the_version_is_waited_for_not_repeated(workspace, client):
    move_to_alias(_cfg(), client)  # PUT sent, rollout in progress
    workspace.polls_until_done = 1
    workspace.calls.clear()
    result = move_to_alias(_cfg(wait_minutes=1), client)
    assert not result.updated and result.state == "NOT_UPDATING"
    assert workspace.puts() == []


def test_wait_reports_a_failed_rollout_in_one_line(workspace, client):
    workspace.rollout = "UPDATE_FAILED"
    with pytest.raises(EndpointError, match=f"serving endpoint '{NAME}': the config update failed"):
        move_to_alias(_cfg(wait_minutes=1), client)
    assert workspace.endpoint["config"]["served_entities"][0]["entity_version"] == "1"  # old one still serves


def test_other_served_entities_and_the_traffic_split_are_kept(client, workspace):
    workspace.endpoint["config"]["served_entities"] = [_entity("1"), _entity("7", "other", "main.dolly.other")]
    workspace.endpoint["config"]["traffic_config"]["routes"] = [_route("dolly", 90), _route("other", 10)]
    move_to_alias(_cfg(), client)
    (body,) = workspace.puts()
    assert [(e["name"], e["entity_version"]) for e in body["served_entities"]] == [("dolly", "2"), ("other", "7")]
    assert _routed(body) == [("dolly", 90), ("other", 10)]


def test_ambiguous_or_missing_entity_and_missing_alias_or_endpoint_fail_clearly(workspace, client):
    workspace.endpoint["config"]["served_entities"] = [_entity("1", "a"), _entity("1", "b")]
    workspace.endpoint["config"]["traffic_config"]["routes"] = [_route("a", 50), _route("b", 50)]
    with pytest.raises(EndpointError, match="2 served entities serve main.dolly.dolly.*--served-entity"):
        move_to_alias(_cfg(), client)
    assert move_to_alias(_cfg(served_entity="b"), client).served_entity == "b"
    with pytest.raises(EndpointError, match="no served entity 'c'"):
        move_to_alias(_cfg(served_entity="c"), client)
    with pytest.raises(EndpointError, match="main.dolly.dolly@candidate: no such model or alias"):
        move_to_alias(_cfg(alias="candidate"), client)
    with pytest.raises(EndpointError, match="serving endpoint 'nope' does not exist; `databricks bundle deploy`"):
        move_to_alias(EndpointConfig(name="nope", model_name=MODEL), client)


def test_dry_run_changes_nothing(workspace, client):
    result = move_to_alias(_cfg(dry_run=True), client)
    assert (result.previous_version, result.version, result.updated) == ("1", "2", False)
    assert workspace.puts() == []
    assert "would move from v1 to main.dolly.dolly v2" in command.format_summary(result, dry_run=True)


def test_cli_authenticates_from_the_environment_and_prints_one_summary_line(workspace, monkeypatch, capsys):
    monkeypatch.setenv("DATABRICKS_HOST", workspace.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test")
    argv = ["--name", NAME, "--model-name", MODEL, "--alias", "champion"]
    assert command.main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"endpoint {NAME}: dolly moved from v1 to {MODEL} v2 (@champion); state IN_PROGRESS"
    )
    workspace._finish_rollout()
    assert command.main(argv) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"endpoint {NAME}: dolly already serves {MODEL} v2 (@champion); nothing to do"
    )
    assert command.main(["--name", "nope", "--model-name", MODEL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dolly-spark endpoint: error: serving endpoint 'nope' does not exist")


def test_config_needs_a_unity_catalog_model_name(capsys):
    from dolly_spark.ops.config import parse_config

    with pytest.raises(SystemExit):
        parse_config(EndpointConfig, ["--name", NAME, "--model-name", "dolly"], prog="e")
    assert "expected a Unity Catalog name catalog.schema.model" in capsys.readouterr().err
