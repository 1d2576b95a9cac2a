"""``TrainConfig``: one typed config for the driver launcher and the per-rank workers.

The driver serialises it (plus what it resolved: shards, hardware, DeepSpeed config) into a
job file that every rank reads, so driver and workers cannot disagree about a setting. Settings
only the driver uses (planning, the fit check) live in ``dolly_spark.launch.config.TrainJobConfig``
and stay out of that file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dolly_spark.ops.config import TrackedLocation
from dolly_spark.text.model_config import TINY_MODEL
from dolly_spark.text.tokenizer import default_tokenizer
from dolly_spark.train.model import TINY_CONTEXT

GPU_FAMILIES = ("auto", "a100", "h100", "a10", "a10g", "l4", "l40s", "v100", "t4", "cpu")
LAUNCHERS = ("auto", "deepspeed", "torchrun", "distributor")
# Dolly's per-device batch sizes (A100 6, A10 4); V100 and CPU are our choices.
DEFAULT_BATCH_BY_FAMILY = {
    "a100": 6,
    "h100": 6,
    "a10": 4,
    "a10g": 4,
    "l4": 4,
    "l40s": 4,
    "v100": 3,
    "t4": 2,
    "cpu": 2,
}
CALLBACK_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # module:Class
# full: every weight trains (Dolly's); lora: low-rank adapters on a frozen base; qlora: the same on a
# base loaded in 4-bit NF4 (bitsandbytes).
METHODS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class LoraSettings:
    """The adapters of ``--method lora|qlora`` (peft's LoraConfig)."""

    r: int = field(default=16, metadata={"help": "adapter rank"})
    alpha: int = field(default=32, metadata={"help": "adapter scale numerator (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "module names that get adapters (default: GPT-NeoX's query_key_value, dense, dense_h_to_4h, "
            "dense_4h_to_h; other architectures: their linear layers)"
        },
    )

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))  # a list from the job file
        if self.r < 1 or self.alpha < 1:
            raise ValueError(f"lora r and alpha must be >= 1, got r={self.r}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")


# Exact Dolly: random (not length-grouped) batches of single records, everything else as our defaults.
DOLLY_PRESET = {
    "_help": "Dolly's schedule: unpacked random batches, checkpointing, 2 epochs, lr 5e-6, warmup 50",
    "pack": False,
    "group_by_length": False,
    "gradient_checkpointing": True,
    "epochs": 2.0,
    "lr": 5e-6,
    "warmup_steps": 50,
    "eval_steps": 50,
    "save_steps": 200,
    "seed": 42,
}


@dataclass
class TrainConfig(TrackedLocation):
    PRESETS: ClassVar[dict] = {"dolly": DOLLY_PRESET}

    gold_version: int | None = field(default=None, metadata={"help": "pinned Delta version of gold (default: latest)"})
    base_model: str = field(
        default="EleutherAI/pythia-12b",
        metadata={
            "help": f"hub id, local model dir, a config.json (random init), or {TINY_MODEL!r}: a random-init "
            "few-MB GPT-NeoX (local runs, CI)",
            "aliases": ("--model",),
        },
    )
    tokenizer: str = field(
        default_factory=default_tokenizer, metadata={"help": "hub id or local dir with tokenizer.json"}
    )
    method: str = field(
        default="full",
        metadata={
            "help": "full: every weight (Dolly's); lora: adapters on a frozen base; qlora: on a 4-bit base",
            "choices": METHODS,
        },
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"flag_prefix": "lora_"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow custom model code from the hub (off unless asked)"}
    )
    gpu_family: str = field(default="auto", metadata={"help": "DeepSpeed config family", "choices": GPU_FAMILIES})
    num_processes: int | None = field(
        default=None, metadata={"help": "processes per node (default: GPUs, or 2 on CPU)", "aliases": ("--num-gpus",)}
    )
    num_nodes: int = field(default=1, metadata={"help": "nodes; >1 uses DeepspeedTorchDistributor on Databricks"})
    launcher: str = field(default="auto", metadata={"help": "how ranks are started", "choices": LAUNCHERS})
    deepspeed_config: str | None = field(
        default=None, metadata={"help": "DeepSpeed JSON overriding the family default"}
    )
    epochs: float = 2.0
    lr: float = 5e-6
    warmup_steps: int = 50
    per_device_batch_size: int | None = field(
        default=None, metadata={"help": "default by family: 6 a100/h100, 4 a10/a10g/l4/l40s, 3 v100, 2 t4/cpu"}
    )
    per_device_eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    max_steps: int = field(default=-1, metadata={"help": "stop after N optimizer steps (-1: run all epochs)"})
    eval_steps: int = 50
    save_steps: int = 200
    save_total_limit: int = field(default=2, metadata={"help": "keep the last K complete checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest complete checkpoint"})
    staging_dir: str | None = field(
        default=None, metadata={"help": "shards dir every node can read (a UC Volume on Databricks)"}
    )
    checkpoint_dir: str | None = None
    model_dir: str | None = None
    seed: int = 42
    max_seq_len: int | None = field(
        default=None, metadata={"help": "longest row in tokens (default: the model's max_position_embeddings)"}
    )
    pack: bool = field(
        default=False,
        metadata={"help": "throughput mode: train on gold's packed rows (records per step then vary)"},
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "batch records of similar length (less padding; Dolly: random batches)"}
    )
    max_eval_records: int | None = field(
        default=None, metadata={"help": "cap eval records (per category order) for quick runs"}
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "recompute activations in backward (Dolly's default; use_cache off)"}
    )
    callbacks: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "extra TrainerCallback classes as module:Class, built with no arguments on every rank "
            "(importable on the driver and the ranks)"
        },
    )
    master_port: int | None = field(default=None, metadata={"help": "rendezvous port (default: a free one)"})

    def __post_init__(self):
        if self.gpu_family not in GPU_FAMILIES:
            raise ValueError(f"gpu_family must be one of {GPU_FAMILIES}, got {self.gpu_family!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError("save_total_limit must be >= 1")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be at least 8, got {self.max_seq_len}")
        self.callbacks = tuple(self.callbacks)  # a list when read back from the job file
        for spec in self.callbacks:
            if not isinstance(spec, str) or not CALLBACK_SPEC.match(spec):
                raise ValueError(f"callbacks: {spec!r} is not module:Class")

    @property
    def tiny(self) -> bool:
        """Whether ``base_model`` is the random-init tiny model."""
        return self.base_model == TINY_MODEL

    def rank_config(self) -> dict[str, Any]:
        """The settings every rank reads: ``TrainConfig``'s own fields, none a driver-side subclass adds."""
        own = {f.name for f in dataclasses.fields(TrainConfig)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in own}

    def resolved_max_seq_len(self) -> int:
        """--max-seq-len, else the model's context (Dolly reads it from the model config)."""
        if self.max_seq_len:
            return int(self.max_seq_len)
        if self.tiny:
            return TINY_CONTEXT
        from dolly_spark.text.model_config import model_max_positions

        return model_max_positions(self.base_model)

    @property
    def train_root(self) -> Path:
        """Where outputs go by default: ROOT/train locally, a UC Volume on Databricks."""
        if self.output_root:
            return Path(self.output_root).resolve() / "train"
        if self.catalog:
            return Path(f"/Volumes/{self.catalog}/{self.schema}/dolly/train")
        raise ValueError("give --output-root DIR (local) or --catalog and --schema (Databricks)")

    def resolved_staging_dir(self) -> Path:
        return Path(self.staging_dir) if self.staging_dir else self.train_root / "staging"

    def resolved_checkpoint_dir(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.train_root / "checkpoints"

    def resolved_model_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else self.train_root / "model"

    def batch_size_for(self, family: str) -> int:
        return self.per_device_batch_size or DEFAULT_BATCH_BY_FAMILY[family]


@dataclass
class WorkerJob:
    """What the driver resolved for the ranks; written as JSON next to the shards."""

    config: dict[str, Any]  # TrainConfig.rank_config()
    train_files: list[str]
    eval_files: list[str]
    family: str
    checkpoint_dir: str
    model_dir: str
    metrics_path: str
    run_dir: str  # errors/, final_eval.json, the copied DeepSpeed config
    attempt: str = ""  # tags metric rows, so a resumed run's rows can be told apart

    def train_config(self) -> TrainConfig:
        from dolly_spark.ops.config import from_dict

        return from_dict(TrainConfig, self.config)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> WorkerJob:
        return cls(**json.loads(Path(path).read_text()))
