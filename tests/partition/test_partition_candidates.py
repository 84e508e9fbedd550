"""Candidate cut points for the planner, and pieces cut exactly where the planner chose (issue #16)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from tierplan.partition.api import partition_model
from tierplan.partition.candidates import MAX_TENSORS, candidate_cuts, cuts_at
from tierplan.partition.cuts import find_cuts, topological_order
from tierplan.partition.onnx_graph import load_onnx


def test_every_small_cut_is_a_candidate_when_there_are_few(squeezenet: Path) -> None:
    """With room for them all, the candidates are exactly the cuts crossed by at most MAX_TENSORS tensors."""
    G = load_onnx(squeezenet)
    every = find_cuts(G, None, MAX_TENSORS)
    got = candidate_cuts(G, None)
    assert [c.position for c in got] == sorted(c.position for c in every)
    assert all(len(c.tensors) <= MAX_TENSORS for c in got)


def test_bounded_candidates_keep_compute_in_every_segment(squeezenet: Path) -> None:
    """With at most k segments: k - 1 cuts or fewer, each segment at least 1/(4k) of the FLOPs."""
    G = load_onnx(squeezenet)
    order = topological_order(G)
    flops = [float(G.nodes[v].get("flops", 0.0) or 0.0) for v in order]
    total = sum(flops)
    for k in (4, 8, 16):
        cuts = candidate_cuts(G, k)
        assert 0 < len(cuts) <= k - 1
        bounds = [0] + [c.position for c in cuts] + [len(order)]
        assert all(sum(flops[a:b]) >= total / (4 * k) - 1e-6 for a, b in zip(bounds, bounds[1:]))


def test_pieces_at_the_chosen_cuts_equal_the_whole_model(squeezenet: Path, tmp_path: Path) -> None:
    """partition_model(cuts=...) cuts exactly there; the chained pieces compute the whole model's
    output (onnxruntime), and a second call reads them back from the cache."""
    G = load_onnx(squeezenet)
    chosen = [c.position for c in candidate_cuts(G, 8)][1:4]
    res = partition_model(squeezenet, cuts=chosen, verify=True, out_dir=tmp_path / "p")
    assert [c["position"] for c in res.manifest["cuts"]] == chosen
    assert len(res.pieces) == len(chosen) + 1
    assert res.verify is not None and res.verify.max_abs_diff < 1e-4
    again = partition_model(squeezenet, cuts=chosen, out_dir=tmp_path / "p")
    assert again.cached and [p.id for p in again.pieces] == [p.id for p in res.pieces]


def test_cuts_at_refuses_a_position_that_is_no_cut() -> None:
    """A position outside the order is refused (the planner only chooses among real cuts)."""
    G = nx.path_graph(4, create_using=nx.DiGraph)
    assert [c.position for c in cuts_at(G, [1, 3])] == [1, 3]
    try:
        cuts_at(G, [7])
    except ValueError as e:
        assert "position" in str(e)
    else:
        raise AssertionError("cuts_at accepted a position past the end")
