"""The app graph joins sources, model pieces, transforms and sinks as docs/ARCHITECTURE.md specifies."""

from __future__ import annotations

import time
from pathlib import Path

import networkx as nx
import pytest
import yaml

from tierplan.partition.app_graph import build_app_graph, profile_pieces
from tierplan.errors import InputError
from tierplan.loader import load_app

REPO = Path(__file__).resolve().parents[2]

APP = {
    "name": "mixed",
    "models": {
        "det": {"onnx": "pkg:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "max_pieces": 3},
        "cls": {"onnx": "pkg:rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "dims": {"x[0]": 1}, "max_pieces": 2},
        "kws": {"profile": {"input_bytes": 4000, "layers": [
            {"name": "conv", "output_bytes": 2000, "flops": 4e6, "latency_ms": {"rpi5": 2.0, "t4": 0.2}},
            {"name": "gru", "output_bytes": 500, "flops": 2e6, "latency_ms": {"rpi5": 1.0}},
            {"name": "fc", "output_bytes": 48, "flops": 1e5, "latency_ms": {"rpi5": 0.1, "t4": 0.05}}]}},
    },
    "sources": {
        "camera": {"at": "edge", "rate_hz": 2, "shape": [1, 3, 320, 320], "private": True},
        "mic": {"at": "edge", "rate_hz": 10, "shape": [1000], "private": False},
    },
    "transforms": {"crop": {"function": "m:crop", "fanout": 5, "output_shape": [1, 3, 48, 192]}},
    "edges": [
        {"from": "camera", "to": "det", "tensors": {"camera": "x"}},
        {"from": "camera", "to": "crop", "tensors": {"camera": "frame"}},
        {"from": "det", "to": "crop", "tensors": {"sigmoid_0.tmp_0": "prob"}},
        {"from": "crop", "to": "cls", "tensors": {"crop": "x"}},
        {"from": "mic", "to": "kws"},
    ],
    "sinks": {"labels": {"from": "cls"}, "keyword": {"from": "kws", "deliver_to": "cloud"}},
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    d = tmp_path_factory.mktemp("app")
    (d / "app.yaml").write_text(yaml.safe_dump(APP))
    return load_app(d / "app.yaml")


@pytest.fixture(scope="module")
def graph(app, tmp_path_factory):
    return build_app_graph(app, tmp_path_factory.mktemp("pieces"))


def test_node_ids_and_kinds(graph):
    """Sources by name, pieces as <model>/p<k>, transforms by name, sinks as sink:<name>."""
    kinds = nx.get_node_attributes(graph, "kind")
    assert kinds["camera"] == kinds["mic"] == "source"
    assert kinds["crop"] == "transform"
    assert kinds["sink:labels"] == kinds["sink:keyword"] == "sink"
    assert sorted(v for v, k in kinds.items() if k == "piece") == [
        "cls/p0", "cls/p1", "det/p0", "det/p1", "det/p2", "kws/p0", "kws/p1", "kws/p2"]
    assert graph.nodes["camera"]["pin"] == "edge" and graph.nodes["camera"]["nbytes"] == 3 * 320 * 320 * 4
    assert nx.is_directed_acyclic_graph(graph)


def test_dims_bound_from_the_source_shape(graph):
    """The detector's symbolic input dims take the camera's shape (no dims given in the spec)."""
    p0 = graph.nodes["det/p0"]["piece"]
    assert p0.inputs[0].shape == (1, 3, 320, 320)


def test_fanout_multiplies_rate_factor_and_edge_bytes(graph):
    """Nodes after a fan-out-5 transform run 5x per request; the transform's edge carries 5 items."""
    assert graph.nodes["det/p2"]["rate_factor"] == 1.0
    assert graph.nodes["crop"]["rate_factor"] == 1.0
    assert graph.nodes["cls/p0"]["rate_factor"] == 5.0 == graph.nodes["sink:labels"]["rate_factor"]
    e = graph.edges["crop", "cls/p0"]
    assert e["nbytes"] == 5 * 3 * 48 * 192 * 4 and e["tensors"] == ("crop",)
    assert graph.nodes["cls/p1"]["source"] == "camera" and graph.nodes["kws/p0"]["source"] == "mic"


def test_private_flags_follow_raw_data(graph):
    """Raw private data (source, and a crop of it) is private; model outputs and public sources are not."""
    assert graph.edges["camera", "det/p0"]["private"] is True
    assert graph.edges["camera", "crop"]["private"] is True
    assert graph.edges["crop", "cls/p0"]["private"] is True
    assert graph.edges["det/p0", "det/p1"]["private"] is False
    assert graph.edges["mic", "kws/p0"]["private"] is False


def test_piece_edges_carry_crossing_tensors(graph):
    """Edges between pieces of a model carry the crossing tensors' names and bytes; a model feeds the transform."""
    p0 = graph.nodes["det/p0"]["piece"]
    e = graph.edges["det/p0", "det/p1"]
    assert set(e["tensors"]) <= {t.name for t in p0.outputs}
    assert e["nbytes"] == sum(t.nbytes for t in p0.outputs if t.name in e["tensors"])
    assert graph.edges["det/p2", "crop"]["tensors"] == ("sigmoid_0.tmp_0",)
    assert graph.edges["det/p2", "crop"]["nbytes"] == 320 * 320 * 4


def test_profile_table_pieces_carry_measurements(graph):
    """Profile-table layers become file-less pieces with measured_ms from the table."""
    p = graph.nodes["kws/p0"]["piece"]
    assert p.file is None and p.measured_ms == {"rpi5": 2.0, "t4": 0.2} and p.flops == 4e6
    assert graph.edges["kws/p0", "kws/p1"]["nbytes"] == 2000
    assert graph.edges["mic", "kws/p0"]["nbytes"] == 4000
    assert graph.edges["kws/p2", "sink:keyword"]["nbytes"] == 48


def test_profile_table_coarsened_sums_common_devices(app):
    """Grouping profile layers sums latencies for the devices every grouped layer was measured on."""
    mp = profile_pieces("kws", app.models["kws"].profile, max_pieces=1)
    (p,) = mp.pieces
    assert p.measured_ms == {"rpi5": pytest.approx(3.1)}
    assert p.flops == pytest.approx(6.1e6) and p.outputs[0].nbytes == 48


def test_repeated_build_uses_the_cache(app, tmp_path):
    """A second build of the same app reuses the partitioned pieces on disk and is faster."""
    t0 = time.perf_counter()
    g1 = build_app_graph(app, tmp_path)
    t1 = time.perf_counter()
    g2 = build_app_graph(app, tmp_path)
    t2 = time.perf_counter()
    assert [g1.nodes[v]["piece"].file for v in g1 if g1.nodes[v]["kind"] == "piece"] == \
           [g2.nodes[v]["piece"].file for v in g2 if g2.nodes[v]["kind"] == "piece"]
    assert t2 - t1 < t1 - t0


def test_max_pieces_override(app, tmp_path):
    """max_pieces given to build_app_graph overrides each model's own limit."""
    g = build_app_graph(app, tmp_path, max_pieces=1)
    assert sorted(v for v in g if g.nodes[v]["kind"] == "piece") == ["cls/p0", "det/p0", "kws/p0"]


def test_wrong_tensor_name_is_refused(tmp_path):
    """An edge naming a tensor the model does not output is refused, listing the real outputs."""
    bad = dict(APP, edges=APP["edges"][:2] + [{"from": "det", "to": "crop", "tensors": {"nope": "prob"}}]
               + APP["edges"][3:])
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match=r"edges\[2\]\.tensors: 'nope' is not an output of 'det'"):
        build_app_graph(load_app(tmp_path / "app.yaml"), tmp_path / "p")


@pytest.mark.parametrize("example", ["smart-city", "read-text"])
def test_examples_build(example, tmp_path):
    """Both example apps join into one DAG whose every piece has a file and every model input is fed."""
    app = load_app(REPO / "examples" / example / "app.yaml")
    g = build_app_graph(app, tmp_path)
    assert nx.is_directed_acyclic_graph(g)
    pieces = [d["piece"] for _, d in g.nodes(data=True) if d["kind"] == "piece"]
    assert pieces and all(Path(p.file).is_file() for p in pieces)
    assert g.graph["unfed_inputs"] == []
    for name in app.sinks:
        assert g.in_degree(f"sink:{name}") >= 1
