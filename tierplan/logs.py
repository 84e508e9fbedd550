"""Quiet by default: Ray's and gRPC's own logging stays at WARNING unless the user asks for more.

What would otherwise reach a user of the Python API (the CLI has always filtered it):
- gRPC's C core writes to stderr itself, e.g. `fork_posix.cc:71] Other threads are currently
  calling into gRPC, skipping fork() handlers` at INFO each time Ray forks a process. Its level
  is GRPC_VERBOSITY, read when gRPC starts, so `quiet_by_default()` (run when tierplan is
  imported) sets it to ERROR unless the user set it.
- Ray's driver-side Python loggers ("ray" and below) print INFO lines (e.g. "Overwriting
  previous Ray address" when a local cluster starts). Importing Ray sets the "ray" logger to
  INFO, so tierplan imports Ray through `quiet_ray()`, which sets it back; every `ray.init` in
  tierplan passes `logging_level=log_level()` (Ray resets the "ray" logger to the level it is
  given) and `log_to_driver=False`.
gRPC's Python loggers ("grpc") get the same level.

Ask for more with `TIERPLAN_LOG_LEVEL=INFO` (or DEBUG) in the environment before importing
tierplan, or set GRPC_VERBOSITY yourself. gRPC reads GRPC_VERBOSITY once, when it is first
imported: a program that imports grpc (or ray) before tierplan sets it itself.
"""

from __future__ import annotations

import logging
import os

__all__ = ["log_level", "quiet_by_default", "quiet_ray", "LOGGERS"]

LOGGERS = ("ray", "grpc")
_GRPC_VERBOSITY = {logging.DEBUG: "DEBUG", logging.INFO: "INFO"}   # anything above INFO: ERROR


def log_level() -> int:
    """The level of Ray's and gRPC's logging: TIERPLAN_LOG_LEVEL (a logging level name), WARNING by default."""
    level = logging.getLevelName(os.environ.get("TIERPLAN_LOG_LEVEL", "WARNING").strip().upper())
    return level if isinstance(level, int) else logging.WARNING


def quiet_by_default() -> None:
    """Set gRPC's C-core verbosity (unless the user did) and the Ray and gRPC loggers to `log_level()`."""
    level = log_level()
    os.environ.setdefault("GRPC_VERBOSITY", _GRPC_VERBOSITY.get(level, "ERROR"))
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def quiet_ray() -> None:
    """Import Ray (its import sets the "ray" logger to INFO) and set its loggers back to `log_level()`."""
    import ray  # noqa: F401

    quiet_by_default()
