"""Non-finite guard for training steps: a NaN/inf loss (or gradient) skips the update and is counted; after
``max_consecutive`` in a row the run stops with an error that says where and what to try. Shared by the stages."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class NonFiniteGuard:
    """Counts skipped steps.

    Args:
        max_consecutive: raise ``NonFiniteError`` when this many non-finite records arrive in a row.
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def record(self, finite: bool, what: str, step: int) -> None:
        """Record one check; raises after ``max_consecutive`` non-finite checks in a row."""
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        log.warning("non-finite %s at step %d: update skipped (%d in a row, %d in total)", what, step,
                    self.consecutive, self.total)  # fmt: skip
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite losses/gradients (last: {what} at step {step}). "
                "The run diverged: lower the learning rate, enable gradient clipping (module.grad_clip_g/_d), use "
                "bf16 instead of 16-mixed, or resume from an earlier checkpoint."
            )

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])
