import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.shared_data import TOKENIZER_DIR
from tests.tiny_model import save_tiny_model

# Offline by construction: the hub is unreachable here, and tests must not try it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DOLLY_TOKENIZER", str(TOKENIZER_DIR))


@pytest.fixture(autouse=True, scope="module")
def _no_mlflow_env_across_modules():
    """Module-scoped fixtures set a store too (before any function fixture runs): clear it per module."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DOLLY_PARENT_RUN_ID")
    saved = {k: os.environ.pop(k, None) for k in keys}
    yield
    for k, v in saved.items():
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_env():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; a test's store must not become the
    next test's (or its subprocesses') "user override"."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DOLLY_PARENT_RUN_ID")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_leaked_deepspeed_zero3():
    """TrainingArguments(deepspeed=...) in a test sets transformers' process-wide ZeRO-3 flag;
    left set, every later model is built under zero.Init (params partitioned, ties differ)."""
    yield
    ds = sys.modules.get("transformers.integrations.deepspeed")
    if ds is not None:
        ds.unset_hf_deepspeed_config()


@pytest.fixture(scope="session")
def spark():
    from dolly_spark.ops.session import get_spark, stop_embedded

    session = get_spark("dolly_spark_tests")
    yield session
    stop_embedded()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Untrained tiny model directory: enough for logging, registry, scoring and plumbing tests."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture
def broken(tmp_path):
    """A copy of bundles/ plus an edit helper: edit(file, fn) rewrites that YAML file through fn."""
    root = tmp_path / "bundles"
    shutil.copytree(Path(__file__).resolve().parents[1] / "bundles", root)

    def edit(rel: str, fn) -> Path:
        path = root / rel
        data = yaml.safe_load(path.read_text())
        fn(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return root

    edit.root = root
    return edit
