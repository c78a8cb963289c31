"""Graceful interruption: SIGINT / SIGTERM set a flag that the training loop polls.

The loop finishes the step in progress, writes a resumable checkpoint and exits with
128 + signal number (130 for SIGINT, 143 for SIGTERM), the shell convention. A second signal
of the same kind while the checkpoint is being written is ignored with a log line, so an
impatient Ctrl-C cannot corrupt the save (saves are atomic anyway).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from typing_extensions import Self

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """Context manager installing handlers that record the first SIGINT/SIGTERM received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum) if self.signum is not None else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            logger.warning("received %s: finishing the current step, then saving a checkpoint",
                           signal.Signals(signum).name)
        else:
            logger.warning("received %s again: still saving, please wait",
                           signal.Signals(signum).name)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
