"""GPU family detection and the DeepSpeed config shipped for each family."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

# Every family the bundle offers. T4 and V100 have no bf16: fp16 config. A10G, L4 (24 GB) and
# L40S (48 GB) take the A10 config (bf16, ZeRO-3 with offload sized for 24 GB cards).
DS_CONFIG_FILES = {
    "a100": "ds_a100_h100.json",
    "h100": "ds_a100_h100.json",
    "a10": "ds_a10.json",
    "a10g": "ds_a10.json",
    "l4": "ds_a10.json",
    "l40s": "ds_a10.json",
    "v100": "ds_v100.json",
    "t4": "ds_v100.json",
    "cpu": "ds_cpu.json",
}


def family_from_device_name(name: str, capability: tuple[int, int] | None = None) -> str:
    """Map a CUDA device name to a config family.

    T4 and other pre-Ampere cards have no bf16, so they share the V100 (fp16) config.
    """
    n = name.upper()
    if "H100" in n or "H200" in n or "H800" in n:
        return "h100"
    if "A100" in n or "A800" in n:
        return "a100"
    if "L40S" in n:
        return "l40s"
    if "L4" in n:
        return "l4"
    if "A10" in n:  # A10 and A10G (after the A100 check, which also contains "A10")
        return "a10"
    if "V100" in n or "T4" in n:
        return "v100"
    if capability is not None and capability >= (8, 0):
        return "a10"  # unknown Ampere+: bf16 with offload is the safe choice
    return "v100"


def detect_family() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "cpu"
    return family_from_device_name(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))


def resolve_family(requested: str) -> str:
    return detect_family() if requested == "auto" else requested


def local_device_count(family: str) -> int:
    if family == "cpu":
        return 2  # two CPU ranks: enough to exercise ZeRO-3 partitioning locally
    import torch

    return torch.cuda.device_count()


def ds_config_path(family: str) -> Path:
    return Path(str(resources.files("dolly_spark") / "configs" / DS_CONFIG_FILES[family]))


def load_ds_config(family: str, override: str | None = None) -> dict[str, Any]:
    path = Path(override) if override else ds_config_path(family)
    return json.loads(path.read_text())


def precision_flags(ds_config: dict[str, Any]) -> dict[str, bool]:
    """TrainingArguments bf16/fp16 must agree with the DeepSpeed config."""

    def enabled(section: str) -> bool:
        v = ds_config.get(section, {}).get("enabled", False)
        return v is True or v == "auto"

    return {"bf16": enabled("bf16"), "fp16": enabled("fp16")}
