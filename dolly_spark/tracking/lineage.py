"""Dataset lineage: gold@version as a run's training dataset input, and the tags that lead a run
(and the model version registered from it) back to the exact Delta versions it came from, and to
how it was trained: the method (full, lora, qlora), the base it started from, and the form its
model was logged in (full weights, an adapter merged into its base, or the adapter alone); and
the licences of the sources the data came from, with whether they allow commercial use."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dolly_spark.prep import licenses

TAG_GOLD_TABLE = "dolly.gold_table"
TAG_GOLD_TABLE_NAME = "dolly.gold_table_name"
TAG_GOLD_VERSION = "dolly.gold_version"
TAG_SILVER_VERSION = "dolly.silver_version"
TAG_BRONZE_VERSION = "dolly.bronze_version"
TAG_METHOD = "dolly.method"  # full | lora | qlora
TAG_BASE_MODEL = "dolly.base_model"  # hub id or path the run fine-tuned
TAG_BASE_REVISION = "dolly.base_revision"  # the base's pinned hub revision, when there is one
TAG_MODEL_FORM = "dolly.model_form"  # what the logged model holds: one of MODEL_FORMS
FORM_FULL, FORM_MERGED, FORM_ADAPTER = "full", "merged", "adapter"
MODEL_FORMS = (FORM_FULL, FORM_MERGED, FORM_ADAPTER)
GOLD_TAGS = (TAG_GOLD_TABLE, TAG_GOLD_TABLE_NAME, TAG_GOLD_VERSION, TAG_SILVER_VERSION, TAG_BRONZE_VERSION)
METHOD_TAGS = (TAG_METHOD, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_MODEL_FORM)
# The registered model version gets the same ones.
LINEAGE_TAGS = GOLD_TAGS + METHOD_TAGS
# The train run's data licences (params and tags): ``source=SPDX;...`` and true | false | unknown.
TAG_DATA_LICENSES = "data.licenses"
TAG_DATA_COMMERCIAL_USE = "data.commercial_use"
# What the registered version is tagged with, read from the run it came from.
TAG_VERSION_LICENSES = "licenses"
TAG_VERSION_COMMERCIAL_USE = "commercial_use"


def _gold_location(gold_ref_or_path) -> tuple[str | None, str | None, str]:
    """(delta path, table name, display name) for a TableRef, a path, or a catalog name."""
    from dolly_spark.ops.tables import TableRef

    if isinstance(gold_ref_or_path, TableRef):
        return gold_ref_or_path.path, (None if gold_ref_or_path.path else gold_ref_or_path.name), gold_ref_or_path.name
    text = str(gold_ref_or_path)
    if "/" in text or os.sep in text or Path(text).exists():
        path = str(Path(text).resolve())
        return path, None, Path(path).name
    return None, text, text


def lineage_tags(gold_ref_or_path, gold_version: int, silver_version=None, bronze_version=None) -> dict[str, str]:
    path, table_name, display = _gold_location(gold_ref_or_path)
    tags = {TAG_GOLD_TABLE: path or table_name, TAG_GOLD_TABLE_NAME: display, TAG_GOLD_VERSION: str(int(gold_version))}
    for key, v in ((TAG_SILVER_VERSION, silver_version), (TAG_BRONZE_VERSION, bronze_version)):
        if v is not None:
            tags[key] = str(int(v))
    return tags


def method_tags(method: str, base_model: str | None, base_revision: str | None, form: str) -> dict[str, str]:
    """How the run trained and what its logged model holds; a tag without a value is left out."""
    if form not in MODEL_FORMS:
        raise ValueError(f"model form {form!r}: expected one of {list(MODEL_FORMS)}")
    tags = {TAG_METHOD: method, TAG_BASE_MODEL: base_model, TAG_BASE_REVISION: base_revision, TAG_MODEL_FORM: form}
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def gold_dataset(spark, gold_ref_or_path, gold_version: int):
    """An MLflow dataset for gold@version whose source is the Delta table itself.

    The digest is derived from (table, version): a Delta version is immutable, so it is exact,
    and it avoids ``semanticHash``/RDD calls that Spark Connect lacks.
    """
    from mlflow.data.delta_dataset_source import DeltaDatasetSource

    path, table_name, display = _gold_location(gold_ref_or_path)
    name = f"{display}@v{int(gold_version)}"
    digest = hashlib.md5(f"{path or table_name}@{int(gold_version)}".encode()).hexdigest()[:8]
    if path is not None:
        source = DeltaDatasetSource(path=path, delta_table_version=int(gold_version))
    else:
        source = DeltaDatasetSource(delta_table_name=table_name, delta_table_version=int(gold_version))
    if spark is not None:
        from dolly_spark.ops import tables

        ref = (
            gold_ref_or_path
            if not isinstance(gold_ref_or_path, (str, os.PathLike))
            else tables.TableRef("gold", table_name or display, path)
        )
        df = tables.read_table(spark, ref, version=int(gold_version))
        return _connect_spark_dataset_class()(df=df, source=source, name=name, digest=digest)
    if path is None:
        raise ValueError("a catalog table needs a Spark session to describe it")
    import pyarrow as pa
    from deltalake import DeltaTable
    from mlflow.data.pandas_dataset import PandasDataset

    # Schema and an exact row count: lineage needs the table and version, not a copy of the rows.
    arrow = DeltaTable(path, version=int(gold_version)).to_pyarrow_dataset()
    num_rows = arrow.count_rows()

    class DeltaSchemaDataset(PandasDataset):
        @property
        def profile(self):
            return {"num_rows": num_rows}

    return DeltaSchemaDataset(
        df=pa.schema(arrow.schema).empty_table().to_pandas(), source=source, name=name, digest=digest
    )


def _connect_spark_dataset_class():
    from mlflow.data.spark_dataset import SparkDataset

    class ConnectSparkDataset(SparkDataset):
        """SparkDataset whose profile is an exact count: MLflow's own needs RDDs (not on Spark Connect)."""

        @property
        def profile(self):
            return {"num_rows": self.df.count()}

    return ConnectSparkDataset


def log_gold_lineage(
    spark_or_none, gold_ref_or_path, gold_version: int, silver_version=None, bronze_version=None
) -> dict[str, str]:
    """Record gold@version as the active run's training dataset input, plus lineage tags
    (gold path/name and version, and the silver/bronze versions it came from)."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_gold_lineage needs an active MLflow run (open one with job_run)")
    tags = lineage_tags(gold_ref_or_path, gold_version, silver_version, bronze_version)
    dataset = gold_dataset(spark_or_none, gold_ref_or_path, gold_version)
    mlflow.log_input(dataset, context="training", tags={k: v for k, v in tags.items()})
    mlflow.set_tags(tags)
    return tags


def run_lineage(run_id: str) -> dict[str, str]:
    """The lineage tags of a run (what the registered version is tagged with)."""
    from mlflow import MlflowClient

    run_tags = MlflowClient().get_run(run_id).data.tags
    return {k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags}


def gold_licenses(spark, names, gold_version) -> dict[str, str]:
    """{source: licence} of the prepare run that committed gold at ``gold_version`` under ``names``;
    {} when no committed prepare run did (a root without a manifest, gold written by hand)."""
    from dolly_spark.ops import manifest

    if spark is None or names is None or gold_version is None:
        return {}
    if not manifest.has_manifest(spark, names):
        return {}
    details = manifest.details_for(spark, names, "gold", int(gold_version)) or {}
    return dict(details.get("licenses") or {})


def license_tags(found: dict[str, str]) -> dict[str, str]:
    """The run's ``data.licenses`` and ``data.commercial_use`` (``unknown`` both, with nothing found)."""
    return {
        TAG_DATA_LICENSES: licenses.to_text(found) or licenses.UNKNOWN,
        TAG_DATA_COMMERCIAL_USE: licenses.combined_use(found),
    }


def log_data_licenses(found: dict[str, str]) -> dict[str, str]:
    """The data's licences as params and tags of the active run (tags: what register reads)."""
    import mlflow

    tags = license_tags(found)
    mlflow.log_params(tags)
    mlflow.set_tags(tags)
    return tags


def run_licenses(run_id: str) -> tuple[dict[str, str], str]:
    """({source: licence}, commercial_use) a train run recorded; ({}, unknown) for a run that
    recorded none (trained before licences were carried)."""
    from mlflow import MlflowClient

    run_tags = MlflowClient().get_run(run_id).data.tags
    found = licenses.from_text(run_tags.get(TAG_DATA_LICENSES))
    use = run_tags.get(TAG_DATA_COMMERCIAL_USE)
    if use not in (licenses.TRUE, licenses.FALSE, licenses.UNKNOWN):
        use = licenses.combined_use(found)
    return found, use
