"""A piece's batch dimension, freed again: partitioning binds a model's free batch dimension to 1.

An app binds its models' symbolic dimensions (`dims: {batch: 1}`) so that the partitioner can
cost and cut them, and every piece is then written with batch 1. A site that batches requests
(runtime.stage: cloud-tier sites) can only concatenate them when the piece's inputs take any
first dimension, so a piece of a model whose inputs had a free first dimension is served with
that dimension freed again (`free_batch`), after checking with onnxruntime that a batch of two
gives the two single results (a piece that reshapes to a fixed batch fails the check and keeps
batch 1). Which models have a free first dimension is decided at plan time
(`Plan.batch_free_models`, planner.plan.batch_free_models), and the simulator reads the same list
(simulations.batching), so both batch the same pieces.
"""

from __future__ import annotations


import numpy as np

__all__ = ["free_batch", "BATCH_DIM"]

BATCH_DIM = "batch"
_CHECK_RTOL = 1e-4
_CHECK_ATOL = 1e-5


def _graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _rand(info, batch: int, rng) -> np.ndarray:
    from onnx import helper
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    shape = [batch] + [d.dim_value or 1 for d in info.type.tensor_type.shape.dim[1:]]
    if dt.kind in "ui":
        return rng.integers(0, 8, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def free_batch(data: bytes) -> bytes | None:
    """The piece (ONNX bytes) with the first dimension of every input and output named `batch`, when all
    are 1 and onnxruntime gives a batch of two the two single results; else None (keep the piece as it is)."""
    import onnx
    import onnxruntime as ort
    try:
        model = onnx.load_from_string(data)
    except Exception:
        return None
    ins, outs = _graph_inputs(model), list(model.graph.output)
    tensors = [*ins, *outs]
    if not ins or not all(t.type.tensor_type.shape.dim and t.type.tensor_type.shape.dim[0].dim_value == 1
                          for t in tensors):
        return None
    for t in tensors:
        d = t.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = BATCH_DIM
    del model.graph.value_info[:]        # intermediate shapes held batch 1: onnxruntime infers them again
    freed = model.SerializeToString()
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4        # a failing check is an answer, not a warning
        sess = ort.InferenceSession(freed, opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        one = [{i.name: _rand(i, 1, rng) for i in ins} for _ in range(2)]
        both = sess.run(None, {n: np.concatenate([one[0][n], one[1][n]]) for n in one[0]})
        singles = [sess.run(None, x) for x in one]
    except Exception:   # a reshape to a fixed batch and the like: the piece keeps batch 1
        return None
    for k, out in enumerate(both):
        if out.shape[0] != 2:
            return None
        want = np.concatenate([singles[0][k], singles[1][k]])
        if want.shape != out.shape or not np.allclose(out, want, rtol=_CHECK_RTOL, atol=_CHECK_ATOL, equal_nan=True):
            return None
    return freed
