"""``TrainJobConfig``: what ``dolly-spark train`` takes, the ranks' ``TrainConfig`` plus the settings
only the driver reads (planning and the fit check). The job file the ranks read holds
``TrainConfig.rank_config()``, so these never reach a rank."""

from __future__ import annotations

from dataclasses import dataclass, field

from dolly_spark.train.config import TrainConfig


@dataclass
class TrainJobConfig(TrainConfig):
    plan: bool = field(default=False, metadata={"help": "print the resolved plan as JSON and exit (no launch)"})
    gpu_memory_gb: float | None = field(
        default=None, metadata={"help": "memory per GPU to plan for (default: the detected or the family's card)"}
    )
    host_memory_gb: float | None = field(default=None, metadata={"help": "host memory per node to plan for"})
    check_fit: bool = field(default=True, metadata={"help": "refuse to launch a setup the plan says won't fit"})
    log_adapter_only: bool = field(
        default=False,
        metadata={
            "help": "lora/qlora: log only the adapter, pinned to its base (default: the adapter merged into the base, "
            "plus the adapter as an artifact)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.log_adapter_only and self.method == "full":
            raise ValueError("log_adapter_only: only a lora or qlora run has an adapter to log")
