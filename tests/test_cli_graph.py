"""``onnxprune graph`` command line."""

from __future__ import annotations

import json

import networkx as nx
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from tests.test_hgraph import TinyDenseNet, export_torch


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "dense.onnx"
    onnx.save(export_torch(TinyDenseNet()), path)
    return path


def test_graph_json_is_exactly_the_documented_shape(dense_path, capsys):
    assert run_guarded(main, ["graph", str(dense_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"levels"}
    assert [lvl["level"] for lvl in data["levels"]] == [0, 1, 2]
    assert data["levels"][1]["motifs"] == [
        {"id": 0, "ops": ["BN", "Relu", "Conv", "Relu", "Conv", "Concat"], "instances": 6}
    ]
    assert data["levels"][0] == {"level": 0, "nodes": 45, "edges": 50, "motifs": []}


def test_graph_text_graphml_and_png(dense_path, tmp_path, capsys):
    graphml = tmp_path / "g.graphml"
    png = tmp_path / "g.png"
    args = ["graph", str(dense_path), "--graphml", str(graphml), "--png", str(png)]
    assert run_guarded(main, args) == 0
    out = capsys.readouterr().out
    assert "M0 x6" in out and "level 1: 15 nodes, 14 edges (chain)" in out
    level1 = nx.read_graphml(tmp_path / "g.level1.graphml")
    assert (level1.number_of_nodes(), level1.number_of_edges()) == (15, 14)
    assert sum(1 for _, _, d in level1.edges(data=True) if d["type"] == "M0") == 6
    assert (tmp_path / "g.level2.graphml").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_graph_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert run_guarded(main, ["graph", str(missing)]) == 2
    assert "nope.onnx" in capsys.readouterr().err
    out_dir = tmp_path / "missing_dir" / "g.png"
    model = tmp_path / "m.onnx"
    onnx.save(export_torch(TinyDenseNet()), model)
    assert run_guarded(main, ["graph", str(model), "--png", str(out_dir)]) == 2
    assert "missing_dir" in capsys.readouterr().err
    assert run_guarded(main, ["graph", str(model), "--max-region", "1"]) == 2
