"""The libraries this process runs on: the supported floor, and keyword differences detected from
the installed code (not from version strings).

The floor is the oldest supported Databricks runtime row (``runtimes/dbr-17.3-lts-ml-gpu.txt``;
``tests/test_runtime.py`` keeps the two equal). Databricks installs the wheel without our pins,
so the runtime's own releases run: an older one fails here, in one line, before any table is
written, instead of deep inside training or model logging.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import re

OLDEST_ROW = "Databricks Runtime 17.3 LTS ML"
MINIMUM_VERSIONS = {
    "transformers": "4.51.3",
    "accelerate": "1.5.2",
    "deepspeed": "0.16.5",
    "datasets": "3.5.0",
    "tokenizers": "0.21.0",
    "safetensors": "0.6.2",
    "mlflow": "3.0.1",
}


class UnsupportedLibraryError(RuntimeError):
    pass


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a release string; local and pre-release tails ignored."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+", 1)[0])[:3])


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_supported_libraries(minimums: dict[str, str] = MINIMUM_VERSIONS) -> None:
    """Raise one line naming the first installed library older than the oldest supported row.
    Libraries not installed are skipped (a prepare-only install has no transformers)."""
    for package, minimum in minimums.items():
        version = installed_version(package)
        if package == "mlflow" and version is None:
            version = installed_version("mlflow-skinny")
        if version is not None and _release(version) < _release(minimum):
            raise UnsupportedLibraryError(
                f"{package} {version} is older than the oldest supported runtime ({OLDEST_ROW}: "
                f"{package} {minimum}); upgrade it (pip install '{package}>={minimum}') or use a newer runtime"
            )


@functools.cache
def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` where the config declares it (transformers
    4.56+), else ``torch_dtype`` (4.51 stores an unknown ``dtype`` into the config and then
    fails to serialise it)."""
    from transformers import PretrainedConfig

    return "dtype" if "dtype" in inspect.signature(PretrainedConfig.__init__).parameters else "torch_dtype"


def model_log_keywords(flavor_name: str) -> dict:
    """``Model.log`` keywords this MLflow accepts: ``flavor_name`` is a parameter of newer
    releases; 3.0.1 forwards unknown keywords to the flavor's ``save_model``, which rejects it."""
    from mlflow.models import Model

    params = inspect.signature(Model.log).parameters
    return {"flavor_name": flavor_name} if "flavor_name" in params else {}
