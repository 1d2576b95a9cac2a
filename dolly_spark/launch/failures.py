"""Why training failed: the ranks' tracebacks, and the ranks the launcher saw die without one."""

from __future__ import annotations

import re
import signal
from pathlib import Path

# The deepspeed launcher names the first rank to fail by its command line; torchrun by a report block.
_DEEPSPEED_EXIT = re.compile(r"--local_rank=(\d+)\b.*\bexits with return code = (-?\d+)")
_TORCHRUN_EXIT = re.compile(r"^\s*rank\s*:\s*(\d+)\b.*\n\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def dead_ranks(log_tail: str) -> dict[int, int]:
    """Rank -> exit code of the ranks the launcher reports as failed; a negative code is a signal.

    A rank killed by a signal (SIGKILL, the OOM killer) writes no traceback, so the launcher's
    line is the only trace of the cause. Single node: the deepspeed launcher's local rank is the rank.
    """
    found: dict[int, int] = {}
    for pattern in (_DEEPSPEED_EXIT, _TORCHRUN_EXIT):
        for m in pattern.finditer(log_tail):
            found[int(m.group(1))] = int(m.group(2))
    return found


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-code})"
    return f"exited with code {code}"


def _rank_order(who: str) -> tuple[int, str]:
    digits = who[len("rank") :]
    return (int(digits), who) if who.startswith("rank") and digits.isdigit() else (1 << 30, who)


class TrainingFailed(RuntimeError):
    def __init__(
        self, returncode: int | None, tracebacks: dict[str, str], tail: list[str], dead: dict[int, int] | None = None
    ):
        self.returncode = returncode
        self.tracebacks = tracebacks
        self.tail = tail
        self.dead = dict(dead or {})
        # A rank that died without a traceback is the cause; the survivors' tracebacks
        # ("Connection closed by peer") are its consequence, so it comes first.
        silent = [
            f"--- rank{r} --- {_exit_description(code)} without a traceback"
            for r, code in sorted(self.dead.items())
            if f"rank{r}" not in tracebacks
        ]
        parts = silent + [
            f"--- {who} ---\n{tb}" for who, tb in sorted(tracebacks.items(), key=lambda kv: _rank_order(kv[0]))
        ]
        if tracebacks:
            detail = "\n".join(parts)
        else:
            detail = "\n".join(silent + ["no rank wrote a traceback; last output lines:", *tail[-40:]])
        super().__init__(f"training failed (exit code {returncode}):\n{detail}")


def read_tracebacks(run_dir: Path) -> dict[str, str]:
    err_dir = run_dir / "errors"
    if not err_dir.is_dir():
        return {}
    return {p.stem: p.read_text() for p in sorted(err_dir.glob("rank*.txt"))}
