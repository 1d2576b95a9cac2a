"""Executors load what they can see: the model goes once to a path every node reads."""

import pytest

from dolly_spark.serve.model_download import NoSharedDownloadDirError, download_model_once, shared_download_dir


def test_download_dir_follows_the_engine(tmp_path):
    assert shared_download_dir("/Volumes/c/s/v/models", None, "databricks") == "/Volumes/c/s/v/models"
    assert shared_download_dir(None, str(tmp_path), "remote") == str(tmp_path.resolve() / "_work" / "models")
    assert shared_download_dir(None, None, "sail") is None  # executors share this machine's disk
    with pytest.raises(NoSharedDownloadDirError, match="--download-dir"):
        shared_download_dir(None, None, "databricks")


def test_a_version_is_downloaded_once_and_reused(tmp_path):
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "MLmodel").write_text("flavors: {}\n")
    first = download_model_once(src.as_uri(), "dolly/1", str(tmp_path / "shared"))
    assert (tmp_path / "shared" / "dolly_1" / "DOWNLOADED").is_file()
    (src / "model" / "MLmodel").unlink()  # a second download would now miss the file
    again = download_model_once(src.as_uri(), "dolly/1", str(tmp_path / "shared"))
    assert again == first
    assert list((tmp_path / "shared" / "dolly_1").rglob("MLmodel"))
