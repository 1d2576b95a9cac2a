"""Executors load what they can see: the model, and dedup intermediates, go to paths every node reads."""

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


def test_dedup_intermediates_refuse_a_driver_temp_dir_on_a_cluster(monkeypatch, tmp_path):
    from dolly_spark.ops.workdir import WorkDir

    monkeypatch.setenv("SPARK_REMOTE", "sc://cluster:15002")
    with pytest.raises(ValueError, match="--dedup-work-dir"):
        WorkDir(None)
    assert WorkDir(str(tmp_path)).path.parent == tmp_path  # under the given shared dir


def test_prepare_takes_the_dedup_work_dir_flag():
    from dolly_spark.commands.cli import parser_for

    ns = parser_for("prepare").parse_args(["--input", "x", "--dedup-work-dir", "/Volumes/c/s/v/_work/dedup"])
    assert vars(ns)["dedup.work_dir"] == "/Volumes/c/s/v/_work/dedup"


def test_each_deepspeed_release_builds_its_ops_in_its_own_cache(monkeypatch):
    import importlib.metadata

    from dolly_spark.launch.processes import worker_env

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    env = worker_env("cpu")
    assert env["TORCH_EXTENSIONS_DIR"].endswith(f"deepspeed-{importlib.metadata.version('deepspeed')}")
