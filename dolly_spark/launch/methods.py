"""What ``--method qlora`` needs from the machine, checked on the driver before anything is staged.

QLoRA loads the base in 4-bit NF4 through bitsandbytes, whose 4-bit kernels exist only in some
builds and for some devices. The check is a capability probe, not a version test: it quantises and
dequantises a tiny tensor with ``bitsandbytes.functional`` on the device the ranks will use.
The ZeRO stage each method runs at is chosen in ``dolly_spark.train.hardware`` (``for_method``).
"""

from __future__ import annotations

import logging

from dolly_spark.train.hardware import resolve_family

log = logging.getLogger(__name__)

# NF4's widest gap between two levels is 0.28 of a block's absmax, so a correct round trip of values
# in [-1, 1] is off by at most 0.14; anything past this bound is a broken kernel, not rounding.
NF4_ROUND_TRIP_TOLERANCE = 0.2


class MethodUnsupported(RuntimeError):
    """The method cannot run on this setup: one line with the reason and the fix."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def rank_device(family: str) -> str:
    """The torch device type the ranks of ``family`` train on."""
    return "cpu" if family == "cpu" else "cuda"


def _import_bitsandbytes():
    from bitsandbytes import functional

    return functional


def probe_4bit(device: str) -> str | None:
    """None when bitsandbytes quantises and dequantises NF4 on ``device``, else why not (one line)."""
    try:
        import torch

        bnb_functional = _import_bitsandbytes()
    except Exception as err:  # not installed, or its native library failed to load
        return _one_line(err)
    try:
        x = torch.linspace(-1.0, 1.0, 128, device=device).reshape(2, 64)
        packed, state = bnb_functional.quantize_4bit(x, quant_type="nf4")
        back = bnb_functional.dequantize_4bit(packed, state, quant_type="nf4")
        error = (back.float() - x).abs().max().item()
    except Exception as err:  # no kernel for this device, or no such device
        return _one_line(err)
    if not error <= NF4_ROUND_TRIP_TOLERANCE:  # also catches NaN
        return f"an NF4 round trip on {device} is off by {error:.3g}"
    return None


def _cuda_here() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def check_method_support(cfg) -> None:
    """Raise ``MethodUnsupported`` when ``cfg.method`` cannot run with this bitsandbytes.

    On a driver without a GPU whose ranks run on GPU workers (the distributor), the kernels cannot be
    probed here: only the import is checked, and a warning says so.
    """
    if cfg.method != "qlora":
        return
    device = rank_device(resolve_family(cfg.gpu_family))
    if device == "cuda" and not _cuda_here():
        try:
            _import_bitsandbytes()
            reason = None
        except Exception as err:
            reason = _one_line(err)
        if reason is None:
            log.warning("qlora: no GPU on this driver to probe bitsandbytes' 4-bit cuda kernels; the ranks will")
    else:
        reason = probe_4bit(device)
    if reason is not None:
        raise MethodUnsupported(
            f"qlora needs bitsandbytes with 4-bit kernels for {device}: {reason}; "
            "pip install -U bitsandbytes (a build with them) or use --method lora"
        )
