"""The error surface of the command-line programs (``lp-train``, ``lp-eval``, ``lp-prep``, ``lp-animate``,
``lp-ckpt``): a user error — a missing checkpoint or folder, a shard glob that matches nothing, a bad config value or
override — prints ONE line ``<prog>: error: <what>`` on stderr and exits with status 2; anything else (a bug, a
crash) keeps its full traceback and exits 1.

``--debug`` on the command line, or ``HYDRA_FULL_ERROR=1`` in the environment, shows the full traceback of user
errors too. The decision is made once, by the program the user started, and handed to the processes it spawns (DDP
ranks, launcher jobs) through ``LP_DEBUG``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USER_ERROR = 2
DEBUG_ENV = "LP_DEBUG"


class UserError(Exception):
    """A mistake in the command line, the config or the inputs (not a bug): reported as one line, exit 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user asked for something that cannot be done"."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # ValueError covers CheckpointError and config validation; HydraException covers bad overrides, unknown config
    # groups and a target that rejects its config values (InstantiationException).
    return (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, HydraException,
            OmegaConfBaseException)  # fmt: skip


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """``--debug`` in ``argv``, ``HYDRA_FULL_ERROR=1`` or an inherited ``LP_DEBUG=1``."""
    if os.environ.get(DEBUG_ENV) in ("0", "1"):
        return os.environ[DEBUG_ENV] == "1"
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def one_line(e: BaseException) -> str:
    """The exception's message on one line; for a wrapped error (Hydra's "Error in call to target ..."), the cause's
    message first, then what it happened in."""
    text = _flat(str(e)) or type(e).__name__
    cause = e.__cause__
    if cause is None or not _flat(str(cause)):
        return text
    inner = _flat(str(cause))
    head = _flat(str(e).strip().splitlines()[0]).rstrip(":") if str(e).strip() else ""
    return inner if not head or head in inner else f"{inner} ({head})"


def _report(prog: str, e: BaseException) -> SystemExit:
    print(f"{prog}: error: {one_line(e)}  (--debug for the traceback)", file=sys.stderr)
    return SystemExit(EXIT_USER_ERROR)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_user_errors(prog: str) -> Callable:
    """Decorator of a Hydra task function (under ``@hydra.main``): a user error raised by the task becomes the one
    line and exit 2 right there, before Hydra adds its own "Error executing job" banner. Sweep members (multirun)
    re-raise, so their launcher records the error."""

    def wrap(task: Callable) -> Callable:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return task(*args, **kwargs)
            except user_error_types() as e:
                if debug_requested() or _in_multirun():
                    raise
                raise _report(prog, e) from None

        return run

    return wrap


def run_cli(prog: str, main: Callable[[], Any], argv: Sequence[str] | None = None) -> Any:
    """Run ``main`` (a ``@hydra.main`` function, or any callable that reads ``sys.argv``) with the error rules above.

    ``--debug`` is removed from ``sys.argv`` before ``main`` parses it. Hydra is told to re-raise everything
    (``HYDRA_FULL_ERROR=1``) so that its own config errors (bad overrides, unknown groups) reach this handler; errors
    of the task itself are handled by ``report_user_errors`` on the task function.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    os.environ[DEBUG_ENV] = "1" if debug else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0], *(a for a in argv if a != "--debug")]
    try:
        return main()
    except user_error_types() as e:
        if debug:
            raise
        raise _report(prog, e) from None
