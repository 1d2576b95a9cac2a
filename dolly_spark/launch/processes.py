"""Starting the ranks: the launcher command and environment, the streamed output, the distributor.

One node: ``deepspeed`` or ``torchrun`` as a subprocess in its own session, its output streamed
(rank 0's progress lines drive a bar on a terminal, a log line every few steps otherwise).
Several Databricks nodes: ``DeepspeedTorchDistributor``.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from dolly_spark.launch.failures import TrainingFailed, dead_ranks, read_tracebacks
from dolly_spark.ops.runtime import installed_version
from dolly_spark.train.config import TrainConfig
from dolly_spark.train.progress import parse_progress

log = logging.getLogger(__name__)

WORKER_MODULE = "dolly_spark.train.worker"
LOG_EVERY_STEPS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHM_DIR = Path("/dev/shm")


def shm_segments(port: int, shm_dir: Path = SHM_DIR) -> list[Path]:
    """This user's DeepSpeed CPU all-reduce segments of the run on ``port``, by name."""
    return sorted(shm_dir.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def remove_shm_segments(port: int, shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the shared memory DeepSpeed's CPU all-reduce left for the run on ``port``.

    Each CPU rank maps a ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` segment (~69 MB)
    and DeepSpeed never unlinks it; /dev/shm is RAM, so every run would leak its ranks' segments.
    Call once the ranks have exited. Returns the names removed.
    """
    segments = shm_segments(port, shm_dir)
    for seg in segments:
        seg.unlink(missing_ok=True)
    return [seg.name for seg in segments]


def choose_launcher(cfg: TrainConfig) -> str:
    if cfg.launcher != "auto":
        return cfg.launcher
    if cfg.num_nodes > 1:
        return "distributor"
    return "deepspeed"


def launch_command(launcher: str, nproc: int, port: int, job_path: Path, ds_path: Path) -> list[str]:
    worker_args = ["--job", str(job_path), "--deepspeed_config", str(ds_path)]
    if launcher == "deepspeed":
        return [
            sys.executable,
            "-u",
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(port),
            "--module",
            WORKER_MODULE,
            *worker_args,
        ]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-u",
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            "-m",
            WORKER_MODULE,
            *worker_args,
        ]
    raise ValueError(f"no local command for launcher {launcher!r}")


def worker_env(family: str, show_progress: bool | None = None) -> dict[str, str]:
    """The ranks' environment: a copy of this process's (``os.environ`` itself is left alone).

    ``show_progress`` (default: whether this process's stderr is a terminal) off turns the ranks'
    datasets/transformers progress bars off: in piped logs every redraw is another line.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    pkg_parent = str(Path(__file__).resolve().parents[2])  # the directory holding dolly_spark/
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Ops JIT-built by one DeepSpeed release must not be loaded by another (the runtime rows share
    # this machine's cache; the op names are the same).
    ds_version = installed_version("deepspeed") or "none"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / f"deepspeed-{ds_version}"))
    if family == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    if not (sys.stderr.isatty() if show_progress is None else show_progress):
        env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow this one
    return env


class ProgressReporter:
    """Rank 0's progress lines: a tqdm bar when ``stream`` is a terminal, and a log line every
    ``every`` steps either way (piped, a bar's redraws would be a line each)."""

    def __init__(self, stream=None, every: int = LOG_EVERY_STEPS):
        stream = sys.stderr if stream is None else stream
        self.every = every
        self.step = 0
        self.bar = None
        if stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, desc="train", unit="step", file=stream, dynamic_ncols=True)

    def update(self, payload: dict) -> None:
        total = payload.get("max_steps")
        step = int(payload.get("step", self.step))
        if self.bar is not None:
            self._draw(payload, total, step)
        self.step = step
        if step % self.every == 0:
            log.info("step %d/%s loss %.4f", step, total, payload.get("loss", float("nan")))

    def _draw(self, payload: dict, total, step: int) -> None:
        if total and self.bar.total != total:
            self.bar.total = total
        if step > self.step:
            self.bar.update(step - self.step)
        tps = payload.get("tokens_per_s")
        self.bar.set_postfix(loss=f"{payload.get('loss', float('nan')):.4f}", tok_s=f"{tps:.0f}" if tps else "-")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_subprocess(cmd: list[str], env: dict[str, str], run_dir: Path, echo=print) -> None:
    """Run the launcher, stream its output, raise TrainingFailed with rank tracebacks on failure."""
    log.info("launching: %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=200)
    progress = ProgressReporter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            payload = parse_progress(line)
            if payload is not None:
                progress.update(payload)
                continue
            tail.append(line)
            echo(line)
        rc = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        progress.close()
    if rc != 0:
        raise TrainingFailed(rc, read_tracebacks(run_dir), list(tail), dead_ranks("\n".join(tail)))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the launcher and its ranks
    except ProcessLookupError:
        pass
    proc.wait()


def run_distributor(cfg: TrainConfig, nproc: int, family: str, job_path: Path, ds_path: Path, run_dir: Path) -> None:
    """Multi-node on Databricks; the distributor appends ``--deepspeed --deepspeed_config PATH``."""
    from pyspark.ml.deepspeed.deepspeed_distributor import DeepspeedTorchDistributor

    from dolly_spark.train import worker

    distributor = DeepspeedTorchDistributor(
        numGpus=nproc,
        nnodes=cfg.num_nodes,
        localMode=cfg.num_nodes <= 1,
        useGpu=family != "cpu",
        deepspeedConfig=str(ds_path),
    )
    try:
        distributor.run(worker.__file__, "--job", str(job_path))
    except Exception as err:
        raise TrainingFailed(None, read_tracebacks(run_dir), [str(err)], dead_ranks(str(err))) from err
