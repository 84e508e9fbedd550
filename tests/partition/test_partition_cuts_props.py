"""Property tests of cut finding and coarsening on random DAGs (hypothesis) and on real models."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings, strategies as st

from tierplan.partition.cuts import coarsen, find_cuts, quotient_graph, topological_order
from tierplan.partition.extract import build_pieces
from tierplan.partition.onnx_graph import load_onnx
from tierplan.partition.types import TensorInfo


@st.composite
def random_dags(draw):
    """A random operator DAG: node i makes tensor t<i> read by some later nodes; maybe a shuffled `index`."""
    n = draw(st.integers(1, 40))
    G = nx.DiGraph()
    tensors = {"in": TensorInfo("in", (4,), "float32", 16)}
    for i in range(n):
        G.add_node(f"n{i}", op_type="Op", flops=float(draw(st.integers(0, 100))), param_bytes=0, act_bytes=0,
                   out_bytes=0, inputs=(), outputs=(f"t{i}",))
        size = draw(st.integers(1, 1000))
        tensors[f"t{i}"] = TensorInfo(f"t{i}", (size,), "uint8", size)
    for j in range(n):
        ins = ["in"] if j == 0 or draw(st.booleans()) else []
        for i in range(max(0, j - 6), j):
            if draw(st.integers(0, 2)) == 0:
                ins.append(f"t{i}")
                G.add_edge(f"n{i}", f"n{j}", tensor=f"t{i}", tensors=(f"t{i}",), nbytes=tensors[f"t{i}"].nbytes)
        G.nodes[f"n{j}"]["inputs"] = tuple(ins)
    if draw(st.booleans()):   # an `index` that may not be topological: the fallback order must be used
        perm = draw(st.permutations(range(n)))
        for i, p in enumerate(perm):
            G.nodes[f"n{i}"]["index"] = p
    consumed = {t for _, d in G.nodes(data=True) for t in d["inputs"]}
    outs = [tensors[f"t{i}"] for i in range(n) if f"t{i}" not in consumed]
    G.graph.update(tensors=tensors, inputs=[tensors["in"]], outputs=outs, const_tensors=frozenset(), model="rand")
    return G


@settings(max_examples=150, deadline=None)
@given(G=random_dags(), k=st.integers(1, 10))
def test_coarsening_is_a_valid_partition(G, k):
    """At most K pieces; every op in exactly one piece; acyclic quotient; each tensor produced by one piece."""
    before = nx.to_dict_of_dicts(G)
    part = coarsen(G, k)
    assert nx.to_dict_of_dicts(G) == before                 # input untouched
    assert 1 <= len(part.pieces) <= k
    flat = [v for p in part.pieces for v in p]
    assert sorted(flat) == sorted(G.nodes) and len(flat) == len(set(flat))
    Q = quotient_graph(G, part)
    assert nx.is_directed_acyclic_graph(Q)
    where = part.piece_of()
    producer = {t: where[v] for v, d in G.nodes(data=True) for t in d["outputs"]}
    for i, j, d in Q.edges(data=True):
        assert all(producer[t] == i for t in d["tensors"])
    pieces = build_pieces(G, part)
    made_by = {}
    for p in pieces:
        for t in p.outputs:
            assert t.name not in made_by, f"{t.name} produced by two pieces"
            made_by[t.name] = p.index
    for p in pieces:   # every input is a model input or an output of an earlier piece
        for t in p.inputs:
            assert t.name == "in" or made_by[t.name] < p.index


@settings(max_examples=150, deadline=None)
@given(G=random_dags())
def test_cut_tensors_match_brute_force(G):
    """Each cut's crossing tensors and bytes equal a direct count; cuts come cheapest first."""
    order = topological_order(G)
    pos = {v: i for i, v in enumerate(order)}
    assert all(pos[u] < pos[v] for u, v in G.edges)
    cuts = find_cuts(G, order)
    assert [c.nbytes for c in cuts] == sorted(c.nbytes for c in cuts)
    assert sorted(c.position for c in cuts) == list(range(1, len(order)))
    for c in cuts:
        head = set(order[:c.position])
        crossing = {d["tensor"] for u, v, d in G.edges(data=True) if u in head and v not in head}
        assert set(c.tensors) == crossing
        assert c.nbytes == sum(G.graph["tensors"][t].nbytes for t in crossing)


def test_inception_cuts_fall_between_blocks(light):
    """On Inception v1 (parallel branches) the chosen cuts are crossed by exactly one tensor each."""
    G = load_onnx(light / "light_inception_v1.onnx")
    part = coarsen(G, 6)
    assert len(part.pieces) == 6
    assert all(len(c.tensors) == 1 for c in part.cuts)


def test_detector_head_cut_carries_several_tensors(zoo_dir):
    """Cutting a two-scale detector inside its heads crosses several tensors and still forms a DAG."""
    G = load_onnx(zoo_dir / "tiny_detector.onnx")
    part = coarsen(G, 8, min_piece_frac=0.0)
    assert len(part.pieces) == 8
    assert max(len(c.tensors) for c in part.cuts) >= 2
    assert nx.is_directed_acyclic_graph(quotient_graph(G, part))


def test_cheapest_cut_is_chosen_first(light):
    """With K=2 on ResNet-50 the single cut is the cheapest admissible one of all cuts."""
    G = load_onnx(light / "light_resnet50.onnx")
    part = coarsen(G, 2)
    (cut,) = part.cuts
    admissible = [c for c in find_cuts(G) if len(part.order) > c.position]
    total = sum(d["flops"] for _, d in G.nodes(data=True))
    order = part.order
    pre = 0.0
    prefix = {}
    for i, v in enumerate(order):
        prefix[i] = pre
        pre += G.nodes[v]["flops"]
    ok = [c for c in admissible if min(prefix[c.position], total - prefix[c.position]) >= total / 4]
    assert cut.nbytes == min(c.nbytes for c in ok)
