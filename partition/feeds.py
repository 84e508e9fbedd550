"""Deterministic random inputs for running a model or its pieces (shape probes and verification)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tierplan.partition.types import TensorInfo

__all__ = ["random_feeds"]


def random_feeds(inputs: Iterable[TensorInfo], seed: int = 0) -> dict[str, np.ndarray]:
    """One array per input: standard normal floats, zeros for integers and booleans.

    Integers are zero rather than random because they are usually indices, lengths or sizes,
    where a random value would make the model fail rather than exercise it.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for t in inputs:
        dt = np.dtype(t.dtype)
        if np.issubdtype(dt, np.floating):
            out[t.name] = rng.standard_normal(t.shape).astype(dt)
        else:
            out[t.name] = np.zeros(t.shape, dtype=dt)
    return out
