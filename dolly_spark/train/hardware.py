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


QLORA_ZERO3 = (
    "qlora cannot run under ZeRO-3 (DeepSpeed cannot partition bitsandbytes' 4-bit weights): "
    "use a ZeRO-2 or ZeRO-0 DeepSpeed config, or --method lora"
)


def zero_stage_for_method(method: str, family_stage: int) -> int:
    """The ZeRO stage a family's config runs at for ``method``.

    Full fine-tuning keeps the family's stage (ZeRO-3: Dolly's). LoRA and QLoRA train a few million
    adapter weights, whose gradients and Adam states are small, so ZeRO-2 (no parameter
    partitioning, no per-layer gathers) is the usual choice; QLoRA needs it, bitsandbytes' 4-bit
    weights cannot be partitioned by ZeRO-3. An explicit ``--deepspeed-config`` is not adapted.
    """
    return family_stage if method == "full" else min(family_stage, 2)


def for_method(ds_config: dict[str, Any], method: str) -> dict[str, Any]:
    """A copy of a family's DeepSpeed config set up for ``method`` (see ``zero_stage_for_method``).

    Below ZeRO-3, parameter offload and the ``stage3_*`` keys do not apply and are dropped. The
    adapters' optimizer states are small, so offloading them would only add PCIe traffic: dropped too.
    """
    if method == "full":
        return ds_config
    out = json.loads(json.dumps(ds_config))
    zero = out.setdefault("zero_optimization", {})
    zero["stage"] = zero_stage_for_method(method, int(zero.get("stage", 0)))
    for key in [k for k in zero if k.startswith("stage3_")] + ["offload_param", "offload_optimizer"]:
        zero.pop(key, None)
    return out


def load_ds_config(family: str, override: str | None = None, method: str = "full") -> dict[str, Any]:
    """The family's shipped config adapted for ``method``, or ``override`` exactly as written."""
    if override:
        return json.loads(Path(override).read_text())
    return for_method(json.loads(ds_config_path(family).read_text()), method)


def precision_flags(ds_config: dict[str, Any]) -> dict[str, bool]:
    """TrainingArguments bf16/fp16 must agree with the DeepSpeed config."""

    def enabled(section: str) -> bool:
        v = ds_config.get(section, {}).get("enabled", False)
        return v is True or v == "auto"

    return {"bf16": enabled("bf16"), "fp16": enabled("fp16")}
