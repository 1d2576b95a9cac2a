import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("DOLLY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DOLLY_JSONL = SHARED / "databricks-dolly-15k.jsonl"
TOKENIZER_DIR = SHARED / "tokenizer" / "gpt-neox-20b"


@pytest.fixture(scope="session")
def spark():
    from dolly_spark.session import get_spark, stop_embedded

    session = get_spark("dolly_spark_tests")
    yield session
    stop_embedded()
