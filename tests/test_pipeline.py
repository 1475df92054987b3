"""Library verbs: prune_model, recover_model, compare."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxprune.cost import model_cost
from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import make_session
from onnxprune.pipeline import compare, prune_model, recover_model
from onnxprune.recover import least_squares_recover
from tests.conftest import make_tiny_cnn, tiny_cnn_macs


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3, 16, 16)).astype(np.float32)
    return Dataset(x, rng.integers(0, 10, 48), "random")


def test_prune_by_ratio_reports_the_costs_of_the_written_model():
    result = prune_model(make_tiny_cnn((8, 16)), ratio=0.5, round_to=1)
    assert (result.groups_pruned, result.channels_removed) == (2, 4 + 8)
    assert result.pruned_cost.macs == model_cost(result.model).macs == tiny_cnn_macs((4, 8))
    assert result.original_cost.macs == tiny_cnn_macs((8, 16))
    record = result.to_dict()
    assert record["macs_ratio"] == pytest.approx(tiny_cnn_macs((4, 8)) / tiny_cnn_macs((8, 16)))
    assert record["bn_fallback_groups"] == [] and record["plan"]["criterion"] == "l1"
    assert "2 of 2 prunable groups thinned, 12 channels removed" in str(result)


def test_prune_by_flops_and_by_plan_agree():
    by_flops = prune_model(make_tiny_cnn((8, 16)), flops=0.5, round_to=4)
    assert by_flops.pruned_cost.macs <= 0.5 * by_flops.original_cost.macs
    assert "MACs target 0.5" in by_flops.how
    by_plan = prune_model(make_tiny_cnn((8, 16)), plan=by_flops.plan)
    assert by_plan.pruned_cost.macs == by_flops.pruned_cost.macs
    assert by_plan.how == "given plan"


def test_bn_fallbacks_travel_in_the_result():
    # the tiny CNN has no BatchNormalization: every prunable group falls back to l1
    result = prune_model(make_tiny_cnn((8, 16)), ratio=0.5, criterion="bn", round_to=1)
    assert sorted(result.fallbacks) == sorted(result.plan.keep)
    assert result.plan.meta["criterion"] == "bn"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of --ratio, --flops or --plan"),
        ({"ratio": 0.5, "flops": 0.5}, "give exactly one"),
        ({"ratio": 1.2}, r"--ratio 1.2 must be in \[0, 1\)"),
        ({"ratio": 0.5, "criterion": "activation"}, "needs calibration data"),
        ({"flops": 0.01}, "smallest reachable fraction is 0.7140"),
    ],
)
def test_prune_errors(kwargs, message):
    with pytest.raises(OnnxPruneError, match=message):
        prune_model(make_tiny_cnn((8, 16)), **kwargs)


def test_recover_ls_is_the_searchs_least_squares(data):
    reference = make_tiny_cnn((8, 16))
    pruned = prune_model(reference, ratio=0.5, round_to=1).model
    result = recover_model(pruned, reference, data, "ls")
    expected = least_squares_recover(pruned, reference, data)
    for got, want in zip(result.model.graph.initializer, expected.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
    assert result.least_squares is not None and result.finetune is None
    assert set(result.to_dict()) == {"method", "seconds", "least_squares"}
    assert recover_model(pruned, reference, data, "none").model is pruned
    with pytest.raises(OnnxPruneError, match="recovery method 'lsq' is unknown"):
        recover_model(pruned, reference, data, "lsq")


def test_compare_on_models_and_open_sessions(data):
    reference = make_tiny_cnn((8, 16))
    same = compare(reference, reference, data)
    assert same.pruned.agreement == 100.0 and same.pruned.kl == pytest.approx(0.0, abs=1e-9)
    assert same.original.top1 == same.pruned.top1 and same.samples == 48
    pruned = prune_model(reference, ratio=0.5, round_to=1).model
    session = make_session(reference, device="cpu")
    first = compare(session, pruned, data, latency_runs=3)
    again = compare(reference, pruned, data, original_logits=first.original_logits)
    assert first.pruned.to_dict() == again.pruned.to_dict()
    assert first.pruned.agreement < 100.0
    assert set(first.pruned_latency_ms) == {1, 32} and not again.pruned_latency_ms
    assert first.to_dict()["pruned_accuracy"] == first.pruned.top1
