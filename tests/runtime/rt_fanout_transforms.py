"""Transforms used by the runtime's fan-out test (imported by the agent and Ray workers by name)."""

from __future__ import annotations

import numpy as np

__all__ = ["split_rows", "add_row_sum"]


def split_rows(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One request per row of `x` (none for an empty batch)."""
    x = inputs["x"]
    return [{"x": x[i:i + 1]} for i in range(x.shape[0])]


def add_row_sum(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Join of a row and the model's output for it: y + sum(row)."""
    return [{"z": inputs["y"] + inputs["x"].sum()}]
